"""CPU engine: whole-stack kernels built from the per-layer cells.

* ``_stream_step``  one stream, one frame, every layer, in one compiled call (the real-time path);
* ``_pool_step``  a few streams of a state arena, one after the other (``BatchedStep`` below: many);
* ``run_sequence``  a (B, T, I) chunk: per layer, the input projection of every step as one GEMM
  (numpy / BLAS), then the recurrence (``_recur_seq``), also serving ragged ``lengths`` and
  reverse / bidirectional layers (the ONNX Runtime / DeepCPU design).

Kernels return an int status (0 = ok) instead of raising, so a refused call is cheap and leaves
every state untouched: inputs are validated before any state is written.
"""
from __future__ import annotations

import math
import threading

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

from .. import config
from ..config import NJIT, NJIT_GIL, NJIT_INLINE, PARALLEL
from ..layers.cpu_common import ACC, BIAS, REC_DONE, REC_FWD, ZERO, _all_finite, _gemm_pan6, _matvec_acc, _matvec_h, _vact
from ..layers.dense.cpu import _frame_layer, _frame_rows
from ..layers.gru.cpu import _gru_cell, _gru_gates
from ..layers.lstm.cpu import _lstm_cell, _lstm_gates, _lstm_plain, _lstm_plain_gates
from ..layers.rnn.cpu import _rnn_cell, _rnn_gates
from . import team
from .pack import (
    DENSE, F_LBR, F_PROJ, GRU, K_ACT, K_CELL, K_DIR, K_FAST, K_FEAT, K_FLAGS, K_H, K_IN, K_OUT, K_PAN, K_REC, K_S, LSTM,
    NMETA, O_B, O_C, O_H, O_PAR, O_RT, O_WT, PW, RNN, Packed, _aligned, column_panels,
)

# status codes (low 8 bits; the row / column index is in the bits above)
OK, E_XLEN, E_OUTLEN, E_NONFINITE, E_ID_RANGE, E_ID_CLOSED, E_ID_DUP = 0, 1, 2, 3, 4, 5, 6

_GATES = (4, 3, 1)  # LSTM, GRU, RNN


_NO_H = np.zeros(1, np.uint16)  # "no bfloat16 weights": the mat-vecs read W


@njit(**NJIT_INLINE)
def _cell(W, Wh, m, d, g, st, scr, G, rec):
    """Run the cell of recurrent layer row ``m``, direction ``d``; g holds x @ Wt + b; ``rec``:
    whether the cell computes h @ Rt (``REC_FWD``) or it was added by ``_rec_rev`` (``REC_DONE``)."""
    kind, H, base = m[0], m[K_H], K_DIR + 9 * d
    ho = m[base + O_H]
    h = st[ho : ho + m[K_REC]]
    if kind == LSTM:
        co = m[base + O_C]
        _lstm_cell(W, Wh, m, d, g, h, st[co : co + H], rec)
    elif kind == GRU:
        _gru_cell(W, Wh, m, d, g, h, scr[G : G + 3 * H], rec)
    else:
        _rnn_cell(W, Wh, m, d, g, h, rec)


#: matrices above this many bytes are read in alternating order (rows or panels) between steps
ZIG_MIN_BYTES = 1 << 20


@njit(**NJIT_INLINE)
def _zig(W, Wh, m, d, G):
    """True where direction d's recurrent matrix is larger than ``ZIG_MIN_BYTES``: its steps
    may alternate the order in which they read it (``_matvec_h`` with ``rev``).
    A recurrence reading a matrix larger than L2 front to back every step finds none of it in
    L2 (the end of one pass evicted the start); reading it back to front every other step
    starts on the rows read last. Measured B=1 T=1000 H=512 LSTM: 158 -> ~117 us per step
    (bench/NOTES.md, entry 32). GRU only with linear_before_reset (else r gates the product)."""
    if m[0] == GRU and (m[K_FLAGS] & F_LBR) == 0:
        return False
    return m[K_REC] * G * _wbytes(W, Wh) > ZIG_MIN_BYTES


@njit(**NJIT_INLINE)
def _wbytes(W, Wh):
    """Bytes per weight the mat-vecs read: 2 for bfloat16 weights, else W's item size."""
    return 2 if Wh.shape[0] > 1 else W.itemsize


@njit(**NJIT_INLINE)
def _rec_rev(W, Wh, m, d, g, st, scr, G):
    """The recurrent product of ``_cell`` read back to front: g += h @ Rt (LSTM, RNN) or
    scr[G : G+3H] = h @ Rt (GRU with linear_before_reset). Then ``_cell`` with ``REC_DONE``."""
    base = K_DIR + 9 * d
    ho = m[base + O_H]
    h = st[ho : ho + m[K_REC]]
    if m[0] == GRU:
        hr = scr[G : G + G]
        for j in range(G):
            hr[j] = 0.0
        _matvec_h(W, Wh, m[base + O_RT], m[K_PAN + 2 * d + 1], m[K_H], G, 0, G, h, hr, 0, True)
    else:
        _matvec_h(W, Wh, m[base + O_RT], m[K_PAN + 2 * d + 1], m[K_REC], G, 0, G, h, g, 0, True)


@njit(**NJIT_INLINE)
def _stack_core(x, out, st, scr, W, Wh, meta, rev):
    """Every layer on one frame of one stream. st (S,) state, scr scratch (see pack.py).
    ``rev``: read the large matrices back to front in this step (see ``_zig``; callers
    alternate it between consecutive steps of a stream)."""
    cell, feat = meta[0, K_CELL], meta[0, K_FEAT]
    cur = x
    ping = 0
    for li in range(meta.shape[0]):
        m = meta[li]
        kind = m[0]
        if kind <= RNN:
            G = (4 if kind == LSTM else 3 if kind == GRU else 1) * m[K_H]
            g = scr[0:G]
            bias = W[m[K_DIR + O_B] :][:G]  # sliced, not W[b + j]: see _gates_row
            for j in range(G):
                g[j] = bias[j]
            # a reversed step reads Rt back to front first: the previous step ended on its last rows.
            # One call site per kernel (each inlined site is compiled again: NOTES entry 34)
            # direction 0 as an int64, not a literal 0: the cell kernels then share one compiled
            # specialisation with _recur_one's (d a variable); LLVM still folds it (NOTES 56)
            d0 = kind * 0
            zig = rev and _zig(W, Wh, m, d0, G)
            if zig:
                _rec_rev(W, Wh, m, d0, g, st, scr, G)
            I = m[K_IN]
            back = zig and I * G * _wbytes(W, Wh) > ZIG_MIN_BYTES  # a large Wt: back to front too
            _matvec_h(W, Wh, m[K_DIR + O_WT], m[K_PAN], I, G, 0, G, cur, g, 0, back)  # g += x @ Wt
            _cell(W, Wh, m, d0, g, st, scr, G, REC_DONE if zig else REC_FWD)
            ho = m[K_DIR + O_H]
            cur = st[ho : ho + m[K_REC]]  # the layer's output is its new h
        else:
            o = cell + ping * feat
            y = scr[o : o + m[K_OUT]]
            _frame_layer(W, m, cur, y)
            cur = y
            ping ^= 1
    for j in range(out.shape[0]):
        out[j] = cur[j]


