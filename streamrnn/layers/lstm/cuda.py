"""LSTM kernels (CUDA, numba.cuda): the one-step row-tile kernel of the pool / stream path and
the persistent sequence kernel of ``run`` / ``push``. Same formulae as ``cpu.py``'s ``_lstm_cell``.

See :mod:`streamrnn.layers.dense.cuda` for the row-tile conventions and helpers.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import cuda, int32

from ..cuda_seqblock import make_rows_io, make_seq_commit
from ..dense.cuda import Tile, _act, _clip, as_kernel, jit, make_accum, make_reduce, nbtype, red_size


@lru_cache(maxsize=None)
def make_lstm_cell(dtype: str, H: int, PEEP: int, CLIP: float, IFG: bool, ACTS: tuple):
    """``cell(W, j, gi, go, gf, gc, cp) -> (c_new, h_new)``: the LSTM update of unit j from its
    four gate pre-activations (bias and products included) and its previous cell state cp;
    peepholes at W[PEEP:] (PEEP < 0: none), clip, input-forget coupling and ACTS = (kf, af, bf,
    kg, ag, bg, kh, ah, bh) as in ``cpu.py``'s ``_lstm_cell``. Shared by every LSTM kernel."""
    dt = np.dtype(dtype).type
    kf, af, bf, kg, ag, bg, kh, ah, bh = ACTS
    af, bf, ag, bg, ah, bh = dt(af), dt(bf), dt(ag), dt(bg), dt(ah), dt(bh)
    clip = dt(CLIP)
    HAS_PEEP = PEEP >= 0
    PP = max(PEEP, 0)

    @jit(device=True)
    def cell(W, j, gi, go, gf, gc, cp):
        if HAS_PEEP:
            gi += W[PP + j] * cp
            gf += W[PP + 2 * H + j] * cp
        it = _act(_clip(gi, clip), kf, af, bf)
        if IFG:
            ft = 1.0 - it
        else:
            ft = _act(_clip(gf, clip), kf, af, bf)
        ct = _act(_clip(gc, clip), kg, ag, bg)
        cn = ft * cp + it * ct
        if HAS_PEEP:
            go += W[PP + H + j] * cn
        ot = _act(_clip(go, clip), kf, af, bf)
        return cn, ot * _act(cn, kh, ah, bh)

    return cell


@lru_cache(maxsize=None)
def make_lstm_step(dtype: str, tile: Tile, I: int, H: int, HR: int, IN0: int, OUT0: int,
                   WT: int, RT: int, BO: int, PEEP: int, CLIP: float, IFG: bool, ACTS: tuple,
                   HO: int, CO: int, LAST: bool):
    """One step of one LSTM layer for n rows (streams ``ids``), grid (ceil(n/NR), ceil(H/(U*UPT))).

    Gates of unit j: x @ Wt + h_old @ Rt + b, with x = src[r, IN0:IN0+I] and h_old (HR,) read
    from the state arena (not written here: the new h goes to ``dst[r, OUT0 + j]`` and is
    committed to the arena after every layer ran); the cell state c is updated in place (only
    this thread reads it). With a projection the caller runs ``make_linear`` on dst next.
    ACTS = (kf, af, bf, kg, ag, bg, kh, ah, bh).
    """
    nbt = nbtype(dtype)
    U, KS, RS, RPT, KT, UPT = tile
    NR, UU = RS * RPT, U * UPT
    G4 = 4 * H
    AW = 4
    AWT = UPT * AW
    acc_x = make_accum(tile, I, G4, H, 4, IN0, False, 0, AW, H)
    acc_h = make_accum(tile, HR, G4, H, 4, HO, True, 0, AW, H)
    reduce = make_reduce(tile, AWT)
    RED = red_size(tile, AWT)
    NACC = RPT * AWT
    cell = make_lstm_cell(dtype, H, PEEP, CLIP, IFG, ACTS)

    @jit(device=True)
    def lstm_step(bx, by, W, ids, src, dst, out, arena, n):
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
            for q in range(RPT):
                r = rbase + ty + RS * q
                if r < n:
                    sid = ids[r]
                    for u in range(UPT):
                        j = j0 + u * U
                        if j < H:
                            a0 = q * AWT + u * AW
                            gi = W[BO + j] + acc[a0]
                            go = W[BO + H + j] + acc[a0 + 1]
                            gf = W[BO + 2 * H + j] + acc[a0 + 2]
                            gc = W[BO + 3 * H + j] + acc[a0 + 3]
                            cp = arena[sid, CO + j]
                            cn, hn = cell(W, j, gi, go, gf, gc, cp)
                            arena[sid, CO + j] = cn
                            dst[r, OUT0 + j] = hn
                            if LAST:
                                out[r, j] = hn

    return as_kernel(lstm_step, "lstm_step")


