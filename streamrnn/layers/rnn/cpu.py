"""Simple RNN cell kernel (CPU, numba). ``_rnn_cell`` is THE RNN step; see ``reference.py``."""
from __future__ import annotations

from numba import njit

from ...config import NJIT, NJIT_INLINE
from ...engine.pack import F_CLIP, K_ACT, K_DIR, K_FAST, K_FLAGS, K_H, K_PAN, O_PAR, O_RT
from ..cpu_common import _rec_product, _vact, _vclip


@njit(**NJIT_INLINE)
def _rnn_cell(W, Wh, m, d, g, h, rec):
    """Advance one RNN direction by one step: h = f(clip(g + h @ Rt)).

    g (H,)  in: x @ Wt + b; clobbered.  h (H,) in/out: hidden state.
    rec     how g gets h @ Rt (``REC_FWD``: computed here; ``REC_DONE``: by the caller)
    """
    H = m[K_H]
    _rec_product(W, Wh, m[K_DIR + 9 * d + O_RT], m[K_PAN + 2 * d + 1], H, H, H, h, g, rec)
    _rnn_gates(W, m, d, g, h)


@njit(**NJIT)
def _rnn_gates(W, m, d, g, h):
    """h = f(clip(g)) where g = x @ Wt + h @ Rt + b."""
    H, flags = m[K_H], m[K_FLAGS]
    base = K_DIR + 9 * d
    par = m[base + O_PAR]
    clip = W[par] if flags & F_CLIP else W[par] * 0
    _vclip(g, clip)
    _vact(g, m[K_ACT + 3 * d], W[par + 1], W[par + 2], m[K_FAST])
    for j in range(H):
        h[j] = g[j]
