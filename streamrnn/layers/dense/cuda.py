"""Dense, activation and softmax kernels (CUDA, numba.cuda), and the device helpers the
recurrent CUDA kernels share: activations, clipping, the tiled multiply-accumulate.

Imported only by :mod:`streamrnn.engine.cuda` (so only when ``device="cuda"``).

Kernels are built by factories, per layer: every size, offset into the packed weight buffer
``W`` (see :mod:`streamrnn.engine.pack`), activation id and flag is a compile-time constant
(a closure variable), so loops have constant bounds and the activation branch folds away.
Factories are memoised on their arguments: models of the same structure share kernels.

The "row-tile" kernels (``make_linear`` here, and the recurrent step kernels of the layer
modules) all take the same arguments ``(W, ids, src, dst, out, arena, n)``:

* ``W``     (nW,) the packed weights;
* ``ids``   (>= n,) int64 state-arena row of each input row (pool streams);
* ``src``   (>= n, *) rows of the layer input, starting at column ``IN0`` (a constant);
* ``dst``   (>= n, *) the per-row feature buffer the layer writes at column ``OUT0``;
* ``out``   (>= n, O) the model output (written by the last layer only, ``LAST``);
* ``arena`` (cap, S) the per-stream states;
* ``n``     the number of rows.

The grid is ``(ceil(n / NR), ceil(N / U))`` (rows on x, as y is limited to 65535): a block
computes U output units (all gates of them) for NR rows, with ``U * KS * RS`` threads. A thread
owns one unit, one slice of the reduction (KS slices, reduced through shared memory) and RPT rows
(NR = RS * RPT), so every weight it loads is used RPT times; the inputs of the NR rows are
staged in shared memory in chunks of KT.
Small ``n`` uses few rows per block and many K slices (a split-K GEMV: all SMs stream the
weights once); large ``n`` uses many rows per block (a GEMM: weights re-used from registers).
A dense layer over more than one row runs instead as a shared-memory tiled GEMM with the same
arguments (``make_linear_gemm``).
"""
from __future__ import annotations

import math
from collections import namedtuple
from functools import lru_cache

import numpy as np
from numba import cuda, float32, float64, int64
from numba.cuda import config as _cuda_config

from .. import formulas

SIM = bool(_cuda_config.ENABLE_CUDASIM)

#: U threads across units (each owning UPT units, U apart: a block covers U*UPT units),
#: KS reduction slices, RS row groups, RPT rows per thread, KT chunk length
Tile = namedtuple("Tile", "U KS RS RPT KT UPT", defaults=(1,))


def nbtype(dtype):
    return float32 if np.dtype(dtype) == np.float32 else float64


def jit(device=False, **kw):
    """``cuda.jit`` with options the simulator does not know dropped there."""
    if SIM:
        return cuda.jit(device=device)
    if device:
        kw.setdefault("forceinline", True)
    return cuda.jit(device=device, **kw)


def as_kernel(body, name: str):
    """The kernel of a row-tile body ``body(bx, by, W, ids, src, dst, out, arena, n)`` (a device
    function of one block (bx, by) of the grid). The body stays reachable as ``kernel.body``:
    the persistent step kernel (:mod:`streamrnn.engine.persist`) calls it once per block of
    each layer's grid, inside one resident launch."""

    def kernel(W, ids, src, dst, out, arena, n):
        body(cuda.blockIdx.x, cuda.blockIdx.y, W, ids, src, dst, out, arena, n)

    kernel.__name__ = kernel.__qualname__ = name
    k = jit()(kernel)
    k.body = body
    return k


# ---------------------------------------------------------------------------------------------
# Scalar device helpers (same formulae, same literal types as layers/cpu_common.py)
# ---------------------------------------------------------------------------------------------
_act = jit(device=True)(formulas.act)  # the CPU kernels' formulae (layers/formulas.py)
_clip = jit(device=True)(formulas.clip)


# ---------------------------------------------------------------------------------------------
# The tiled multiply-accumulate shared by every row-tile kernel
# ---------------------------------------------------------------------------------------------
#: k values per thread whose weights the row-tile multiply loads before it multiplies them
#: (at most 32 weights per batch in registers): the loads of a batch are in flight together
ACCUM_KB = 8