@njit(**NJIT_INLINE)
def _check_frame(x, n):
    """OK, or E_NONFINITE | (index << 8) for the first NaN / Inf of x[:n]."""
    bad = 0
    for k in range(n):  # an integer OR-reduction: vectorises (x - x is NaN for NaN and Inf)
        bad |= (x[k] - x[k]) != 0
    if bad:
        for k in range(n):
            if not math.isfinite(x[k]):
                return E_NONFINITE | (k << 8)
    return OK


@njit(**NJIT)
def _stream_step(x, out, sbuf, W, meta):
    """One stream, one frame. sbuf = [state (S) | scratch]. Returns a status (0 = ok)."""
    return _stream_step_impl(x, out, sbuf, W, _NO_H, meta)


@intrinsic
def _view(typingctx, addr, n, like):
    """A 1-D C-contiguous array of ``like``'s dtype over the ``n`` elements at the integer
    address ``addr`` (no owner: the caller keeps the memory alive). numba's own ``carray`` may
    not be used here: it counts as returning a new array, which needs NRT (off, config.py)."""
    if addr != types.int64 or n != types.int64 or not isinstance(like, types.Array):
        return None
    aty = types.Array(like.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        a, nv = args[0], args[1]
        lty = context.get_value_type(like.dtype)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(lty))
        ary = context.make_array(aty)(context, builder)
        populate_array(ary, data=builder.inttoptr(a, lty.as_pointer()), shape=[nv], strides=[itemsize],
                       itemsize=itemsize, meminfo=None)
        return ary._getvalue()

    return aty(addr, n, like), codegen


def step_context(sbuf: np.ndarray, W: np.ndarray, meta: np.ndarray) -> np.ndarray:
    """The int64 array ``stream_step_gil(dtype)`` takes in place of its three buffers: their
    addresses and sizes. The caller keeps the buffers alive (and never replaces them) while it
    uses it."""
    assert sbuf.flags.c_contiguous and W.flags.c_contiguous and meta.flags.c_contiguous
    assert sbuf.dtype == W.dtype and meta.dtype == np.int64 and meta.shape[1] == NMETA
    return np.array([sbuf.ctypes.data, sbuf.size, W.ctypes.data, W.size, meta.ctypes.data, meta.shape[0]],
                    np.int64)


@njit(**NJIT_INLINE)
def _stream_step_ctx(x, out, ctx):
    sbuf = _view(ctx[0], ctx[1], x)  # (S + scratch,) the stream's state and scratch
    W = _view(ctx[2], ctx[3], x)  # the model's packed weights
    meta = _view(ctx[4], ctx[5] * NMETA, ctx).reshape(ctx[5], NMETA)  # (L, NMETA)
    return _stream_step_impl(x, out, sbuf, W, _NO_H, meta)


@njit(**NJIT_GIL)
def _stream_step_gil32(x, out, ctx):
    """As ``_stream_step`` for a float32 model, holding the GIL: for small models the GIL
    itself serialises calls on one stream, which saves the lock (~0.15-0.25 us of a ~2 us
    step). The stream's buffers come as addresses (``step_context``): numba's dispatcher spends
    ~60 ns on each array argument it types and unboxes, and this call is the whole cost of a
    small step (bench/NOTES.md, entry 27). One kernel per dtype, compiled for that dtype only,
    so x and out of another dtype are refused by the dispatcher (TypeError) and never read as
    the weights' dtype."""
    return _stream_step_ctx(x, out, ctx)


@njit(**NJIT_GIL)
def _stream_step_gil64(x, out, ctx):
    """``_stream_step_gil32`` for float64 models."""
    return _stream_step_ctx(x, out, ctx)


def step_group(pk: Packed) -> str:
    """The compile group of the one-stream step kernel a model's streams use: "step_gil"
    (``stream_step_gil``) for models of at most ``config.GIL_STEP_MAX_WEIGHTS`` weights, "step"
    (``_stream_step``, GIL released) above; with bfloat16 weights "bfloat16_gil" /
    "bfloat16" (``_stream_step_gil_h`` / ``_stream_step_h``, and the push kernel)."""
    gil = pk.W.size <= config.GIL_STEP_MAX_WEIGHTS
    if pk.Wh.shape[0] > 1:
        return "bfloat16_gil" if gil else "bfloat16"
    return "step_gil" if gil else "step"


def stream_step_gil(dtype):
    """The GIL-held one-stream step kernel of models of ``dtype`` (see ``_stream_step_gil32``)."""
    return _stream_step_gil32 if np.dtype(dtype) == np.float32 else _stream_step_gil64


@njit(**NJIT)
def _stream_step_h(x, out, sbuf, W, Wh, meta):
    """As ``_stream_step`` for bfloat16 weights (``Wh``)."""
    return _stream_step_impl(x, out, sbuf, W, Wh, meta)


@njit(**NJIT_GIL)
def _stream_step_gil_h(x, out, sbuf, W, Wh, meta):
    """As ``_stream_step_gil`` for bfloat16 weights (``Wh``)."""
    return _stream_step_impl(x, out, sbuf, W, Wh, meta)


@njit(**NJIT_INLINE)
def _stream_step_impl(x, out, sbuf, W, Wh, meta):
    I, O, S = meta[0, K_IN], meta[meta.shape[0] - 1, K_OUT], meta[0, K_S]
    if x.shape[0] != I:
        return E_XLEN
    if out.shape[0] != O:
        return E_OUTLEN
    rc = _check_frame(x, I)
    if rc != OK:
        return rc
    # sbuf = [state (S) | scratch | row-order flag of the next step (see _zig)]
    last = sbuf.shape[0] - 1
    rev = sbuf[last] != 0
    _stack_core(x, out, sbuf[:S], sbuf[S:last], W, Wh, meta, rev)
    sbuf[last] = 0.0 if rev else 1.0
    return OK


@njit(**NJIT)
def _stream_push(X, Y, sbuf, W, meta):
    """One stream, T frames stepped in order (the chunk path for small chunks)."""
    return _stream_push_impl(X, Y, sbuf, W, _NO_H, meta)


@njit(**NJIT)
def _stream_push_h(X, Y, sbuf, W, Wh, meta):
    """As ``_stream_push`` for bfloat16 weights (``Wh``)."""
    return _stream_push_impl(X, Y, sbuf, W, Wh, meta)


@njit(**NJIT_INLINE)
def _stream_push_impl(X, Y, sbuf, W, Wh, meta):
    I, O, S = meta[0, K_IN], meta[meta.shape[0] - 1, K_OUT], meta[0, K_S]
    if X.shape[1] != I:
        return E_XLEN
    if Y.shape[1] != O or Y.shape[0] != X.shape[0]:
        return E_OUTLEN
    for t in range(X.shape[0]):
        rc = _check_frame(X[t], I)
        if rc != OK:
            return rc | (t << 40)
    for t in range(X.shape[0]):
        _stack_core(X[t], Y[t], sbuf[:S], sbuf[S:], W, Wh, meta, (t & 1) != 0)
    return OK


