"""CUDA engine (numba.cuda): many streams (``pool.step``), one stream, and whole sequences.

Imported only when a model is built with ``device="cuda"``; numba.cuda is imported only by the
CUDA engine's modules and the CUDA kernels (``streamrnn/layers/*/cuda.py``):

* ``cuda.py`` (this module): ``CudaEngine``: the weights on the device, the kernels of a step
  (``step_ops``) and the sequence path (``run`` / ``push``);
* ``cuda_pool.py``: ``CudaPool`` / ``CudaStream`` and their ``_Core``: the state arena and the
  step through the graph / driver / numba launch paths;
* ``cuda_stage.py``: the host side of a step: ids and frames checked and staged (njit, no CUDA);
* ``cuda_tiles.py``: the kernels' tiles per row bucket;
* ``cuda_runtime.py``: numba.cuda or its simulator, and the thin driver launch path;
* ``persist.py``: the resident one-row step kernel (STREAMRNN_CUDA_PERSIST).

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
  for calls of at least ``PACK_PAR_MIN`` values (entry 35; :mod:`.cuda_stage`).

Validation (shapes, ids, non-finite inputs) happens on the host before any device work, with the
same errors and messages as the CPU engine; a refused call changes no state.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading

import numpy as np

from ..errors import StreamRNNError
from .cuda_pool import CudaPool, CudaStream
from .cuda_runtime import _NO_GPU, _Driver, _Params, _tls, allow_smem, check_device, cuda, make_current, simulator
from .cuda_stage import _pack_sigs
from .cuda_tiles import _bucket, _cdiv, _gemm_tile, _tile, step_tiles
from .pack import (
    ACT, DENSE, F_CLIP, F_INPUT_FORGET, F_LBR, F_LOG, F_PEEP, F_PROJ, GRU, K_ACT, K_DIR,
    K_FLAGS, K_H, K_IN, K_KIND, K_NDIR, K_OUT, K_REC, K_REV, LSTM, O_B, O_C, O_H, O_PAR,
    O_PEEP, O_PROJ, O_RBH, O_RT, O_WT, RNN, SOFTMAX,
)

log = logging.getLogger("streamrnn")


def _switch(name: str) -> bool:
    """An opt-in switch of the environment: "0" (or unset) off, "1" on, anything else refused."""
    v = os.environ.get(name, "0").strip() or "0"
    if v not in ("0", "1"):
        raise StreamRNNError(f"{name}: expected 0 or 1, got {v!r}")
    return v == "1"


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
# The engine
# ---------------------------------------------------------------------------------------------
class CudaEngine:
    """The CUDA kernels of one model: weights on the device, the sequence path, and factories
    for streams and pools (see the module docstring)."""

    def __init__(self, model):
        check_device()
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
        #: the grid kernel launched once per step (the simulator's multi-block check of it);
        #: "gemm" = every layer's step of all sequences per time step, as a pool steps them
        #: (its tiled GEMMs; ``_sequence_gemm``, NOTES entry 102; opt-in until measured)
        self.seq_mode = os.environ.get("STREAMRNN_CUDA_SEQ", "auto").lower()
        if self.seq_mode not in ("auto", "block", "grid", "stepwise", "gemm"):
            raise StreamRNNError(
                f"STREAMRNN_CUDA_SEQ: expected auto, block, grid, stepwise or gemm, got {self.seq_mode!r}")
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
        self._seq_ops: dict = {}  # bucket -> step_ops of _sequence_gemm
        self._coop: dict = {}  # persistent kernel -> fits a cooperative launch on this GPU
        for fn, sig in _pack_sigs(self.dtype):  # host packing kernels: compiled at load
            fn.compile(sig)
        self._dummy_i = cuda.to_device(np.zeros(1, np.int64))
        self._zero_i = np.zeros(1, np.int64)
        self._dummy_2 = cuda.to_device(np.zeros((1, 1), self.dtype))
        self._step_layout()
        #: ``model.run`` / ``push`` through ``_sequence_gemm``: STREAMRNN_CUDA_SEQ=gemm and every
        #: recurrent layer forward only (a reverse or bidirectional one needs the whole sequence)
        self.gemm_seq = self.seq_mode == "gemm" and not any(L.recurrent and (L.D != 1 or L.rev) for L in self.layers)

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
        t = step_tiles()[_bucket(1)][1]
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

    def _sequence_gemm(self, X_tm, counts, ids_d, st_d, s):
        """Every layer over T time steps of B sequences, one step of all of them at a time: the
        ops of a pool's step of B rows (``step_ops``: tiled GEMMs for many rows), launched on
        stream s with no host round trip between steps. X_tm (T, B, I) device frames, time
        major, sequences sorted by length (longest first); counts[t]: how many are still
        running at step t (non-increasing); ids_d (B,) their state rows in st_d (updated in
        place). -> (T, B, O) device outputs; rows at or past a sequence's length are not
        written."""
        T, B = X_tm.shape[0], X_tm.shape[1]
        ops = self._seq_ops.get(_bucket(B))
        if ops is None:
            ops = self._seq_ops[_bucket(B)] = self.step_ops(_bucket(B))
        feat = self._buf("sfeat", (B, self.ftot))  # (B, ftot) each layer's output columns
        Y_tm = self._buf("sy", (T, B, self.O))  # (T, B, O)
        drv = self.drv
        if drv is None or self.mode == "numba":
            for t in range(T):
                n = int(counts[t])
                if n == 0:
                    break
                for disp, first, block, grid in ops:
                    disp[grid(n), block, s](self.W, ids_d, X_tm[t] if first else feat, feat, Y_tm[t], st_d, n)
            return Y_tm
        # a GPU's path: driver launches, parameters packed once per call and repacked per step
        # for the step's frames and outputs (numba's launch would cost ~40 µs of host time each)
        if not getattr(_tls, "ctx", False):
            make_current()
        cu = drv.cu
        cs = cu.CUstream(int(s.handle))
        bound = []
        for disp, first, block, grid in ops:
            args = (self.W, ids_d, X_tm[0] if first else feat, feat, Y_tm[0], st_d, 1)
            kernel = disp.compile(tuple(disp.typeof_pyval(a) for a in args))
            prm = _Params(kernel, args)
            # per step only the data pointers of the frames' and outputs' rows move
            sx = prm.stepper(2, X_tm[0], X_tm[1], X_tm.strides[0]) if first and T > 1 else None
            sy = prm.stepper(4, Y_tm[0], Y_tm[1], Y_tm.strides[0]) if T > 1 else None
            bound.append((drv.function(kernel), prm, first, sx, sy, block, grid))
        for t in range(T):
            n = int(counts[t])
            if n == 0:
                break
            for fn, prm, first, sx, sy, block, grid in bound:
                if sx is not None:
                    sx(t)
                elif first:
                    prm.set_arg(2, X_tm[t])
                if sy is not None:
                    sy(t)
                else:
                    prm.set_arg(4, Y_tm[t])
                prm.n.value = n
                gx, gy = grid(n)
                drv.check(cu.cuLaunchKernel(fn, gx, gy, 1, block, 1, 1, 0, cs, prm.ptr, 0), "cuLaunchKernel")
        return Y_tm

    def _gemm_inputs(self, X3, lengths, s):
        """(X_tm on the device (T, B, I), counts (T,), order (B,)): X3's sequences sorted by
        length, longest first (``order``; stable), laid out time major; counts[t] = how many
        have a frame t."""
        T = X3.shape[1]
        order = np.argsort(-lengths, kind="stable")
        srt = lengths[order]
        counts = (srt[None, :] > np.arange(T)[:, None]).sum(axis=1)  # (T,)
        X_tm = cuda.to_device(np.take(X3.transpose(1, 0, 2), order, axis=1), stream=s)  # (T, B, I), one copy
        return X_tm, counts, order

    def run(self, X3: np.ndarray, lengths: np.ndarray, state: np.ndarray) -> np.ndarray:
        """X3 (B, T, I) validated, lengths (B,) int64, state (B, S) updated in place -> Y (B, T, O)."""
        B, T, I = X3.shape
        O, S = self.O, self.S
        if B == 0 or T == 0:
            return np.zeros((B, T, O), self.dtype)
        with self._lock:
            s = self._stream
            st_h = state if S else np.zeros((B, 1), self.dtype)
            st_d = cuda.to_device(np.ascontiguousarray(st_h), stream=s)
            if self.gemm_seq:
                X_tm, counts, order = self._gemm_inputs(X3, np.asarray(lengths, np.int64), s)
                ids_d = cuda.to_device(np.ascontiguousarray(order, dtype=np.int64), stream=s)
                Y_tm = self._sequence_gemm(X_tm, counts, ids_d, st_d, s).copy_to_host(stream=s)
            else:
                X_d = cuda.to_device(np.ascontiguousarray(X3.reshape(B * T, I)), stream=s)
                lens_d = cuda.to_device(np.ascontiguousarray(lengths, dtype=np.int64), stream=s)
                sidx_d = cuda.to_device(np.arange(B, dtype=np.int64), stream=s)
                Y = self._sequence(X_d, B, T, lens_d, st_d, sidx_d, s).copy_to_host(stream=s)
            st = st_d.copy_to_host(stream=s)
            s.synchronize()
        if S:
            state[...] = st
        if self.gemm_seq:  # back to (B, T, O), each sequence in its own row
            Y = np.empty((B, T, O), self.dtype)
            Y[order] = Y_tm.transpose(1, 0, 2)
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
            sidx_d = cuda.to_device(np.array([sid], np.int64), stream=s)
            if self.gemm_seq:
                X_tm = cuda.to_device(np.ascontiguousarray(X).reshape(T, 1, self.I), stream=s)  # (T, 1, I)
                Y_d = self._sequence_gemm(X_tm, np.ones(T, np.int64), sidx_d, arena_d, s).reshape(T, self.O)
            else:
                X_d = cuda.to_device(np.ascontiguousarray(X), stream=s)
                lens_d = cuda.to_device(np.array([T], np.int64), stream=s)
                Y_d = self._sequence(X_d, 1, T, lens_d, arena_d, sidx_d, s)
            Y = Y_d.copy_to_host(stream=s)
            s.synchronize()
        return Y