@lru_cache(maxsize=None)
def make_lstm_gemm(dtype: str, gt, I: int, H: int, HR: int, IN0: int, OUT0: int,
                   WT: int, RT: int, BO: int, PEEP: int, CLIP: float, IFG: bool, ACTS: tuple,
                   HO: int, CO: int, LAST: bool, PIPE: bool = True, VEC: bool = False):
    """``make_lstm_step`` as a shared-memory tiled GEMM (see :mod:`streamrnn.layers.cuda_common`):
    same arguments, same results; grid (ceil(n/BM), ceil(H/BU)), gemm_threads(gt) threads.
    A block owns BM rows x BU units with all 4 gates, so the cell update is its epilogue.
    PIPE: the pipelined staging where the tile allows it (``make_gemm_accum``). VEC: the vector
    layout where the tile allows it (``gemm_vec``; the kernel's ``vec`` attribute says which)."""
    from ..cuda_common import gemm_launch_bounds, gemm_vec, make_gemm_coords, make_gemm_passes, make_gemm_row

    nbt = nbtype(dtype)
    BM, BU, TM, TU, KS, BK = gt
    TX = BU // TU
    G4 = 4 * H
    VEC = bool(VEC) and gemm_vec(gt, 4)
    row = make_gemm_row(gt, VEC)
    passes = make_gemm_passes(dtype, gt, (I, G4, H, 4, IN0, False, H, PIPE, VEC),
                              (HR, G4, H, 4, HO, True, H, PIPE, VEC))
    NACC = TM * TU * 4
    coords = make_gemm_coords(gt)
    cell = make_lstm_cell(dtype, H, PEEP, CLIP, IFG, ACTS)
    TU4 = 4 * int(TU)
    QG = int(TM) if TM * TU <= 8 else max(1, 8 // int(TU))  # rows whose state the epilogue loads at once
    QGU = QG * int(TU)

    @jit(device=True)
    def epilogue(W, dst, out, arena, sid, r, j, gi, go, gf, gc, cp):
        # the cell update of row r (state row sid), unit j, from its four gate pre-activations
        cn, hn = cell(W, j, gi, go, gf, gc, cp)
        arena[sid, CO + j] = cn
        dst[r, OUT0 + j] = hn
        if LAST:
            out[r, j] = hn

    @jit(launch_bounds=gemm_launch_bounds(gt, dtype))
    def lstm_gemm(W, ids, src, dst, out, arena, n):
        tid = cuda.threadIdx.x
        tx, ty, ks, jb, rbase = coords(tid)
        acc = cuda.local.array(NACC, nbt)
        bv = cuda.local.array(TU4, nbt)  # the epilogue's biases, state rows and c
        sv = cuda.local.array(QG, int32)
        cv = cuda.local.array(QGU, nbt)
        passes(acc, W, WT, RT, src, arena, ids, rbase, n, jb, tid)
        if ks == 0:
            # every load of the epilogue before its first store: to the compiler a store may
            # alias any later load, so a row's loads would be issued only after the previous
            # row's stores, which wait for its loads (two round trips per row: the state row,
            # then c); loaded first, they are in flight together (NOTES entry 71).
            # Rows in groups of QG (the registers of the many-streams tile hold 8 more values)
            for u in range(TU):
                j = min(jb + tx + TX * u, H - 1)
                for g in range(4):
                    bv[4 * u + g] = W[BO + g * H + j]
            for q0 in range(0, TM, QG):
                for qq in range(QG):
                    sid = ids[min(rbase + row(ty, q0 + qq), n - 1)]
                    sv[qq] = sid
                    for u in range(TU):
                        # clamped: past n or H it loads the c that another thread's epilogue
                        # may be writing, and drops it (no store for that row or unit)
                        cv[qq * TU + u] = arena[sid, CO + min(jb + tx + TX * u, H - 1)]  # (simrace: value unused)
                for qq in range(QG):
                    r = rbase + row(ty, q0 + qq)
                    for u in range(TU):
                        j = jb + tx + TX * u
                        if r < n and j < H:
                            epilogue(W, dst, out, arena, sv[0], r, j, bv[4 * u] + acc[4 * u],
                                     bv[4 * u + 1] + acc[4 * u + 1], bv[4 * u + 2] + acc[4 * u + 2],
                                     bv[4 * u + 3] + acc[4 * u + 3], cv[u])
                    # the next row's gates (state row, c) to the front: every index in this loop
                    # is then a constant and acc stays in registers (indexed by q, LLVM puts it
                    # in local memory and the K loop stores to it every k: NOTES entry 50)
                    for a in range(NACC - 4 * TU):
                        acc[a] = acc[a + 4 * TU]
                    for a in range(QGU - TU):
                        cv[a] = cv[a + TU]
                    for a in range(QG - 1):
                        sv[a] = sv[a + 1]

    lstm_gemm.epilogue_rows = QG  # rows per group of the epilogue's loads (tests)
    lstm_gemm.vec = VEC  # whether the tile took the vector layout (tests, benchmarks)
    return lstm_gemm


@lru_cache(maxsize=None)
def make_lstm_seq(dtype: str, NT: int, NB: int, H: int, HR: int, RT: int, PEEP: int, PROJ: int,
                  CLIP: float, IFG: bool, ACTS: tuple, HO: int, CO: int, COL0: int, REV: bool):
    """The recurrence of one LSTM direction over a whole chunk, persistent over time.

    ``lstm_seq(W, XW, Y, state, sidx, lens, B, T)``: grid ceil(B / NB), NT threads; a block owns
    NB batch entries, keeps their h and c in shared memory for all T steps and reads only the
    precomputed input projections XW (B*T, 4H) (row b*T + t, bias included). Outputs go to
    Y[b*T + t, COL0 : COL0 + HR]; positions past a length are written 0. The final h, c go to
    state[sidx[b]]. REV runs each sequence backwards from its last valid step.
    """
    nbt = nbtype(dtype)
    G4 = 4 * H
    HAS_PROJ = PROJ >= 0
    PJ = max(PROJ, 0)
    TH = H if HAS_PROJ else 1
    NACC = NB * 4
    cell = make_lstm_cell(dtype, H, PEEP, CLIP, IFG, ACTS)
    load_hc, store_hc = make_rows_io(NT, NB, HR, HO, H, CO)
    commit = make_seq_commit(NT, NB, HR, COL0, REV)

    @jit()
    def lstm_seq(W, XW, Y, state, sidx, lens, B, T):
        tid = cuda.threadIdx.x
        b0 = cuda.blockIdx.x * NB
        h = cuda.shared.array((NB, HR), nbt)  # the block's sequences' h
        hn = cuda.shared.array((NB, HR), nbt)  # ... their new h of this step
        c = cuda.shared.array((NB, H), nbt)  # ... their c
        tmp = cuda.shared.array((NB, TH), nbt)  # with a projection: h before it
        acc = cuda.local.array(NACC, nbt)
        load_hc(h, c, state, sidx, b0, B, tid)
        cuda.syncthreads()
        for s in range(T):
            for j in range(tid, H, NT):
                for a in range(NB * 4):
                    acc[a] = 0
                for k in range(HR):
                    wb = RT + k * G4 + j
                    w0 = W[wb]
                    w1 = W[wb + H]
                    w2 = W[wb + 2 * H]
                    w3 = W[wb + 3 * H]
                    for i in range(NB):
                        hv = h[i, k]
                        acc[4 * i] += hv * w0
                        acc[4 * i + 1] += hv * w1
                        acc[4 * i + 2] += hv * w2
                        acc[4 * i + 3] += hv * w3
                for i in range(NB):
                    b = b0 + i
                    if b < B:
                        L = lens[b]
                        if s < L:
                            t = L - 1 - s if REV else s
                            row = b * T + t
                            gi = XW[row, j] + acc[4 * i]
                            go = XW[row, H + j] + acc[4 * i + 1]
                            gf = XW[row, 2 * H + j] + acc[4 * i + 2]
                            gc = XW[row, 3 * H + j] + acc[4 * i + 3]
                            cp = c[i, j]
                            cn, hv = cell(W, j, gi, go, gf, gc, cp)
                            c[i, j] = cn
                            if HAS_PROJ:
                                tmp[i, j] = hv
                            else:
                                hn[i, j] = hv
            cuda.syncthreads()
            if HAS_PROJ:
                for p in range(tid, HR, NT):
                    for i in range(NB):
                        v = W[PJ] * 0
                        for k in range(H):
                            # rows of finished sequences: tmp undefined, hn[i] dropped
                            v += tmp[i, k] * W[PJ + k * HR + p]  # (simrace: undefined dropped)
                        hn[i, p] = v
                cuda.syncthreads()
            commit(h, hn, Y, lens, b0, B, T, s, tid)
            cuda.syncthreads()
        store_hc(h, c, state, sidx, b0, B, tid)

    return lstm_seq


@lru_cache(maxsize=None)
def make_lstm_seq_grid(dtype: str, NT: int, UPB: int, BMAX: int, H: int, RT: int, PEEP: int,
                       CLIP: float, IFG: bool, ACTS: tuple, HO: int, CO: int, COL0: int, REV: bool,
                       GRID_SYNC: int, STAMPS: bool = False, DYN: bool = False):
    """The recurrence of one LSTM direction (no projection) for few sequences, spread over the
    whole GPU in the persistent-RNN manner: :func:`streamrnn.layers.cuda_seqgrid.make_seq_grid`
    with the LSTM's four gates and its cell state (at ``CO`` of a state row; ``cbuf`` holds it
    between steps). Kernel arguments ``(W, XW, Y, state, sidx, lens, hbuf, cbuf, bar, B, T, s0,
    s1, fin)``; XW (B*T, 4H) the input projections, biases included."""
    from ..cuda_seqgrid import make_seq_grid

    C = 4 * UPB
    KS = max(1, NT // C)
    BMC = int(BMAX) * int(C)  # the stride of one k-slice in the partial sums
    cell = make_lstm_cell(dtype, H, PEEP, CLIP, IFG, ACTS)

    @jit(device=True)
    def gates(W, XW, row, j, part, pi, hp, cp):
        gi = XW[row, j]
        go = XW[row, H + j]
        gf = XW[row, 2 * H + j]
        gc = XW[row, 3 * H + j]
        for q in range(KS):
            pq = pi + q * BMC
            gi += part[pq]
            go += part[pq + UPB]
            gf += part[pq + 2 * UPB]
            gc += part[pq + 3 * UPB]
        return cell(W, j, gi, go, gf, gc, cp)

    return make_seq_grid(dtype, NT, UPB, BMAX, H, 4, RT, HO, CO, COL0, REV, GRID_SYNC, STAMPS, DYN, gates,
                         "lstm_seq_grid")


class OnChip:
    """One LSTM layer of the resident one-row step kernel with its weights on chip (see
    ``make_lstm_onchip``): ``init(vb, off, W)`` at the kernel's start, ``body(vb, off, W, ids,
    src, dst, out, arena, n)`` per step, ``words`` dynamic shared-memory items per unit block."""

    def __init__(self, init, body, words: int):
        self.init, self.body, self.words = init, body, words


@lru_cache(maxsize=None)
def make_lstm_onchip(dtype: str, U: int, KS: int, I: int, H: int, HR: int, IN0: int, OUT0: int,
                     WT: int, RT: int, BO: int, PEEP: int, CLIP: float, IFG: bool, ACTS: tuple,
                     HO: int, CO: int, LAST: bool) -> OnChip:
    """One step of one LSTM layer (no projection) for one row, in the resident step kernel
    (:mod:`streamrnn.engine.persist`): unit block ``vb`` < ceil(H / U) computes units
    [vb*U, vb*U + U) from their columns of ``[Wt ; Rt]`` (K = I + HR rows, 4*U columns: gate g
    of unit u at column g*U + u, rows padded to 4*U + 1 items against bank conflicts), which
    ``init`` loaded once into the kernel's dynamic shared memory at item ``off`` of the block
    that owns ``vb`` for the kernel's life; the step's scratch (``[x | h_old]``, K items, and
    the partial sums, KS*4*U) follows them (dynamic memory too: static shared arrays of two
    such layers would alias in the CUDA simulator, which keys them by source line).

    A step: the row's ``[x | h_old]`` staged in shared memory; thread (u, ks) of U*KS sums the
    four gates of unit u over k = ks, ks + KS, ...; the KS partial sums are reduced through
    shared memory and thread (u, 0) applies the cell (``make_lstm_cell``) as ``make_lstm_step``
    does: c updated in the arena, the new h to ``dst[0, OUT0 + j]`` (and ``out`` if LAST).
    Same results as ``make_lstm_step`` up to the order of the sums.
    """
    nbt = nbtype(dtype)
    NT = U * KS
    K = I + HR
    C = 4 * U
    LDS = C + 1
    G4 = 4 * H
    cell = make_lstm_cell(dtype, H, PEEP, CLIP, IFG, ACTS)

    @jit(device=True)
    def init(vb, off, W):
        Ws = cuda.shared.array(0, nbt)
        tid = cuda.threadIdx.x
        j0 = vb * U
        for e in range(tid, K * C, NT):
            k = e // C
            cc = e - k * C
            g = cc // U
            j = j0 + cc - g * U
            w = W[BO] * 0
            if j < H:
                if k < I:
                    w = W[WT + k * G4 + g * H + j]
                else:
                    w = W[RT + (k - I) * G4 + g * H + j]
            Ws[off + k * LDS + cc] = w

    @jit(device=True)
    def body(vb, off, W, ids, src, dst, out, arena, n):
        Ws = cuda.shared.array(0, nbt)  # weights at off, then [x | h_old] at XO, partial sums at RO
        XO = off + K * LDS
        RO = XO + K
        tid = cuda.threadIdx.x
        tx = tid % U
        ks = tid // U
        sid = ids[0]
        for k in range(tid, I, NT):
            Ws[XO + k] = src[0, IN0 + k]
        for k in range(tid, HR, NT):
            Ws[XO + I + k] = arena[sid, HO + k]
        cuda.syncthreads()
        ai = W[BO] * 0
        ao = ai
        af = ai
        ac = ai
        for k in range(ks, K, KS):
            x = Ws[XO + k]
            b = off + k * LDS + tx
            ai += x * Ws[b]
            ao += x * Ws[b + U]
            af += x * Ws[b + 2 * U]
            ac += x * Ws[b + 3 * U]
        r = RO + ks * C + tx
        Ws[r] = ai
        Ws[r + U] = ao
        Ws[r + 2 * U] = af
        Ws[r + 3 * U] = ac
        cuda.syncthreads()
        j = vb * U + tx
        if ks == 0 and j < H:
            gi = W[BO + j]
            go = W[BO + H + j]
            gf = W[BO + 2 * H + j]
            gc = W[BO + 3 * H + j]
            for q in range(KS):
                r = RO + q * C + tx
                gi += Ws[r]
                go += Ws[r + U]
                gf += Ws[r + 2 * U]
                gc += Ws[r + 3 * U]
            cn, hn = cell(W, j, gi, go, gf, gc, arena[sid, CO + j])
            arena[sid, CO + j] = cn
            dst[0, OUT0 + j] = hn
            if LAST:
                out[0, j] = hn

    return OnChip(init, body, K * LDS + K + KS * C)