@njit(**NJIT)
def _pool_check(ids, X, out, alive, stamp, epoch, I, O):
    n = ids.shape[0]
    if X.shape[0] != n or X.shape[1] != I:
        return E_XLEN
    if out.shape[0] != n or out.shape[1] != O:
        return E_OUTLEN
    # every frame in one vectorised pass first (NOTES entry 49); rows are looked at one by one
    # only if it fails
    finite = _all_finite(X.reshape(n * I), n * I)
    cap = alive.shape[0]
    for r in range(n):
        sid = ids[r]
        if sid < 0 or sid >= cap:
            return E_ID_RANGE | (r << 8)
        if alive[sid] == 0:
            return E_ID_CLOSED | (r << 8)
        if stamp[sid] == epoch:
            return E_ID_DUP | (r << 8)
        stamp[sid] = epoch
        if not finite and _check_frame(X[r], I) != OK:
            return E_NONFINITE | (r << 8)
    return OK


@njit(**NJIT)
def _pool_step(ids, X, out, arena, scr, W, Wh, meta, alive, stamp, epoch):
    """Streams ``ids`` of the state arena (cap, S) advance one frame each, serially."""
    rc = _pool_check(ids, X, out, alive, stamp, epoch, meta[0, K_IN], meta[meta.shape[0] - 1, K_OUT])
    if rc != OK:
        return rc
    for r in range(ids.shape[0]):
        _stack_core(X[r], out[r], arena[ids[r]], scr[0], W, Wh, meta, False)
    return OK


@njit(**NJIT_INLINE)
def _recur_one(b, XW, Y, col0, lengths, state, W, m, d, rev, scr):
    n = lengths[b]
    G = XW.shape[2]
    st = state[b]
    g = scr[b, :G]
    base = K_DIR + 9 * d
    ho, Hr = m[base + O_H], m[K_REC]
    h = st[ho : ho + Hr]
    zig = _zig(W, _NO_H, m, d, G)  # every other step reads Rt back to front
    for s in range(n):
        t = n - 1 - s if rev else s
        for j in range(G):
            g[j] = XW[b, t, j]
        back = zig and s & 1
        if back:
            _rec_rev(W, _NO_H, m, d, g, st, scr[b], G)
        _cell(W, _NO_H, m, d, g, st, scr[b], G, REC_DONE if back else REC_FWD)
        for j in range(h.shape[0]):
            Y[b, t, col0 + j] = h[j]


@njit(**NJIT)
def _recur_seq(XW, Y, col0, lengths, state, W, m, d, rev, scr):
    """The recurrence of one layer direction over a chunk. XW (B, T, G) = X @ Wt + b (precomputed),
    Y (B, T, F) output (columns col0 : col0 + Hr), state (B, S) updated in place."""
    for b in range(XW.shape[0]):
        _recur_one(b, XW, Y, col0, lengths, state, W, m, d, rev, scr)


@njit(**PARALLEL)
def _recur_seq_par(XW, Y, col0, lengths, state, W, m, d, rev, scr):
    """As ``_recur_seq``, parallel over the batch."""
    for b in prange(XW.shape[0]):
        _recur_one(b, XW, Y, col0, lengths, state, W, m, d, rev, scr)


# ---------------------------------------------------------------------------------------------
# Compilation at load time (explicit signatures; numba's cache makes later loads fast)
# ---------------------------------------------------------------------------------------------
_compiled: set = set()
_compile_lock = threading.Lock()


def _sigs(dt, group: str):
    f = types.float32 if dt == np.float32 else types.float64
    v, m2, m3 = f[::1], f[:, ::1], f[:, :, ::1]
    i1, i2 = types.int64[::1], types.int64[:, ::1]
    # Wh (bfloat16 bits) read-only: the type of pack.py's arrays and of the in-kernel _NO_H
    u1, i64, h1 = types.uint8[::1], types.int64, types.Array(types.uint16, 1, "C", readonly=True)
    im = types.int64[::1]
    groups = {
        # a model compiles "stream" (pushes of long chunks) and the group of its streams
        # (``step_group``): the one-stream step kernel of its size and weights and the push
        # kernel of short chunks with the same weights (each ~3 s with a cold cache)
        "step_gil": {stream_step_gil(dt): (v, v, i1), _stream_push: (m2, m2, v, v, i2)},
        "step": {_stream_step: (v, v, v, v, i2), _stream_push: (m2, m2, v, v, i2)},
        "bfloat16": {_stream_step_h: (v, v, v, v, h1, i2), _stream_push_h: (m2, m2, v, v, h1, i2)},
        "bfloat16_gil": {_stream_step_gil_h: (v, v, v, v, h1, i2), _stream_push_h: (m2, m2, v, v, h1, i2)},
        "stream": {
            _recur_seq: (m3, m3, i64, i1, m2, v, im, i64, types.boolean, m2),
            _frame_rows: (v, im, m2, m2),
        },
        # a pool's model has compiled its "stream" and step groups already (pool.push)
        "pool": {
            _pool_step: (i1, m2, m2, m2, m2, v, h1, i2, u1, i1, i64),
            _pool_validate: (i1, m2, m2, u1, i1, i64, i64, i64),
            # BatchedStep: float32 steps on the column panels (_rec_rows), float64 on BLAS + these
            # elementwise kernels; each dtype compiles only its own (a cold pool compiles ~10 s less)
            **({
                _rec_rows: (i1, m2, m2, m2, v, im, v, i64, i64, i64, i64, v, v, v, i64),
                _team: (i1, i1, i1, m2, m2, i64, i64, i64, i64, i64, v),
                team._spin: (i1, i64),
                team._stop: (i1,),
            } if dt == np.float32 else {
                _gather_h: (i1, m2, m2, i64, i64, i64),
                _gather_xh: (i1, m2, m2, m2, i64, i64),
                _gates_rows_par: (i1, m2, m2, m2, m2, v, im),
                _gates_rows: (i1, m2, m2, m2, m2, v, im),
                _bias_act_rows: (m2, v, im),
            }),
        },
        "run": {
            _recur_seq: (m3, m3, i64, i1, m2, v, im, i64, types.boolean, m2),
            _recur_seq_par: (m3, m3, i64, i1, m2, v, im, i64, types.boolean, m2),
            _frame_rows: (v, im, m2, m2),
        },
    }
    return groups[group]


def compile_for(dtype, group: str = "stream") -> None:
    """Compile (or load from numba's cache) the CPU kernels of ``group`` ("stream", "step_gil",
    "step", "bfloat16", "bfloat16_gil", "pool", "run") for ``dtype``. Idempotent; called when a model, pool or
    first run is set up, so no real-time frame ever waits for the compiler."""
    dt = np.dtype(dtype).type
    if (dt, group) in _compiled:
        return
    with _compile_lock:
        if (dt, group) in _compiled:
            return
        for fn, sig in _sigs(dt, group).items():
            fn._can_compile = True
            fn.compile(sig)
            # No compilation on the hot path: a call with other types raises TypeError, which
            # the callers catch to convert their arguments (or refuse them) and retry.
            fn.disable_compile()
        _compiled.add((dt, group))


