"""Simple RNN kernels (CUDA, numba.cuda): h = f(clip(x @ Wt + h @ Rt + b)).
Same formula as ``cpu.py``'s ``_rnn_cell``; see :mod:`streamrnn.layers.dense.cuda` for the
row-tile conventions, :mod:`streamrnn.layers.cuda_common` for the tiled GEMM of many streams
(``make_rnn_gemm``) and :mod:`streamrnn.layers.cuda_seqgrid` for the sequence kernel spread
over the GPU (``make_rnn_seq_grid``); ``make_rnn_seq`` is the per-block one.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda

from ..cuda_seqblock import make_rows_io, make_seq_commit
from ..dense.cuda import Tile, _act, _clip, as_kernel, jit, make_accum, make_reduce, nbtype, red_size


@lru_cache(maxsize=None)
def make_rnn_step(dtype: str, tile: Tile, I: int, H: int, IN0: int, OUT0: int, WT: int, RT: int,
                  BO: int, CLIP: float, ACTS: tuple, HO: int, LAST: bool):
    """One RNN step for n rows, grid (ceil(n/NR), ceil(H/(U*UPT))). ACTS = (k, a, b)."""
    dt = np.dtype(dtype).type
    nbt = nbtype(dtype)
    U, KS, RS, RPT, KT, UPT = tile
    NR, UU = RS * RPT, U * UPT
    AW = 1
    acc_x = make_accum(tile, I, H, 0, 1, IN0, False, 0, AW, H)
    acc_h = make_accum(tile, H, H, 0, 1, HO, True, 0, AW, H)
    reduce = make_reduce(tile, UPT)
    RED = red_size(tile, UPT)
    NACC = RPT * UPT
    UPTc = int(UPT)
    kf, af, bf = ACTS
    af, bf = dt(af), dt(bf)
    clip = dt(CLIP)

    @jit(device=True)
    def rnn_step(bx, by, W, ids, src, dst, out, arena, n):
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
            bv = cuda.local.array(UPTc, nbt)  # the biases, loaded before the first store
            for u in range(UPT):
                bv[u] = W[BO + min(j0 + u * U, H - 1)]
            for q in range(RPT):
                r = rbase + ty + RS * q
                if r < n:
                    for u in range(UPT):
                        j = j0 + u * U
                        if j < H:
                            hv = _act(_clip(bv[u] + acc[q * UPT + u], clip), kf, af, bf)
                            dst[r, OUT0 + j] = hv
                            if LAST:
                                out[r, j] = hv

    return as_kernel(rnn_step, "rnn_step")


@lru_cache(maxsize=None)
def make_rnn_seq(dtype: str, NT: int, NB: int, H: int, RT: int, CLIP: float, ACTS: tuple,
                 HO: int, COL0: int, REV: bool):
    """The recurrence of one RNN direction over a chunk, persistent over time:
    ``rnn_seq(W, XW, Y, state, sidx, lens, B, T)``, XW (B*T, H) with the bias included."""
    dt = np.dtype(dtype).type
    nbt = nbtype(dtype)
    kf, af, bf = ACTS
    af, bf = dt(af), dt(bf)
    clip = dt(CLIP)
    load_h, store_h = make_rows_io(NT, NB, H, HO)
    commit = make_seq_commit(NT, NB, H, COL0, REV)

    @jit()
    def rnn_seq(W, XW, Y, state, sidx, lens, B, T):
        tid = cuda.threadIdx.x
        b0 = cuda.blockIdx.x * NB
        h = cuda.shared.array((NB, H), nbt)  # the block's sequences' h
        hn = cuda.shared.array((NB, H), nbt)  # ... their new h of this step
        acc = cuda.local.array(NB, nbt)
        load_h(h, h, state, sidx, b0, B, tid)
        cuda.syncthreads()
        for s in range(T):
            for j in range(tid, H, NT):
                for i in range(NB):
                    acc[i] = 0
                for k in range(H):
                    w = W[RT + k * H + j]
                    for i in range(NB):
                        acc[i] += h[i, k] * w
                for i in range(NB):
                    b = b0 + i
                    if b < B:
                        L = lens[b]
                        if s < L:
                            t = L - 1 - s if REV else s
                            hn[i, j] = _act(_clip(XW[b * T + t, j] + acc[i], clip), kf, af, bf)
            cuda.syncthreads()
            commit(h, hn, Y, lens, b0, B, T, s, tid)
            cuda.syncthreads()
        store_h(h, h, state, sidx, b0, B, tid)

    return rnn_seq


@lru_cache(maxsize=None)
def make_rnn_gemm(dtype: str, gt, I: int, H: int, IN0: int, OUT0: int, WT: int, RT: int, BO: int, CLIP: float,
                  ACTS: tuple, HO: int, LAST: bool, PIPE: bool = True):
    """``make_rnn_step`` as a shared-memory tiled GEMM over ``[x | h_old] @ [Wt ; Rt]`` (see
    :mod:`streamrnn.layers.cuda_common`; one gate): same arguments, same results; grid
    (ceil(n/BM), ceil(H/BU)), ``gemm_threads(gt)`` threads, kernel arguments ``(W, ids, src,
    dst, out, arena, n)``. NOTES entry 89."""
    from ..cuda_common import gemm_launch_bounds, make_gemm_coords, make_gemm_passes

    dt = np.dtype(dtype).type
    nbt = nbtype(dtype)
    BM, BU, TM, TU, KS, BK = gt
    passes = make_gemm_passes(dtype, gt, (I, H, 0, 1, IN0, False, H, PIPE), (H, H, 0, 1, HO, True, H, PIPE))
    coords = make_gemm_coords(gt)
    TX = BU // TU
    NACC, TUc = int(TM) * int(TU), int(TU)
    kf, af, bf = ACTS
    af, bf = dt(af), dt(bf)
    clip = dt(CLIP)

    @jit(launch_bounds=gemm_launch_bounds(gt, dtype))
    def rnn_gemm(W, ids, src, dst, out, arena, n):
        tid = cuda.threadIdx.x
        tx, ty, ks, jb, rbase = coords(tid)
        acc = cuda.local.array(NACC, nbt)
        bv = cuda.local.array(TUc, nbt)  # the biases, loaded before the first store
        passes(acc, W, WT, RT, src, arena, ids, rbase, n, jb, tid)
        if ks == 0:
            for u in range(TU):
                bv[u] = W[BO + min(jb + tx + TX * u, H - 1)]
            for q in range(TM):
                r = rbase + ty + (BM // TM) * q
                for u in range(TU):
                    j = jb + tx + TX * u
                    if r < n and j < H:
                        hv = _act(_clip(bv[u] + acc[u], clip), kf, af, bf)
                        dst[r, OUT0 + j] = hv
                        if LAST:
                            out[r, j] = hv
                for a in range(NACC - TU):  # the next row's sums to the front (constant indices)
                    acc[a] = acc[a + TU]

    rnn_gemm.staging = passes.staging  # "pipe" or "loop" (tests, benchmarks)
    return rnn_gemm


@lru_cache(maxsize=None)
def make_rnn_seq_grid(dtype: str, NT: int, UPB: int, BMAX: int, H: int, RT: int, CLIP: float, ACTS: tuple,
                      HO: int, COL0: int, REV: bool, GRID_SYNC: int, STAMPS: bool = False, DYN: bool = False):
    """The recurrence of one RNN direction for few sequences, spread over the whole GPU:
    :func:`streamrnn.layers.cuda_seqgrid.make_seq_grid` with one gate and no cell state. Kernel
    arguments as ``make_lstm_seq_grid``'s; XW (B*T, H) the input projections, bias included.
    NOTES entry 89."""
    from ..cuda_seqgrid import make_seq_grid

    dt = np.dtype(dtype).type
    KS = max(1, NT // UPB)
    BMC = int(BMAX) * int(UPB)  # the stride of one k-slice in the partial sums
    kf, af, bf = ACTS
    af, bf = dt(af), dt(bf)
    clip = dt(CLIP)

    @jit(device=True)
    def gates(W, XW, row, j, part, pi, hp, cp):
        g = XW[row, j]
        for q in range(KS):
            g += part[pi + q * BMC]
        return cp, _act(_clip(g, clip), kf, af, bf)

    return make_seq_grid(dtype, NT, UPB, BMAX, H, 1, RT, HO, -1, COL0, REV, GRID_SYNC, STAMPS, DYN, gates,
                         "rnn_seq_grid")
