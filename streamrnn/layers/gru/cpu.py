"""GRU cell kernel (CPU, numba). ``_gru_cell`` is THE GRU step; see ``reference.py``."""
from __future__ import annotations

from numba import njit

from ...config import NJIT
from ...engine.pack import F_CLIP, F_LBR, K_ACT, K_DIR, K_FLAGS, K_H, O_PAR, O_RBH, O_RT
from ..cpu_common import _act, _clip, _matvec_acc


@njit(**NJIT)
def _gru_cell(W, m, d, g, h, hr):
    """Advance one GRU direction by one step for one stream.

    g  (3H,)  in: x @ Wt + b (gate order z, r, h); clobbered
    h  (H,)   in/out: hidden state
    hr (3H,)  scratch: recurrent products
    """
    H, flags = m[K_H], m[K_FLAGS]
    base = K_DIR + 9 * d
    rt = m[base + O_RT]
    par = m[base + O_PAR]
    clip = W[par] if flags & F_CLIP else W[par] * 0
    kf, kg = m[K_ACT + 3 * d], m[K_ACT + 3 * d + 1]
    af, bf, ag, bg = W[par + 1], W[par + 2], W[par + 3], W[par + 4]
    lbr = flags & F_LBR
    for j in range(3 * H):
        hr[j] = 0.0
    if lbr:
        _matvec_acc(W, rt, H, 3 * H, 0, 3 * H, h, hr, 0)  # hr = h @ Rt (z, r, h)
    else:
        _matvec_acc(W, rt, H, 3 * H, 0, 2 * H, h, hr, 0)  # z and r parts only
    # z, r
    for j in range(2 * H):
        g[j] = _act(_clip(g[j] + hr[j], clip), kf, af, bf)
    if lbr:
        rbh = m[base + O_RBH]
        for j in range(H):
            g[2 * H + j] += g[H + j] * (hr[2 * H + j] + W[rbh + j])
    else:
        for j in range(H):  # r * h into hr[0:H] (z, r products no longer needed)
            hr[j] = g[H + j] * h[j]
        _matvec_acc(W, rt, H, 3 * H, 2 * H, H, hr, g, 2 * H)  # += (r*h) @ Rh
    for j in range(H):
        hc = _act(_clip(g[2 * H + j], clip), kg, ag, bg)
        z = g[j]
        h[j] = (1.0 - z) * hc + z * h[j]