@lru_cache(maxsize=None)
def make_accum(tile: Tile, K: int, LDW: int, GS: int, G: int, COL0: int, USE_IDS: bool, A0: int,
               AW: int, NU: int):
    """A device function ``accum(acc, xs, W, woff, A, ids, rbase, n, j0, tid, ks, ty)``:

    for the block's NR rows r, this thread's units j = j0 + u*U (u < UPT; clamped to NU - 1:
    the caller ignores units past NU), RPT rows q and K slice,
    ``acc[(q*UPT + u)*AW + A0 + g] += sum_k A[row(r), COL0 + k] * W[woff + k*LDW + g*GS + j]``
    for g < G, k < K; row(r) = ids[r] if USE_IDS (state arena) else r. xs: shared (NR, KT).

    Loads before use (bench/NOTES.md entry 74): a thread loads its staged values of a chunk
    into registers (before the barrier that ends the previous chunk's products), then stores
    them to shared memory; in the k loop it loads the weights of ``ACCUM_KB`` k values (all
    units and gates) before their FMAs. Each step of the chain otherwise waited a memory round
    trip for one value (``ld; st.shared`` per staged value, two weight loads in flight).
    The FMAs run in the same order as before: same results.
    """
    U, KS, RS, RPT, KT, UPT = tile
    NT, NR = U * KS * RS, RS * RPT
    AWT = UPT * AW
    NRK = NR * KT
    NI = -(-NRK // NT)  # staged values per thread per chunk
    NKT = -(-min(KT, K) // KS)  # k values per thread per chunk (at most)
    KB = max(1, min(ACCUM_KB, NKT, 32 // max(1, UPT * G)))
    NW = KB * UPT * G

    @jit(device=True)
    def accum(acc, xs, W, woff, A, ids, rbase, n, j0, tid, ks, ty):
        sv = cuda.local.array(NI, xs.dtype)
        wv = cuda.local.array(NW, xs.dtype)
        for k0 in range(0, K, KT):
            for i in range(NI):
                e = tid + i * NT
                rr = e // KT
                kk = e - rr * KT
                r = rbase + rr
                kx = k0 + kk
                sv[i] = 0
                if e < NRK and r < n and kx < K:
                    if USE_IDS:
                        sv[i] = A[ids[r], COL0 + kx]
                    else:
                        sv[i] = A[r, COL0 + kx]
            cuda.syncthreads()  # the previous chunk's products are done with xs
            for i in range(NI):
                e = tid + i * NT
                if e < NRK:
                    rr = e // KT
                    xs[rr, e - rr * KT] = sv[i]
            cuda.syncthreads()
            kend = min(KT, K - k0)
            for b0 in range(0, NKT, KB):
                for b in range(KB):
                    kc = min(ks + (b0 + b) * KS, kend - 1)  # past kend: a valid address, unused
                    wb = woff + (k0 + kc) * LDW
                    for u in range(UPT):
                        ju = min(j0 + u * U, NU - 1)
                        for g in range(G):
                            wv[(b * UPT + u) * G + g] = W[wb + g * GS + ju]
                for b in range(KB):
                    kk = ks + (b0 + b) * KS
                    if kk < kend:
                        for u in range(UPT):
                            for g in range(G):
                                w = wv[(b * UPT + u) * G + g]
                                for q in range(RPT):
                                    acc[q * AWT + u * AW + A0 + g] += xs[ty + RS * q, kk] * w

    return accum


@lru_cache(maxsize=None)
def make_reduce(tile: Tile, AW: int):
    """``reduce(acc, red, tx, ks, ty)``: sum the KS slices' accumulators into slice 0's.
    AW: accumulators per row (all units of the thread). red: shared (red_size(tile, AW),).
    A no-op when KS == 1."""
    U, KS, RS, RPT, KT, UPT = tile
    NR = RS * RPT

    @jit(device=True)
    def reduce(acc, red, tx, ks, ty):
        if KS > 1:
            for q in range(RPT):
                for g in range(AW):
                    red[((ks * NR + ty + RS * q) * AW + g) * U + tx] = acc[q * AW + g]
            cuda.syncthreads()
            if ks == 0:
                for p in range(1, KS):
                    for q in range(RPT):
                        for g in range(AW):
                            acc[q * AW + g] += red[((p * NR + ty + RS * q) * AW + g) * U + tx]

    return reduce


def red_size(tile: Tile, AW: int) -> int:
    U, KS, RS, RPT, KT, UPT = tile
    return max(1, KS * RS * RPT * AW * U) if KS > 1 else 1


#: (id, value) pairs a thread of the commit loads before it stores them (loads in flight together)
COMMIT_BATCH = 8


@lru_cache(maxsize=None)
def make_commit(dtype: str, NT: int, NR: int, NY: int, COMMIT: tuple):
    """``commit(ids, dst, arena, rbase, n, tid, by)``: copy the new hidden states (feature-buffer
    columns) of rows rbase .. rbase+NR-1 (those < n) into their state-arena rows. The NY blocks
    ``by`` = 0..NY-1 of a row group each call it and share the work (NT threads each).
    COMMIT: flat (col0, h_offset, size) triples.

    Loads before stores: a thread loads a batch of up to ``COMMIT_BATCH`` (id, value) pairs, then
    stores them. To the compiler ``arena`` may alias ``dst`` and ``ids``, so no load moves above
    an earlier store, and each store waits for its own load's value: one memory round trip per
    value. Committed one value at a time, the
    8-16 rows of 512 values of a head block would cost ~32 round trips per thread, by entry 71's
    count most of the head kernel's time at 64-1024 streams (bench/NOTES.md)."""
    NC = len(COMMIT) // 3
    CF = COMMIT if NC else (0, 0, 0)
    HT = max(1, sum(COMMIT[3 * c + 2] for c in range(NC)))  # committed values per row
    E = NR * HT if NC else 0
    NTT = NT * NY
    CB = max(1, min(COMMIT_BATCH, -(-E // NTT)))
    nbt = nbtype(dtype)

    @jit(device=True)
    def locate(e):
        """Item e (row-major over rows x committed values): (row in the group, feature column,
        arena column)."""
        rr = e // HT
        k = e - rr * HT
        sc = 0
        dc = 0
        for c in range(NC):
            hr = CF[3 * c + 2]
            if k >= 0 and k < hr:
                sc = CF[3 * c] + k
                dc = CF[3 * c + 1] + k
            k -= hr
        return rr, sc, dc

    @jit(device=True)
    def commit(ids, dst, arena, rbase, n, tid, by):
        if NC > 0:
            sv = cuda.local.array(CB, int64)
            vv = cuda.local.array(CB, nbt)
            g = by * NT + tid
            for e0 in range(0, E, NTT * CB):
                for i in range(CB):
                    e = e0 + i * NTT + g
                    rr, sc, dc = locate(e)
                    r = rbase + rr
                    sv[i] = -1
                    if e < E and r < n:
                        sv[i] = ids[r]
                        vv[i] = dst[r, sc]
                for i in range(CB):
                    rr, sc, dc = locate(e0 + i * NTT + g)
                    if sv[i] >= 0:
                        arena[sv[i], dc] = vv[i]

    return commit


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def make_dense_out(dtype: str, N: int, OUT0: int, BOFF: int, ACT: int, AA: float, AB: float, LAST: bool):
    """The output side of a dense layer (both ``make_linear`` and ``make_linear_gemm``):
    ``bias(W, j)`` the bias of unit j (clamped to N - 1, zero without one: loaded before any
    store, NOTES entry 71) and ``emit(dst, out, r, j, y, b)``: ``act(b + y)`` to
    ``dst[r, OUT0 + j]`` (and ``out[r, j]`` if LAST)."""
    dt = np.dtype(dtype).type
    AAc, ABc = dt(AA), dt(AB)

    @jit(device=True)
    def bias(W, j):
        return W[BOFF + min(j, N - 1)] if BOFF >= 0 else W[0] * 0

    @jit(device=True)
    def emit(dst, out, r, j, y, b):
        if BOFF >= 0:
            y = b + y
        if ACT >= 0:
            y = _act(y, ACT, AAc, ABc)
        dst[r, OUT0 + j] = y
        if LAST:
            out[r, j] = y

    return bias, emit


@lru_cache(maxsize=None)
def make_linear(dtype: str, tile: Tile, K: int, N: int, IN0: int, OUT0: int, WT: int, BOFF: int,
                ACT: int, AA: float, AB: float, LAST: bool, COMMIT: tuple = ()):
    """Dense layer on rows: ``dst[r, OUT0 + j] = act(b[j] + src[r, IN0:IN0+K] @ Wt[:, j])``.

    Also serves as the GEMM of the sequence path (input projections ``X @ Wt + b`` of every
    step, ACT = -1) and as the LSTM projection (BOFF = -1). Grid (ceil(n/NR), ceil(N/(U*UPT))).
    With COMMIT, the blocks of a row group also commit the recurrent states of its rows (all
    unit tiles sharing the work, ``make_commit``).
    """
    nbt = nbtype(dtype)
    U, KS, RS, RPT, KT, UPT = tile
    NT, NR, UU = U * KS * RS, RS * RPT, U * UPT
    accum = make_accum(tile, K, N, 0, 1, IN0, False, 0, 1, N)
    reduce = make_reduce(tile, UPT)
    RED = red_size(tile, UPT)
    NACC = RPT * UPT
    NY = -(-N // UU)
    commit = make_commit(dtype, NT, NR, NY, COMMIT)
    NC = len(COMMIT) // 3
    bias, emit = make_dense_out(dtype, N, OUT0, BOFF, ACT, AA, AB, LAST)

    @jit(device=True)
    def linear(bx, by, W, ids, src, dst, out, arena, n):
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
        accum(acc, xs, W, WT, src, ids, rbase, n, j0, tid, ks, ty)
        reduce(acc, red, tx, ks, ty)
        if ks == 0:
            bv = cuda.local.array(UPT, nbt)  # the biases, loaded before the first store
            for u in range(UPT):
                bv[u] = bias(W, j0 + u * U)
            for q in range(RPT):
                r = rbase + ty + RS * q
                if r < n:
                    for u in range(UPT):
                        j = j0 + u * U
                        if j < N:
                            emit(dst, out, r, j, acc[q * UPT + u], bv[u])
        if NC > 0:
            commit(ids, dst, arena, rbase, n, tid, by)

    return as_kernel(linear, "linear")


@lru_cache(maxsize=None)
def make_linear_gemm(dtype: str, gt, K: int, N: int, IN0: int, OUT0: int, WT: int, BOFF: int,
                     ACT: int, AA: float, AB: float, LAST: bool, COMMIT: tuple = ()):
    """``make_linear`` for many rows as a shared-memory tiled GEMM (the LSTM GEMM's staging,
    :mod:`streamrnn.layers.cuda_common`, with one gate): same arguments, same results up to the
    order of the sums; grid (ceil(n/BM), ceil(N/BU)), ``gemm_threads(gt)`` threads.

    Why (bench/NOTES.md entry 72): the row-tile kernel reads each weight from global memory
    in the k loop, a few loads in flight per thread, and stages its input rows one value per
    round trip, chunk after chunk (K/KT chunks): a head of 32 outputs over K=512 took 28 µs
    at 64 rows on the H200 for 2 MFLOP. Here both operands go through shared memory and the
    next chunk's loads are in flight while this chunk's products run."""
    from ..cuda_common import gemm_threads, make_gemm_passes

    nbt = nbtype(dtype)
    BM, BU, TM, TU, KS, BK = gt
    TY, TX = BM // TM, BU // TU
    NT = gemm_threads(gt)
    passes = make_gemm_passes(dtype, gt, (K, N, 0, 1, IN0, False, N), ())
    NACC = int(TM) * int(TU)
    TUc = int(TU)  # a constant shape (see make_gemm_passes)
    commit = make_commit(dtype, NT, BM, -(-N // BU), COMMIT)
    NC = len(COMMIT) // 3
    bias, emit = make_dense_out(dtype, N, OUT0, BOFF, ACT, AA, AB, LAST)

    @jit(device=True)
    def linear_gemm(bx, by, W, ids, src, dst, out, arena, n):
        tid = cuda.threadIdx.x
        tx = tid % TX
        ty = (tid // TX) % TY
        ks = tid // (TX * TY)
        jb = by * BU
        rbase = bx * BM
        acc = cuda.local.array(NACC, nbt)
        bv = cuda.local.array(TUc, nbt)
        passes(acc, W, WT, 0, src, arena, ids, rbase, n, jb, tid)
        if ks == 0:
            for u in range(TU):  # the biases, loaded before the first store
                bv[u] = bias(W, jb + tx + TX * u)
            for q in range(TM):
                r = rbase + ty + TY * q
                for u in range(TU):
                    j = jb + tx + TX * u
                    if r < n and j < N:
                        emit(dst, out, r, j, acc[u], bv[u])
                for a in range(NACC - TU):  # the next row's sums to the front (constant indices)
                    acc[a] = acc[a + TU]
        if NC > 0:
            commit(ids, dst, arena, rbase, n, tid, by)

    return as_kernel(linear_gemm, "linear_gemm")


@lru_cache(maxsize=None)
def make_rowwise(dtype: str, NT: int, SOFTMAX: bool, LOG: bool, SIZE: int, IN0: int, OUT0: int,
                 ACT: int, AA: float, AB: float, LAST: bool, COMMIT: tuple = ()):
    """Activation or (log)softmax layer on rows; one block of NT threads per row (grid n)."""
    dt = np.dtype(dtype).type
    nbt = nbtype(dtype)
    commit = make_commit(dtype, NT, 1, 1, COMMIT)
    NC = len(COMMIT) // 3
    AAc, ABc = dt(AA), dt(AB)

    @jit(device=True)
    def rowwise(bx, by, W, ids, src, dst, out, arena, n):
        r = bx
        tid = cuda.threadIdx.x
        if r < n:
            if SOFTMAX:
                rmax = cuda.shared.array(NT, nbt)
                rsum = cuda.shared.array(NT, float64)
                mx = src[r, IN0]
                for j in range(tid, SIZE, NT):
                    mx = max(mx, src[r, IN0 + j])
                rmax[tid] = mx
                cuda.syncthreads()
                mx = rmax[0]
                for p in range(1, NT):
                    mx = max(mx, rmax[p])
                s = 0.0
                for j in range(tid, SIZE, NT):
                    s += math.exp(src[r, IN0 + j] - mx)
                rsum[tid] = s
                cuda.syncthreads()
                s = 0.0
                for p in range(NT):
                    s += rsum[p]
                if LOG:
                    ls = math.log(s)
                    for j in range(tid, SIZE, NT):
                        y = src[r, IN0 + j] - mx - ls
                        dst[r, OUT0 + j] = y
                        if LAST:
                            out[r, j] = y
                else:
                    for j in range(tid, SIZE, NT):
                        y = math.exp(src[r, IN0 + j] - mx) / s
                        dst[r, OUT0 + j] = y
                        if LAST:
                            out[r, j] = y
            else:
                for j in range(tid, SIZE, NT):
                    y = _act(src[r, IN0 + j], ACT, AAc, ABc)
                    dst[r, OUT0 + j] = y
                    if LAST:
                        out[r, j] = y
            if NC > 0:
                commit(ids, dst, arena, r, n, tid, 0)

    return as_kernel(rowwise, "rowwise")


@lru_cache(maxsize=None)
def make_commit_kernel(dtype: str, NT: int, COMMIT: tuple):
    """Standalone commit (when the last layer is recurrent): one block per row."""
    commit = make_commit(dtype, NT, 1, 1, COMMIT)

    @jit(device=True)
    def commit_kernel(bx, by, W, ids, src, dst, out, arena, n):
        r = bx
        if r < n:
            commit(ids, dst, arena, r, n, cuda.threadIdx.x, 0)

    return as_kernel(commit_kernel, "commit_kernel")


@lru_cache(maxsize=None)
def make_zero_rows(NT: int):
    """``zero_rows(ids, arena, n)``: zero the state rows ``ids[:n]`` (grid n)."""

    @jit()
    def zero_rows(ids, arena, n):
        r = cuda.blockIdx.x
        if r < n:
            sid = ids[r]
            for e in range(cuda.threadIdx.x, arena.shape[1], NT):
                arena[sid, e] = 0

    return zero_rows


@lru_cache(maxsize=None)
def make_copy_rows(NT: int, TO_ARENA: bool):
    """``copy_rows(ids, rows, arena, n)`` (grid n): ``rows[r] = arena[ids[r]]`` (a backup of the
    state rows a call is about to change), or with TO_ARENA the other way (its restore)."""

    @jit()
    def copy_rows(ids, rows, arena, n):
        r = cuda.blockIdx.x
        if r < n:
            sid = ids[r]
            for e in range(cuda.threadIdx.x, arena.shape[1], NT):
                if TO_ARENA:
                    arena[sid, e] = rows[r, e]
                else:
                    rows[r, e] = arena[sid, e]

    return copy_rows