# ---------------------------------------------------------------------------------------------
# Sequence orchestration (Python over layers, compiled over time and batch)
# ---------------------------------------------------------------------------------------------
def push_chunk(pk: Packed, X: np.ndarray, sbuf: np.ndarray) -> tuple[int, np.ndarray]:
    """One stream advances a chunk X (T, I): (status, Y (T, O)); the state sbuf[:S] is updated
    only on success. Short chunks step frame by frame; long ones take the ``run`` path (input
    projection of the whole chunk as one GEMM)."""
    T, S = X.shape[0], pk.state_size
    if T < PUSH_GEMM_MIN_FRAMES or X.shape[1] != pk.meta[0, K_IN]:
        Y = np.empty((T, int(pk.meta[-1, K_OUT])), pk.W.dtype)
        if pk.Wh.shape[0] > 1:
            return _stream_push_h(X, Y, sbuf, pk.W, pk.Wh, pk.meta), Y
        return _stream_push(X, Y, sbuf, pk.W, pk.meta), Y
    finite = np.isfinite(X).all(axis=1)  # (T,)
    if not finite.all():
        return E_NONFINITE | (int(np.argmin(finite)) << 40), X
    st = sbuf[:S].reshape(1, S)  # a view: run_sequence updates the state in place
    Y = run_sequence(pk, X[None], np.array([T], np.int64), st, parallel=False)
    return OK, Y[0]


#: chunks of at least this many frames go through the GEMM (run) path in push
PUSH_GEMM_MIN_FRAMES = 8


def run_sequence(pk: Packed, X: np.ndarray, lengths: np.ndarray, state: np.ndarray, parallel: bool = True) -> np.ndarray:
    """X (B, T, I) C-contiguous, lengths (B,) int64, state (B, S) updated in place -> Y (B, T, O).

    Inputs must be validated by the caller (shapes, finiteness, lengths in [0, T]).
    Outputs past a sequence's length are zero.
    """
    W, meta = pk.W, pk.meta
    B, T, _ = X.shape
    cur = X
    par = parallel and B > 1
    for li in range(meta.shape[0]):
        m = meta[li]
        kind = int(m[0])
        if kind <= RNN:
            H, Hr, D = int(m[K_H]), int(m[K_REC]), int(m[5])
            G = _GATES[kind] * H
            I = int(m[K_IN])
            Y = np.zeros((B, T, D * Hr), dtype=W.dtype)
            scr = np.empty((B, pk.cell_scratch), dtype=W.dtype)
            rev0 = bool(m[6])
            for d in range(D):
                base = K_DIR + 9 * d
                wt = W[m[base + O_WT] : m[base + O_WT] + I * G].reshape(I, G)  # (I, G)
                bias = W[m[base + O_B] : m[base + O_B] + G]
                XW = cur.reshape(B * T, I) @ wt  # (B*T, G): the input projection, one GEMM
                XW += bias
                fn = _recur_seq_par if par else _recur_seq
                fn(XW.reshape(B, T, G), Y, d * Hr, lengths, state, W, m, d, rev0 or d == 1, scr)
            cur = Y
        else:
            O = int(m[K_OUT])
            Y = np.empty((B * T, O), dtype=W.dtype)
            _frame_rows(W, m, np.ascontiguousarray(cur.reshape(B * T, cur.shape[2])), Y)  # (B*T, O)
            cur = Y.reshape(B, T, O)
    if np.any(lengths < T):
        mask = np.arange(T)[None, :] >= lengths[:, None]  # (B, T)
        cur = np.ascontiguousarray(cur)
        cur[mask] = 0
    return cur


# ---------------------------------------------------------------------------------------------
# Many streams, batched: per layer one BLAS GEMM over all listed streams + fused elementwise
# ---------------------------------------------------------------------------------------------
@njit(**NJIT)
def _pool_validate(ids, X, out, alive, stamp, epoch, I, O):
    """The checks of ``_pool_step`` alone (nothing is written but the duplicate stamps)."""
    return _pool_check(ids, X, out, alive, stamp, epoch, I, O)


@njit(**NJIT)
def _gather_xh(ids, X, arena, A, ho, Hr):
    """A[r] = [X[r] | h of stream ids[r]]: the left operand of the batched GEMM, in one pass."""
    I = X.shape[1]
    for r in range(ids.shape[0]):
        a = A[r]
        x = X[r]
        for j in range(I):
            a[j] = x[j]
        src, ah = arena[ids[r]][ho : ho + Hr], a[I : I + Hr]
        for j in range(Hr):
            ah[j] = src[j]


@njit(**NJIT)
def _gather_h(ids, arena, A, col0, ho, Hr):
    """A[r, col0 : col0+Hr] = h of stream ids[r] (read from the arena)."""
    for r in range(ids.shape[0]):
        src, ah = arena[ids[r]][ho : ho + Hr], A[r, col0 : col0 + Hr]
        for j in range(Hr):
            ah[j] = src[j]


@njit(**NJIT)
def _gates_one(r, ids, G, HR, Y, arena, W, m):
    """Row r of a batched step: G[r] = x @ Wt (+ h @ Rt for LSTM / RNN), HR[r] = h @ Rt for
    GRU with linear_before_reset (else scratch); updates the state arena[ids[r]], Y[r] = h."""
    g = G[r]
    # a slice indexed by the bare loop variable: W[b + j] would keep numba's negative-index
    # wrap-around (b is not known to be >= 0) and stop vectorisation (NOTES entry 26)
    bias = W[m[K_DIR + O_B] :][: g.shape[0]]
    for j in range(g.shape[0]):
        g[j] += bias[j]
    _gates_row(ids[r], g, HR[r], Y[r], arena, W, m)


@njit(**NJIT)
def _gates_row(sid, g, hr, y, arena, W, m):
    """As ``_gates_one`` for stream ``sid`` given its row vectors g (bias included), hr
    (scratch) and y."""
    kind, H, Hr = m[0], m[K_H], m[K_REC]
    ho = m[K_DIR + O_H]
    st = arena[sid]
    h = st[ho : ho + Hr]
    d0 = kind * 0  # direction 0 as an int64: the cells' specialisation of the stream path (NOTES 56)
    if kind == LSTM:
        co = m[K_DIR + O_C]
        _lstm_gates(W, m, d0, g, h, st[co : co + H])
    elif kind == GRU:
        if m[K_FLAGS] & F_LBR:
            _gru_gates(W, m, d0, g, h, hr)
        else:  # r multiplies h before Rh: the per-row cell does the recurrence
            # rec an int64, as the stream path's _cell passes it on to _rec_product (one
            # specialisation of that kernel, not one more for a literal)
            _gru_cell(W, _NO_H, m, d0, g, h, hr, d0 + REC_FWD)
    else:
        _rnn_gates(W, m, d0, g, h)
    for j in range(Hr):
        y[j] = h[j]


