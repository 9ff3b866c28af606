"""The CUDA pool and stream: a device state arena and its step.

``_Core`` owns a state arena on the device, the pinned staging rows and output rows, and the
step of n rows through one of three launch paths (``graph``, ``driver``, ``numba``; see
:mod:`streamrnn.engine.cuda`), large calls in chunks (STREAMRNN_CUDA_CHUNKS) and one-row steps
through the resident kernel (STREAMRNN_CUDA_PERSIST, :mod:`streamrnn.engine.persist`).
``CudaPool`` and ``CudaStream`` are the device sides of :class:`streamrnn.Pool` and
:class:`streamrnn.Stream`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import numba
import numpy as np

from ..errors import ShapeError, describe_buffer
from . import cpu as _cpu
from .cuda_runtime import _Params, _dptr, _tls, cuda, make_current
from .cuda_stage import (
    E_LAUNCH, E_SYNC, G_C0, G_CAP, G_EPOCH, G_I, G_LAUNCH, G_LEN, G_O, G_OUT, G_P8, G_PF, G_ROWS,
    G_ROWS_AT, G_STAMP, G_STREAM, G_SYNC, _check_frames, _pack_rows, _raise, _stage_par,
    _stage_rows, graph_step, pack_fast,
)
from .cuda_tiles import _bucket, _cdiv, step_tiles

if TYPE_CHECKING:
    from .cuda import CudaEngine

log = logging.getLogger("streamrnn")
_now = time.perf_counter_ns

#: rows per chunk at least, for a pool.step in chunks (STREAMRNN_CUDA_CHUNKS; the simulator: 2)
CHUNK_MIN = 256
#: frames of at least this many values per pool.step are staged by all threads (waking numba's
#: workers costs tens of µs; staging 4 MiB costs ~300 µs on one core here; NOTES entry 35)
PACK_PAR_MIN = 1 << 20


class _Core:
    """One state arena on the device (``capacity`` rows of S values) and its step: the pinned
    staging rows ``[id | frame]`` and output rows, the kernels of each row bucket (built and,
    on a GPU, bound to their buffers at creation), and the launch path in use (``mode``:
    "graph", "driver" or "numba", checked against numba's by ``_self_test``)."""

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
        if eng.entry is not None:  # pragma: no cover - a GPU's path (in the simulator: tests/fakedriver.py)
            x[G_LAUNCH], x[G_SYNC] = eng.entry

    def _warm(self) -> None:
        """Build the kernels of every row bucket a call of at most ``cap`` rows can use (on a
        GPU, compile them and pack their launch parameters): JIT compilation at load time, not
        in a pool's first call of each size class."""
        lo = 1
        for b, (mx, _) in enumerate(step_tiles()):
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
            make_current()
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
            make_current()  # raw driver calls need the context current here
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
        old = self.graphs.pop(key, None)  # (the self-test captures one size twice)
        if old is not None:
            cu.cuGraphExecDestroy(old)
        self.graphs[key] = g
        if isinstance(key, int) and self.eng.entry is not None:  # for the njit graph step
            self.ghandles[key] = int(g)  # (the CUgraphExec handle's value)
        while len(self.graphs) > self.GRAPHS:
            k, old = self.graphs.popitem(last=False)
            self.ghandles.pop(k, None)
            cu.cuGraphExecDestroy(old)
        return g

    def _self_test(self):  # pragma: no cover - a GPU's path (in the simulator: tests/fakedriver.py)
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

    def kernel_times(self, n: int, reps: int = 50) -> list:  # pragma: no cover - a GPU's path (in the simulator: tests/fakedriver.py)
        """Device time of each operation of a step of n rows, alone: CUDA events around ``reps``
        back-to-back launches (driver path) of the copy in and of each kernel, in launch order.
        Returns [{"op", "us", "regs", "smem", "local", "grid", "block"}]; [] without the driver
        path (the simulator). The rows are the staged ones (the last call's, so that the times
        decompose that step) when their first n ids are distinct, else streams 0..n-1 (after a
        call of fewer rows, rows left from an earlier call may repeat an id: two rows of one
        launch would write one state). The launches advance those states ``reps`` times: for
        measurements only (``bench/gpu_check.py``)."""
        drv = self.eng.drv
        if drv is None or n < 1 or n > self.nmax:
            return []
        if np.unique(self.hids[:n]).size < n:
            self.hids[:n] = np.arange(n)
        self.quiesce()
        make_current()  # raw driver calls need the context current here
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
            return 1e3 * e0.elapsed_time(e1) / reps  # (ms; the simulator: -1)

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
        if core.fused is not None and prof is None and core.server is None:  # pragma: no cover - a GPU's path (in the simulator: tests/fakedriver.py)
            h = core.ghandles.get(n)  # a graph of this n was captured (its second call)
            if h is not None and n * eng.I < PACK_PAR_MIN:
                if not getattr(_tls, "ctx", False):  # driver calls need the context current here
                    make_current()
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
        advances the states of the last call's streams, or of streams 0..n-1: for benchmarks
        only)."""
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
                f"out: expected a C-contiguous {dt} array of shape ({O},), got {describe_buffer(out)}"
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
