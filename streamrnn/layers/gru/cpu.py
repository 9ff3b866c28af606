"""GRU cell kernel (CPU, numba). ``_gru_cell`` is THE GRU step; see ``reference.py``."""
from __future__ import annotations

from numba import njit

from ...config import NJIT, NJIT_INLINE
from ...engine.pack import F_CLIP, F_LBR, K_ACT, K_DIR, K_FAST, K_FLAGS, K_H, K_PAN, O_PAR, O_RBH, O_RT
from ..cpu_common import REC_DONE, _matvec_acc, _rec_product, _vact, _vclip


@njit(**NJIT_INLINE)
def _gru_cell(W, Wh, m, d, g, h, hr, rec):
    """Advance one GRU direction by one step for one stream.

    g  (3H,)  in: x @ Wt + b (gate order z, r, h); clobbered
    h  (H,)   in/out: hidden state
    hr (3H,)  scratch: recurrent products (with ``rec`` == ``REC_DONE``: in, already computed)
    rec       how hr gets h @ Rt (``REC_FWD``: computed here; ``REC_DONE``: by the caller)
    """
    H, lbr = m[K_H], m[K_FLAGS] & F_LBR
    if rec != REC_DONE:
        for j in range(3 * H):
            hr[j] = 0.0
    # lbr: hr = h @ Rt for z, r and h; else only the z and r parts
    _rec_product(W, Wh, m[K_DIR + 9 * d + O_RT], m[K_PAN + 2 * d + 1], H, 3 * H, 3 * H if lbr else 2 * H, h, hr, rec)
    _gru_gates(W, m, d, g, h, hr)


@njit(**NJIT)
def _gru_gates(W, m, d, g, h, hr):
    """The rest of the step given g = x @ Wt + b and hr = h @ Rt (z, r parts; all 3 with lbr)."""
    H, flags, fast = m[K_H], m[K_FLAGS], m[K_FAST]
    base = K_DIR + 9 * d
    rt = m[base + O_RT]
    par = m[base + O_PAR]
    clip = W[par] if flags & F_CLIP else W[par] * 0
    kf, kg = m[K_ACT + 3 * d], m[K_ACT + 3 * d + 1]
    af, bf, ag, bg = W[par + 1], W[par + 2], W[par + 3], W[par + 4]
    lbr = flags & F_LBR
    zr = g[0 : 2 * H]
    for j in range(2 * H):
        zr[j] += hr[j]
    _vclip(zr, clip)
    _vact(zr, kf, af, bf, fast)  # z, r
    z, r, gh = g[0:H], g[H : 2 * H], g[2 * H : 3 * H]
    if lbr:
        rbh = W[m[base + O_RBH] :][:H]
        for j in range(H):
            gh[j] += r[j] * (hr[2 * H + j] + rbh[j])
    else:
        rh = hr[0:H]  # the z, r products are no longer needed
        for j in range(H):
            rh[j] = r[j] * h[j]
        _matvec_acc(W, rt, H, 3 * H, 2 * H, H, rh, g, 2 * H)  # += (r*h) @ Rh
    _vclip(gh, clip)
    _vact(gh, kg, ag, bg, fast)
    for j in range(H):
        h[j] = (1.0 - z[j]) * gh[j] + z[j] * h[j]
