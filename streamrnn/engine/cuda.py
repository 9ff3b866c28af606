"""CUDA engine (numba.cuda): many streams (``pool.step``), one stream, and whole sequences.

Imported only when a model is built with ``device="cuda"``; numba.cuda is imported nowhere else.

Design
------
* The packed weights (``W``, see :mod:`streamrnn.engine.pack`) are copied to the device once; every
  size, offset, activation and flag of a layer is baked into its kernels as a compile-time
  constant (kernel factories in ``streamrnn/layers/*/cuda.py``, memoised on the layer structure).
* A pool keeps its state arena (capacity, S) on the device. ``pool.step(ids, X)`` copies in only
  the ids and the frames (one pinned staging row per stream ``[id | frame]``, so one copy in;
  device buffers allocated once and grown; on the graph / driver paths the last kernel writes
  the outputs straight into mapped pinned host memory, so there is no copy out),
  runs one row-tile kernel per layer (two for an LSTM with projection or an ONNX-style GRU; plus a
  small commit kernel when the last layer is recurrent), and copies out only the outputs.
  Each layer kernel advances every listed stream at once: blocks tile (rows x units), all gates of
  a unit in one thread, a split-K reduction for few streams and register re-use of the weights for
  many (see :mod:`streamrnn.layers.dense.cuda`); an LSTM layer with more than one stream
  runs as a shared-memory tiled GEMM over ``[x | h] @ [Wt ; Rt]`` with the cell update as its
  epilogue (:mod:`streamrnn.layers.cuda_common`, ``STREAMRNN_CUDA_GEMM=0`` turns it off;
  ``STREAMRNN_CUDA_STAGE=loop`` selects the unpipelined staging and tiles of before, an A/B;
  ``STREAMRNN_CUDA_GEMM_VEC=1``, opt-in, lays its tiles out for vector shared loads);
  a PyTorch GRU (linear_before_reset) likewise (``make_gru_gemm``: four sums per unit);
  a dense layer over more than one stream likewise (``make_linear_gemm``, one gate;
  ``STREAMRNN_CUDA_DENSE=tile`` selects the row-tile kernel of before).
  ``STREAMRNN_CUDA_PROFILE=1`` records per-phase host times (``CudaPool.profile()``). New hidden states go to a per-row feature buffer
  and are committed to the arena by the last kernel, so no kernel reads a state another block of
  the same kernel writes.
* Launch overhead is the enemy (numba's launch path costs 16-43 us per kernel). The step of a pool
  therefore runs in one of three modes (``STREAMRNN_CUDA_LAUNCH``, default ``auto``):

  - ``graph``  the whole step (2 copies in, the kernels, 1 copy out) captured once per row count n
    as a CUDA graph and replayed with one ``cuGraphLaunch`` (captured on the second consecutive
    call with the same n; an LRU of 8 graphs);
  - ``driver`` the same operations issued one by one through cuda-bindings (``cuLaunchKernel``
    with kernel parameters packed once per buffer generation; only n changes per call);
  - ``numba``  numba's own launch and copy API (the simulator, and the fallback).

  ``auto`` = graph on a real GPU, numba under the simulator. A pool checks at creation that the
  driver and graph paths give bit-identical results to the numba path on one frame, and falls
  back (with a warning in the ``streamrnn`` logger) if they do not or if they fail.
* ``run`` (and ``push``) keep everything on the device across layers: per recurrent layer and
  direction one GEMM-like kernel computes the input projection of every step (bias included),
  then one persistent kernel loops over time (a block owns a few sequences and keeps their h and c
  in shared memory; ragged lengths and reverse directions handled in the loop). Dense / activation
  / softmax layers are row kernels over all B*T frames. An LSTM layer (no projection) or a
  PyTorch GRU (linear_before_reset) over at most 64 sequences runs instead as one cooperative
  kernel spread over the whole GPU (``layers/cuda_seqgrid.py``, ``make_lstm_seq_grid`` /
  ``make_gru_seq_grid``: each block keeps its units' Rt columns in shared memory, one grid
  sync per step, sequences in groups of up to 32; ``STREAMRNN_CUDA_SEQ`` = auto (default) /
  grid / block; measured on an H200 in bench/NOTES.md entries 37, 52-53, 65).
* ``STREAMRNN_CUDA_PERSIST=1``: one-row steps (``stream.step``, ``pool.step`` of one stream) are
  served by a resident kernel fed through mapped host memory instead of a graph launch per step
  (:mod:`streamrnn.engine.persist`).
* Host staging: ``pool.step`` validates ids and copies the frames into the pinned staging rows in
  one vectorised pass (the NaN / Inf test is an integer OR fused with the copy), over all threads
  for calls of at least ``PACK_PAR_MIN`` values (entry 35).

Validation (shapes, ids, non-finite inputs) happens on the host before any device work, with the
same errors and messages as the CPU engine; a refused call changes no state.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
import time
from collections import OrderedDict

import numba
import numpy as np
from numba import njit, prange

from ..config import NJIT, NJIT_GIL, NJIT_INLINE, PARALLEL
from ..errors import ShapeError, StreamRNNError
from . import cpu as _cpu
from .cpu import _view
from .hostsync import call_ptr1, call_ptr2, compile_only
from .pack import (
    ACT, DENSE, F_CLIP, F_INPUT_FORGET, F_LBR, F_LOG, F_PEEP, F_PROJ, GRU, K_ACT, K_DIR,
    K_FLAGS, K_H, K_IN, K_KIND, K_NDIR, K_OUT, K_REC, K_REV, LSTM, O_B, O_C, O_H, O_PAR,
    O_PEEP, O_PROJ, O_RBH, O_RT, O_WT, RNN, SOFTMAX,
)

log = logging.getLogger("streamrnn")

try:  # numba-cuda (or numba's bundled CUDA target); absent on CPU-only installs
    from numba import cuda
    from numba.cuda import config as _cuda_config

    _IMPORT_ERROR = None
except Exception as e:  # pragma: no cover - depends on the install
    cuda = None
    _cuda_config = None
    _IMPORT_ERROR = e

_now = time.perf_counter_ns
_tls = threading.local()  # per thread: the CUDA context was made current
#: rows per chunk at least, for a pool.step in chunks (STREAMRNN_CUDA_CHUNKS; the simulator: 2)
CHUNK_MIN = 256
#: frames of at least this many values per pool.step are staged by all threads (waking numba's
#: workers costs tens of µs; staging 4 MiB costs ~300 µs on one core here; NOTES entry 35)
PACK_PAR_MIN = 1 << 20

_NO_GPU = "device: expected a CUDA GPU for device='cuda', got none ({})"


def simulator() -> bool:
    """True when numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) stands in for a GPU."""
    return bool(_cuda_config is not None and _cuda_config.ENABLE_CUDASIM)


def _check_device() -> None:
    if cuda is None:
        raise StreamRNNError(_NO_GPU.format(f"numba.cuda cannot be imported: {_IMPORT_ERROR}"))
    if simulator():
        return
    try:
        ok = bool(cuda.is_available())
        why = "numba.cuda.is_available() is False: no NVIDIA GPU or no CUDA driver"
    except Exception as e:  # pragma: no cover - depends on the machine
        ok, why = False, f"{type(e).__name__}: {e}"
    if not ok:
        raise StreamRNNError(
            _NO_GPU.format(why + "; set NUMBA_ENABLE_CUDASIM=1 to run on numba's CUDA simulator")
        )


# ---------------------------------------------------------------------------------------------
# Host-side validation + packing into the pinned staging buffers (one compiled pass)
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Static description of the layers (from the packed meta table)
# ---------------------------------------------------------------------------------------------
class _Layer:
    def __init__(self, W: np.ndarray, m: np.ndarray):
        self.kind = int(m[K_KIND])
        self.I, self.O, self.H = int(m[K_IN]), int(m[K_OUT]), int(m[K_H])
        self.HR, self.D, self.rev = int(m[K_REC]), int(m[K_NDIR]), bool(m[K_REV])
        self.flags = f = int(m[K_FLAGS])
        self.dirs = []
        if self.kind <= RNN:
            self.G = (4, 3, 1)[self.kind] * self.H
            for d in range(self.D):
                base = K_DIR + 9 * d
                par = int(m[base + O_PAR])
                acts = []
                for s in range(3):
                    acts += [int(m[K_ACT + 3 * d + s]), float(W[par + 1 + 2 * s]), float(W[par + 2 + 2 * s])]
                self.dirs.append(dict(
                    WT=int(m[base + O_WT]), RT=int(m[base + O_RT]), B=int(m[base + O_B]),
                    RBH=int(m[base + O_RBH]),
                    PEEP=int(m[base + O_PEEP]) if f & F_PEEP else -1,
                    PROJ=int(m[base + O_PROJ]) if f & F_PROJ else -1,
                    HO=int(m[base + O_H]), CO=int(m[base + O_C]),
                    CLIP=float(W[par]) if f & F_CLIP else 0.0, ACTS=tuple(acts),
                ))
        elif self.kind in (DENSE, ACT):
            par = int(m[K_DIR + O_PAR])
            self.act = int(m[K_ACT])
            self.alpha, self.beta = float(W[par + 1]), float(W[par + 2])
            self.WT, self.B = int(m[K_DIR + O_WT]), int(m[K_DIR + O_B])
        else:  # SOFTMAX
            self.log = bool(f & F_LOG)

    @property
    def recurrent(self) -> bool:
        return self.kind <= RNN


# ---------------------------------------------------------------------------------------------
# Tiles (see streamrnn/layers/dense/cuda.py): chosen by the number of rows n
# ---------------------------------------------------------------------------------------------
def _tiles():
    """Per row bucket: (most rows, or None for the last; the row-tile kernels' Tile). Built
    once per mode: ``_bucket`` runs in every step (rebuilding this table cost ~2 µs of a ~26
    µs one-row step; bench/NOTES.md entry 80)."""
    return _tiles_for(simulator())


@functools.lru_cache(maxsize=2)
def _tiles_for(sim: bool) -> tuple:
    from ..layers.dense.cuda import Tile

    if sim:  # tiny blocks: several blocks even for H = 8, and fast to simulate
        return ((1, Tile(4, 2, 1, 1, 8, 1)), (None, Tile(2, 2, 2, 2, 8, 2)))
    return (
        # one stream: split-K GEMV over many blocks; the whole input row staged at once (up to
        # 1024 values): one load-and-barrier round per kernel instead of one per 64 values
        # (NOTES entry 54; KT=64 before)
        (1, Tile(8, 32, 1, 1, 1024, 1)),
        (64, Tile(16, 4, 2, 4, 32, 1)),
        (1024, Tile(32, 2, 4, 4, 32, 1)),
        (None, Tile(32, 1, 8, 4, 32, 2)),  # many streams: GEMM-like, 4 rows x 2 units per thread
    )


def _gemm_tiles(stage: str = "pipe"):
    """Per bucket of ``_tiles()``: the shared-memory tiled GEMM tile of the LSTM step (see
    streamrnn/layers/cuda_common.py), or None for the row-tile kernel. ``stage="loop"``: the
    tiles of the unpipelined staging (before NOTES entry 50), for an A/B."""
    from ..layers.cuda_common import GemmTile

    if simulator():  # 16 threads, 8 rows x 4 units per block, 2 k-slices, 2x2 units per thread
        return [None, GemmTile(8, 4, 2, 2, 2, 4)]
    return [
        None,
        GemmTile(32, 8, 4, 1, 4, 64),  # few streams: 256 threads, 4 k-slices, 64-deep chunks
        GemmTile(64, 16, 8, 1, 1, 32),  # 128 threads, 8 rows x 4 gates per thread
        # many streams: 256 threads, output tile 128 rows x 128 gate columns, 8 rows x 2 units x
        # 4 gates per thread (64 FMAs per 16 shared loads)
        GemmTile(128, 32, 8, 2, 1, 16) if stage == "pipe" else GemmTile(128, 16, 8, 1, 1, 32),
    ]


def _dense_gemm_tiles():
    """Per bucket of ``_tiles()``: the tiled GEMM tile of a dense layer (one gate; N is often
    a head of 8-64 outputs, so the tiles are narrow in rows and split K for few rows), or None
    for the row-tile kernel (``make_linear``; one row: its split-K GEMV). NOTES entry 72."""
    from ..layers.cuda_common import GemmTile

    if simulator():
        return [None, GemmTile(4, 4, 2, 2, 2, 4)]
    return [
        None,
        GemmTile(8, 32, 2, 2, 4, 64),  # <= 64 rows: 256 threads, 4 k-slices, 64-deep chunks
        GemmTile(16, 32, 2, 2, 2, 32),  # <= 1024 rows: 64 blocks at 1024 rows
        GemmTile(64, 32, 4, 2, 1, 32),  # many rows: 256 threads, 8 sums per thread
    ]


def _gru_gemm_tiles():
    """Per bucket of ``_tiles()``: the tiled GEMM tile of a GRU step with linear_before_reset
    (``make_gru_gemm``: 3 gates staged, 4 sums per unit), or None for the row-tile kernel. The
    LSTM's tiles with a thread count that 3 x BU divides (the pipelined staging): TY a
    multiple of 3 TU, so BM = TM x TY rows of 96 instead of 64 / 128 (NOTES entry 87)."""
    from ..layers.cuda_common import GemmTile

    if simulator():  # 24 threads: 12 rows x 4 units, 2 x 2 per thread, 2 k-slices; 3 x 4 divides 24
        return [None, GemmTile(12, 4, 2, 2, 2, 4)]
    return [
        None,
        GemmTile(24, 8, 4, 1, 4, 48),  # few streams: 192 threads (6 x 8 x 4), 4 k-slices
        GemmTile(96, 16, 8, 1, 1, 32),  # 192 threads, 8 rows x 4 sums per thread
        GemmTile(96, 32, 8, 2, 1, 16),  # many streams: 192 threads, 8 rows x 2 units x 4 sums
    ]


def _rnn_gemm_tiles():
    """Per bucket of ``_tiles()``: the tiled GEMM tile of a simple RNN step (``make_rnn_gemm``,
    one gate), or None for the row-tile kernel: the LSTM's thread counts and per-thread sums
    (8 x 8 for many streams), its 4 gates of a unit becoming 4 more units (NOTES entry 89)."""
    from ..layers.cuda_common import GemmTile

    if simulator():  # 16 threads: 8 rows x 8 units, 2 x 4 per thread, 2 k-slices
        return [None, GemmTile(8, 8, 2, 4, 2, 4)]
    return [
        None,
        GemmTile(32, 32, 4, 4, 4, 64),  # few streams: 256 threads, 4 k-slices
        GemmTile(64, 64, 8, 4, 1, 32),  # 128 threads, 8 rows x 4 units per thread
        GemmTile(128, 128, 8, 8, 1, 16),  # many streams: 256 threads, 8 rows x 8 units per thread
    ]


#: (max rows, Tile) buckets; tests and benchmarks may replace it before building a model.
STEP_TILES = None
#: per bucket, a GemmTile or None (parallel to STEP_TILES / _tiles()); replaceable likewise
GEMM_TILES = None
#: per bucket, the GRU's GemmTile or None (``_gru_gemm_tiles()``); replaceable likewise
GRU_GEMM_TILES = None
#: per bucket, the simple RNN's GemmTile or None (``_rnn_gemm_tiles()``); replaceable likewise
RNN_GEMM_TILES = None
#: per bucket, the dense layers' GemmTile or None (``_dense_gemm_tiles()``); replaceable likewise
DENSE_GEMM_TILES = None
#: accumulators per thread that stay in registers (ptxas, sm_90), by item size
MAX_ACC = {4: 64, 8: 16}
#: static shared memory budget of a row-tile block (bytes)
MAX_SMEM = 40 * 1024


def _bucket(n: int) -> int:
    tiles = STEP_TILES or _tiles()
    for i, (mx, _) in enumerate(tiles):
        if mx is None or n <= mx:
            return i
    return len(tiles) - 1


def _tile(bucket: int, N: int, AW: int = 1, isz: int = 4):
    """The bucket's tile for a layer of N output units with AW accumulators per unit and row:
    fewer units / rows per thread where registers or shared memory would run out, fewer units
    per block for a small head."""
    from ..layers.dense.cuda import Tile, red_size

    tiles = STEP_TILES or _tiles()
    U, KS, RS, RPT, KT, UPT = tiles[bucket][1]
    if not simulator():
        lim = MAX_ACC.get(isz, 16)
        while UPT > 1 and (RPT * UPT * AW > lim or U * UPT // 2 >= N):
            UPT //= 2
        while RPT > 1 and RPT * UPT * AW > lim:
            RPT //= 2
    U0 = U
    while U > 4 and U // 2 >= N:
        U //= 2
    f = U0 // U
    if f > 1:
        if KS > 1:
            KS *= f
            KT = max(KT, KS)
        else:
            RS *= f
    t = Tile(U, KS, RS, RPT, KT, UPT)
    while t.RPT > 1 and (t.RS * t.RPT * t.KT + red_size(t, t.UPT * AW)) * isz > MAX_SMEM:
        t = t._replace(RPT=t.RPT // 2)
    return t


def _gemm_tile(bucket: int, N: int, G: int, isz: int, stage: str = "pipe", dense: bool = False,
               vec: bool = False, gru: bool = False, rnn: bool = False):
    """The bucket's GEMM tile for N units of G gates (None: use the row-tile kernel), shrunk
    for small N, for the accumulator budget of the item size and for shared memory (``vec``:
    of the vector layout). ``dense``: the tiles of dense layers (``_dense_gemm_tiles``)
    instead of the LSTM's; ``gru``: a GRU's (``_gru_gemm_tiles``; G = 4 sums per unit, 3
    staged); ``rnn``: a simple RNN's (``_rnn_gemm_tiles``)."""
    if dense:
        gts = DENSE_GEMM_TILES if DENSE_GEMM_TILES is not None else _dense_gemm_tiles()
    elif gru:
        gts = GRU_GEMM_TILES if GRU_GEMM_TILES is not None else _gru_gemm_tiles()
    elif rnn:
        gts = RNN_GEMM_TILES if RNN_GEMM_TILES is not None else _rnn_gemm_tiles()
    else:
        gts = GEMM_TILES if GEMM_TILES is not None else _gemm_tiles(stage)
    gt = gts[bucket] if bucket < len(gts) else None
    if gt is None:
        return None
    from ..layers.cuda_common import gemm_smem

    if not simulator():
        lim = MAX_ACC.get(isz, 16)
        while gt.TU > 1 and gt.TM * gt.TU * G > lim:
            gt = gt._replace(TU=gt.TU // 2, BU=gt.BU // 2)
        while gt.TM > 1 and gt.TM * gt.TU * G > lim:  # more threads, same rows per block
            gt = gt._replace(TM=gt.TM // 2)
        while gt.BU > 4 * gt.TU and gt.BU // 2 >= N:
            gt = gt._replace(BU=gt.BU // 2)
    while gemm_smem(gt, G, vec) * isz > MAX_SMEM:
        if gt.BK > 16:
            gt = gt._replace(BK=gt.BK // 2)
        elif gt.KS > 1:
            gt = gt._replace(KS=gt.KS // 2)
        elif gt.BK > 4:
            gt = gt._replace(BK=gt.BK // 2)
        else:
            break
    return gt


def _switch(name: str) -> bool:
    """An opt-in switch of the environment: "0" (or unset) off, "1" on, anything else refused."""
    v = os.environ.get(name, "0").strip() or "0"
    if v not in ("0", "1"):
        raise StreamRNNError(f"{name}: expected 0 or 1, got {v!r}")
    return v == "1"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# Thin launch path: cuda-bindings driver calls with kernel parameters packed once
# ---------------------------------------------------------------------------------------------
class _Driver:
    """cuda-bindings' driver module and a few helpers; None where unavailable."""

    def __init__(self):
        from cuda.bindings import driver as cu

        self.cu = cu
        self.OK = cu.CUresult.CUDA_SUCCESS

    def check(self, res, what):
        err = res[0] if isinstance(res, tuple) else res
        if err != self.OK:
            raise RuntimeError(f"{what} failed: {err}")
        return res[1] if isinstance(res, tuple) and len(res) > 1 else None

    def function(self, kernel):
        """The launchable handle of a compiled numba ``_Kernel``."""
        cu = self.cu
        handle = kernel._codelibrary.get_cufunc().handle
        try:
            res = cu.cuKernelGetFunction(handle)
            if res[0] == self.OK:
                return res[1]
        except Exception:
            pass
        return cu.CUfunction(int(handle))


def allow_smem(drv, kernel, nbytes: int) -> None:
    """Let a compiled kernel launch with ``nbytes`` of dynamic shared memory: past the default
    48 KiB the driver (``_Driver``) must raise the kernel's limit first (up to 227 KiB a block
    on an H100 / H200); below it nothing is needed."""
    if nbytes > 48 * 1024:
        attr = drv.cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        drv.check(drv.cu.cuFuncSetAttribute(drv.function(kernel), attr, nbytes), "cuFuncSetAttribute")


class _Params:
    """Kernel parameters of one launch as a C ``void*`` array (numba's argument ABI, built
    with the kernel's own ``_prepare_args``); the trailing int64 scalar (n) stays writable."""

    def __init__(self, kernel, args):
        flat, retr = [], []
        for t, v in zip(kernel.argument_types, args):
            kernel._prepare_args(t, v, 0, retr, flat)
        vals = []
        for v in flat:
            if isinstance(v, ctypes._SimpleCData):
                vals.append(v)
            elif isinstance(v, (bool, np.bool_)):
                vals.append(ctypes.c_uint8(int(v)))
            elif isinstance(v, (int, np.integer)):
                vals.append(ctypes.c_uint64(int(v) & 0xFFFFFFFFFFFFFFFF))
            else:
                raise TypeError(f"kernel argument of type {type(v).__name__}")
        self._vals = vals
        self._ptrs = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        self.ptr = ctypes.addressof(self._ptrs)
        self.n = vals[-1]
        self._keep = (args, retr)


def _dptr(a) -> int:
    return int(a.__cuda_array_interface__["data"][0])


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------
class CudaEngine:
    """The CUDA kernels of one model: weights on the device, the sequence path, and factories
    for streams and pools (see the module docstring)."""

    def __init__(self, model):
        _check_device()
        from ..layers.dense import cuda as dense_k  # noqa: F401  (imports numba.cuda kernels)

        self.model = model
        pk = model._packed
        self.pk = pk
        self.dtype = np.dtype(model.dtype)
        self.dts = self.dtype.name
        self.isz = self.dtype.itemsize
        self.S, self.I, self.O = pk.state_size, model.input_size, model.output_size
        self.layers = [_Layer(pk.W, pk.meta[i]) for i in range(pk.meta.shape[0])]
        self.sim = simulator()
        try:
            self.W = cuda.to_device(np.ascontiguousarray(pk.W))
        except Exception as e:  # pragma: no cover - depends on the machine
            raise StreamRNNError(_NO_GPU.format(f"{type(e).__name__}: {e}")) from None
        self.n_sm = 1
        if not self.sim:
            try:
                self.n_sm = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
            except Exception:  # pragma: no cover
                self.n_sm = 80
        mode = os.environ.get("STREAMRNN_CUDA_LAUNCH", "auto").lower()
        if mode not in ("auto", "graph", "driver", "numba"):
            raise StreamRNNError(f"STREAMRNN_CUDA_LAUNCH: expected auto, graph, driver or numba, got {mode!r}")
        if self.sim:
            mode = "numba"
        elif mode == "auto":
            mode = "graph"
        self.drv = None
        if mode != "numba":
            try:
                self.drv = _Driver()
            except Exception as e:  # pragma: no cover - depends on the install
                log.warning("streamrnn cuda: cuda-bindings unavailable (%s); using numba launches", e)
                mode = "numba"
        self.mode = mode
        #: LSTM step as a shared-memory tiled GEMM where the bucket has a GemmTile
        self.use_gemm = os.environ.get("STREAMRNN_CUDA_GEMM", "1") != "0"
        #: dense layers of more than one row as a tiled GEMM (``make_linear_gemm``, NOTES entry
        #: 72); STREAMRNN_CUDA_DENSE=tile: the row-tile kernel of before (an A/B for gpu_check)
        dense = os.environ.get("STREAMRNN_CUDA_DENSE", "gemm").lower()
        if dense not in ("gemm", "tile"):
            raise StreamRNNError(f"STREAMRNN_CUDA_DENSE: expected gemm or tile, got {dense!r}")
        self.dense_gemm = dense == "gemm"
        #: pool.step of at least 2 * CHUNK_MIN rows in up to this many chunks (step_chunked:
        #: the host stages chunk p + 1 while the device runs chunk p; NOTES entry 73); 1 = off
        ch = os.environ.get("STREAMRNN_CUDA_CHUNKS", "1").strip() or "1"
        if not ch.isdigit() or not 1 <= int(ch) <= 16:
            raise StreamRNNError(f"STREAMRNN_CUDA_CHUNKS: expected a whole number of chunks from 1 to 16, got {ch!r}")
        self.chunks = int(ch)
        #: staging of the GEMM tiles: "pipe" (default: next chunk's loads in flight during this
        #: chunk's FMAs, larger tiles) or "loop" (before; make_gemm_accum, an A/B for gpu_check)
        self.stage = os.environ.get("STREAMRNN_CUDA_STAGE", "pipe").lower()
        if self.stage not in ("pipe", "loop"):
            raise StreamRNNError(f"STREAMRNN_CUDA_STAGE: expected pipe or loop, got {self.stage!r}")
        #: the LSTM GEMM tiles in the vector layout (a thread's operands of one k contiguous:
        #: vector shared loads; layers/cuda_common.py, NOTES entry 83); opt-in until measured
        self.gemm_vec = _switch("STREAMRNN_CUDA_GEMM_VEC")
        #: run / push of an LSTM layer (no projection) over at most GRID_BMAX sequences:
        #: "block" = one block per few sequences (make_lstm_seq); "grid" = the persistent
        #: kernel spread over the GPU with grid syncs (make_lstm_seq_grid); "auto" (default) =
        #: grid where the H200 measured it faster (``_grid_cfg``, NOTES entry 52); "stepwise" =
        #: the grid kernel launched once per step (the simulator's multi-block check of it)
        self.seq_mode = os.environ.get("STREAMRNN_CUDA_SEQ", "auto").lower()
        if self.seq_mode not in ("auto", "block", "grid", "stepwise"):
            raise StreamRNNError(f"STREAMRNN_CUDA_SEQ: expected auto, block, grid or stepwise, got {self.seq_mode!r}")
        #: the persistent kernel's per-step barrier: "cg" (numba's grid sync) or "atomic" (a
        #: counter in global memory; an A/B for bench/gpu_check.py, NOTES entry 53)
        self.grid_barrier = os.environ.get("STREAMRNN_CUDA_GRIDSYNC", "cg").lower()
        if self.grid_barrier not in ("cg", "atomic"):
            raise StreamRNNError(f"STREAMRNN_CUDA_GRIDSYNC: expected cg or atomic, got {self.grid_barrier!r}")
        #: the persistent sequence kernel's shared arrays in dynamic shared memory: groups of
        #: more sequences at large H (NOTES entry 84); opt-in until measured
        self.grid_dyn = _switch("STREAMRNN_CUDA_GRID_DYN")
        #: the last kernel writes the outputs straight into mapped pinned host memory
        #: (graph / driver paths; no device-to-host copy)
        self.mapped_out = os.environ.get("STREAMRNN_CUDA_MAPPED_OUT", "1") != "0" and mode != "numba"
        #: one-row steps through a resident kernel fed by mapped host memory (persist.py);
        #: it exits after STREAMRNN_CUDA_PERSIST_IDLE_MS without a step and is relaunched
        #: ("onchip": its LSTM layers keep their weights in shared memory, make_lstm_onchip)
        pm = os.environ.get("STREAMRNN_CUDA_PERSIST", "0").strip().lower() or "0"
        if pm not in ("0", "1", "onchip"):
            raise StreamRNNError(f"STREAMRNN_CUDA_PERSIST: expected 0, 1 or onchip, got {pm!r}")
        self.persist = pm != "0"
        self.persist_onchip = pm == "onchip"
        idle = os.environ.get("STREAMRNN_CUDA_PERSIST_IDLE_MS", "50")
        try:
            self.persist_idle_ms = float(idle)
            if not self.persist_idle_ms > 0:
                raise ValueError
        except ValueError:
            raise StreamRNNError(f"STREAMRNN_CUDA_PERSIST_IDLE_MS: expected a number of milliseconds > 0, "
                                 f"got {idle!r}") from None
        #: STREAMRNN_CUDA_HOSTCALL=njit: a pool's step through a captured graph is one njit call
        #: (checks, staging, cuGraphLaunch, cuStreamSynchronize, outputs; NOTES entry 80);
        #: "python" (default until timed on a GPU): the driver calls through cuda-bindings
        hc = os.environ.get("STREAMRNN_CUDA_HOSTCALL", "python").strip().lower() or "python"
        if hc not in ("python", "njit"):
            raise StreamRNNError(f"STREAMRNN_CUDA_HOSTCALL: expected python or njit, got {hc!r}")
        self.entry = None  # (cuGraphLaunch, cuStreamSynchronize) addresses
        if hc == "njit" and mode == "graph":  # pragma: no cover - real GPU only
            try:
                lib = ctypes.CDLL("libcuda.so.1")
                self.entry = tuple(ctypes.cast(getattr(lib, f), ctypes.c_void_p).value
                                   for f in ("cuGraphLaunch", "cuStreamSynchronize"))
            except Exception as e:
                log.warning("streamrnn cuda: STREAMRNN_CUDA_HOSTCALL=njit: no driver entry points (%s)", e)
        #: per-phase host timings of pool.step / stream.step (see CudaPool.profile)
        self.profile = os.environ.get("STREAMRNN_CUDA_PROFILE", "0") not in ("", "0")
        self._lock = threading.Lock()
        self._stream = cuda.stream()
        self._bufs: dict = {}
        self._coop: dict = {}  # persistent kernel -> fits a cooperative launch on this GPU
        for fn, sig in _pack_sigs(self.dtype):  # host packing kernels: compiled at load
            fn.compile(sig)
        self._dummy_i = cuda.to_device(np.zeros(1, np.int64))
        self._zero_i = np.zeros(1, np.int64)
        self._dummy_2 = cuda.to_device(np.zeros((1, 1), self.dtype))
        self._step_layout()

    # -- objects ---------------------------------------------------------------------------
    def stream(self):
        return CudaStream(self)

    def pool(self, capacity: int):
        return CudaPool(self, capacity)

    # -- the step program ------------------------------------------------------------------
    def _step_layout(self):
        """Columns of the per-row feature buffer: each layer's output, and scratch columns
        (LSTM projection input, ONNX-GRU gates). Also the commit list of recurrent layers."""
        col = 0
        self.cols = []
        commit = []
        for L in self.layers:
            c = {}
            if L.kind == LSTM and L.dirs[0]["PROJ"] >= 0:
                c["scr"] = col
                col += L.H
            if L.kind == GRU and not (L.flags & F_LBR):
                c["scr"] = col
                col += 3 * L.H
            c["out"] = col
            col += L.O
            self.cols.append(c)
            if L.recurrent:
                commit += [c["out"], L.dirs[0]["HO"], L.HR]
        self.ftot = max(col, 1)
        self.commit = tuple(commit)

    def _fitted(self, make, t, *args, first=False):
        """``make(dtype, tile, *args)`` with the tile shrunk (units, then rows per thread) until
        ptxas keeps the accumulators in registers (no local memory). Real GPU only."""
        while True:
            k = make(self.dts, t, *args)
            if self.sim or t.RPT * t.UPT == 1:
                return k, t
            try:
                kern = k.compile(self._sig(first))
                if kern.local_mem_per_thread == 0:
                    return k, t
            except Exception as e:  # pragma: no cover - real GPU only
                log.debug("streamrnn cuda: could not inspect a kernel (%s)", e)
                return k, t
            t = t._replace(UPT=t.UPT // 2) if t.UPT > 1 else t._replace(RPT=t.RPT // 2)

    #: bytes of local memory per thread that ``_fitted_gemm`` accepts (ptxas spills a register
    #: or two of the 128-register float32 tiles; 64 float accumulators would be 256 bytes)
    SPILL_OK = 16

    def _fitted_gemm(self, make, gt, first, *args):
        """``make(dtype, gt, *args)`` with TM halved (threads doubled, same rows per block) until
        ptxas keeps the accumulators in registers (a spill of a few bytes, SPILL_OK, is not an
        accumulator array in local memory). A tile in the vector layout that spills at all has
        its chunk halved first, down to 8 (fewer staging registers: the many-streams tile
        spills 16 bytes with BK = 16 and none with 8 under ptxas 13.0; NOTES entry 83). Real
        GPU only."""
        from ..layers.cuda_common import gemm_threads

        while True:
            k = make(self.dts, gt, *args)
            if self.sim or gt.TM == 1 or gemm_threads(gt) >= 1024:
                return k, gt
            try:
                kern = k.compile(self._sig(first))
                lm = kern.local_mem_per_thread
                if getattr(k, "vec", False) and lm > 0 and gt.BK > 8:
                    log.debug("streamrnn cuda: %s (vector layout) spills %d bytes; halving BK", gt, lm)
                    gt = gt._replace(BK=gt.BK // 2)
                    continue
                if lm <= self.SPILL_OK:
                    return k, gt
                log.debug("streamrnn cuda: %s spills (%d bytes local); halving TM", gt, lm)
            except Exception as e:  # pragma: no cover - real GPU only
                log.debug("streamrnn cuda: could not inspect a kernel (%s)", e)
                return k, gt
            gt = gt._replace(TM=gt.TM // 2)

    def _sig(self, first):
        """Argument types of a step kernel as the pool launches it (ids and, for the first
        layer, src are strided views of the one staging buffer)."""
        from numba import types as nbt

        f = nbt.float32 if self.isz == 4 else nbt.float64
        v, m = nbt.Array(f, 1, "C"), nbt.Array(f, 2, "C")
        return (v, nbt.Array(nbt.int64, 1, "A"), nbt.Array(f, 2, "A") if first else m, m, m, m, nbt.int64)

    def step_ops(self, bucket: int, row_nt: int = 0, onchip: int = 0):
        """The kernels of one step for rows in ``bucket``: a list of
        (dispatcher, src_is_X, block, grid(n) function). ``row_nt``: threads of the one-block-
        per-row kernels (activation, softmax, commit; default 32 / 64), so that the persistent
        kernel can give every layer the same block size. ``onchip``: for the persistent kernel,
        items of dynamic shared memory per block that its LSTM layers (no projection) may keep
        their weights in; such a layer's op is then an ``OnChip`` (make_lstm_onchip), not a
        kernel, while the layers so far fit."""
        from ..layers.dense.cuda import make_commit_kernel, make_linear, make_linear_gemm, make_rowwise
        from ..layers.gru.cuda import make_gru_gemm, make_gru_step, make_gru_step2
        from ..layers.cuda_common import gemm_threads
        from ..layers.lstm.cuda import make_lstm_gemm, make_lstm_onchip, make_lstm_step
        from ..layers.rnn.cuda import make_rnn_gemm, make_rnn_step

        dts = self.dts
        ops = []

        def tile_op(disp, t, N, first):
            NR, UU = t.RS * t.RPT, t.U * t.UPT
            ops.append((disp, first, t.U * t.KS * t.RS, lambda n: (_cdiv(n, NR), _cdiv(N, UU))))

        def gemm_op(disp, gt, N, first):
            ny = _cdiv(N, gt.BU)
            ops.append((disp, first, gemm_threads(gt), lambda n: (_cdiv(n, gt.BM), ny)))

        def row_op(disp, NT, first):
            ops.append((disp, first, NT, lambda n: (n, 1)))

        nl = len(self.layers)
        soff = 0  # dynamic shared-memory items per block taken by on-chip LSTM layers so far
        for li, L in enumerate(self.layers):
            first, last = li == 0, li == nl - 1
            IN0 = 0 if first else self.cols[li - 1]["out"]
            c = self.cols[li]
            commit = self.commit if (last and not L.recurrent) else ()
            if L.kind == LSTM:
                d = L.dirs[0]
                proj = d["PROJ"] >= 0
                largs = (L.I, L.H, L.HR, IN0, c["scr"] if proj else c["out"],
                         d["WT"], d["RT"], d["B"], d["PEEP"], d["CLIP"],
                         bool(L.flags & F_INPUT_FORGET), d["ACTS"][:9], d["HO"], d["CO"],
                         last and not proj)
                gt = _gemm_tile(bucket, L.H, 4, self.isz, self.stage, vec=self.gemm_vec) if self.use_gemm else None
                t = _tile(bucket, L.H, 4, self.isz)
                oc = None
                if onchip and not proj and t.RS == 1 and t.UPT == 1:
                    oc = make_lstm_onchip(self.dts, t.U, t.KS, *largs)
                    if soff + oc.words > onchip:
                        oc = None
                if oc is not None:
                    soff += oc.words
                    ops.append((oc, first, t.U * t.KS, lambda n, ny=_cdiv(L.H, t.U): (1, ny)))
                elif gt is not None:
                    k, gt = self._fitted_gemm(make_lstm_gemm, gt, first, *largs, self.stage == "pipe",
                                              self.gemm_vec)
                    gemm_op(k, gt, L.H, first)
                else:
                    k, t = self._fitted(make_lstm_step, t, *largs, first=first)
                    tile_op(k, t, L.H, first)
                if proj:
                    t2 = _tile(bucket, L.HR, 1, self.isz)
                    k2 = make_linear(dts, t2, L.H, L.HR, c["scr"], c["out"], d["PROJ"], -1, -1, 0.0, 0.0, last)
                    tile_op(k2, t2, L.HR, False)
            elif L.kind == GRU:
                d = L.dirs[0]
                t = _tile(bucket, L.H, 6, self.isz)
                lbr = bool(L.flags & F_LBR)
                scr = c.get("scr", 0)
                # linear_before_reset (PyTorch's GRU): a tiled GEMM where the bucket has a tile
                gt = _gemm_tile(bucket, L.H, 4, self.isz, self.stage, gru=True) if (self.use_gemm and lbr) else None
                if gt is not None:
                    k, gt = self._fitted_gemm(make_gru_gemm, gt, first, L.I, L.H, IN0, c["out"], d["WT"], d["RT"],
                                              d["B"], d["RBH"], d["CLIP"], d["ACTS"][:6], d["HO"], last,
                                              self.stage == "pipe")
                    gemm_op(k, gt, L.H, first)
                else:
                    k, t = self._fitted(make_gru_step, t, L.I, L.H, IN0, c["out"], scr, d["WT"], d["RT"], d["B"],
                                        d["RBH"], lbr, d["CLIP"], d["ACTS"][:6], d["HO"], last and lbr, first=first)
                    tile_op(k, t, L.H, first)
                if not lbr:
                    t2 = _tile(bucket, L.H, 1, self.isz)
                    k2 = make_gru_step2(dts, t2, L.H, c["out"], scr, d["RT"], d["CLIP"], d["ACTS"][:6], d["HO"], last)
                    tile_op(k2, t2, L.H, False)
            elif L.kind == RNN:
                d = L.dirs[0]
                rargs = (L.I, L.H, IN0, c["out"], d["WT"], d["RT"], d["B"], d["CLIP"], d["ACTS"][:3], d["HO"], last)
                gt = _gemm_tile(bucket, L.H, 1, self.isz, self.stage, rnn=True) if self.use_gemm else None
                if gt is not None:
                    k, gt = self._fitted_gemm(make_rnn_gemm, gt, first, *rargs, self.stage == "pipe")
                    gemm_op(k, gt, L.H, first)
                else:
                    t = _tile(bucket, L.H, 1, self.isz)
                    tile_op(make_rnn_step(dts, t, *rargs), t, L.H, first)
            elif L.kind == DENSE:
                dargs = (L.I, L.O, IN0, c["out"], L.WT, L.B, L.act, L.alpha, L.beta, last, commit)
                gt = _gemm_tile(bucket, L.O, 1, self.isz, dense=True) if self.dense_gemm else None
                if gt is not None:
                    k, gt = self._fitted_gemm(make_linear_gemm, gt, first, *dargs)
                    gemm_op(k, gt, L.O, first)
                else:
                    t = _tile(bucket, L.O, 1, self.isz)
                    tile_op(make_linear(dts, t, *dargs), t, L.O, first)
            else:
                NT = row_nt or (32 if self.sim is False else 4)
                sm = L.kind == SOFTMAX
                k = make_rowwise(dts, NT, sm, sm and L.log, L.I, IN0, c["out"],
                                 -1 if sm else L.act, 0.0 if sm else L.alpha, 0.0 if sm else L.beta,
                                 last, commit)
                row_op(k, NT, first)
        if self.layers[-1].recurrent and self.commit:
            NT = row_nt or (4 if self.sim else 64)
            row_op(make_commit_kernel(dts, NT, self.commit), NT, False)
        return ops

    def one_row_ops(self, onchip: int = 0):
        """``step_ops`` of a one-row step for the persistent kernel: every layer with the block
        size of the one-row tile (see ``step_ops`` for ``onchip``)."""
        t = (STEP_TILES or _tiles())[_bucket(1)][1]
        return self.step_ops(_bucket(1), row_nt=t.U * t.KS * t.RS, onchip=onchip)

    # -- the sequence path -----------------------------------------------------------------
    def _seq_cfg(self, L, B):
        """(threads, sequences per block) of the persistent kernel of layer L for batch B."""
        if self.sim:
            return 4, 2
        width = max(L.H, L.HR)
        NT = min(256, max(32, _cdiv(width, 32) * 32))
        if L.kind == LSTM:
            per = 2 * L.HR + L.H + (L.H if L.dirs[0]["PROJ"] >= 0 else 1)
        elif L.kind == GRU:
            per = 2 * L.H + (2 if L.flags & F_LBR else 2 * L.H)
        else:
            per = 2 * L.H
        per *= self.isz
        budget = 46 * 1024
        if per > budget:
            raise StreamRNNError(
                f"device: expected a recurrent layer narrow enough for the CUDA sequence kernel "
                f"(at most {budget} bytes of shared memory per sequence), got hidden size {L.H} "
                f"({per} bytes); use device='cpu' for this model"
            )
        NB = max(1, min(8 if self.isz == 4 else 4, budget // per, _cdiv(B, self.n_sm)))  # NB*G registers
        return NT, NB

    #: at most this many sequences run with make_lstm_seq_grid ...
    GRID_BMAX = 64
    #: ... and with seq_mode "auto" at most this many, unless H >= GRID_AUTO_H (H200, T=250,
    #: us per step, grid with groups of 32 vs block: H=128 B=1 9.9 vs 26.6, B=16 15.1 vs
    #: 29.7, B=64 31.2 vs 40.7; H=512 B=1 11.2 vs 173.9, B=64 143.9 vs 245.5; NOTES 65, 67)
    GRID_AUTO_B = 64
    GRID_AUTO_H = 256
    #: ... through shared memory in groups of at most this many (as many as fit GRID_SMEM:
    #: 32 at H=128 in float32, 4 at H=512; each group costs a mostly fixed ~4.5 µs per step)
    GRID_GROUP = 32
    #: benchmarks: the persistent sequence kernel sums the device time of each phase of a
    #: step into the buffer ``grid_phases()`` reads (make_lstm_seq_grid's STAMPS)
    GRID_STAMPS = False
    #: static shared memory of a block of make_lstm_seq_grid (bytes, numba's static limit 48 KiB)
    GRID_SMEM = 46 * 1024
    #: ... and its dynamic shared memory with ``STREAMRNN_CUDA_GRID_DYN=1`` (bytes; within the
    #: 227 KiB a block of an H100 / H200 may opt in to; NOTES entry 84)
    GRID_DYN_SMEM = 200 * 1024

    def _grid_cfg(self, L, B):
        """(threads, units per block, sequences per group, blocks, bytes of dynamic shared memory)
        of the persistent sequence kernel (``layers/cuda_seqgrid.py``: an LSTM, a GRU with
        linear_before_reset, an RNN) for layer L and B sequences, or None where the per-block
        kernel runs (seq_mode "block", an ONNX-default GRU, a projection, more than GRID_BMAX sequences, or Rt columns too
        large for shared memory). The shared arrays are static (0 bytes dynamic) unless
        ``grid_dyn`` (then groups may be larger, up to GRID_DYN_SMEM)."""
        if L.kind == LSTM and L.dirs[0]["PROJ"] < 0:
            G = 4
        elif L.kind == GRU and L.flags & F_LBR:
            G = 3
        elif L.kind == RNN:
            G = 1
        else:
            return None
        if self.seq_mode == "block" or not 0 < B <= self.GRID_BMAX:
            return None
        if self.seq_mode == "auto" and B > self.GRID_AUTO_B and L.H < self.GRID_AUTO_H:
            return None
        H = L.H
        if self.sim:  # the simulator syncs grids of one block only; "stepwise" spreads over several
            UPB = H if self.seq_mode in ("grid", "auto") else 2
        else:
            UPB = _cdiv(H, self.n_sm)
        C = G * UPB
        KS = (2 if self.seq_mode == "stepwise" else 1) if self.sim else max(1, 128 // C)  # sim: both split-K paths
        def smem(bm):  # Rt columns + h of a group + partial sums, bytes
            return (H * C + bm * H + KS * bm * C) * self.isz

        lim = self.GRID_DYN_SMEM if self.grid_dyn else self.GRID_SMEM
        BMAX = 1  # sequences per group: a power of two, as few as B needs, as many as fit
        while BMAX < min(B, self.GRID_GROUP):
            BMAX *= 2
        while BMAX > 1 and smem(BMAX) > lim:
            BMAX //= 2
        if smem(BMAX) > lim or C * KS > 1024:
            return None
        return C * KS, UPB, BMAX, _cdiv(H, UPB), smem(BMAX) if self.grid_dyn else 0

    def _seq_grid(self, cfg, L, dd, col0, rev, XW, Y, st_d, sidx_d, lens_d, B, T, s):
        """One direction of layer L over the chunk with the persistent sequence kernel
        (``make_lstm_seq_grid`` / ``make_gru_seq_grid`` / ``make_rnn_seq_grid``); False if the
        persistent launch is refused on this device (then the caller runs the per-block kernel)."""
        from ..layers.gru.cuda import make_gru_seq_grid
        from ..layers.lstm.cuda import make_lstm_seq_grid
        from ..layers.rnn.cuda import make_rnn_seq_grid

        NT, UPB, BMAX, nblk, dyn = cfg
        grid_sync = self.seq_mode in ("grid", "auto")
        sync = (2 if self.grid_barrier == "atomic" else 1) if grid_sync else 0
        if L.kind == LSTM:
            k = make_lstm_seq_grid(self.dts, NT, UPB, BMAX, L.H, dd["RT"], dd["PEEP"], dd["CLIP"],
                                   bool(L.flags & F_INPUT_FORGET), dd["ACTS"][:9], dd["HO"], dd["CO"], col0, rev,
                                   sync, self.GRID_STAMPS, dyn > 0)
        elif L.kind == GRU:
            k = make_gru_seq_grid(self.dts, NT, UPB, BMAX, L.H, dd["RT"], dd["RBH"], dd["CLIP"], dd["ACTS"][:6],
                                  dd["HO"], col0, rev, sync, self.GRID_STAMPS, dyn > 0)
        else:
            k = make_rnn_seq_grid(self.dts, NT, UPB, BMAX, L.H, dd["RT"], dd["CLIP"], dd["ACTS"][:3], dd["HO"], col0,
                                  rev, sync, self.GRID_STAMPS, dyn > 0)
        hbuf = self._buf("hbuf", (2, B, L.H))
        cbuf = self._buf("cbuf", (B, L.H))
        bar = self._buf("gbar", (8,), np.int64)
        if grid_sync and (self.grid_barrier == "atomic" or self.GRID_STAMPS):  # counters from zero
            bar.copy_to_device(np.zeros(8, np.int64), stream=s)
        args = (self.W, XW, Y, st_d, sidx_d, lens_d, hbuf, cbuf, bar, B, T)
        if grid_sync:
            if not self.sim:  # pragma: no cover - real GPU only
                fits = self._coop.get(k)  # once per kernel: compile + occupancy query
                if fits is None:
                    try:
                        kern = k.compile(tuple(k.typeof_pyval(a) for a in args + (0, T, 1)))
                        allow_smem(self.drv, kern, dyn)
                        fits = self._coop[k] = nblk <= kern.max_cooperative_grid_blocks(NT, dyn)
                    except Exception as e:  # noqa: BLE001 - e.g. no cudadevrt to link the grid sync
                        log.warning("streamrnn cuda: no persistent sequence kernel here (%s); using the per-block one", e)
                        self.seq_mode = "block"
                        return False
                if not fits:
                    return False
                try:
                    k[nblk, NT, s, dyn](*args, 0, T, 1)
                except Exception as e:  # noqa: BLE001 - a refused cooperative launch runs nothing
                    log.warning("streamrnn cuda: persistent sequence launch refused (%s); using the per-block kernel", e)
                    self.seq_mode = "block"
                    return False
                return True
            k[nblk, NT, s, dyn](*args, 0, T, 1)
        else:
            for t in range(T):
                k[nblk, NT, s, dyn](*args, t, t + 1, 0)
            k[nblk, NT, s, dyn](*args, T, T, 1)
        return True

    def grid_phases(self) -> dict:
        """With ``GRID_STAMPS``: mean device µs per step of each phase of the last persistent
        sequence kernel launch (seen by its block 0): h loaded, products, cell, grid barrier."""
        a = self._buf("gbar", (8,), np.int64).copy_to_host()
        steps = int(a[1])
        if steps == 0:
            return {"steps": 0}
        names = ("load h", "products", "cell", "barrier")
        return {"steps": steps, **{k: a[2 + i] / steps / 1e3 for i, k in enumerate(names)}}

    def _buf(self, name, shape, dtype=None):
        """A grow-only device buffer viewed as ``shape``."""
        dtype = np.dtype(dtype or self.dtype)
        size = max(1, int(np.prod(shape)))
        b = self._bufs.get(name)
        if b is None or b.size < size or b.dtype != dtype:
            b = cuda.device_array(max(size, 2 * (b.size if b is not None and b.dtype == dtype else 0)), dtype)
            self._bufs[name] = b
        return b[:size].reshape(shape)

    def _sequence(self, X_d, B, T, lens_d, st_d, sidx_d, s):
        """Every layer over a (B*T, I) device chunk; states st_d[sidx_d[b]] updated. -> (B*T, O)."""
        from ..layers.dense.cuda import make_linear, make_rowwise
        from ..layers.gru.cuda import make_gru_seq
        from ..layers.lstm.cuda import make_lstm_seq
        from ..layers.rnn.cuda import make_rnn_seq

        M = B * T
        dts, Wd = self.dts, self.W
        bk = _bucket(M)
        cur = X_d
        for li, L in enumerate(self.layers):
            Y = self._buf("y%d" % (li & 1), (M, L.O))
            if L.recurrent:
                NT, NB = self._seq_cfg(L, B)
                for d in range(L.D):
                    dd = L.dirs[d]
                    XW = self._buf("xw", (M, L.G))
                    t = _tile(bk, L.G, 1, self.isz)
                    lin = make_linear(dts, t, L.I, L.G, 0, 0, dd["WT"], dd["B"], -1, 0.0, 0.0, False)
                    grid = (_cdiv(M, t.RS * t.RPT), _cdiv(L.G, t.U * t.UPT))
                    self._launch(lin, grid, t.U * t.KS * t.RS, s, Wd, self._dummy_i, cur, XW, self._dummy_2, self._dummy_2, M)
                    rev = L.rev or d == 1
                    col0 = d * L.HR
                    cfg = self._grid_cfg(L, B)
                    if cfg is not None and self._seq_grid(cfg, L, dd, col0, rev, XW, Y, st_d, sidx_d, lens_d, B, T, s):
                        continue
                    if L.kind == LSTM:
                        k = make_lstm_seq(dts, NT, NB, L.H, L.HR, dd["RT"], dd["PEEP"], dd["PROJ"], dd["CLIP"],
                                          bool(L.flags & F_INPUT_FORGET), dd["ACTS"][:9], dd["HO"], dd["CO"], col0, rev)
                    elif L.kind == GRU:
                        k = make_gru_seq(dts, NT, NB, L.H, dd["RT"], dd["RBH"], bool(L.flags & F_LBR), dd["CLIP"],
                                         dd["ACTS"][:6], dd["HO"], col0, rev)
                    else:
                        k = make_rnn_seq(dts, NT, NB, L.H, dd["RT"], dd["CLIP"], dd["ACTS"][:3], dd["HO"], col0, rev)
                    self._launch(k, _cdiv(B, NB), NT, s, Wd, XW, Y, st_d, sidx_d, lens_d, B, T)
            elif L.kind == DENSE:
                t = _tile(bk, L.O, 1, self.isz)
                k = make_linear(dts, t, L.I, L.O, 0, 0, L.WT, L.B, L.act, L.alpha, L.beta, False)
                grid = (_cdiv(M, t.RS * t.RPT), _cdiv(L.O, t.U * t.UPT))
                self._launch(k, grid, t.U * t.KS * t.RS, s, Wd, self._dummy_i, cur, Y, self._dummy_2, self._dummy_2, M)
            else:
                NT = 4 if self.sim else 32
                sm = L.kind == SOFTMAX
                k = make_rowwise(dts, NT, sm, sm and L.log, L.I, 0, 0, -1 if sm else L.act,
                                 0.0 if sm else L.alpha, 0.0 if sm else L.beta, False)
                self._launch(k, M, NT, s, Wd, self._dummy_i, cur, Y, self._dummy_2, self._dummy_2, M)
            cur = Y
        return cur

    @staticmethod
    def _launch(disp, grid, block, s, *args):
        disp[grid, block, s](*args)

    def run(self, X3: np.ndarray, lengths: np.ndarray, state: np.ndarray) -> np.ndarray:
        """X3 (B, T, I) validated, lengths (B,) int64, state (B, S) updated in place -> Y (B, T, O)."""
        B, T, I = X3.shape
        O, S = self.O, self.S
        if B == 0 or T == 0:
            return np.zeros((B, T, O), self.dtype)
        with self._lock:
            s = self._stream
            X_d = cuda.to_device(np.ascontiguousarray(X3.reshape(B * T, I)), stream=s)
            lens_d = cuda.to_device(np.ascontiguousarray(lengths, dtype=np.int64), stream=s)
            sidx_d = cuda.to_device(np.arange(B, dtype=np.int64), stream=s)
            st_h = state if S else np.zeros((B, 1), self.dtype)
            st_d = cuda.to_device(np.ascontiguousarray(st_h), stream=s)
            Y_d = self._sequence(X_d, B, T, lens_d, st_d, sidx_d, s)
            Y = Y_d.copy_to_host(stream=s)
            st = st_d.copy_to_host(stream=s)
            s.synchronize()
        if S:
            state[...] = st
        Y = Y.reshape(B, T, O)
        if np.any(lengths < T):
            Y[np.arange(T)[None, :] >= lengths[:, None]] = 0
        return Y

    def push(self, arena_d, sid: int, X: np.ndarray) -> np.ndarray:
        """One stream (arena row ``sid``) advances a validated chunk X (T, I) -> Y (T, O)."""
        T = X.shape[0]
        if T == 0:
            return np.zeros((0, self.O), self.dtype)
        with self._lock:
            s = self._stream
            X_d = cuda.to_device(np.ascontiguousarray(X), stream=s)
            lens_d = cuda.to_device(np.array([T], np.int64), stream=s)
            sidx_d = cuda.to_device(np.array([sid], np.int64), stream=s)
            Y_d = self._sequence(X_d, 1, T, lens_d, arena_d, sidx_d, s)
            Y = Y_d.copy_to_host(stream=s)
            s.synchronize()
        return Y


# ---------------------------------------------------------------------------------------------
# A device state arena and its step (shared by pools and single streams)
# ---------------------------------------------------------------------------------------------
class _Core:
    GRAPHS = 16  # n -> the graph of a step of n rows; (r0, r1) -> one chunk's (step_chunked)

    def __init__(self, eng: CudaEngine, capacity: int):
        self.eng = eng
        self.cap = int(capacity)
        self.S1 = max(eng.S, 1)
        self.arena = cuda.to_device(np.zeros((self.cap, self.S1), eng.dtype))
        self.stream = cuda.stream()
        self.hstream = int(self.stream.handle) if not eng.sim else 0
        self.cstream = eng.drv.cu.CUstream(self.hstream) if eng.drv is not None else None
        self.stamp = np.zeros(self.cap, np.int64)
        self.gctx = np.zeros(G_LEN, np.int64)  # the fused graph step's context (also holds epoch)
        self.ghandles: dict = {}  # n -> int handle of graphs[n] (the fused graph step)
        self.fused = None  # graph_step(dtype) once it passed the self-test (HOSTCALL=njit)
        self._packf = pack_fast(eng.dtype)
        self.nmax = 0
        self.h64, self.hf, self.c0 = np.zeros((1, 1), np.int64), np.zeros((1, 1), eng.dtype), 0  # until _grow
        self.bad = np.full(max(1, numba.get_num_threads()), -1, np.int64)  # per part of _stage_par
        self.gen = 0
        self.ops: dict = {}  # bucket -> ops
        self.bound: dict = {}  # bucket -> (gen, [(fn, params, block, grid)])
        self.graphs: OrderedDict = OrderedDict()  # n or (r0, r1) -> graph exec
        self.cbound: dict = {}  # (r0, r1) -> (gen, the chunk's driver launches)
        self.stream2 = self.cstream2 = None  # the chunks' second stream (step_chunked)
        self.last_n = -1
        self.mode = eng.mode
        self.mapped = eng.mapped_out
        self.server = None  # persist.Server of the one-row steps (STREAMRNN_CUDA_PERSIST=1)
        self._persist_error = ()  # persist.PersistError once a server exists
        #: STREAMRNN_CUDA_PROFILE: (n, pack, launch, sync, copy-out) ns per call; _tl: launch done
        self.prof = [] if eng.profile else None
        self._tl = 0
        self._grow(1)
        if self.mode != "numba":
            self._self_test()
        self._warm()
        if eng.persist:
            self._serve()

    @property
    def epoch(self) -> int:
        """Calls so far: a stream id's stamp equal to it marks the id as seen in this call."""
        return int(self.gctx[G_EPOCH])

    @epoch.setter
    def epoch(self, v: int) -> None:
        self.gctx[G_EPOCH] = v

    def _bind_fused(self) -> None:
        """Point ``gctx`` at the current staging and output rows (after ``_grow``)."""
        x, eng = self.gctx, self.eng
        x[G_ROWS_AT] = self.hin.ctypes.data
        x[G_ROWS] = self.nmax
        x[G_P8] = self.pitch // 8
        x[G_PF] = self.pitch // eng.isz
        x[G_C0] = self.c0
        x[G_I] = eng.I
        x[G_STAMP] = self.stamp.ctypes.data
        x[G_CAP] = self.cap
        x[G_OUT] = self.hout.ctypes.data
        x[G_O] = eng.O
        x[G_STREAM] = self.hstream
        if eng.entry is not None:  # pragma: no cover - real GPU only
            x[G_LAUNCH], x[G_SYNC] = eng.entry

    def _warm(self) -> None:
        """Build the kernels of every row bucket a call of at most ``cap`` rows can use (on a
        GPU, compile them and pack their launch parameters): JIT compilation at load time, not
        in a pool's first call of each size class."""
        lo = 1
        for b, (mx, _) in enumerate(STEP_TILES or _tiles()):
            if lo > self.cap:
                break
            self._ops(b)
            if self.mode != "numba":
                self._bound(b)
                if self.eng.chunks > 1:
                    self._warm_chunks(b)
            if mx is None:
                break
            lo = mx + 1

    def _warm_chunks(self, bucket) -> None:
        """With STREAMRNN_CUDA_CHUNKS: compile the bucket's kernels for a chunk's arguments (views
        of the buffers; outputs in device memory, not mapped) and the backup / restore kernels,
        so that a pool's first chunked call compiles nothing."""
        for disp, first, _, _ in self._ops(bucket):
            disp.compile(tuple(disp.typeof_pyval(a) for a in self._chunk_args(0, 1, first)))
        for to_arena in (False, True):
            k, _ = self._copy_rows_op(to_arena)
            k.compile(tuple(k.typeof_pyval(a) for a in (self.ids_d[:1], self.bk_d[:1], self.arena, 1)))

    # -- buffers ---------------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        """Buffers for nmax >= n rows. The ids and frames of a call travel in one staging row
        per stream, ``[id (int64) | frame (I items) | pad to 8 bytes]`` (pinned on the host,
        one copy in); ``hids`` / ``hX`` (host) and ``ids_d`` / ``X_d`` (device) are strided
        views of it. With ``mapped`` the outputs land in mapped pinned memory (``hout_m``, the
        last kernel's ``out``) and need no copy out."""
        if n <= self.nmax:
            return
        eng = self.eng
        nmax = min(self.cap, max(n, 2 * self.nmax, 1))
        self.quiesce()
        self._drop_graphs()
        isz, I = eng.isz, eng.I
        P = 8 + _cdiv(I * isz, 8) * 8
        c0 = 8 // isz
        self.pitch = P
        self.in_d = cuda.device_array((nmax, P), np.uint8)
        self.ids_d = self.in_d.view(np.int64)[:, 0]
        self.X_d = self.in_d.view(eng.dtype)[:, c0 : c0 + I]
        if eng.persist:  # the resident kernel reads the staging rows and writes the outputs over PCIe
            from .persist import mapped

            self.hin_w, hw = mapped(nmax * P // 8, np.int64)
            self.hin = hw.view(np.uint8).reshape(nmax, P)
            self.in_w = self.in_d.view(np.int64).reshape(nmax * P // 8)
        else:
            self.hin = cuda.pinned_array((nmax, P), np.uint8)
        self.hids = self.hin.view(np.int64)[:, 0]
        self.hX = self.hin.view(eng.dtype)[:, c0 : c0 + I]
        self.h64, self.hf, self.c0 = self.hin.view(np.int64), self.hin.view(eng.dtype), c0  # C-contiguous views
        self.feat_d = cuda.device_array((nmax, eng.ftot), eng.dtype)
        if eng.chunks > 1:  # step_chunked: the old state rows of a call, restored if it is refused
            self.bk_d = cuda.device_array((nmax, self.S1), eng.dtype)
        self.out_d = cuda.device_array((nmax, eng.O), eng.dtype)
        self.hout_m = None
        if self.mapped or eng.persist:  # hout: a plain view of the mapped rows (cheap slicing)
            from .persist import mapped

            try:
                self.hout_m, self.hout = mapped((nmax, eng.O), eng.dtype)
            except Exception as e:  # pragma: no cover - real GPU only
                log.warning("streamrnn cuda: no mapped host memory (%s); copying outputs out", e)
                self.mapped = False
        if self.hout_m is None:
            self.hout = cuda.pinned_array((nmax, eng.O), eng.dtype)
        self.nmax = nmax
        self.gen += 1
        self._bind_fused()
        if self.server is not None:  # the fused host step writes to the new rows
            self.server.bind()

    def pack(self, ids: np.ndarray, X: np.ndarray, alive: np.ndarray) -> int:
        """Validate ids (range, open, distinct) and frames (shape, finite) and stage them in the
        pinned rows for ``step(n)``; a status of engine.cpu (0 = ok). Frames of at least
        ``PACK_PAR_MIN`` values are staged by all of numba's threads."""
        n = ids.shape[0]
        if n <= self.nmax and n * X.shape[1] < PACK_PAR_MIN:  # checked and staged in one call
            return self._packf(ids, X, alive, self.gctx)
        # n > nmax only when n > capacity: then the ids repeat or are unknown and the id check
        # refuses the call before anything is staged; else the frames are staged in parallel
        self.epoch += 1
        rc = _pack_rows(ids, X, alive, self.stamp, self.epoch, self.eng.I, self.h64, self.hf, self.c0, False)
        if rc or n > self.nmax:
            return rc
        r = self._stage_range(ids, X, 0, n)
        return _cpu.E_NONFINITE | (r << 8) if r >= 0 else _cpu.OK

    # -- the persistent kernel (STREAMRNN_CUDA_PERSIST=1) -------------------------------------
    #: STREAMRNN_CUDA_PERSIST=onchip: bytes of shared memory per block for LSTM weights (an
    #: H100 / H200 block may have 227 KiB; the rest is for the layers' static arrays)
    ONCHIP_BYTES = 192 * 1024

    def _serve(self) -> None:
        """Serve one-row steps through the persistent kernel (persist.py) once it passes a
        self-test against numba's launch path; else log why and keep the other paths."""
        from .persist import PersistError, Server

        self._persist_error = PersistError
        eng = self.eng
        onchip = 0
        if eng.persist_onchip:  # dynamic shared memory per block for LSTM weights (items)
            onchip = (1 << 22) if eng.sim else self.ONCHIP_BYTES // eng.isz
        ops = eng.one_row_ops(onchip)
        NT = ops[0][2]
        if any(b != NT or not hasattr(d, "body") for d, _, b, _ in ops):
            log.warning("streamrnn cuda: STREAMRNN_CUDA_PERSIST: this model's one-row kernels differ in "
                        "block size; not using the persistent kernel")
            return
        srv = None
        try:
            srv = Server(self, ops, eng.persist_idle_ms)
            why = self._persist_test(srv)
        except Exception as e:  # pragma: no cover - real GPU only
            why = f"{type(e).__name__}: {e}"
        if why:  # pragma: no cover - real GPU only
            log.warning("streamrnn cuda: the persistent step kernel failed its self-test (%s); not using it", why)
            if srv is not None:
                try:
                    srv.stop()
                except Exception:
                    pass
            return
        self.server = srv

    def _persist_test(self, srv) -> str:
        """One frame on arena row 0 through numba's launches, then through ``srv``: the outputs
        and the new state must agree (relative 1e-5 in float32). Returns "" or why not."""
        eng = self.eng
        x = np.random.default_rng(1).standard_normal(eng.I).astype(eng.dtype)
        got = [self._row0(fn, x, srv.stop) for fn in (lambda: self._step_numba(1, _bucket(1)), lambda: srv.step(1))]
        self.arena[0:1].copy_to_device(np.zeros((1, self.S1), eng.dtype))
        rtol = 1e-5 if eng.dtype == np.float32 else 1e-10
        for a, b in zip(*got):
            if not np.allclose(b, a, rtol=rtol, atol=rtol * max(1.0, float(np.abs(a).max()))):
                return f"results differ from numba's launch path (max abs {float(np.abs(a - b).max()):.3g})"
        return ""

    def _row0(self, fn, x, after=None):
        """The self-tests' trial: arena row 0 zeroed, frame x staged for stream 0, ``fn()`` (one
        step of one row by some path), ``after()``; returns (outputs, arena row 0)."""
        self.arena[0:1].copy_to_device(np.zeros((1, self.S1), self.eng.dtype))
        self.hids[0] = 0
        self.hX[0] = x
        self.hout[0] = np.nan  # a path that does not write its outputs fails
        fn()
        y = self.hout[0].copy()
        if after is not None:
            after()
        return y, self.arena[0:1].copy_to_host()

    def quiesce(self) -> None:
        """Stop the persistent kernel (if running): before any other device work on the state."""
        if self.server is not None:
            self.server.stop()

    def _drop_graphs(self) -> None:
        self.ghandles.clear()
        while self.graphs:
            _, g = self.graphs.popitem()
            try:
                self.eng.drv.cu.cuGraphExecDestroy(g)
            except Exception:  # pragma: no cover
                pass

    def _args(self, first: bool):
        """Kernel arguments of the driver / graph paths."""
        e = self.eng
        out = self.hout_m if (self.mapped and self.hout_m is not None) else self.out_d
        return (e.W, self.ids_d, self.X_d if first else self.feat_d, self.feat_d, out, self.arena, 1)

    def _ops(self, bucket):
        ops = self.ops.get(bucket)
        if ops is None:
            ops = self.ops[bucket] = self.eng.step_ops(bucket)
        return ops

    def _bound(self, bucket):
        """Driver-launch form of the bucket's ops for the current buffers."""
        b = self.bound.get(bucket)
        if b is not None and b[0] == self.gen:
            return b[1]
        drv = self.eng.drv
        out = []
        for disp, first, block, grid in self._ops(bucket):
            args = self._args(first)
            kernel = disp.compile(tuple(disp.typeof_pyval(a) for a in args))
            out.append((drv.function(kernel), _Params(kernel, args), block, grid))
        self.bound[bucket] = (self.gen, out)
        return out

    # -- the step --------------------------------------------------------------------------
    def step(self, n: int) -> None:
        """Advance rows hids[:n] with frames hX[:n]; outputs land in hout[:n]."""
        if self.server is not None:
            if n == 1:
                try:
                    self.server.step(1)
                    return
                except self._persist_error as e:  # not served: no state changed; the other paths from now on
                    self._drop_server(e)
            else:
                self.server.stop()
        if self.mode == "numba":
            self._step_numba(n, _bucket(n))
            return
        if not getattr(_tls, "ctx", False):  # raw driver calls need the context current here
            cuda.current_context()
            _tls.ctx = True
        drv = self.eng.drv
        if self.mode == "graph":  # (the bucket is needed only to capture or enqueue)
            g = self.graphs.get(n)
            if g is None and n == self.last_n:
                try:
                    g = self._capture(n, _bucket(n))
                except Exception as e:  # pragma: no cover - real GPU only
                    log.warning("streamrnn cuda: CUDA graph capture failed (%s); using driver launches", e)
                    self.mode = "driver"
            self.last_n = n
            if g is not None:
                if len(self.graphs) > 1:
                    self.graphs.move_to_end(n)
                cu, cs = drv.cu, self.cstream
                err = cu.cuGraphLaunch(g, cs)[0]
                if self.prof is not None:
                    self._tl = _now()
                err2 = cu.cuStreamSynchronize(cs)[0]
                if err != drv.OK or err2 != drv.OK:
                    drv.check(err, "cuGraphLaunch")
                    drv.check(err2, "cuStreamSynchronize")
                return
        self._enqueue(n, _bucket(n))
        if self.prof is not None:
            self._tl = _now()
        drv.check(drv.cu.cuStreamSynchronize(self.cstream), "cuStreamSynchronize")

    def _drop_server(self, e) -> None:
        log.warning("streamrnn cuda: %s; using %s launches for this %s", e, self.mode,
                    "stream" if self.cap == 1 else "pool")
        self.server = None

    def finish_row(self, rc: int) -> None:
        """Serve the one-row step the fused host step (``persist.row_step``) staged and left
        unfinished: ``ROW_STAGED`` (no kernel serving: ``Server.step`` launches one) or
        ``ROW_SENT`` (sent, not yet acknowledged: ``Server._wait``). A kernel that does not
        answer changed no state; the step then takes the other path, as in ``step``."""
        from .persist import ROW_SENT

        srv = self.server
        try:
            if rc == ROW_SENT:
                srv._wait(srv.seq + 1)
            else:
                srv.step(1)
            return
        except self._persist_error as e:
            self._drop_server(e)
        self.step(1)

    def _step_numba(self, n, bucket):
        s = self.stream
        self.in_d[:n].copy_to_device(self.hin[:n], stream=s)
        e = self.eng
        for disp, first, block, grid in self._ops(bucket):
            src = self.X_d if first else self.feat_d
            disp[grid(n), block, s](e.W, self.ids_d, src, self.feat_d, self.out_d, self.arena, n)
        if self.prof is not None:
            self._tl = _now()
        self.out_d[:n].copy_to_host(self.hout[:n], stream=s)
        s.synchronize()

    # -- large calls in chunks (STREAMRNN_CUDA_CHUNKS) ----------------------------------------
    def chunk_count(self, n: int) -> int:
        """How many chunks ``step_chunked`` splits a call of n rows into (1: not chunked)."""
        P = self.eng.chunks
        return 1 if P <= 1 or n > self.nmax else max(1, min(P, n // (2 if self.eng.sim else CHUNK_MIN)))

    def step_chunked(self, ids: np.ndarray, X: np.ndarray, alive: np.ndarray) -> int:
        """``pack`` + ``step`` of one call in ``chunk_count(n)`` chunks of rows, so that the
        device works on chunk p (copy in, kernels, copy out; on two streams in turn) while the
        host validates and stages chunk p + 1 (bench/NOTES.md entry 73). The ids are checked
        first, for the whole call; a chunk whose frames hold a NaN / Inf refuses the call: the
        device first copies the state rows of every chunk already launched back from their
        backup (each chunk's first kernel saves them), so a refused call changes no state.
        Returns a status of engine.cpu (0 = ok; outputs in hout[:n])."""
        n = ids.shape[0]
        self.epoch += 1
        rc = _pack_rows(ids, X, alive, self.stamp, self.epoch, self.eng.I, self.h64, self.hf, self.c0, False)
        if rc:
            return rc
        self.quiesce()
        P = self.chunk_count(n)
        m = _cdiv(n, P)
        streams = None
        if self.mode != "numba":
            if not getattr(_tls, "ctx", False):  # raw driver calls need the context current here
                cuda.current_context()
                _tls.ctx = True
            if self.stream2 is None:
                self.stream2 = cuda.stream()
                self.cstream2 = self.eng.drv.cu.CUstream(int(self.stream2.handle))
            streams = (self.cstream, self.cstream2)
        graph = self.mode == "graph" and n == self.last_n  # captured on a size's second call
        self.last_n = n
        for p in range(P):
            r0, r1 = p * m, min(n, (p + 1) * m)
            bad = self._stage_range(ids, X, r0, r1)
            if bad >= 0:
                self._restore(r0)
                return _cpu.E_NONFINITE | (bad << 8)
            if streams is None:
                self._chunk_numba(r0, r1)
            else:
                self._chunk_launch(r0, r1, streams[p & 1], graph)
        if self.prof is not None:
            self._tl = _now()
        if streams is None:
            self.stream.synchronize()
        else:
            drv = self.eng.drv
            for hs in streams:
                drv.check(drv.cu.cuStreamSynchronize(hs), "cuStreamSynchronize")
        return _cpu.OK

    def _stage_range(self, ids, X, r0, r1) -> int:
        """Stage rows r0..r1-1 (all threads from ``PACK_PAR_MIN`` values); the first row with a
        NaN / Inf, or -1."""
        if (r1 - r0) * X.shape[1] < PACK_PAR_MIN:
            return _stage_rows(ids, X, self.h64, self.hf, self.c0, r0, r1)
        bad = self.bad
        _stage_par(ids[r0:r1], X[r0:r1], self.h64[r0:r1], self.hf[r0:r1], self.c0, bad)
        for r in bad:  # parts in row order: the first bad part holds the first bad row
            if r >= 0:
                return r0 + int(r)
        return -1

    def _chunk_args(self, r0, r1, first):
        e = self.eng
        src = self.X_d if first else self.feat_d
        return (e.W, self.ids_d[r0:r1], src[r0:r1], self.feat_d[r0:r1], self.out_d[r0:r1], self.arena, r1 - r0)

    def _copy_rows_op(self, to_arena: bool):
        """(kernel, threads) that saves a chunk's state rows (or, ``to_arena``, restores them)."""
        from ..layers.dense.cuda import make_copy_rows

        NT = 4 if self.eng.sim else 256
        return make_copy_rows(NT, to_arena), NT

    def _chunk_numba(self, r0, r1):
        s, m = self.stream, r1 - r0
        self.in_d[r0:r1].copy_to_device(self.hin[r0:r1], stream=s)
        k, NT = self._copy_rows_op(False)
        k[m, NT, s](self.ids_d[r0:r1], self.bk_d[r0:r1], self.arena, m)
        for disp, first, block, grid in self._ops(_bucket(m)):
            disp[grid(m), block, s](*self._chunk_args(r0, r1, first))
        self.out_d[r0:r1].copy_to_host(self.hout[r0:r1], stream=s)

    def _chunk_bound(self, r0, r1):
        """Driver-launch form of one chunk's ops (backup first) for the current buffers."""
        b = self.cbound.get((r0, r1))
        if b is not None and b[0] == self.gen:
            return b[1]
        drv, m = self.eng.drv, r1 - r0
        k, NT = self._copy_rows_op(False)
        ops = [(k, True, NT, lambda n: (n, 1))] + list(self._ops(_bucket(m)))
        out = []
        for i, (disp, first, block, grid) in enumerate(ops):
            if i == 0:
                args = (self.ids_d[r0:r1], self.bk_d[r0:r1], self.arena, m)
            else:
                args = self._chunk_args(r0, r1, first)
            kernel = disp.compile(tuple(disp.typeof_pyval(a) for a in args))
            out.append((drv.function(kernel), _Params(kernel, args), block, grid(m)))
        self.cbound[(r0, r1)] = (self.gen, out)
        return out

    def _chunk_enqueue(self, r0, r1, hs):
        drv = self.eng.drv
        cu, chk, m = drv.cu, drv.check, r1 - r0
        P, OB = self.pitch, self.eng.O * self.eng.isz
        bound = self._chunk_bound(r0, r1)
        chk(cu.cuMemcpyHtoDAsync(_dptr(self.in_d) + r0 * P, self.hin.ctypes.data + r0 * P, m * P, hs),
            "cuMemcpyHtoDAsync")
        for fn, params, block, (gx, gy) in bound:
            chk(cu.cuLaunchKernel(fn, gx, gy, 1, block, 1, 1, 0, hs, params.ptr, 0), "cuLaunchKernel")
        chk(cu.cuMemcpyDtoHAsync(self.hout.ctypes.data + r0 * OB, _dptr(self.out_d) + r0 * OB, m * OB, hs),
            "cuMemcpyDtoHAsync")

    def _chunk_launch(self, r0, r1, hs, graph):
        if graph:
            g = self.graphs.get((r0, r1))
            if g is None:
                try:
                    self._chunk_bound(r0, r1)  # compile outside the capture
                    g = self._capture_as((r0, r1), lambda: self._chunk_enqueue(r0, r1, self.cstream))
                except Exception as e:  # pragma: no cover - real GPU only
                    log.warning("streamrnn cuda: CUDA graph capture failed (%s); using driver launches", e)
                    self.mode = "driver"
            if g is not None:
                self.graphs.move_to_end((r0, r1))
                self.eng.drv.check(self.eng.drv.cu.cuGraphLaunch(g, hs), "cuGraphLaunch")
                return
        self._chunk_enqueue(r0, r1, hs)

    def _restore(self, nrows: int) -> None:
        """After a refused chunked call: wait for the chunks launched (rows < nrows), then copy
        their state rows back from the backup."""
        if self.stream2 is not None:
            self.stream2.synchronize()
        self.stream.synchronize()
        if nrows > 0:
            k, NT = self._copy_rows_op(True)
            k[nrows, NT, self.stream](self.ids_d[:nrows], self.bk_d[:nrows], self.arena, nrows)
            self.stream.synchronize()

    def _enqueue(self, n, bucket):
        drv = self.eng.drv
        cu, chk, hs = drv.cu, drv.check, self.cstream
        bound = self._bound(bucket)
        chk(cu.cuMemcpyHtoDAsync(_dptr(self.in_d), self.hin.ctypes.data, n * self.pitch, hs), "cuMemcpyHtoDAsync")
        for fn, params, block, grid in bound:
            params.n.value = n
            gx, gy = grid(n)
            chk(cu.cuLaunchKernel(fn, gx, gy, 1, block, 1, 1, 0, hs, params.ptr, 0), "cuLaunchKernel")
        if not (self.mapped and self.hout_m is not None):
            chk(cu.cuMemcpyDtoHAsync(self.hout.ctypes.data, _dptr(self.out_d), n * self.eng.O * self.eng.isz, hs),
                "cuMemcpyDtoHAsync")

    def _capture(self, n, bucket):
        self._bound(bucket)  # compile outside the capture
        return self._capture_as(n, lambda: self._enqueue(n, bucket))

    def _capture_as(self, key, enqueue):
        """``enqueue()`` (work on ``cstream``) captured as a CUDA graph, kept as graphs[key]."""
        drv = self.eng.drv
        cu, hs = drv.cu, self.cstream
        drv.check(cu.cuStreamBeginCapture(hs, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                  "cuStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = drv.check(cu.cuStreamEndCapture(hs), "cuStreamEndCapture")
        try:
            g = drv.check(cu.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        finally:
            cu.cuGraphDestroy(graph)
        self.graphs[key] = g
        if isinstance(key, int) and self.eng.entry is not None:  # for the njit graph step
            self.ghandles[key] = int(g)  # (the CUgraphExec handle's value)
        while len(self.graphs) > self.GRAPHS:
            k, old = self.graphs.popitem(last=False)
            self.ghandles.pop(k, None)
            cu.cuGraphExecDestroy(old)
        return g

    def _self_test(self):  # pragma: no cover - real GPU only
        """One frame on arena row 0 through the numba path, then the driver / graph paths:
        results must be bit-identical, else fall back. Leaves row 0 zero."""
        eng = self.eng
        x = np.random.default_rng(0).standard_normal(eng.I).astype(eng.dtype)

        def once(fn):
            return self._row0(fn, x)

        b1 = _bucket(1)
        drv = eng.drv
        want = once(lambda: self._step_numba(1, b1))

        def same(got):
            return all(np.array_equal(a, b, equal_nan=True) for a, b in zip(want, got))

        def driver():
            self._enqueue(1, b1)
            drv.check(drv.cu.cuStreamSynchronize(self.cstream), "cuStreamSynchronize")

        def graph():
            g = self._capture(1, b1)
            drv.check(drv.cu.cuGraphLaunch(g, self.cstream), "cuGraphLaunch")
            drv.check(drv.cu.cuStreamSynchronize(self.cstream), "cuStreamSynchronize")

        for name, fn, fallback in (("driver", driver, "numba"), ("graph", graph, "driver")):
            if self.mode == "numba" or (name == "graph" and self.mode != "graph"):
                break
            try:
                ok = same(once(fn))
                why = "results differ from numba's launch path"
            except Exception as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            if not ok:
                log.warning("streamrnn cuda: the %s launch path failed its self-test (%s); using %s launches",
                            name, why, fallback)
                self.mode = fallback
        if self.mode == "graph" and eng.entry is not None:  # STREAMRNN_CUDA_HOSTCALL=njit
            fn = graph_step(eng.dtype)
            ids1, alive = np.zeros(1, np.int64), np.ones(self.cap, np.uint8)
            o = np.empty((1, eng.O), eng.dtype)

            def fused():
                g = self._capture(1, b1)
                rc = fn(ids1, x.reshape(1, -1), o, alive, int(g), self.gctx)
                if rc:
                    raise RuntimeError(f"status {rc & 255}, CUresult {rc >> 8}")

            try:
                got = once(fused)
                ok = same(got) and np.array_equal(o[0], got[0], equal_nan=True)
                why = "results differ from numba's launch path"
            except Exception as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            if ok:
                self.fused = fn
            else:
                log.warning("streamrnn cuda: the njit graph step (STREAMRNN_CUDA_HOSTCALL=njit) failed its "
                            "self-test (%s); using cuda-bindings' calls", why)
        self._drop_graphs()
        self.arena[0:1].copy_to_device(np.zeros((1, self.S1), eng.dtype))
        self.stream.synchronize()

    def kernel_times(self, n: int, reps: int = 50) -> list:  # pragma: no cover - real GPU only
        """Device time of each operation of a step of n rows, alone: CUDA events around ``reps``
        back-to-back launches (driver path) of the copy in and of each kernel, in launch order.
        Returns [{"op", "us", "regs", "smem", "local", "grid", "block"}]; [] without the driver
        path (the simulator). The launches advance the states of rows ids[:n] ``reps`` times:
        for measurements only (``bench/gpu_check.py``)."""
        drv = self.eng.drv
        if drv is None or n < 1 or n > self.nmax:
            return []
        self.quiesce()
        if not getattr(_tls, "ctx", False):  # raw driver calls need the context current here
            cuda.current_context()
            _tls.ctx = True
        cu, hs, chk = drv.cu, self.cstream, drv.check
        bucket = _bucket(n)
        ops = self._ops(bucket)
        bound = self._bound(bucket)
        e0, e1 = cuda.event(), cuda.event()

        def timed(launch):
            launch()
            e0.record(self.stream)
            for _ in range(reps):
                launch()
            e1.record(self.stream)
            e1.synchronize()
            return 1e3 * cuda.event_elapsed_time(e0, e1) / reps

        res = [{"op": "copy in", "bytes": n * self.pitch,
                "us": timed(lambda: chk(cu.cuMemcpyHtoDAsync(_dptr(self.in_d), self.hin.ctypes.data, n * self.pitch, hs),
                                        "cuMemcpyHtoDAsync"))}]
        for (disp, first, _, _), (fn, params, block, grid) in zip(ops, bound):
            params.n.value = n
            gx, gy = grid(n)
            kern = disp.compile(tuple(disp.typeof_pyval(a) for a in self._args(first)))
            info = {"op": disp.py_func.__name__, "grid": [gx, gy], "block": block}
            for k, attr in (("regs", "regs_per_thread"), ("smem", "shared_mem_per_block"), ("local", "local_mem_per_thread")):
                try:
                    info[k] = int(getattr(kern, attr))
                except Exception:  # noqa: BLE001 - attribute names differ between numba-cuda versions
                    info[k] = None
            info["us"] = timed(lambda: chk(cu.cuLaunchKernel(fn, gx, gy, 1, block, 1, 1, 0, hs, params.ptr, 0),
                                           "cuLaunchKernel"))
            res.append(info)
        return res

    # -- profile (STREAMRNN_CUDA_PROFILE=1) --------------------------------------------------
    PHASES = ("pack", "launch", "sync", "copy_out", "total")

    def record(self, n, t0, t1, t3, t4) -> None:
        """One call's phases: pack (validation + staging), launch (host side of the graph
        launch / kernel launches, copy-in included), sync (waiting for the device), copy_out."""
        p = self.prof
        tl = self._tl if t1 <= self._tl <= t3 else t3
        p.append((n, t1 - t0, tl - t1, t3 - tl, t4 - t3, t4 - t0))
        if len(p) > 50000:
            del p[:25000]

    def profile(self, clear: bool = False) -> dict:
        """{n: {phase: {p50_us, mean_us}}, "mode": ...} over the recorded calls."""
        res: dict = {"mode": self.mode, "mapped_out": bool(self.mapped and self.hout_m is not None)}
        if self.prof:
            a = np.array(self.prof, np.float64)
            for n in np.unique(a[:, 0]).astype(int):
                b = a[a[:, 0] == n, 1:] / 1e3
                res[int(n)] = {ph: {"p50_us": float(np.median(b[:, i])), "mean_us": float(b[:, i].mean())}
                               for i, ph in enumerate(self.PHASES)} | {"calls": int(b.shape[0])}
        if clear and self.prof is not None:
            self.prof.clear()
        return res

    # -- state -----------------------------------------------------------------------------
    def reset(self, ids: np.ndarray) -> None:
        from ..layers.dense.cuda import make_zero_rows

        k = len(ids)
        if k == 0:
            return
        self._grow(k)
        self.quiesce()
        s = self.stream
        self.hids[:k] = ids
        self.in_d[:k].copy_to_device(self.hin[:k], stream=s)
        NT = 4 if self.eng.sim else 64
        make_zero_rows(NT)[k, NT, s](self.ids_d, self.arena, k)
        s.synchronize()

    def get_state(self, sid: int) -> np.ndarray:
        self.quiesce()
        s = self.stream
        row = self.arena[sid : sid + 1].copy_to_host(stream=s)
        s.synchronize()
        return row[0, : self.eng.S].copy()

    def set_state(self, sid: int, data: np.ndarray) -> None:
        row = np.zeros((1, self.S1), self.eng.dtype)
        row[0, : self.eng.S] = data
        self.quiesce()
        s = self.stream
        self.arena[sid : sid + 1].copy_to_device(row, stream=s)
        s.synchronize()

    def __del__(self):
        try:
            self.quiesce()
            self._drop_graphs()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------
# Public device objects (driven by streamrnn.model.Stream / Pool)
# ---------------------------------------------------------------------------------------------
class CudaPool:
    """Device side of a :class:`streamrnn.Pool`: the state arena and the batched step."""

    def __init__(self, eng: CudaEngine, capacity: int):
        self.eng = eng
        self.core = _Core(eng, capacity)
        self._row = None  # the fused host step of one-row steps (STREAMRNN_CUDA_PERSIST)
        if self.core.server is not None and not eng.profile:
            from .persist import ROW_SENT, ROW_STAGED, row_step

            self._row, self._unfinished = row_step(eng.dtype, "pool"), (ROW_STAGED, ROW_SENT)

    @property
    def mode(self) -> str:
        """The launch path in use: "graph", "driver" or "numba"."""
        return self.core.mode

    def step(self, ids: np.ndarray, X: np.ndarray, out: np.ndarray, alive: np.ndarray) -> np.ndarray:
        eng, core = self.eng, self.core
        n = ids.shape[0]
        if n == 1 and self._row is not None:  # one njit call: check, stage, command, spin, copy out
            if core.server is not None:
                try:
                    rc = self._row(ids, X, out, alive, core.server.ctx)
                except TypeError:  # (the caller passes the model's types: not expected)
                    rc = -1
                if rc == 0:
                    return out
                if rc in self._unfinished:
                    core.finish_row(rc)
                    out[...] = core.hout[:1]
                    return out
            else:
                self._row = None
            # refused: the general path below checks again and says why
        if out.shape != (n, eng.O):
            _raise(_cpu.E_OUTLEN, eng.model, "X", X, out, ids)
        if core.cap >= n > core.nmax:
            core._grow(n)
        prof = core.prof
        if prof is not None:
            t0 = _now()
        if core.chunk_count(n) > 1:  # validation, staging and launches interleaved by chunk
            rc = core.step_chunked(ids, X, alive)
            if rc:
                _raise(rc, eng.model, "X", X, out, ids)
            t3 = _now() if prof is not None else 0
            out[...] = core.hout[:n]
            if prof is not None:
                core.record(n, t0, t0, t3, _now())
            return out
        if core.fused is not None and prof is None and core.server is None:  # pragma: no cover - real GPU only
            h = core.ghandles.get(n)  # a graph of this n was captured (its second call)
            if h is not None and n * eng.I < PACK_PAR_MIN:
                if not getattr(_tls, "ctx", False):  # driver calls need the context current here
                    cuda.current_context()
                    _tls.ctx = True
                rc = core.fused(ids, X, out, alive, h, core.gctx)
                if rc == 0:
                    return out
                if rc & 255 in (E_LAUNCH, E_SYNC):
                    raise RuntimeError(f"{'cuGraphLaunch' if rc & 255 == E_LAUNCH else 'cuStreamSynchronize'} "
                                       f"failed: CUresult {rc >> 8}")
                _raise(rc, eng.model, "X", X, out, ids)
        rc = core.pack(ids, X, alive)
        if rc:
            _raise(rc, eng.model, "X", X, out, ids)
        if n == 0:
            return out
        if prof is None:
            core.step(n)
            out[...] = core.hout[:n]
            return out
        t1 = _now()
        core.step(n)
        t3 = _now()
        out[...] = core.hout[:n]
        core.record(n, t0, t1, t3, _now())
        return out

    def profile(self, clear: bool = False) -> dict:
        """With STREAMRNN_CUDA_PROFILE=1: per-phase host times of the steps so far."""
        return self.core.profile(clear)

    def kernel_times(self, n: int, reps: int = 50) -> list:
        """Device time of each copy / kernel of a step of n rows (see ``_Core.kernel_times``;
        advances the states of the pool's first n rows: for benchmarks only)."""
        return self.core.kernel_times(n, reps)

    def push(self, sid: int, X: np.ndarray) -> np.ndarray:
        _check_frames(X, self.eng.model)
        self.core.quiesce()
        return self.eng.push(self.core.arena, int(sid), X)

    def reset(self, ids) -> None:
        self.core.reset(np.asarray(ids, np.int64).reshape(-1))

    def get_state(self, sid: int) -> np.ndarray:
        return self.core.get_state(int(sid))

    def set_state(self, sid: int, data: np.ndarray) -> None:
        self.core.set_state(int(sid), data)


class CudaStream:
    """Device side of a :class:`streamrnn.Stream`: a pool of one, always open."""

    _IDS = np.zeros(1, np.int64)
    _ALIVE = np.ones(1, np.uint8)

    def __init__(self, eng: CudaEngine):
        self.eng = eng
        self.core = _Core(eng, 1)
        self._lock = threading.Lock()
        self._row = None  # the fused host step of the persistent kernel (STREAMRNN_CUDA_PERSIST)
        if self.core.server is not None and not eng.profile:
            from .persist import ROW_SENT, ROW_STAGED, row_step

            self._row, self._unfinished = row_step(eng.dtype), (ROW_STAGED, ROW_SENT)

    @property
    def mode(self) -> str:
        return self.core.mode

    def step(self, x, out=None) -> np.ndarray:
        if self._row is not None:  # one njit call: check, stage, command, spin, copy out
            if out is None:
                out = np.empty(self.eng.O, self.eng.dtype)
            with self._lock:
                core = self.core
                if core.server is not None:
                    try:
                        rc = self._row(x, out, core.server.ctx)
                    except TypeError:  # not C-contiguous 1-D arrays of the model dtype
                        rc = -1
                    if rc == 0:
                        return out
                    if rc in self._unfinished:
                        core.finish_row(rc)
                        out[...] = core.hout[0]
                        return out
                else:
                    self._row = None
            # refused, or to convert: the general path below checks again and says why
        return self._step(x, out)

    def _step(self, x, out) -> np.ndarray:
        eng = self.eng
        dt, I, O = eng.dtype, eng.I, eng.O
        if not (isinstance(x, np.ndarray) and x.dtype == dt and x.flags.c_contiguous):
            from ..model import _as_float

            x = _as_float(x, "x", dt)
        if x.ndim != 1:
            raise ShapeError(f"x: expected shape ({I},), got {x.shape}")
        if x.shape[0] != I:
            _raise(_cpu.E_XLEN, eng.model, "x", x, out)
        if out is None:
            out = np.empty(O, dt)
        elif not (isinstance(out, np.ndarray) and out.dtype == dt and out.flags.c_contiguous
                  and out.ndim == 1 and out.shape[0] == O):
            raise ShapeError(
                f"out: expected a C-contiguous {dt} array of shape ({O},), got "
                f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
            )
        with self._lock:
            core = self.core
            prof = core.prof
            if prof is not None:
                t0 = _now()
            rc = core.pack(self._IDS, x.reshape(1, I), self._ALIVE)
            if rc:
                k = int(np.argmax(~np.isfinite(x)))
                _raise(_cpu.E_NONFINITE | (k << 8), eng.model, "x", x, out)
            if prof is None:
                core.step(1)
                out[...] = core.hout[0]
            else:
                t1 = _now()
                core.step(1)
                t3 = _now()
                out[...] = core.hout[0]
                core.record(1, t0, t1, t3, _now())
        return out

    def profile(self, clear: bool = False) -> dict:
        return self.core.profile(clear)

    def push(self, X: np.ndarray) -> np.ndarray:
        _check_frames(X, self.eng.model)
        with self._lock:
            self.core.quiesce()
            return self.eng.push(self.core.arena, 0, X)

    def reset(self) -> None:
        with self._lock:
            self.core.reset(self._IDS)

    def get_state(self) -> np.ndarray:
        with self._lock:
            return self.core.get_state(0)

    def set_state(self, data: np.ndarray) -> None:
        with self._lock:
            self.core.set_state(0, data)
