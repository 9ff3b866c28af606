"""Shared-memory tiled GEMM helpers of the CUDA step kernels (numba.cuda).

The row-tile kernels of :mod:`streamrnn.layers.dense.cuda` give every thread one unit and read
the weights straight from global memory; that is a GEMV and stays far from the FMA peak once
many streams step together. The helpers here build the classic tiled GEMM instead:

* a block computes ``BM`` rows (streams) x ``BU`` units, *all G gates of each unit* (so the
  gate non-linearities run in the same kernel: the epilogue of a thread sees every gate of its
  units), i.e. an output tile of BM x (G*BU) gate pre-activations;
* the K loop (input part, then recurrent part: ``[x | h] @ [Wt ; Rt]``) stages a chunk of ``BK``
  columns of both operands in shared memory: ``As`` (BK, BM+1) (padded: conflict-free stores)
  and ``Bs`` (BK, G*BU);
* each thread accumulates a TM x (TU units x G gates) register micro-tile: rows
  ``ty + TY*q`` (q < TM) and units ``tx + TX*u`` (u < TU), with TY = BM/TM, TX = BU/TU, so the
  shared loads of a warp are broadcasts (A) or consecutive (B);
* ``KS`` > 1 splits each chunk's k range over KS thread slices (few rows: more threads per
  weight), reduced through shared memory at the end (``make_gemm_reduce``).

Threads per block: TX * TY * KS. Grid: (ceil(n / BM), ceil(N / BU)). Accumulator index of
(row q, unit u, gate g): ``(q * TU + u) * G + g``.

The vector layout (``VEC``, ``STREAMRNN_CUDA_GEMM_VEC=1``; LSTM tiles with G = 4 and TM a
multiple of 4; bench/NOTES.md entry 83) lays the tiles out so that a thread's operands of one k
are contiguous and 16-byte aligned, and the compiler emits vector shared loads (``ld.shared.v4``
in float32) in the k loop: a thread's rows are ``make_gemm_row``'s ``row(ty, q)`` = 4 ty + (q mod 4) +
4 TY floor(q / 4) (runs of 4; the two runs of a warp's two ty are 16 bytes apart), A's row
pitch is BM + 4, and B is unit-major, ``Bs[k, u * G + g]`` (the 4 gates of a unit side by side).
"""
from __future__ import annotations

from collections import namedtuple
from functools import lru_cache

from numba import cuda
from numba import types as nbt

from .dense.cuda import SIM, jit

#: BM rows x BU units per block, TM rows x TU units per thread, KS k-slices, BK chunk length
GemmTile = namedtuple("GemmTile", "BM BU TM TU KS BK")


