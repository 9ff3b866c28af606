"""The host side of a CUDA step: ids and frames validated and staged in pinned rows.

``pool.step`` validates ids (range, open, distinct) and frames (shape, finite) and copies the
frames into the pinned staging rows ``[id | frame | pad]`` in one compiled pass (the NaN / Inf
test is an integer OR fused with the copy; bench/NOTES.md entry 35), over all of numba's
threads for calls of at least ``cuda_pool.PACK_PAR_MIN`` values. With
STREAMRNN_CUDA_HOSTCALL=njit a step through a captured graph is one njit call (``graph_step``:
checks, staging, cuGraphLaunch, cuStreamSynchronize, outputs; entry 80). Plain CPU code:
nothing here imports numba.cuda.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..config import NJIT, NJIT_GIL, NJIT_INLINE, PARALLEL
from ..errors import ShapeError
from . import cpu as _cpu
from .cpu import _view
from .hostsync import call_ptr1, call_ptr2, compile_only


@njit(**NJIT)
def _stage_rows(ids, X, hin64, hinf, c0, r0, r1):
    """Rows r0..r1-1: ids and frames into the staging rows (``hin64[r, 0]`` = id, frame at
    ``hinf[r, c0:]``). Returns the first row with a NaN / Inf, or -1. One pass that reads X
    once: the finiteness test is an integer OR (``x - x`` is NaN for NaN and Inf) that LLVM
    vectorises with the copy (bench/NOTES.md entry 35)."""
    I = X.shape[1]
    for r in range(r0, r1):
        x = X[r]
        d = hinf[r][c0:]
        bad = 0
        for k in range(I):
            v = x[k]
            bad |= (v - v) != 0
            d[k] = v
        if bad:
            return r
        hin64[r, 0] = ids[r]
    return -1


@njit(**PARALLEL)
def _stage_par(ids, X, hin64, hinf, c0, bad):
    """``_stage_rows`` over all rows, split in ``bad.shape[0]`` parts run in parallel; bad[c] =
    the first bad row of part c, or -1."""
    n, nb = X.shape[0], bad.shape[0]
    per = (n + nb - 1) // nb
    for c in prange(nb):
        bad[c] = _stage_rows(ids, X, hin64, hinf, c0, c * per, min(n, (c + 1) * per))


@njit(**NJIT)
def _pack_rows(ids, X, alive, stamp, epoch, I, hin64, hinf, c0, stage):
    """Check ids (range, open, distinct) and, with ``stage``, frames (shape, finite) while
    copying them into the pinned staging rows (``_stage_rows``). Returns a status of
    engine.cpu (0 = ok); the row index is in the bits above the low 8."""
    n = ids.shape[0]
    if X.shape[0] != n or X.shape[1] != I:
        return _cpu.E_XLEN
    cap = alive.shape[0]
    for r in range(n):
        sid = ids[r]
        if sid < 0 or sid >= cap:
            return _cpu.E_ID_RANGE | (r << 8)
        if alive[sid] == 0:
            return _cpu.E_ID_CLOSED | (r << 8)
        if stamp[sid] == epoch:
            return _cpu.E_ID_DUP | (r << 8)
        stamp[sid] = epoch
    if stage:
        r = _stage_rows(ids, X, hin64, hinf, c0, 0, n)
        if r >= 0:
            return _cpu.E_NONFINITE | (r << 8)
    return _cpu.OK


#: the fused graph step's context (``_Core.gctx``, int64; STREAMRNN_CUDA_HOSTCALL=njit): the
#: staging rows' address, their count and int64 words per row, the frame's offset in a row
#: (items), I, the id stamps' address and count, the output rows' address (mapped), O, the
#: driver's cuGraphLaunch and cuStreamSynchronize, the stream, the call counter (``epoch``) and
#: items of the model dtype per row
(G_ROWS_AT, G_ROWS, G_P8, G_C0, G_I, G_STAMP, G_CAP, G_OUT, G_O, G_LAUNCH, G_SYNC, G_STREAM, G_EPOCH,
 G_PF, G_LEN) = range(15)
#: status of ``_graph_step_impl``: a driver call failed (its CUresult in the bits above 8;
#: E_SYNC: cuStreamSynchronize's)
E_LAUNCH, E_SYNC = 32, 33


@njit(**NJIT_INLINE)
def _pack_ctx(ids, X, alive, ctx):
    """``_pack_rows`` (a new call: epoch + 1; ids checked, frames checked and staged) on the
    buffers of context ``ctx`` (``_Core.gctx``); the caller checked that n <= ctx[G_ROWS]."""
    rows, P8, PF = ctx[G_ROWS], ctx[G_P8], ctx[G_PF]
    h64 = _view(ctx[G_ROWS_AT], rows * P8, ctx).reshape(rows, P8)  # (rows, P8) [id | frame | pad]
    hf = _view(ctx[G_ROWS_AT], rows * PF, X).reshape(rows, PF)  # the same rows as model items
    stamp = _view(ctx[G_STAMP], ctx[G_CAP], ctx)  # (cap,)
    ctx[G_EPOCH] += 1
    return _pack_rows(ids, X, alive, stamp, ctx[G_EPOCH], ctx[G_I], h64, hf, ctx[G_C0], True)


def _pack_fast_impl(ids, X, alive, ctx):
    """``_Core.pack`` of a call of at most ``ctx[G_ROWS]`` rows, in one call of 4 arguments
    (numba's dispatcher types and unboxes each argument: 10 of them cost ~1 µs per step)."""
    return _pack_ctx(ids, X, alive, ctx)


def _graph_step_impl(ids, X, out, alive, gexec, ctx):
    """A pool's step through its captured graph ``gexec`` in one call (bench/NOTES.md entry
    80): ``_pack_rows`` (ids and frames checked, frames staged), cuGraphLaunch, then
    cuStreamSynchronize, through the driver's entry points (``call_ptr2`` / ``call_ptr1``),
    then the outputs copied from the mapped rows. Returns a status of engine.cpu, or
    ``E_LAUNCH`` / ``E_SYNC`` with the CUresult above the low 8 bits."""
    n = ids.shape[0]
    rows, O = ctx[G_ROWS], ctx[G_O]
    if n > rows or out.shape[0] != n or out.shape[1] != O:
        return _cpu.E_OUTLEN
    rc = _pack_ctx(ids, X, alive, ctx)
    if rc:
        return rc
    err = call_ptr2(ctx[G_LAUNCH], gexec, ctx[G_STREAM])
    if err:
        return E_LAUNCH | (err << 8)
    err = call_ptr1(ctx[G_SYNC], ctx[G_STREAM])
    if err:
        return E_SYNC | (err << 8)
    y = _view(ctx[G_OUT], rows * O, out).reshape(rows, O)  # (rows, O) mapped outputs
    for r in range(n):
        for k in range(O):
            out[r, k] = y[r, k]
    return _cpu.OK


# one dispatcher per dtype, compiled for it alone (see persist.row_step)
_GRAPH_STEP = {f32: njit(**NJIT_GIL)(_graph_step_impl) for f32 in (True, False)}
_PACK_FAST = {f32: njit(**NJIT_GIL)(_pack_fast_impl) for f32 in (True, False)}


def pack_fast(dtype):
    """``_pack_fast_impl`` compiled for models of ``dtype`` only (at pool creation)."""
    from numba import types as nt

    f32 = np.dtype(dtype) == np.float32
    f, i1 = nt.float32 if f32 else nt.float64, nt.int64[::1]
    return compile_only(_PACK_FAST[f32], (i1, f[:, ::1], nt.uint8[::1], i1))


def graph_step(dtype):
    """``_graph_step_impl`` compiled for models of ``dtype`` only (at pool creation)."""
    from numba import types as nt

    f32 = np.dtype(dtype) == np.float32
    f, i1 = nt.float32 if f32 else nt.float64, nt.int64[::1]
    return compile_only(_GRAPH_STEP[f32], (i1, f[:, ::1], f[:, ::1], nt.uint8[::1], nt.int64, i1))


def _pack_sigs(dtype) -> tuple:
    """Explicit signatures of the host packing kernels for frames of ``dtype`` (compiled at
    model load, ``CudaEngine.__init__``, never in the first frame)."""
    from numba import types as nt

    f = nt.float32 if np.dtype(dtype) == np.float32 else nt.float64
    i1, u1, i2 = nt.int64[::1], nt.uint8[::1], nt.int64[:, ::1]
    X, hf = f[:, ::1], f[:, ::1]
    return (
        (_stage_par, (i1, X, i2, hf, nt.int64, i1)),
        (_stage_rows, (i1, X, i2, hf, nt.int64, nt.int64, nt.int64)),
        (_pack_rows, (i1, X, u1, i1, nt.int64, nt.int64, i2, hf, nt.int64, nt.boolean)),
    )


def _raise(rc, model, xname, x, out, ids=None):
    from ..model import _raise_status

    _raise_status(rc, model, xname, x, out, ids)


def _check_frames(X, model, name="X"):
    """X (T, I) validated: shape and finite (NonFiniteError names the frame)."""
    I = model.input_size
    if X.ndim != 2 or X.shape[1] != I:
        raise ShapeError(f"{name}: expected {I} features per frame, got shape {X.shape}")
    if not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        _raise(_cpu.E_NONFINITE | (int(bad[0]) << 40), model, name, X, None)
