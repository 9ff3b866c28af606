"""LSTM cell kernel (CPU, numba). ``_lstm_cell`` is THE LSTM step; see ``reference.py``."""
from __future__ import annotations

from numba import njit

from ...config import NJIT, NJIT_INLINE
from ...engine.pack import (
    F_CLIP, F_INPUT_FORGET, F_PEEP, F_PROJ, K_ACT, K_DIR, K_FAST, K_FLAGS, K_H, K_PAN, K_REC,
    O_PAR, O_PEEP, O_PROJ, O_RT,
)
import numpy as np

from ..cpu_common import _lstm_gates_v, _matvec_acc, _rec_product, _tanh32, _vact, _vclip


@njit(**NJIT_INLINE)
def _lstm_cell(W, Wh, m, d, g, h, c, rec):
    """Advance one LSTM direction by one step for one stream.

    g (4H,)  in: x @ Wt + b (gate order i, o, f, c); clobbered (used as scratch)
    h (Hr,)  in/out: hidden state (the layer's output)
    c (H,)   in/out: cell state
    Wh       bfloat16 bits of the weights, or a 1-element dummy (see ``_matvec_h``)
    rec      how g gets h @ Rt (``REC_FWD``: computed here; ``REC_DONE``: by the caller)
    """
    H, Hr = m[K_H], m[K_REC]
    _rec_product(W, Wh, m[K_DIR + 9 * d + O_RT], m[K_PAN + 2 * d + 1], Hr, 4 * H, 4 * H, h, g, rec)  # g += h @ Rt
    _lstm_gates(W, m, d, g, h, c)


@njit(**NJIT)
def _lstm_plain(m, d):
    """True for the common float32 LSTM: sigmoid, tanh, tanh; no peepholes, clip or coupling
    (a projection is allowed)."""
    a = K_ACT + 3 * d
    return (m[K_FAST] != 0 and m[a] == 0 and m[a + 1] == 1 and m[a + 2] == 1
            and (m[K_FLAGS] & (F_PEEP | F_CLIP | F_INPUT_FORGET)) == 0)


@njit(**NJIT)
def _lstm_plain_gates(g, c, hv, H):
    """The elementwise step of a plain LSTM (``_lstm_plain``): g (4H,) -> c (H,) in/out, hv (H,)
    out. Every gate of a unit in one vectorised pass, no intermediate stores (measured ~2x on
    H=128), then the units past the last whole 16-unit vector one by one."""
    done = _lstm_gates_v(g, c, hv, H)  # whole 16-unit vectors in zmm registers (float32)
    half = np.float32(0.5)
    gi, go, gf, gc = g[0:H], g[H : 2 * H], g[2 * H : 3 * H], g[3 * H : 4 * H]  # (H,) each
    for j in range(done, H):
        it = half * _tanh32(half * gi[j]) + half
        ft = half * _tanh32(half * gf[j]) + half
        ot = half * _tanh32(half * go[j]) + half
        cn = ft * c[j] + it * _tanh32(gc[j])
        c[j] = cn
        hv[j] = ot * _tanh32(cn)


@njit(**NJIT)
def _lstm_gates(W, m, d, g, h, c):
    """The elementwise part of the step: g (4H,) = x @ Wt + h @ Rt + b -> new c, h."""
    H, Hr, flags, fast = m[K_H], m[K_REC], m[K_FLAGS], m[K_FAST]
    base = K_DIR + 9 * d
    if _lstm_plain(m, d):
        hv = g[3 * H : 4 * H] if flags & F_PROJ else h
        _lstm_plain_gates(g, c, hv, H)
        if flags & F_PROJ:
            for r in range(Hr):
                h[r] = 0.0
            _matvec_acc(W, m[base + O_PROJ], H, Hr, 0, Hr, hv, h, 0)
        return
    par = m[base + O_PAR]
    clip = W[par] if flags & F_CLIP else W[par] * 0
    kf, kg, kh = m[K_ACT + 3 * d], m[K_ACT + 3 * d + 1], m[K_ACT + 3 * d + 2]
    af, bf, ag, bg, ah, bh = W[par + 1], W[par + 2], W[par + 3], W[par + 4], W[par + 5], W[par + 6]
    gi, go, gf, gc = g[0:H], g[H : 2 * H], g[2 * H : 3 * H], g[3 * H : 4 * H]  # (H,) each
    peep = flags & F_PEEP
    if peep:
        pi, po, pf = W[m[base + O_PEEP] :][:H], W[m[base + O_PEEP] + H :][:H], W[m[base + O_PEEP] + 2 * H :][:H]
        for j in range(H):
            gi[j] += pi[j] * c[j]
            gf[j] += pf[j] * c[j]
    _vclip(gi, clip)
    _vact(gi, kf, af, bf, fast)  # i
    if flags & F_INPUT_FORGET:
        for j in range(H):
            gf[j] = 1.0 - gi[j]
    else:
        _vclip(gf, clip)
        _vact(gf, kf, af, bf, fast)  # f
    _vclip(gc, clip)
    _vact(gc, kg, ag, bg, fast)  # candidate
    for j in range(H):
        c[j] = gf[j] * c[j] + gi[j] * gc[j]
    if peep:
        for j in range(H):
            go[j] += po[j] * c[j]
    _vclip(go, clip)
    _vact(go, kf, af, bf, fast)  # o
    for j in range(H):
        gi[j] = c[j]
    _vact(gi, kh, ah, bh, fast)  # h(c)
    if flags & F_PROJ:  # h = (o * h(c)) @ Pt
        for j in range(H):
            gc[j] = go[j] * gi[j]
        for r in range(Hr):
            h[r] = 0.0
        _matvec_acc(W, m[base + O_PROJ], H, Hr, 0, Hr, gc, h, 0)
    else:
        for j in range(H):
            h[j] = go[j] * gi[j]
