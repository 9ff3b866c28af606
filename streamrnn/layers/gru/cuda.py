"""GRU kernels (CUDA, numba.cuda): one-step row-tile kernels of the pool / stream path and the
persistent sequence kernel of ``run`` / ``push``. Same formulae as ``cpu.py``'s ``_gru_cell``.

With ``linear_before_reset`` (PyTorch's GRU) one step is one kernel: the row tile for one
stream, for more a shared-memory tiled GEMM (``make_gru_gemm``). Without it (ONNX's default)
the candidate gate needs ``(r * h_old) @ Rh`` over every unit, so the step is two kernels:
``make_gru_step`` writes z, the input part of the candidate and r * h_old to the feature buffer
(columns SCR0 : SCR0 + 3H), then ``make_gru_step2`` finishes.
See :mod:`streamrnn.layers.dense.cuda` for the row-tile conventions.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda

from ..cuda_seqblock import make_rows_io, make_seq_commit
from ..dense.cuda import Tile, _act, _clip, as_kernel, jit, make_accum, make_reduce, nbtype, red_size


@lru_cache(maxsize=None)
def make_gru_step(dtype: str, tile: Tile, I: int, H: int, IN0: int, OUT0: int, SCR0: int,
                  WT: int, RT: int, BO: int, RBH: int, LBR: bool, CLIP: float, ACTS: tuple,
                  HO: int, LAST: bool):
    """One GRU step for n rows, grid (ceil(n/NR), ceil(H/(U*UPT))). ACTS = (kf, af, bf, kg, ag, bg).

    LBR: the whole step; h goes to dst[r, OUT0 + j] (and out if LAST).
    not LBR: phase 1; z, a = x @ Wh + bh and r * h_old go to dst[r, SCR0 + {0, H, 2H} + j].
    """
    dt = np.dtype(dtype).type
    nbt = nbtype(dtype)
    U, KS, RS, RPT, KT, UPT = tile
    NR, UU = RS * RPT, U * UPT
    G3 = 3 * H
    AW = 6  # x parts z, r, h; recurrent parts z, r, h
    AWT = UPT * AW
    acc_x = make_accum(tile, I, G3, H, 3, IN0, False, 0, AW, H)
    acc_h = make_accum(tile, H, G3, H, 3 if LBR else 2, HO, True, 3, AW, H)
    reduce = make_reduce(tile, AWT)
    RED = red_size(tile, AWT)
    NACC = RPT * AWT
    UPT4, NACC1 = 4 * int(UPT), int(RPT) * int(UPT)  # the epilogue's biases, h_old per (row, unit)
    kf, af, bf, kg, ag, bg = ACTS
    af, bf, ag, bg = dt(af), dt(bf), dt(ag), dt(bg)
    clip = dt(CLIP)

    @jit(device=True)
    def gru_step(bx, by, W, ids, src, dst, out, arena, n):
        tid = cuda.threadIdx.x
        tx = tid % U
        ks = (tid // U) % KS
        ty = tid // (U * KS)
        j0 = by * UU + tx
        rbase = bx * NR
        xs = cuda.shared.array((NR, KT), nbt)
        red = cuda.shared.array(RED, nbt)
        acc = cuda.local.array(NACC, nbt)
        for a in range(NACC):
            acc[a] = 0
        acc_x(acc, xs, W, WT, src, ids, rbase, n, j0, tid, ks, ty)
        acc_h(acc, xs, W, RT, arena, ids, rbase, n, j0, tid, ks, ty)
        reduce(acc, red, tx, ks, ty)
        if ks == 0:
            # the biases and every row's h_old first, then the cells and their stores (no load
            # moves above a store that may alias it: one round trip per row otherwise; NOTES 71)
            bv = cuda.local.array(UPT4, nbt)
            hpv = cuda.local.array(NACC1, nbt)
            for u in range(UPT):
                j = min(j0 + u * U, H - 1)
                bv[4 * u] = W[BO + j]
                bv[4 * u + 1] = W[BO + H + j]
                bv[4 * u + 2] = W[BO + 2 * H + j]
                bv[4 * u + 3] = W[RBH + j] if LBR else bv[4 * u]
            for q in range(RPT):
                sid = ids[min(rbase + ty + RS * q, n - 1)]
                for u in range(UPT):
                    hpv[q * UPT + u] = arena[sid, HO + min(j0 + u * U, H - 1)]
            for q in range(RPT):
                r = rbase + ty + RS * q
                if r < n:
                    for u in range(UPT):
                        j = j0 + u * U
                        if j < H:
                            a0 = q * AWT + u * AW
                            hp = hpv[q * UPT + u]
                            gz = bv[4 * u] + acc[a0]
                            gr = bv[4 * u + 1] + acc[a0 + 1]
                            gh = bv[4 * u + 2] + acc[a0 + 2]
                            z = _act(_clip(gz + acc[a0 + 3], clip), kf, af, bf)
                            rg = _act(_clip(gr + acc[a0 + 4], clip), kf, af, bf)
                            if LBR:
                                gh += rg * (acc[a0 + 5] + bv[4 * u + 3])
                                hc = _act(_clip(gh, clip), kg, ag, bg)
                                hv = (1.0 - z) * hc + z * hp
                                dst[r, OUT0 + j] = hv
                                if LAST:
                                    out[r, j] = hv
                            else:
                                dst[r, SCR0 + j] = z
                                dst[r, SCR0 + H + j] = gh
                                dst[r, SCR0 + 2 * H + j] = rg * hp

    return as_kernel(gru_step, "gru_step")


@lru_cache(maxsize=None)
def make_gru_step2(dtype: str, tile: Tile, H: int, OUT0: int, SCR0: int, RT: int, CLIP: float,
                   ACTS: tuple, HO: int, LAST: bool):
    """Phase 2 of a GRU step without linear_before_reset: h = (1-z) * g(a + (r*h_old) @ Rh) + z * h_old."""
    dt = np.dtype(dtype).type
    nbt = nbtype(dtype)
    U, KS, RS, RPT, KT, UPT = tile
    NR, UU = RS * RPT, U * UPT
    acc_rh = make_accum(tile, H, 3 * H, 0, 1, SCR0 + 2 * H, False, 0, 1, H)
    reduce = make_reduce(tile, UPT)
    RED = red_size(tile, UPT)
    NACC = RPT * UPT
    kf, af, bf, kg, ag, bg = ACTS
    ag, bg = dt(ag), dt(bg)
    clip = dt(CLIP)

    @jit(device=True)
    def gru_step2(bx, by, W, ids, src, dst, out, arena, n):
        tid = cuda.threadIdx.x
        tx = tid % U
        ks = (tid // U) % KS
        ty = tid // (U * KS)
        j0 = by * UU + tx
        rbase = bx * NR
        xs = cuda.shared.array((NR, KT), nbt)
        red = cuda.shared.array(RED, nbt)
        acc = cuda.local.array(NACC, nbt)
        for a in range(NACC):
            acc[a] = 0
        acc_rh(acc, xs, W, RT + 2 * H, dst, ids, rbase, n, j0, tid, ks, ty)
        reduce(acc, red, tx, ks, ty)
        if ks == 0:
            # h_old, z and the input part of every (row, unit) first, then the stores
            hpv = cuda.local.array(NACC, nbt)
            zv = cuda.local.array(NACC, nbt)
            av = cuda.local.array(NACC, nbt)
            for q in range(RPT):
                rc = min(rbase + ty + RS * q, n - 1)
                sid = ids[rc]
                for u in range(UPT):
                    jc = min(j0 + u * U, H - 1)
                    hpv[q * UPT + u] = arena[sid, HO + jc]
                    zv[q * UPT + u] = dst[rc, SCR0 + jc]
                    av[q * UPT + u] = dst[rc, SCR0 + H + jc]
            for q in range(RPT):
                r = rbase + ty + RS * q
                if r < n:
                    for u in range(UPT):
                        j = j0 + u * U
                        if j < H:
                            hp = hpv[q * UPT + u]
                            z = zv[q * UPT + u]
                            hc = _act(_clip(av[q * UPT + u] + acc[q * UPT + u], clip), kg, ag, bg)
                            hv = (1.0 - z) * hc + z * hp
                            dst[r, OUT0 + j] = hv
                            if LAST:
                                out[r, j] = hv

    return as_kernel(gru_step2, "gru_step2")


@lru_cache(maxsize=None)
def make_gru_seq(dtype: str, NT: int, NB: int, H: int, RT: int, RBH: int, LBR: bool, CLIP: float,
                 ACTS: tuple, HO: int, COL0: int, REV: bool):
    """The recurrence of one GRU direction over a chunk, persistent over time (see
    ``make_lstm_seq``): ``gru_seq(W, XW, Y, state, sidx, lens, B, T)``, XW (B*T, 3H)."""
    dt = np.dtype(dtype).type
    nbt = nbtype(dtype)
    G3 = 3 * H
    kf, af, bf, kg, ag, bg = ACTS
    af, bf, ag, bg = dt(af), dt(bf), dt(ag), dt(bg)
    clip = dt(CLIP)
    HS = 1 if LBR else H
    NACC = NB * 3
    load_h, store_h = make_rows_io(NT, NB, H, HO)
    commit = make_seq_commit(NT, NB, H, COL0, REV)

    @jit()
    def gru_seq(W, XW, Y, state, sidx, lens, B, T):
        tid = cuda.threadIdx.x
        b0 = cuda.blockIdx.x * NB
        h = cuda.shared.array((NB, H), nbt)  # the block's sequences' h
        hn = cuda.shared.array((NB, H), nbt)  # ... their new h of this step
        zs = cuda.shared.array((NB, HS), nbt)  # not LBR: the update gate z
        rh = cuda.shared.array((NB, HS), nbt)  # not LBR: r * h_old
        acc = cuda.local.array(NACC, nbt)
        load_h(h, h, state, sidx, b0, B, tid)
        cuda.syncthreads()
        for s in range(T):
            for j in range(tid, H, NT):
                for a in range(NB * 3):
                    acc[a] = 0
                for k in range(H):
                    wb = RT + k * G3 + j
                    w0 = W[wb]
                    w1 = W[wb + H]
                    w2 = W[wb + 2 * H] if LBR else w1
                    for i in range(NB):
                        hv = h[i, k]
                        acc[3 * i] += hv * w0
                        acc[3 * i + 1] += hv * w1
                        if LBR:
                            acc[3 * i + 2] += hv * w2
                for i in range(NB):
                    b = b0 + i
                    if b < B:
                        L = lens[b]
                        if s < L:
                            t = L - 1 - s if REV else s
                            row = b * T + t
                            z = _act(_clip(XW[row, j] + acc[3 * i], clip), kf, af, bf)
                            rg = _act(_clip(XW[row, H + j] + acc[3 * i + 1], clip), kf, af, bf)
                            if LBR:
                                gh = XW[row, 2 * H + j] + rg * (acc[3 * i + 2] + W[RBH + j])
                                hc = _act(_clip(gh, clip), kg, ag, bg)
                                hn[i, j] = (1.0 - z) * hc + z * h[i, j]
                            else:
                                zs[i, j] = z
                                rh[i, j] = rg * h[i, j]
            cuda.syncthreads()
            if not LBR:
                for j in range(tid, H, NT):
                    for a in range(NB):
                        acc[a] = 0
                    for k in range(H):
                        w2 = W[RT + k * G3 + 2 * H + j]
                        for i in range(NB):  # rows of finished sequences: rh undefined, dropped
                            acc[i] += rh[i, k] * w2  # (simrace: undefined dropped)
                    for i in range(NB):
                        b = b0 + i
                        if b < B:
                            L = lens[b]
                            if s < L:
                                t = L - 1 - s if REV else s
                                row = b * T + t
                                hc = _act(_clip(XW[row, 2 * H + j] + acc[i], clip), kg, ag, bg)
                                z = zs[i, j]
                                hn[i, j] = (1.0 - z) * hc + z * h[i, j]
                cuda.syncthreads()
            commit(h, hn, Y, lens, b0, B, T, s, tid)
            cuda.syncthreads()
        store_h(h, h, state, sidx, b0, B, tid)

    return gru_seq


@lru_cache(maxsize=None)
def make_gru_gemm(dtype: str, gt, I: int, H: int, IN0: int, OUT0: int, WT: int, RT: int, BO: int, RBH: int,
                  CLIP: float, ACTS: tuple, HO: int, LAST: bool, PIPE: bool = True):
    """``make_gru_step`` with linear_before_reset (PyTorch's GRU) as a shared-memory tiled GEMM
    (see :mod:`streamrnn.layers.cuda_common`): same arguments less SCR0 / LBR, same results;
    grid (ceil(n/BM), ceil(H/BU)), gemm_threads(gt) threads, kernel arguments
    ``(W, ids, src, dst, out, arena, n)``.

    The three gates (z, r, h) of a unit are staged side by side, and each (row, unit) keeps four
    sums: z and r over ``[x | h_old]``, the candidate's input part ``x @ Wh`` and its recurrent
    part ``h_old @ Rh`` apart (the reset gate multiplies only the latter): the input pass adds
    into accumulators 0-2, the recurrent pass into 0, 1, 3 (``GSKIP``). The cell update is the
    epilogue, on the formulae of ``make_gru_step``. The tile's thread count must be a
    multiple of 3 x BU for the pipelined staging (``_gru_gemm_tiles`` picks such tiles;
    others stage in the loop mode).
    """
    from ..cuda_common import gemm_launch_bounds, make_gemm_coords, make_gemm_passes

    dt = np.dtype(dtype).type
    nbt = nbtype(dtype)
    BM, BU, TM, TU, KS, BK = gt
    TY, TX = BM // TM, BU // TU
    G3 = 3 * H
    passes = make_gemm_passes(dtype, gt, (I, G3, H, 3, IN0, False, H, PIPE, False, 4),
                              (H, G3, H, 3, HO, True, H, PIPE, False, 4, 2))
    NACC = int(TM) * int(TU) * 4
    TU4, NQU = 4 * int(TU), int(TM) * int(TU)
    coords = make_gemm_coords(gt)
    kf, af, bf, kg, ag, bg = ACTS
    af, bf, ag, bg = dt(af), dt(bf), dt(ag), dt(bg)
    clip = dt(CLIP)

    @jit(launch_bounds=gemm_launch_bounds(gt, dtype))
    def gru_gemm(W, ids, src, dst, out, arena, n):
        tid = cuda.threadIdx.x
        tx, ty, ks, jb, rbase = coords(tid)
        acc = cuda.local.array(NACC, nbt)
        bv = cuda.local.array(TU4, nbt)  # the epilogue's biases: z, r, the candidate's Wh and Rh
        hpv = cuda.local.array(NQU, nbt)  # h_old of every (row, unit)
        passes(acc, W, WT, RT, src, arena, ids, rbase, n, jb, tid)
        if ks == 0:
            # every load before the first store (NOTES entry 71): biases, then each row's h_old
            for u in range(TU):
                j = min(jb + tx + TX * u, H - 1)
                bv[4 * u] = W[BO + j]
                bv[4 * u + 1] = W[BO + H + j]
                bv[4 * u + 2] = W[BO + 2 * H + j]
                bv[4 * u + 3] = W[RBH + j]
            for q in range(TM):
                sid = ids[min(rbase + ty + TY * q, n - 1)]
                for u in range(TU):
                    hpv[q * TU + u] = arena[sid, HO + min(jb + tx + TX * u, H - 1)]
            for q in range(TM):
                r = rbase + ty + TY * q
                for u in range(TU):
                    j = jb + tx + TX * u
                    if r < n and j < H:
                        z = _act(_clip(bv[4 * u] + acc[4 * u], clip), kf, af, bf)
                        rg = _act(_clip(bv[4 * u + 1] + acc[4 * u + 1], clip), kf, af, bf)
                        gh = bv[4 * u + 2] + acc[4 * u + 2] + rg * (acc[4 * u + 3] + bv[4 * u + 3])
                        hc = _act(_clip(gh, clip), kg, ag, bg)
                        hv = (1.0 - z) * hc + z * hpv[u]
                        dst[r, OUT0 + j] = hv
                        if LAST:
                            out[r, j] = hv
                # the next row's sums and h_old to the front: constant indices, so acc stays in
                # registers (indexed by q, LLVM would put it in local memory: NOTES entry 50)
                for a in range(NACC - 4 * TU):
                    acc[a] = acc[a + 4 * TU]
                for a in range(NQU - TU):
                    hpv[a] = hpv[a + TU]

    gru_gemm.staging = passes.staging  # "pipe" or "loop" (tests, benchmarks)
    return gru_gemm


@lru_cache(maxsize=None)
def make_gru_seq_grid(dtype: str, NT: int, UPB: int, BMAX: int, H: int, RT: int, RBH: int, CLIP: float,
                      ACTS: tuple, HO: int, COL0: int, REV: bool, GRID_SYNC: int, STAMPS: bool = False,
                      DYN: bool = False):
    """The recurrence of one direction of a GRU with linear_before_reset (PyTorch's GRU) for
    few sequences, spread over the whole GPU in the persistent-RNN manner:
    :func:`streamrnn.layers.cuda_seqgrid.make_seq_grid` with the GRU's three gates and no cell
    state. Kernel arguments as ``make_lstm_seq_grid``'s; XW (B*T, 3H) the input projections,
    biases included as ``make_gru_seq`` takes them (the candidate's recurrent bias at RBH).
    ONNX's default GRU needs ``(r h_old) Rh``, a product over every unit after r: it keeps the
    per-block kernel (``make_gru_seq``). NOTES entry 88."""
    from ..cuda_seqgrid import make_seq_grid

    dt = np.dtype(dtype).type
    C = 3 * UPB
    KS = max(1, NT // C)
    BMC = int(BMAX) * int(C)  # the stride of one k-slice in the partial sums
    kf, af, bf, kg, ag, bg = ACTS
    af, bf, ag, bg = dt(af), dt(bf), dt(ag), dt(bg)
    clip = dt(CLIP)

    @jit(device=True)
    def gates(W, XW, row, j, part, pi, hp, cp):
        gz = XW[row, j]
        gr = XW[row, H + j]
        sh = W[RBH + j]  # the candidate's recurrent part, with its bias
        for q in range(KS):
            pq = pi + q * BMC
            gz += part[pq]
            gr += part[pq + UPB]
            sh += part[pq + 2 * UPB]
        z = _act(_clip(gz, clip), kf, af, bf)
        rg = _act(_clip(gr, clip), kf, af, bf)
        hc = _act(_clip(XW[row, 2 * H + j] + rg * sh, clip), kg, ag, bg)
        return cp, (1.0 - z) * hc + z * hp

    return make_seq_grid(dtype, NT, UPB, BMAX, H, 3, RT, HO, -1, COL0, REV, GRID_SYNC, STAMPS, DYN, gates,
                         "gru_seq_grid")
