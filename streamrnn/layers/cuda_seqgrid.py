"""The persistent sequence kernel spread over the whole GPU (numba.cuda), shared by the LSTM and
the GRU (linear_before_reset) layers: ``make_seq_grid`` builds it around a layer's ``gates``
device function (``layers/lstm/cuda.py``: ``make_lstm_seq_grid``; ``layers/gru/cuda.py``:
``make_gru_seq_grid``). The engine picks it for ``run`` / ``push`` of few sequences
(``CudaEngine._grid_cfg``).
"""
from __future__ import annotations

from functools import lru_cache

from numba import cuda

from .cuda_sync import now_ns
from .dense.cuda import jit, nbtype

#: values of h a thread of ``make_seq_grid`` loads before it stores them to shared memory
GRID_HB = 8
#: ... with DYN (groups of up to 32 sequences: 128 values per thread at H=512), at most this
#: many and half a group's values per thread (all of them in flight at once spilled: NOTES 84)
GRID_HB_DYN = 32


@lru_cache(maxsize=None)
def make_seq_grid(dtype: str, NT: int, UPB: int, BMAX: int, H: int, G: int, RT: int, HO: int, CO: int,
                  COL0: int, REV: bool, GRID_SYNC: int, STAMPS: bool, DYN: bool, gates, NAME: str):
    """The recurrence of one direction of a recurrent layer (no projection) for few sequences,
    spread over the whole GPU in the persistent-RNN manner (Diamos et al., ICML 2016); the
    layer kinds differ only in ``gates`` and G (LSTM: ``make_lstm_seq_grid``, 4 gates and a
    cell state; a GRU with linear_before_reset: ``make_gru_seq_grid``, 3 gates).

    ``kernel(W, XW, Y, state, sidx, lens, hbuf, cbuf, bar, B, T, s0, s1, fin)``: grid
    ceil(H / UPB) blocks of NT threads; sequences go through shared memory in groups of BMAX
    (hbuf (2, >= B, H) and cbuf (>= B, H) in global memory hold all of them). Block k owns units
    [k*UPB, (k+1)*UPB) with all G gates: it copies their columns of Rt (H x G*UPB) into
    shared memory once and keeps them there for every step. A step: every block reads the
    whole previous h (B x H) from ``hbuf[s & 1]``, computes its units' gates, writes their new
    h to ``hbuf[(s + 1) & 1]`` (and Y), then the grid synchronises (``GRID_SYNC`` 1: numba's
    cooperative-groups grid sync; 2: a counter in global memory, ``bar`` (zero at launch), that
    every block increments once per step and waits on (``STREAMRNN_CUDA_GRIDSYNC=atomic``, an
    A/B, NOTES entry 53); either way one cooperative launch runs steps s0..s1-1; 0: the caller
    launches one step per call, the kernel boundary being the barrier; the simulator runs grid
    syncs of one block only).
    ``gates(W, XW, row, j, part, pi, hp, cp) -> (c, h)``: unit j's new state from its input
    projections ``XW[row]`` (G*H columns, biases included), the k-slices' partial sums of its
    gate g at ``part[pi + g*UPB + q*BMAX*C]`` (q < KS), its previous h ``hp`` and, where the
    layer has one (CO >= 0), c ``cp``. c (B x H) lives in ``cbuf`` and is read and written only
    by the block owning the unit.
    Step 0 reads h (and c) from ``state[sidx[b]]``; ``fin`` writes the final state back to it
    after the steps (after the last grid sync; the stepwise caller passes it in a launch of its
    own, s0 == s1 == T, so no block reads the state after another wrote it). A sequence past
    its length carries its state unchanged and writes zeros to Y, like ``make_lstm_seq``.

    ``STAMPS`` (benchmarks): thread 0 of block 0 sums the device time of each phase of a step
    (``%globaltimer``) into ``bar``: bar[1] steps, bar[2] loading h, bar[3] the products and
    partial sums, bar[4] the cell updates, bar[5] the grid barrier (``bar`` of >= 6 items,
    zero at launch; bar[0] stays the counter barrier's).

    ``DYN``: the three shared arrays live in the launch's dynamic shared memory
    (``smem_items`` items; the launch passes their bytes and, past 48 KiB, raises the kernel's
    limit), so a group may hold more sequences than numba's 48 KiB of static shared memory
    allow (at H=512: 32 instead of 4; NOTES entry 84).
    """
    nbt = nbtype(dtype)
    GH = G * H
    C = G * UPB  # Rt columns of a block
    KS = NT // C  # k slices
    HAS_C = CO >= 0
    # the shared arrays, flat: Ws (H, C), hs (BMAX, H), part (KS, BMAX, C)
    NWS, NHS, NPART = int(H) * int(C), int(BMAX) * int(H), int(KS) * int(BMAX) * int(C)
    if NT % C or KS < 1:
        raise ValueError(f"{NAME}: expected threads NT a multiple of {G}*UPB, got NT={NT}, UPB={UPB}")
    NIH = -(-(int(BMAX) * int(H)) // int(NT))  # values of h per thread for a group
    HB = min(GRID_HB_DYN, max(1, NIH // 2)) if DYN else min(GRID_HB, NIH)  # ... loaded HB at a time (NOTES 75, 84)

    @jit()
    def seq_grid(W, XW, Y, state, sidx, lens, hbuf, cbuf, bar, B, T, s0, s1, fin):
        tid = cuda.threadIdx.x
        if GRID_SYNC == 2 and T < 0:  # never runs: makes numba launch the kernel cooperatively
            cuda.cg.this_grid().sync()  # (all blocks resident, which the counter barrier needs)
        j0 = cuda.blockIdx.x * UPB
        if DYN:
            dyn = cuda.shared.array(0, nbt)
            Ws = dyn[0:NWS]
            hs = dyn[NWS:NWS + NHS]
            part = dyn[NWS + NHS:NWS + NHS + NPART]
        else:
            Ws = cuda.shared.array(NWS, nbt)  # Rt[k, gate g of unit j0 + u] at [k * C + g*UPB + u]
            hs = cuda.shared.array(NHS, nbt)  # the previous h of a group of sequences, [i * H + k]
            part = cuda.shared.array(NPART, nbt)  # per k slice: partial gate sums, [(ks * BMAX + i) * C + c]
        acc = cuda.local.array(BMAX, nbt)
        hl = cuda.local.array(HB, nbt)  # values of the previous h in flight together
        for e in range(tid, H * C, NT):
            k = e // C
            cc = e - k * C
            g = cc // UPB
            j = j0 + cc - g * UPB
            Ws[k * C + cc] = W[RT + k * GH + g * H + j] if j < H else W[RT] * 0
        ks = tid // C
        cc = tid - ks * C
        stamp = STAMPS and cuda.blockIdx.x == 0 and tid == 0
        tp = now_ns() if stamp else 0
        for s in range(s0, s1):
            p = s & 1
            for b0 in range(0, B, BMAX):  # groups of BMAX sequences share the shared arrays
                nb = min(BMAX, B - b0)
                if s == 0:
                    for e in range(tid, nb * H, NT):
                        i = e // H
                        k = e - i * H
                        hs[i * H + k] = state[sidx[b0 + i], HO + k]
                else:  # HB loads first, then their shared stores: one round trip per HB values,
                    # not one per value (a group of 32 sequences at H=128 is 32 values per thread)
                    for q0 in range(0, NIH, HB):
                        for q in range(HB):
                            e = tid + (q0 + q) * NT
                            if e < nb * H:
                                i = e // H
                                hl[q] = hbuf[p, b0 + i, e - i * H]
                        for q in range(HB):
                            e = tid + (q0 + q) * NT
                            if e < nb * H:
                                i = e // H
                                hs[e] = hl[q]
                cuda.syncthreads()
                if stamp:
                    t = now_ns()
                    bar[2] += t - tp
                    tp = t
                for i in range(BMAX):
                    acc[i] = 0
                for k in range(ks, H, KS):
                    w = Ws[k * C + cc]
                    for i in range(BMAX):  # rows past nb: hs undefined, their sums dropped
                        acc[i] += hs[i * H + k] * w  # (simrace: undefined dropped)
                for i in range(BMAX):
                    part[(ks * BMAX + i) * C + cc] = acc[i]
                cuda.syncthreads()
                if stamp:
                    t = now_ns()
                    bar[3] += t - tp
                    tp = t
                for e in range(tid, nb * UPB, NT):
                    i = e // UPB
                    u = e - i * UPB
                    b = b0 + i
                    j = j0 + u
                    if j < H:
                        cp = hv = hs[i * H + j]  # (cp: a placeholder where the layer has no c)
                        if HAS_C:
                            cp = state[sidx[b], CO + j] if s == 0 else cbuf[b, j]
                        L = lens[b]
                        if s < L:
                            t = L - 1 - s if REV else s
                            row = b * T + t
                            cp, hv = gates(W, XW, row, j, part, i * C + u, hv, cp)
                            Y[row, COL0 + j] = hv
                        else:
                            Y[b * T + s, COL0 + j] = 0
                        if HAS_C:
                            cbuf[b, j] = cp
                        hbuf[1 - p, b, j] = hv
                cuda.syncthreads()  # hs and part are reused by the next group
                if stamp:
                    t = now_ns()
                    bar[4] += t - tp
                    tp = t
            if GRID_SYNC == 1:
                cuda.threadfence()
                cuda.cg.this_grid().sync()
            elif GRID_SYNC == 2:
                cuda.syncthreads()  # the block's h writes are done
                if tid == 0:
                    cuda.threadfence()
                    cuda.atomic.add(bar, 0, 1)
                    target = (s - s0 + 1) * cuda.gridDim.x
                    while cuda.atomic.add(bar, 0, 0) < target:
                        pass
                    cuda.threadfence()
                cuda.syncthreads()
            else:
                cuda.syncthreads()
            if stamp:
                t = now_ns()
                bar[5] += t - tp
                bar[1] += 1
                tp = t
        if fin:
            for e in range(tid, B * UPB, NT):
                b = e // UPB
                j = j0 + e - b * UPB
                if j < H and T > 0:
                    state[sidx[b], HO + j] = hbuf[T & 1, b, j]
                    if HAS_C:
                        state[sidx[b], CO + j] = cbuf[b, j]

    seq_grid.smem_items = NWS + NHS + NPART  # the shared arrays' items (DYN: the launch's)
    return seq_grid

