"""Dense, activation and softmax kernels on one frame (CPU, numba)."""
from __future__ import annotations

import math

from numba import njit

from ...config import NJIT
from ...engine.pack import ACT, DENSE, F_LOG, K_ACT, K_DIR, K_FAST, K_FLAGS, K_IN, K_OUT, O_B, O_PAR, O_PROJ, O_WT
from ..cpu_common import _dot, _matvec_acc, _vact


@njit(**NJIT)
def _frame_layer(W, m, x, y):
    """A stateless layer on one frame: x (in,) -> y (out,). Dense, activation or (log)softmax."""
    n_in, n_out, kind = m[K_IN], m[K_OUT], m[0]
    par = m[K_DIR + O_PAR]
    if kind == DENSE:
        b = m[K_DIR + O_B]
        if n_out < 16:  # narrow head: O dot products over the row-major copy
            wr = m[K_DIR + O_PROJ]
            for j in range(n_out):
                y[j] = W[b + j] + _dot(W, wr + j * n_in, x, n_in)
        else:
            for j in range(n_out):
                y[j] = W[b + j]
            _matvec_acc(W, m[K_DIR + O_WT], n_in, n_out, 0, n_out, x, y, 0)
        _vact(y, m[K_ACT], W[par + 1], W[par + 2], m[K_FAST])
    elif kind == ACT:
        for j in range(n_out):
            y[j] = x[j]
        _vact(y, m[K_ACT], W[par + 1], W[par + 2], m[K_FAST])
    else:  # SOFTMAX
        mx = x[0]
        for j in range(n_in):
            mx = max(mx, x[j])
        s = 0.0
        for j in range(n_in):
            s += math.exp(x[j] - mx)
        if m[K_FLAGS] & F_LOG:
            ls = math.log(s)
            for j in range(n_in):
                y[j] = x[j] - mx - ls
        else:
            for j in range(n_in):
                y[j] = math.exp(x[j] - mx) / s