def gemm_threads(gt: GemmTile) -> int:
    return (gt.BM // gt.TM) * (gt.BU // gt.TU) * gt.KS


def gemm_launch_bounds(gt: GemmTile, dtype: str) -> tuple:
    """``launch_bounds`` of a recurrent step's GEMM kernel: (threads, blocks per SM); float32
    tiles of <= 256 threads at most 128 registers, two blocks per SM."""
    NT = gemm_threads(gt)
    return NT, 2 if (str(dtype) == "float32" and NT <= 256) else 1


def gemm_red_size(gt: GemmTile, G: int) -> int:
    """Shared floats of the split-K reduction (1 when KS == 1)."""
    if gt.KS == 1:
        return 1
    return (gt.KS - 1) * (gt.BM // gt.TM) * (gt.BU // gt.TU) * gt.TM * gt.TU * G


def gemm_vec(gt: GemmTile, G: int) -> bool:
    """Whether the tile can take the vector layout (a thread's rows in runs of 4, 4 gates)."""
    return gt.TM % 4 == 0 and G == 4


def gemm_a_pitch(gt: GemmTile, vec: bool = False) -> int:
    """Row pitch of the staged A tile: BM + 1 (conflict-free stores), or BM + 4 in the vector
    layout (every row of a k starts 16-byte aligned)."""
    return gt.BM + (4 if vec else 1)


#: ``alignment=`` of the shared tiles in the vector layout (the simulator refuses the argument)
SMEM_ALIGN = None if SIM else 16


def gemm_smem(gt: GemmTile, G: int, vec: bool = False) -> int:
    """Static shared memory of a GEMM block, in items (G gates per unit; a GRU's 4 sums for
    its 3 staged gates count as 4: a bound)."""
    return gt.BK * gemm_a_pitch(gt, vec) + gt.BK * G * gt.BU + gemm_red_size(gt, G)


@lru_cache(maxsize=None)
def make_gemm_row(gt: GemmTile, VEC: bool = False):
    """``row(ty, q)``: the tile row of a thread's q-th row: ``ty + TY q``, or in the vector
    layout ``4 ty + (q mod 4) + 4 TY floor(q / 4)`` (the epilogue uses the same map)."""
    TY = gt.BM // gt.TM
    TY4 = 4 * TY

    @jit(device=True)
    def row(ty, q):
        if VEC:
            return (q >> 2) * TY4 + 4 * ty + (q & 3)
        return ty + TY * q

    return row


@lru_cache(maxsize=None)
def make_gemm_accum(gt: GemmTile, K: int, LDW: int, GS: int, G: int, COL0: int, USE_IDS: bool, NU: int,
                    PIPE: bool = True, VEC: bool = False, GA: int = 0, GSKIP: int = -1):
    """``accum(acc, As, Bs, av, va, vb, W, woff, A, ids, rbase, n, jb, tid)``:

    ``acc[(q*TU+u)*GA + a(g)] += sum_k A[row(rbase + ty + TY*q), COL0 + k] * W[woff + k*LDW + g*GS + j]``
    for this thread's rows q < TM, units j = jb + tx + TX*u (u < TU), gates g < G, k < K (its
    KS slice of every chunk). row(r) = ids[r] if USE_IDS else r; rows >= n and units >= NU
    contribute zeros (the caller ignores them). As: shared (BK, gemm_a_pitch(gt, VEC)), Bs: shared
    (BK, G*BU), av: local (TM,), va / vb: local (gemm_stage_items(gt, G)) (the pipelined staging's
    registers). VEC (``gemm_vec(gt, G)`` must hold): the vector layout of the module docstring;
    the thread's rows are then ``make_gemm_row(gt, True)``, not ty + TY*q. GA (default G): the
    accumulators of a unit; a(g) = g, or g + 1 from gate GSKIP on (>= 0: the accumulator
    GSKIP is left to another pass; a GRU's recurrent candidate part is kept apart from its
    input part, ``layers/gru/cuda.py``).

    Staging, ``accum.staging``:

    * ``"pipe"`` (PIPE and the thread count divides both tiles evenly, ``gemm_pipelined``): each
      thread stages the same k of rows NT/BK apart in A and the same column of B in every chunk
      (no division per element; the block's source rows read once into shared memory), and loads
      the *next* chunk from global memory into registers (va, vb) before it multiplies the
      current one: the loads' latency hides behind the FMAs (register double buffering).
      NOTES entry 50.
    * ``"loop"``: load, store, synchronise, multiply, chunk after chunk, any thread count
      (``STREAMRNN_CUDA_STAGE=loop`` selects it everywhere, for an A/B).
    """
    BM, BU, TM, TU, KS, BK = gt
    TY, TX = BM // TM, BU // TU
    NT = TX * TY * KS
    GB = G * BU
    if VEC and not gemm_vec(gt, G):
        raise ValueError(f"VEC: expected a tile with TM a multiple of 4 and G = 4, got {gt} with G = {G}")
    GA = GA or G
    if G + (GSKIP >= 0) > GA:
        raise ValueError(f"GA: expected at least {G + (GSKIP >= 0)} accumulators per unit, got {GA}")
    row = make_gemm_row(gt, VEC)
    FAST = PIPE and gemm_pipelined(gt, G)
    NA, RA = BM * BK // NT, NT // BK  # FAST: A items per thread, row step
    NB, RB = BK * GB // NT, NT // GB  # FAST: B items per thread, k step

    @jit(device=True)
    def accum(acc, As, Bs, av, va, vb, W, woff, A, ids, rbase, n, jb, tid):
        # masked: LLVM then knows these are >= 0 and drops numba's negative-index tests
        tx = (tid % TX) & 0x3FFFFFFF
        ty = ((tid // TX) % TY) & 0x3FFFFFFF
        ks = (tid // (TX * TY)) & 0x3FFFFFFF if KS > 1 else 0
        ka, ra = tid % BK, tid // BK  # FAST: this thread's k in the A tile, its first row
        cb, kb = tid % GB, tid // GB  # FAST: this thread's column in the B tile, its first k
        if VEC:  # column cb = unit cb // G, gate cb % G (unit-major)
            jbu = jb + cb // G
            wcol = woff + (cb % G) * GS + jbu
        else:  # column cb = gate cb // BU, unit cb % BU (gate-major)
            jbu = jb + cb % BU
            wcol = woff + (cb // BU) * GS + jbu
        if FAST:
            rows = cuda.shared.array(BM, nbt.int32)  # the block's source rows (-1: none)
            cuda.syncthreads()  # conservative: rows' writes after any earlier use of rows
            for rr in range(tid, BM, NT):
                r = rbase + rr
                rows[rr] = -1
                if r < n:
                    rows[rr] = ids[r] if USE_IDS else r
            cuda.syncthreads()
            for i in range(NA):  # chunk 0 into registers
                g = rows[ra + RA * i]
                va[i] = 0
                if g >= 0 and ka < K:
                    va[i] = A[g, COL0 + ka]
            for i in range(NB):
                kx = kb + RB * i
                vb[i] = 0
                if jbu < NU and kx < K:
                    vb[i] = W[wcol + kx * LDW]
        for k0 in range(0, K, BK):
            cuda.syncthreads()
            if FAST:
                for i in range(NA):
                    As[ka, ra + RA * i] = va[i]
                for i in range(NB):
                    Bs[kb + RB * i, cb] = vb[i]
                cuda.syncthreads()
                k1 = k0 + BK
                if k1 < K:  # the next chunk's loads, in flight during this chunk's FMAs
                    kx = k1 + ka
                    for i in range(NA):
                        g = rows[ra + RA * i]
                        va[i] = 0
                        if g >= 0 and kx < K:
                            va[i] = A[g, COL0 + kx]
                    for i in range(NB):
                        kx = k1 + kb + RB * i
                        vb[i] = 0
                        if jbu < NU and kx < K:
                            vb[i] = W[wcol + kx * LDW]
            else:
                # stage A: BM rows x BK columns (consecutive threads: consecutive k of one row)
                for e in range(tid, BM * BK, NT):
                    rr = e // BK
                    kk = e - rr * BK
                    r = rbase + rr
                    kx = k0 + kk
                    if r < n and kx < K:
                        if USE_IDS:
                            As[kk, rr] = A[ids[r], COL0 + kx]
                        else:
                            As[kk, rr] = A[r, COL0 + kx]
                    else:
                        As[kk, rr] = 0
                # stage B: BK rows x (G gates x BU units) (consecutive threads: consecutive units)
                for e in range(tid, BK * GB, NT):
                    kk = e // GB
                    c = e - kk * GB
                    if VEC:
                        u = c // G
                        g = c - u * G
                    else:
                        g = c // BU
                        u = c - g * BU
                    j = jb + u
                    kx = k0 + kk
                    if j < NU and kx < K:
                        Bs[kk, c] = W[woff + kx * LDW + g * GS + j]
                    else:
                        Bs[kk, c] = 0
                cuda.syncthreads()
            # the whole chunk, also past K (staged as zeros): a constant trip count, and indices
            # LLVM can prove >= 0 (see tx / ty / ks above; NOTES entry 36)
            for k1 in range(BK // KS):
                kk = (ks + KS * k1) & 0x3FFFFFFF
                for q in range(TM):
                    av[q] = As[kk, row(ty, q)]
                for u in range(TU):
                    for g in range(G):
                        if VEC:
                            w = Bs[kk, (tx + TX * u) * G + g]
                        else:
                            w = Bs[kk, g * BU + tx + TX * u]
                        a = u * GA + (g + 1 if 0 <= GSKIP <= g else g)  # the accumulator of (row 0, u, g)
                        for q in range(TM):
                            acc[a + q * TU * GA] += av[q] * w

    accum.staging = "pipe" if FAST else "loop"  # which staging this tile got (tests, benchmarks)
    accum.vec, accum.G, accum.GA = VEC, G, GA
    return accum


@lru_cache(maxsize=None)
def make_gemm_passes(dtype: str, gt: GemmTile, XARGS: tuple, HARGS: tuple):
    """``passes(acc, W, WT, RT, src, arena, ids, rbase, n, jb, tid)``: the sums of a recurrent
    step's tiled GEMM: ``acc`` (TM*TU*GA, local) zeroed, the input pass (``make_gemm_accum(gt,
    *XARGS)`` over ``src`` from W[WT]), the recurrent pass (``*HARGS``, over the state rows of
    ``arena``, from W[RT]; none where HARGS is empty: a dense layer), then the split-K
    reduction; with the block's shared tiles and the staging registers of its own, shaped by
    the input pass's gates (G staged, GA sums per unit) and layout (the vector layout's tiles:
    16-byte aligned, A's pitch BM + 4)."""
    from .dense.cuda import nbtype

    nbt = nbtype(dtype)
    BM, BU, TM, TU, KS, BK = gt
    acc_x = make_gemm_accum(gt, *XARGS)
    HAS_H = bool(HARGS)
    acc_h = make_gemm_accum(gt, *HARGS) if HAS_H else acc_x
    G, GA, VEC = acc_x.G, acc_x.GA, acc_x.vec
    if (acc_h.G, acc_h.GA, acc_h.vec) != (G, GA, VEC):
        raise ValueError(f"HARGS: expected the input pass's gates, sums and layout {(G, GA, VEC)}, "
                         f"got {(acc_h.G, acc_h.GA, acc_h.vec)}")
    reduce = make_gemm_reduce(gt, GA)
    RED = gemm_red_size(gt, GA)
    NA, NB = gemm_stage_items(gt, G)
    # shared-array shapes must be compile-time constants: arithmetic inside the kernel (BM + 1)
    # types as a plain int64 on real hardware (the simulator does not type-check this)
    BMP, BUG, TMc, NACC = int(gemm_a_pitch(gt, VEC)), int(G) * int(BU), int(TM), int(TM) * int(TU) * int(GA)
    ALIGN = SMEM_ALIGN if VEC else None

    @jit(device=True)
    def passes(acc, W, WT, RT, src, arena, ids, rbase, n, jb, tid):
        As = cuda.shared.array((BK, BMP), nbt, alignment=ALIGN)
        Bs = cuda.shared.array((BK, BUG), nbt, alignment=ALIGN)
        red = cuda.shared.array(RED, nbt)
        av = cuda.local.array(TMc, nbt)
        va = cuda.local.array(NA, nbt)
        vb = cuda.local.array(NB, nbt)
        for a in range(NACC):
            acc[a] = 0
        acc_x(acc, As, Bs, av, va, vb, W, WT, src, ids, rbase, n, jb, tid)
        if HAS_H:
            acc_h(acc, As, Bs, av, va, vb, W, RT, arena, ids, rbase, n, jb, tid)
        reduce(acc, red, tid)

    passes.staging = acc_x.staging
    return passes


@lru_cache(maxsize=None)
def make_gemm_coords(gt: GemmTile):
    """``coords(tid) -> (tx, ty, ks, jb, rbase)``: a thread's column and row in the tile, its
    k-slice, the block's first unit and first row (grid (ceil(n / BM), ceil(N / BU)))."""
    BM, BU, TM, TU, KS, BK = gt
    TY, TX = BM // TM, BU // TU

    @jit(device=True)
    def coords(tid):
        return tid % TX, (tid // TX) % TY, tid // (TX * TY), cuda.blockIdx.y * BU, cuda.blockIdx.x * BM

    return coords


def gemm_pipelined(gt: GemmTile, G: int) -> bool:
    """Whether the tile's thread count divides both staged tiles evenly (the pipelined staging)."""
    BM, BU, TM, TU, KS, BK = gt
    NT = gemm_threads(gt)
    GB = G * BU
    return NT % BK == 0 and (BM * BK) % NT == 0 and NT % GB == 0 and (BK * GB) % NT == 0


def gemm_stage_items(gt: GemmTile, G: int) -> tuple:
    """Register items per thread of the pipelined staging: (A items, B items); (1, 1) if unused."""
    if not gemm_pipelined(gt, G):
        return 1, 1
    NT = gemm_threads(gt)
    return gt.BM * gt.BK // NT, gt.BK * G * gt.BU // NT


@lru_cache(maxsize=None)
def make_gemm_reduce(gt: GemmTile, G: int):
    """``reduce(acc, red, tid)``: add the accumulators of k-slices 1..KS-1 into slice 0's
    (a no-op when KS == 1). red: shared (gemm_red_size(gt, G),)."""
    BM, BU, TM, TU, KS, BK = gt
    TXY = (BM // TM) * (BU // TU)
    NACC = TM * TU * G

    @jit(device=True)
    def reduce(acc, red, tid):
        if KS > 1:
            t = tid % TXY
            ks = tid // TXY
            cuda.syncthreads()
            if ks > 0:
                for a in range(NACC):
                    red[((ks - 1) * NACC + a) * TXY + t] = acc[a]
            cuda.syncthreads()
            if ks == 0:
                for p in range(KS - 1):
                    for a in range(NACC):
                        acc[a] += red[(p * NACC + a) * TXY + t]

    return reduce
