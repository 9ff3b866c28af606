"""What the per-block sequence kernels share (numba.cuda): ``make_lstm_seq``, ``make_gru_seq``
and ``make_rnn_seq`` give each block NB sequences ``b0 .. b0 + NB - 1`` of the batch and keep
their state rows in shared memory for the whole chunk. The device functions here move those
rows: in from the state arena before the first step, the step's new h into h and into the
outputs Y after each step, back to the arena after the last. The cells' own arithmetic stays in
their files (``layers/<cell>/cuda.py``).
"""
from __future__ import annotations

from functools import lru_cache

from .dense.cuda import jit


@lru_cache(maxsize=None)
def make_rows_io(NT: int, NB: int, W: int, OFF: int, W2: int = 0, OFF2: int = 0):
    """``(load, store)`` of a block's NB state rows: W values at columns OFF : OFF + W of the
    arena ``state`` in ``buf``, and (W2 > 0: the LSTM's c) W2 values at OFF2 : OFF2 + W2 in
    ``buf2`` (NT threads share each row; with W2 = 0 ``buf2`` is not touched).

    ``load(buf, buf2, state, sidx, b0, B, tid)``: ``buf[i, :W] = state[sidx[b0 + i], OFF:OFF + W]``
    (and ``buf2``) for the block's sequences, 0 for rows past the batch (b0 + i >= B).
    ``store(buf, buf2, state, sidx, b0, B, tid)``: the reverse; rows past the batch are not
    stored. Both segments of a row in one pass: one load of its id, and no load of the next
    row waits behind the stores of the second segment (NOTES entry 71).
    """
    TWO = W2 > 0

    @jit(device=True)
    def load(buf, buf2, state, sidx, b0, B, tid):
        for i in range(NB):
            b = b0 + i
            if b < B:
                sid = sidx[b]
                for k in range(tid, W, NT):
                    buf[i, k] = state[sid, OFF + k]
                if TWO:
                    for k in range(tid, W2, NT):
                        buf2[i, k] = state[sid, OFF2 + k]
            else:
                for k in range(tid, W, NT):
                    buf[i, k] = 0
                if TWO:
                    for k in range(tid, W2, NT):
                        buf2[i, k] = 0

    @jit(device=True)
    def store(buf, buf2, state, sidx, b0, B, tid):
        for i in range(NB):
            b = b0 + i
            if b < B:
                sid = sidx[b]
                for k in range(tid, W, NT):
                    state[sid, OFF + k] = buf[i, k]
                if TWO:
                    for k in range(tid, W2, NT):
                        state[sid, OFF2 + k] = buf2[i, k]

    return load, store


@lru_cache(maxsize=None)
def make_seq_commit(NT: int, NB: int, W: int, COL0: int, REV: bool):
    """``commit(h, hn, Y, lens, b0, B, T, s, tid)``: the end of step s of a block's sequences.

    A sequence still running (s < its length) takes its new h (``hn[i, :W]``) into ``h`` and
    writes it to its output row ``Y[b*T + t, COL0 : COL0 + W]`` (t = s, or ``L - 1 - s`` with
    REV: backwards from its last valid step); past its length its h is unchanged and its row
    ``b*T + s`` of Y is written 0. The caller synchronises the block before (hn complete) and
    after (h read by the next step).
    """

    @jit(device=True)
    def commit(h, hn, Y, lens, b0, B, T, s, tid):
        for i in range(NB):
            b = b0 + i
            if b < B:
                L = lens[b]
                if s < L:
                    t = L - 1 - s if REV else s
                    row = b * T + t
                    for k in range(tid, W, NT):
                        v = hn[i, k]
                        h[i, k] = v
                        Y[row, COL0 + k] = v
                else:
                    for k in range(tid, W, NT):
                        Y[b * T + s, COL0 + k] = 0

    return commit