@njit(**NJIT)
def _rec_rows(ids, X, Y, arena, W, m, P, pw, pr, r0, r1, A, G, HR, ch):
    """Rows r0..r1 of a batched step of recurrent layer ``m`` on column panels (P[pw:] of Wt,
    P[pr:] of Rt), ``ch`` rows at a time: gather [x | h] into A, the GEMM panel by panel in
    6-row x 64-column register tiles (the bias as the accumulators' start), the columns past the
    last whole panel by mat-vec, then each row's gates (state arena[ids[r]] and Y[r] updated).
    A, G, HR: this thread's flat scratch."""
    kind, I, H, Hr = m[0], m[K_IN], m[K_H], m[K_REC]
    Gw = (4 if kind == LSTM else 3 if kind == GRU else 1) * H
    lbr = kind == GRU and (m[K_FLAGS] & F_LBR) != 0
    ho, wt, rt, ob = m[K_DIR + O_H], m[K_DIR + O_WT], m[K_DIR + O_RT], m[K_DIR + O_B]
    # the common LSTM: its gates straight on the state, no per-row dispatch
    plain = kind == LSTM and (m[K_FLAGS] & F_PROJ) == 0 and _lstm_plain(m, kind * 0)
    co = m[K_DIR + O_C]
    bias = W[ob:][:Gw]
    lda = I + Hr
    npan = Gw // PW
    done = npan * PW
    for c0 in range(r0, r1, ch):
        n = min(r1, c0 + ch) - c0
        _gather_xh(ids[c0 : c0 + n], X[c0 : c0 + n], arena, A[: n * lda].reshape(n, lda), ho, Hr)
        _gemm_pan6(A, lda, 0, I, P, pw, npan, G, Gw, n, BIAS, W, ob)  # G = x @ Wt + b
        if kind != GRU:
            _gemm_pan6(A, lda, I, Hr, P, pr, npan, G, Gw, n, ACC, W, 0)  # G += h @ Rt
        elif lbr:
            _gemm_pan6(A, lda, I, Hr, P, pr, npan, HR, Gw, n, ZERO, W, 0)  # HR = h @ Rt
        for i in range(n if done < Gw else 0):  # columns past the last whole panel
            g, hr = G[i * Gw : (i + 1) * Gw], HR[i * Gw : (i + 1) * Gw]
            x, h = A[i * lda : i * lda + I], A[i * lda + I : (i + 1) * lda]
            for j in range(done, Gw):
                g[j] = bias[j]
            _matvec_acc(W, wt, I, Gw, done, Gw - done, x, g, done)
            if kind != GRU:
                _matvec_acc(W, rt, Hr, Gw, done, Gw - done, h, g, done)
            elif lbr:
                for j in range(done, Gw):
                    hr[j] = 0.0
                _matvec_acc(W, rt, Hr, Gw, done, Gw - done, h, hr, done)
        for i in range(n):
            g = G[i * Gw : (i + 1) * Gw]
            if plain:
                st, y = arena[ids[c0 + i]], Y[c0 + i]
                h = st[ho : ho + H]
                _lstm_plain_gates(g, st[co : co + H], h, H)
                for j in range(H):
                    y[j] = h[j]
            else:
                _gates_row(ids[c0 + i], g, HR[i * Gw : (i + 1) * Gw], Y[c0 + i], arena, W, m)


@njit(**NJIT)
def _gates_rows(ids, G, HR, Y, arena, W, m):
    for r in range(ids.shape[0]):
        _gates_one(r, ids, G, HR, Y, arena, W, m)


@njit(**PARALLEL)
def _gates_rows_par(ids, G, HR, Y, arena, W, m):
    """As ``_gates_rows``, parallel over rows (OpenMP workers wait passively: see config.py)."""
    for r in prange(ids.shape[0]):
        # prange's index is a uint64: cast, so _gates_rows' int64 specialisation serves both
        _gates_one(np.int64(r), ids, G, HR, Y, arena, W, m)


@njit(**NJIT)
def _bias_act_rows(Y, W, m):
    """Dense epilogue after the GEMM: Y[r] += b, then the activation."""
    bias = W[m[K_DIR + O_B] :][: Y.shape[1]]
    par = m[K_DIR + O_PAR]
    for r in range(Y.shape[0]):
        y = Y[r]
        for j in range(y.shape[0]):
            y[j] += bias[j]
        _vact(y, m[K_ACT], W[par + 1], W[par + 2], m[K_FAST])


# ---------------------------------------------------------------------------------------------
# Many streams on the spinning team (engine/team.py): rows claimed chunk by chunk, every layer
# of the stack per chunk, one job per pool.step
# ---------------------------------------------------------------------------------------------
#: the job's context (int64, one per BatchedStep): the call's arrays (written by _team),
#: the pool's buffers (BatchedStep._team_ctx), then LW ints per layer from C_LAYERS on:
#: [recurrent?, meta row, panels' address, their length, pw, pr, output's address (0: out), F]
C_IDS, C_X, C_OUT, C_ARENA, C_AROWS, C_ACOLS, C_ALIVE, C_STAMP = 0, 1, 2, 3, 4, 5, 6, 7
C_W, C_WLEN, C_META, C_NL, C_CH, C_AT, C_ATC, C_GT, C_HRT, C_GTC, C_NLAYERS = 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18
C_LAYERS, LW = 19, 8
_F32 = np.zeros(1, np.float32)  # dtype witnesses for _view (the team runs float32 only)
_U8 = np.zeros(1, np.uint8)


@njit(**NJIT_INLINE)
def _stack_rows(ctx, n, r0, r1, t, like):
    """Rows r0..r1 of a job: every layer of the stack on those rows (thread t's scratch)."""
    ids = _view(ctx[C_IDS], n, ctx)
    arena = _view(ctx[C_ARENA], ctx[C_AROWS] * ctx[C_ACOLS], like).reshape(ctx[C_AROWS], ctx[C_ACOLS])
    W = _view(ctx[C_W], ctx[C_WLEN], like)
    meta = _view(ctx[C_META], ctx[C_NL] * NMETA, ctx).reshape(ctx[C_NL], NMETA)
    ka, kg = ctx[C_ATC], ctx[C_GTC]
    A = _view(ctx[C_AT] + 4 * t * ka, ka, like)  # thread t's float32 scratch rows
    G = _view(ctx[C_GT] + 4 * t * kg, kg, like)
    HR = _view(ctx[C_HRT] + 4 * t * kg, kg, like)
    Xa, F0 = ctx[C_X], meta[ctx[C_LAYERS + 1], K_IN]
    for l in range(ctx[C_NLAYERS]):
        e = ctx[C_LAYERS + LW * l : C_LAYERS + LW * (l + 1)]
        m, F = meta[e[1]], e[7]
        Ya = e[6] if e[6] != 0 else ctx[C_OUT]
        if e[0]:
            X = _view(Xa, n * F0, like).reshape(n, F0)  # (n, F0) this layer's input
            Y = _view(Ya, n * F, like).reshape(n, F)  # (n, F)
            P = _view(e[2], e[3], like)
            _rec_rows(ids, X, Y, arena, W, m, P, e[4], e[5], r0, r1, A, G, HR, ctx[C_CH])
        else:  # rows r0..r1 only
            X = _view(Xa + 4 * r0 * F0, (r1 - r0) * F0, like).reshape(r1 - r0, F0)
            Y = _view(Ya + 4 * r0 * F, (r1 - r0) * F, like).reshape(r1 - r0, F)
            _frame_rows(W, m, X, Y)
        Xa, F0 = Ya, F


