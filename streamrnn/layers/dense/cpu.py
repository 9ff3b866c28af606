"""Dense, activation and softmax kernels on one frame (CPU, numba)."""
from __future__ import annotations

import math

from numba import njit

from ...config import NJIT
from ...engine.pack import ACT, DENSE, F_LOG, K_ACT, K_DIR, K_FAST, K_FLAGS, K_IN, K_OUT, K_PAN, O_B, O_PAR, O_PROJ, O_WT, PWH
from ..cpu_common import _dot, _gemm_pan16, _matvec_acc, _matvec_pan16, _vact


@njit(**NJIT)
def _frame_layer(W, m, x, y):
    """A stateless layer on one frame: x (in,) -> y (out,). Dense, activation or (log)softmax."""
    n_in, n_out, kind = m[K_IN], m[K_OUT], m[0]
    par = m[K_DIR + O_PAR]
    if kind == DENSE:
        bias = W[m[K_DIR + O_B] :][:n_out]  # indexed by the bare loop variable (vectorises)
        pan = m[K_PAN]
        if pan >= 0 or n_out < 16:
            # 16-column panels (float32), then the rest as dot products over the row-major copy
            npan = n_out // PWH if pan >= 0 else 0
            for j in range(npan * PWH):
                y[j] = bias[j]
            if npan > 0:
                _matvec_pan16(W, pan, n_in, npan, x, y)
            _dense_tail(W, m, x, y, npan * PWH)
        else:
            for j in range(n_out):
                y[j] = bias[j]
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


@njit(**NJIT)
def _frame_rows(W, m, X, Y):
    """``_frame_layer`` on each row: X (n, in) -> Y (n, out). A Dense layer with panels (float32)
    multiplies all rows at once in 8-row tiles (``_gemm_pan16``, the bias as the accumulators'
    start), then the columns past the last panel and the activation row by row."""
    n, n_in, n_out = X.shape[0], m[K_IN], m[K_OUT]
    pan = m[K_PAN]
    if m[0] != DENSE or pan < 0 or n < 4:
        for r in range(n):
            _frame_layer(W, m, X[r], Y[r])
        return
    npan = n_out // PWH
    _gemm_pan16(X, n_in, n_in, W, pan, npan, Y, n_out, n, m[K_DIR + O_B])  # bias included
    for r in range(n):
        _dense_tail(W, m, X[r], Y[r], npan * PWH)


@njit(**NJIT)
def _dense_tail(W, m, x, y, c0):
    """A panel-path Dense layer after its panels wrote y[:c0] (bias included): the columns
    from c0 on as dot products over the transposed copy, then the activation."""
    n_in, n_out, par = m[K_IN], m[K_OUT], m[K_DIR + O_PAR]
    bias, wr = W[m[K_DIR + O_B] :][:n_out], m[K_DIR + O_PROJ]
    for j in range(c0, n_out):
        y[j] = bias[j] + _dot(W, wr + j * n_in, x, n_in)
    _vact(y, m[K_ACT], W[par + 1], W[par + 2], m[K_FAST])
