"""LSTM cell kernel (CPU, numba). ``_lstm_cell`` is THE LSTM step; see ``reference.py``."""
from __future__ import annotations

from numba import njit

from ...config import NJIT
from ...engine.pack import (
    F_CLIP, F_INPUT_FORGET, F_PEEP, F_PROJ, K_ACT, K_DIR, K_FLAGS, K_H, K_REC,
    O_PAR, O_PEEP, O_PROJ, O_RT,
)
from ..cpu_common import _act, _clip, _matvec_acc


@njit(**NJIT)
def _lstm_cell(W, m, d, g, h, c, tmp):
    """Advance one LSTM direction by one step for one stream.

    g   (4H,)  in: x @ Wt + b (gate order i, o, f, c); clobbered
    h   (Hr,)  in/out: hidden state (the layer's output)
    c   (H,)   in/out: cell state
    tmp (H,)   scratch (used with a projection)
    """
    H, Hr, flags = m[K_H], m[K_REC], m[K_FLAGS]
    base = K_DIR + 9 * d
    G = 4 * H
    _matvec_acc(W, m[base + O_RT], Hr, G, 0, G, h, g, 0)  # g += h @ Rt
    par = m[base + O_PAR]
    clip = W[par] if flags & F_CLIP else W[par] * 0
    kf, kg, kh = m[K_ACT + 3 * d], m[K_ACT + 3 * d + 1], m[K_ACT + 3 * d + 2]
    af, bf, ag, bg, ah, bh = W[par + 1], W[par + 2], W[par + 3], W[par + 4], W[par + 5], W[par + 6]
    peep = flags & F_PEEP
    pp = m[base + O_PEEP]
    proj = flags & F_PROJ
    for j in range(H):
        cp = c[j]
        gi = g[j]
        gf = g[2 * H + j]
        if peep:
            gi += W[pp + j] * cp
            gf += W[pp + 2 * H + j] * cp
        it = _act(_clip(gi, clip), kf, af, bf)
        if flags & F_INPUT_FORGET:
            ft = 1.0 - it
        else:
            ft = _act(_clip(gf, clip), kf, af, bf)
        ct = _act(_clip(g[3 * H + j], clip), kg, ag, bg)
        cn = ft * cp + it * ct
        go = g[H + j]
        if peep:
            go += W[pp + H + j] * cn
        ot = _act(_clip(go, clip), kf, af, bf)
        c[j] = cn
        hn = ot * _act(cn, kh, ah, bh)
        if proj:
            tmp[j] = hn
        else:
            h[j] = hn
    if proj:  # h = Pt.T @ tmp
        for r in range(Hr):
            h[r] = 0.0
        _matvec_acc(W, m[base + O_PROJ], H, Hr, 0, Hr, tmp, h, 0)