@njit(**NJIT_INLINE)
def _team_part(ctl, t, seq, like):
    """Thread t takes chunks of job ``seq`` until none is left (guided: what remains divided by
    the thread count, in multiples of the 6-row GEMM tile, at least ``grain`` rows). Work starts
    only after a successful claim: a claim succeeds only while the job is open, so the context
    is this job's."""
    n, nt, grain = ctl[team.JOB], ctl[team.JOB + 1], ctl[team.JOB + 4]
    while True:
        v = team.aload(ctl, team.NEXT)
        r0 = v & team.ROW_MASK
        if (v >> 32) != seq or r0 >= n:
            return
        size = max(grain, (n - r0) // nt // 6 * 6)
        if team.acas(ctl, team.NEXT, v, v + size):
            ctx = _view(ctl[team.JOB + 2], ctl[team.JOB + 3], ctl)
            r1 = min(n, r0 + size)
            _stack_rows(ctx, n, r0, r1, t, like)
            team.aadd(ctl, team.DONE, r1 - r0)
            ctl[team.SLEEP + team.LINE * t + 1] += r1 - r0  # rows taken by t (Team.rows)


@njit(**NJIT)
def _team(ctl, ctx, ids, X, out, epoch, nt, grain, t, spin, like):
    """Thread t's side of the team (one compiled entry with one call of ``_team_part``, so the
    stack's kernels are compiled once: ~6 s with a cold cache, ~13 s with two call sites).

    t == 0, the caller: validate the call (``epoch`` > 0: as ``_pool_check``; nothing is written
    to any state if it fails), post it as a job of ``nt`` threads, take chunks (of at least
    ``grain`` rows), wait for the rows the workers took, close it (so no late claim reads the
    context after this returns). Returns the status.

    t >= 1, a worker (the call's arrays are unused): spin on ctl[NEXT] and join each new job
    while t < its thread count. After ``spin`` idle iterations it sets its flag SLEEP + LINE * t
    and sleeps on it (a futex; callers clear it and wake it) or, without futexes, returns 1 (the
    thread then sleeps until ``Team.wake``). Returns 0 when told to stop."""
    slp = team.SLEEP + team.LINE * t
    seen = -1  # a worker joins whatever job is open now (it may have been posted before we woke)
    idle = 0
    if t == 0:
        n = ids.shape[0]
        if epoch > 0:
            cap = ctx[C_AROWS]
            meta = _view(ctx[C_META], ctx[C_NL] * NMETA, ctx).reshape(ctx[C_NL], NMETA)
            rc = _pool_check(ids, X, out, _view(ctx[C_ALIVE], cap, _U8), _view(ctx[C_STAMP], cap, ctx), epoch,
                             meta[0, K_IN], meta[ctx[C_NL] - 1, K_OUT])
            if rc != OK:
                return rc
        ctl[team.JOB + 4] = grain
        ctx[C_IDS], ctx[C_X], ctx[C_OUT] = ids.ctypes.data, X.ctypes.data, out.ctypes.data
        ctl[team.JOB], ctl[team.JOB + 1] = n, nt
        ctl[team.JOB + 2], ctl[team.JOB + 3] = ctx.ctypes.data, ctx.shape[0]
        seen = ((team.aload(ctl, team.NEXT) >> 32) + 1) & team.SEQ_MASK
        team.astore(ctl, team.DONE, 0)
        team.astore(ctl, team.NEXT, seen << 32)  # publish (seq_cst: the writes above are visible)
        if ctl[team.MODE]:  # workers asleep on their futex (a worker sets its flag before
            # it last reads NEXT, we read the flag after publishing: one of us sees the other)
            for w in range(1, min(nt, (ctl.shape[0] - team.SLEEP) // team.LINE)):
                team.wake_worker(ctl, w)
    else:
        team.astore(ctl, slp, 0)
    while True:
        job = seen if t == 0 else -1
        if t > 0:
            seq = team.aload(ctl, team.NEXT) >> 32
            if seq != seen:
                seen = seq
                if t < ctl[team.JOB + 1]:
                    job = seq
                idle = 0
            elif team.aload(ctl, team.STOP):
                return 0
            else:
                idle += 1
                if idle >= spin:
                    team.astore(ctl, slp, 1)
                    if team.aload(ctl, team.NEXT) >> 32 == seen and team.aload(ctl, team.STOP) == 0:
                        if ctl[team.MODE] == 0:
                            return 1  # sleep on the thread's Event (Team._run)
                        team.futex(ctl, slp, team.FUTEX_WAIT, 1)  # until a caller clears the flag
                    team.astore(ctl, slp, 0)  # woken, or a job came as we were leaving
                    idle = 0
        if job >= 0:
            _team_part(ctl, t, job, like)
        if t == 0:
            while team.aload(ctl, team.DONE) < ids.shape[0]:
                team.cpu_pause()
            team.astore(ctl, team.NEXT, (seen << 32) | team.ROW_MASK)
            return OK
        team.cpu_pause()


_NO_IDS, _NO_X = np.zeros(0, np.int64), np.zeros((0, 0), np.float32)


def _team_loop(ctl, t, spin):
    """Worker t's compiled loop (``team.Team``)."""
    return _team(ctl, _NO_IDS, _NO_IDS, _NO_X, _NO_X, 0, 0, 0, t, spin, _F32)


class BatchedStep:
    """``pool.step`` for many streams. float32: on the column panels (``_rec_rows``: gather,
    GEMM, gates), on the spinning team of threads for large enough calls (``_team``: rows in
    chunks, every layer of the stack per chunk, one job per call), else serially, one compiled
    call per layer; float64: per layer one GEMM (numpy / BLAS) over the listed streams, then one fused
    elementwise kernel. Buffers grow to the largest batch seen (at most
    ``BLOCK`` streams: larger calls run in blocks) and are reused, so a steady stream of calls
    allocates nothing."""

    #: streams per GEMM block: bounds the scratch buffers (~4 MiB at H=128) whatever the batch
    BLOCK = 1024

    #: the gates kernel runs parallel over streams from this many streams on
    PARALLEL_GATES_MIN = 256
    #: rows per chunk of the fused path (scratch per thread: CHUNK x (I + H) and CHUNK x gates;
    #: at H=512 ~1.2 MiB, inside L2). 96 rather than 48 reads the weight panels half as often:
    #: H=512 B=1024 17.0 -> 16.4 ms, H=128 B=1024 1.32 -> 1.28 ms (bench/NOTES.md, entry 28)
    CHUNK = 96
    #: the float32 path runs on the spinning team (engine/team.py) from this many multiply-adds
    #: (~2 us serially; a job costs ~1 us to post and join) and this many rows per call (2 rows
    #: of H=128 8.7 vs 11.6 us serially, 8 rows 12.0 vs 22.9: bench/NOTES.md entry 60)
    TEAM_MIN = 1 << 18
    TEAM_MIN_ROWS = 2
    #: threads of a step (None: numba's count when the pool is made; get_num_threads costs ~1 us)
    THREADS = None
    #: below this many weight bytes the team shares the rows of calls longer than threads x
    #: CHUNK rows in guided chunks (the weights stay in each core's L2); above, and for shorter
    #: calls, in one equal share per thread (each chunk reads the weights from L3 / L2 again)
    TEAM_FINE_BYTES = 1 << 20

    def __init__(self, pk: Packed, arena: np.ndarray, alive: np.ndarray, stamp: np.ndarray):
        self.pk = pk
        self.arena, self.alive, self.stamp = arena, alive, stamp  # the pool's (cap, S), (cap,), (cap,)
        self.cap = 0
        self.layers = []
        self.panels = []  # per recurrent layer: (P, offset of Wt's panels, offset of Rt's)
        W, meta = pk.W, pk.meta
        for li in range(meta.shape[0]):
            m = meta[li]
            kind, I = int(m[0]), int(m[K_IN])
            if kind <= RNN:
                H, Hr = int(m[K_H]), int(m[K_REC])
                G = _GATES[kind] * H
                wt = int(m[K_DIR + O_WT])
                lbr_gru = kind == GRU and bool(m[K_FLAGS] & F_LBR)
                if kind == GRU:  # x @ Wt only; h @ Rt apart (it is gated by r)
                    Wx = W[wt : wt + I * G].reshape(I, G)
                    Rh = W[int(m[K_DIR + O_RT]) : int(m[K_DIR + O_RT]) + H * G].reshape(H, G)
                else:  # [x | h] @ [Wt ; Rt] in one GEMM (Rt follows Wt in the buffer)
                    Wx = W[wt : wt + (I + Hr) * G].reshape(I + Hr, G)
                    Rh = None
                self.layers.append(("rec", m, I, Hr, G, Wx, Rh if lbr_gru else None))
                self.panels.append(self._panels(W, m, I, Hr, G))
            elif kind == DENSE:
                wt = int(m[K_DIR + O_WT])
                O = int(m[K_OUT])
                self.layers.append(("dense", m, I, O, 0, W[wt : wt + I * O].reshape(I, O), None))
            else:
                self.layers.append(("frame", m, I, int(m[K_OUT]), 0, None, None))

        # float32: every recurrent layer steps on column panels in one compiled call per layer
        # (``_rec_rows``, no BLAS: its spinning threads would slow numba's next parallel region)
        self.fused = W.dtype == np.float32
        self.nt = 0
        # multiply-adds per row of a step (whether the spinning team is worth waking)
        self.row_macs = sum((l[2] + l[3]) * l[4] if l[0] == "rec" else l[2] * l[3] for l in self.layers)
        self.wbytes = W.itemsize * self.row_macs  # weight bytes a step reads
        self.ctx = None  # the team's job context (built on first use, rebuilt when buffers grow)
        self.threads = self.THREADS or numba.get_num_threads()

    @staticmethod
    def _panels(W: np.ndarray, m: np.ndarray, I: int, Hr: int, G: int):
        """(P, pw, pr): the model's own panels where pack made them (matrices <= PANEL_MAX_BYTES), else
        a copy for this pool (a GEMM over many streams reuses each panel from L2 at any size)."""
        if m[K_PAN] >= 0 and m[K_PAN + 1] >= 0 or G < PW:
            return W, int(m[K_PAN]), int(m[K_PAN + 1])
        wt, rt = int(m[K_DIR + O_WT]), int(m[K_DIR + O_RT])
        Pw = column_panels(W[wt : wt + I * G].reshape(I, G), PW).ravel()
        Pr = column_panels(W[rt : rt + Hr * G].reshape(Hr, G), PW).ravel()
        return _aligned(np.concatenate([Pw, Pr])), 0, Pw.size

    def _alloc_threads(self, nt: int) -> None:
        """Per-thread scratch of the fused path: CHUNK rows of [x | h], gates and GRU products."""
        dt = self.pk.W.dtype
        kmax = max([l[2] + l[3] for l in self.layers] + [1])
        gmax = max([l[4] for l in self.layers] + [1])
        self.At = np.zeros((nt, self.CHUNK * kmax), dt)
        self.Gt = np.zeros((nt, self.CHUNK * gmax), dt)
        self.HRt = np.zeros((nt, self.CHUNK * gmax), dt)
        self.nt = nt
        self.ctx = None

    def _grow(self, n: int) -> None:
        cap = min(self.BLOCK, max(16, 1 << (n - 1).bit_length()))
        dt = self.pk.W.dtype
        kmax = max([l[2] + l[3] for l in self.layers] + [1])
        gmax = max([l[4] for l in self.layers] + [1])
        fmax = self.pk.feat_size
        # flat buffers: a (n, k) view of the first n*k floats is C-contiguous for any k; the
        # fused path needs only the layer outputs (its scratch is per thread, CHUNK rows)
        nb = 1 if self.fused else cap
        self.A = np.zeros(nb * kmax, dt)
        self.G = np.zeros(nb * gmax, dt)
        # GRU only: h @ Rt apart (linear_before_reset) or the cell's scratch
        self.HR = np.zeros(nb * gmax if any(l[1][0] == GRU for l in self.layers if l[0] == "rec") else nb, dt)
        self.Y = [np.zeros(cap * fmax, dt), np.zeros(cap * fmax, dt)]
        self.cap = cap
        self.ctx = None

    def start_team(self) -> None:
        """Start the process's team if this pool will use it (at pool creation, so that no
        real-time call pays for starting threads)."""
        if self.fused and self.threads > 1:
            team.get(numba.config.NUMBA_NUM_THREADS - 1, _team_loop)

    def _team_ctx(self) -> np.ndarray:
        """The team job's context: addresses of the pool's weights, scratch and layer buffers
        (``_stack_rows`` reads them; the call's own arrays are filled in by ``_team``)."""
        pk, L = self.pk, len(self.layers)
        ctx = np.zeros(C_LAYERS + LW * L, np.int64)
        a = self.arena
        assert a.flags.c_contiguous and a.dtype == np.float32 and self.alive.dtype == np.uint8
        ctx[C_ARENA], ctx[C_AROWS], ctx[C_ACOLS] = a.ctypes.data, a.shape[0], a.shape[1]
        ctx[C_ALIVE], ctx[C_STAMP] = self.alive.ctypes.data, self.stamp.ctypes.data
        ctx[C_W], ctx[C_WLEN] = pk.W.ctypes.data, pk.W.size
        ctx[C_META], ctx[C_NL] = pk.meta.ctypes.data, pk.meta.shape[0]
        ctx[C_CH], ctx[C_NLAYERS] = self.CHUNK, L
        ctx[C_AT], ctx[C_ATC] = self.At.ctypes.data, self.At.shape[1]
        ctx[C_GT], ctx[C_HRT], ctx[C_GTC] = self.Gt.ctypes.data, self.HRt.ctypes.data, self.Gt.shape[1]
        rec = iter(self.panels)
        # one output buffer per inner layer: threads run different layers at once, so two
        # layers may not share a buffer (the step's ping-pong pair) with different row strides
        self.Yt = [np.zeros(self.cap * l[3], pk.W.dtype) for l in self.layers[:-1]]
        for li, (what, m, I, F, G, _, _) in enumerate(self.layers):
            e = ctx[C_LAYERS + LW * li : C_LAYERS + LW * (li + 1)]
            e[1], e[7] = li, F
            if what == "rec":
                P, pw, pr = next(rec)
                e[0], e[2], e[3], e[4], e[5] = 1, P.ctypes.data, P.size, pw, pr
            if li < L - 1:  # the last layer writes the caller's out (C_OUT)
                e[6] = self.Yt[li].ctypes.data
        return ctx

    def step(self, ids, X, out, epoch: int) -> int:
        """The pool's ``step`` (``ids`` stamped with ``epoch`` in the pool's ``stamp``): validate
        the call, then step every listed stream, on the spinning team where it is worth it
        (``engine/team.py``). Returns the status (0: ok; else nothing was written to any state)."""
        n = ids.shape[0]
        if n <= self.BLOCK and self._team_pays(n):
            rc = self._on_team(ids, X, out, epoch)
            if rc is not None:
                return rc
        m = self.pk.meta
        rc = _pool_validate(ids, X, out, self.alive, self.stamp, epoch, m[0, K_IN], m[-1, K_OUT])
        if rc == OK:
            self(ids, X, out, self.arena)
        return rc

    def _team_pays(self, n: int) -> bool:
        """Whether a float32 step of n rows is worth a job on the team."""
        return self.fused and self.threads > 1 and n >= self.TEAM_MIN_ROWS and n * self.row_macs >= self.TEAM_MIN

    def _on_team(self, ids, X, out, epoch: int) -> int | None:
        """One job on the team (epoch 0: the call is validated already); its status, or None
        where the team is off or busy with another caller's job."""
        tm = team.running() or team.get(numba.config.NUMBA_NUM_THREADS - 1, _team_loop)
        if tm is None or not tm.lock.acquire(False):
            return None
        try:
            n = ids.shape[0]
            if n > self.cap:
                self._grow(n)
            if self.nt < tm.nworkers + 1:
                self._alloc_threads(tm.nworkers + 1)
            if self.ctx is None:
                self.ctx = self._team_ctx()
            if tm.asleep:
                tm.wake()
            # one equal share of rows per thread (the caller takes the rest if a worker is late)
            # where the weights are read from L3 for every chunk (beyond a core's L2 share,
            # ~1 MiB) or where a share is one GEMM chunk; else guided chunks of >= 6 rows, which
            # even out the threads' speeds. Equal shares, not multiples of the 6-row tile: at
            # B=64 36 + 28 rows cost 5% (H=128) and 7% (H=512) more than 32 + 32 (NOTES 45)
            nt = self.threads
            fine = self.wbytes <= self.TEAM_FINE_BYTES and n > nt * self.CHUNK
            grain = 6 if fine else (n + nt - 1) // nt
            return _team(tm.ctl, self.ctx, ids, X, out, epoch, nt, grain, 0, 0, _F32)
        finally:
            tm.lock.release()

    def __call__(self, ids, X, out, arena) -> None:
        n = ids.shape[0]
        if n > self.BLOCK:  # streams are independent: blocks of rows, bounded scratch
            for a in range(0, n, self.BLOCK):
                b = min(n, a + self.BLOCK)
                self._step(ids[a:b], X[a:b], out[a:b], arena)
        else:
            self._step(ids, X, out, arena)

    def _step(self, ids, X, out, arena) -> None:
        n = ids.shape[0]
        if n > self.cap:
            self._grow(n)
        if self.fused:
            self._step_fused(ids, X, out, arena)
            return
        W = self.pk.W
        # Parallel gates only for large batches and only with passive OpenMP workers: spinning
        # workers starve OpenBLAS's threads in the next GEMM (35 ms instead of 0.2 ms at H=128,
        # B=64; bench/NOTES.md).
        gates = _gates_rows_par if (n >= self.PARALLEL_GATES_MIN and config.omp_passive()) else _gates_rows
        cur = X
        ping = 0
        for idx, (what, m, I, F, G, Wx, Rh) in enumerate(self.layers):
            last = idx == len(self.layers) - 1
            Y = out if last else self.Y[ping][: n * F].reshape(n, F)
            if what == "rec":
                Gb = self.G[: n * G].reshape(n, G)
                HR = self.HR[: n * G].reshape(n, G) if m[0] == GRU else self.HR[:n].reshape(n, 1)  # (n, 1): unused
                if Rh is None and Wx.shape[0] > I:  # LSTM / RNN: A = [x | h]
                    A = self.A[: n * (I + F)].reshape(n, I + F)
                    _gather_xh(ids, cur, arena, A, int(m[K_DIR + O_H]), F)
                    np.matmul(A, Wx, out=Gb)
                else:  # GRU
                    np.matmul(cur, Wx, out=Gb)
                    if Rh is not None:
                        A = self.A[: n * F].reshape(n, F)
                        _gather_h(ids, arena, A, 0, int(m[K_DIR + O_H]), F)
                        np.matmul(A, Rh, out=HR)
                gates(ids, Gb, HR, Y, arena, W, m)
            elif what == "dense":
                np.matmul(cur, Wx, out=Y)
                _bias_act_rows(Y, W, m)
            else:
                _frame_rows(W, m, cur, Y)
            if not last:
                cur = Y
                ping ^= 1

    def _step_fused(self, ids, X, out, arena) -> None:
        n = ids.shape[0]
        if arena is self.arena and self._team_pays(n) and self._on_team(ids, X, out, 0) is not None:
            return  # a block of a validated call, on the team
        if self.nt < 1:
            self._alloc_threads(1)
        W = self.pk.W
        cur = X
        ping = 0
        rec = iter(self.panels)
        for idx, (what, m, I, F, G, _, _) in enumerate(self.layers):
            last = idx == len(self.layers) - 1
            Y = out if last else self.Y[ping][: n * F].reshape(n, F)
            if what == "rec":
                P, pw, pr = next(rec)
                _rec_rows(ids, cur, Y, arena, W, m, P, pw, pr, 0, n, self.At[0], self.Gt[0], self.HRt[0], self.CHUNK)
            else:  # Dense (row by row, panels), activation, softmax
                _frame_rows(W, m, cur, Y)
            if not last:
                cur = Y
                ping ^= 1
