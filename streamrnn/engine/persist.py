"""Persistent step kernel: one resident launch serves a pool's one-row steps, fed through mapped
host memory (``STREAMRNN_CUDA_PERSIST=1``; bench/NOTES.md entries 65-69).

Why: a one-stream step through a replayed CUDA graph costs ~22-26 µs host to host on an H200,
of which ~6 µs are the host side of ``cuGraphLaunch`` and most of the rest the graph's nodes
each paying a launch on the device (copy in, one kernel per layer). Here the kernel is launched
once and stays resident:

* the host stages the row ``[id | frame]`` in mapped pinned memory (``_Core.pack``, as before),
  writes the row count and then a new sequence number into the command words ``ctl`` (mapped),
  and spins on the acknowledgement word ``ack[0]`` (mapped) until the kernel stores the same
  number there; the outputs are then in the mapped output rows;
* the kernel (G resident blocks of NT threads, launched cooperatively so that all are
  resident): thread 0 of block 0 polls ``ctl[0]`` with volatile loads (``ld.volatile``: numba's
  ``ldcv`` is a pure inline asm that LLVM hoists out of the poll loop), block 0 copies the
  staging row into device memory and broadcasts the command through a word in device memory
  that the other blocks poll (an L2 round trip, not a PCIe one); then every layer's row-tile
  body (``kernel.body``, the same code the graph path launches) runs once per block of that
  layer's grid, the G blocks taking the layer's blocks in turn, with a counter barrier between
  layers (an atomic add and a poll in device memory: no grid sync, which cost ~1.8 µs each on
  the H200, NOTES 67); after the last layer every block fences its output stores to system
  memory and counts itself done, and the last one to arrive stores the acknowledgement;
* after ``idle_ns`` without a command (``%globaltimer``) the kernel stores ``ack[1] = 0`` and
  exits, so an idle pool does not hold SMs; the host relaunches it at the next step (and when
  it sees ``ack[1] == 0`` with its command not served). Any other use of the pool's device
  state (reset, get/set state, steps of several rows, ``push``) first stops it
  (``ctl[0] = -1``) and waits for it to exit;
* a launch that does not become resident within ``Server.START_TIMEOUT`` (the GPU's SMs held
  by other resident kernels: cooperative launches wait for room) or a command never
  acknowledged raises ``PersistError``; ``_Core.step`` then serves that step and every later
  one through the graph path (the lost command changed no state).

``STREAMRNN_CUDA_PERSIST=onchip``: each LSTM layer without projection runs as an ``OnChip``
op (``make_lstm_onchip``): the block that owns a unit block loads its weight columns into the
kernel's dynamic shared memory once, at the start, and reads them from there every step.

Under the CUDA simulator (no concurrent host and device) a launch serves exactly one command
(``once``) in one block, which runs every layer's blocks in turn: the same code path, tested in
CI for parity with the CPU engine.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from numba import cuda, int64, njit

from ..config import NJIT_GIL, NJIT_INLINE
from . import cpu as _cpu
from .cpu import _view
from .hostsync import compile_only, cycles, load_acquire, store_release
from ..layers.cuda_sync import fence_system, ld_volatile, now_ns, st_volatile
from ..layers.dense.cuda import SIM, jit

log = logging.getLogger("streamrnn")

# ---------------------------------------------------------------------------------------------
# The kernel: generated per model (one call of each layer body, unrolled in source)
# ---------------------------------------------------------------------------------------------
_SRC = '''
def serve(W, hin, ind, ids, X, feat, out, arena, ctl, ack, sync, stamps, seq0, idle_ns, once):
    tid = cuda.threadIdx.x
    bid = cuda.blockIdx.x
    G = cuda.gridDim.x
    if once and seq0 < -1:  # never runs: makes numba launch the kernel cooperatively, so that
        cuda.cg.this_grid().sync()  # every block is resident (the counters below rely on it)
    sh = cuda.shared.array(2, int64)  # the command and the row count, for the whole block
    if bid == 0 and tid == 0:
        st_volatile(ack, 1, 2)  # resident (the host set 1 at the launch)
{init}    cuda.syncthreads()
    seq = seq0
    nb = 0  # layer barriers this block has passed: sync[2] counts the arrivals of all blocks
    nd = 0  # commands this block has finished: sync[3] counts the blocks done
    while True:
        if tid == 0:
            if bid == 0:  # the only reader of the command word in host memory
                t0 = now_ns()
                v = seq
                while True:
                    v = ld_volatile(ctl, 0)
                    if v != seq or once:
                        break
                    if now_ns() - t0 > idle_ns:
                        v = -2
                        break
                sh[1] = ld_volatile(ctl, 1)
                if STAMPS and v >= 0 and v != seq:
                    stamps[0] = now_ns()
            else:  # the others wait for block 0's broadcast in device memory
                v = ld_volatile(sync, 0)
                while v == seq:
                    v = ld_volatile(sync, 0)
                cuda.threadfence()
                sh[1] = ld_volatile(sync, 1)
            sh[0] = v
        cuda.syncthreads()
        v = sh[0]
        n = sh[1]
        if bid == 0:
            if v >= 0 and v != seq:  # copy the staging rows in, then broadcast the command
                for e in range(tid, n * PW, NT):
                    ind[e] = ld_volatile(hin, e)
            cuda.threadfence()
            cuda.syncthreads()
            if tid == 0:
                st_volatile(sync, 1, n)
                cuda.threadfence()
                st_volatile(sync, 0, v)
                if STAMPS and v >= 0 and v != seq:
                    stamps[2] += now_ns() - stamps[0]
        if v < 0 or v == seq:
            break
{ops}        seq = v
        if once:
            break
    if bid == 0 and tid == 0:
        st_volatile(ack, 1, 0)
        fence_system()
'''

# one layer: its blocks taken in turn by the G resident blocks
_OP = '''        for vb in range(bid, {nb}, G):
            body{k}(vb % {gx}, vb // {gx}, W, ids, {src}, feat, out, arena, n)
            cuda.syncthreads()
'''

# one LSTM layer with its weights on chip (make_lstm_onchip): block bid owns unit blocks bid,
# bid + G, ...; the weights of its s-th one sit at item s * ST + LOFF of its dynamic shared
# memory (ST: the items of one unit block of every on-chip layer, LOFF: this layer's offset)
_OP_ONCHIP = '''        for vb in range(bid, {gy}, G):
            body{k}(vb, (vb // G) * {st} + {loff}, W, ids, {src}, feat, out, arena, n)
            cuda.syncthreads()
'''

_INIT = '''    for vb in range(bid, {gy}, G):
        init{k}(vb, (vb // G) * {st} + {loff}, W)
'''

# between layers: a counter barrier (every block's writes before any block reads them)
_BARRIER = '''        if tid == 0:
            cuda.threadfence()
            cuda.atomic.add(sync, 2, 1)
            nb += 1
            while ld_volatile(sync, 2) < nb * G:
                pass
            cuda.threadfence()
            if STAMPS and bid == 0:
                stamps[{j}] += now_ns() - stamps[0]
        cuda.syncthreads()
'''

# after the last layer: each block fences its output stores (mapped memory) and counts itself
# done; the last block to arrive stores the acknowledgement (no block waits for the others)
_DONE = '''        fence_system()
        cuda.syncthreads()
        if tid == 0:
            nd += 1
            if cuda.atomic.add(sync, 3, 1) == nd * G - 1:
                fence_system()
                if STAMPS:
                    stamps[1] += 1
                    stamps[LAST] += now_ns() - stamps[0]
                st_volatile(ack, 0, v)
                fence_system()
'''


def make_server(bodies: tuple, NT: int, PW: int, words: tuple = (), stamps: bool = False):
    """The persistent kernel of one model's one-row step.

    bodies: per layer op, ``(body, first, gx, gy, init)``: the row-tile body (``kernel.body``),
    whether it reads the frames (else the feature buffer), its grid for one row, and None; or
    for an LSTM layer with its weights on chip (``OnChip``) its body, ..., and its ``init``,
    which runs once when the kernel starts. NT threads per block (every body's block size), PW
    int64 words per staging row, ``words`` per op the shared-memory items of one unit block of
    an on-chip layer (0 for the others). ``stamps``: record where a step's time goes on the
    device (``%globaltimer``), summed over steps into the ``stamps`` argument (len(bodies) + 3
    int64): [time block 0 saw the command, steps, +staged and broadcast, +after each layer
    barrier as block 0 leaves it..., +the last block done, just before the acknowledgement],
    each "+" a sum of nanoseconds since the command was seen (``Server.phases``).

    ``serve(W, hin, ind, ids, X, feat, out, arena, ctl, ack, sync, seq0, idle_ns, once)``: hin
    (mapped) and ind (device) are the staging rows as flat int64 words, ``ids`` / ``X`` the
    device views of ``ind`` the first layer reads, ``out`` the (mapped) output rows, ``ctl`` /
    ``ack`` the mapped command and acknowledgement words, ``sync`` four device words (the
    command and row count block 0 broadcasts, the layer-barrier and done counters; the host
    sets them to (seq0, 0, 0, 0) before a launch), seq0 the last sequence number served.
    """
    words = tuple(words) + (0,) * (len(bodies) - len(words))
    st = sum(words)
    loff = [sum(words[:k]) for k in range(len(bodies))]
    ops = "".join(((_BARRIER.format(j=2 + k) if k else "") + (_OP_ONCHIP if init is not None else _OP).format(
        k=k, nb=gx * gy, gx=gx, gy=gy, st=st, loff=loff[k], src="X" if first else "feat"))
        for k, (_, first, gx, gy, init) in enumerate(bodies)) + _DONE
    inits = "".join(_INIT.format(k=k, gy=gy, st=st, loff=loff[k])
                    for k, (_, _, _, gy, init) in enumerate(bodies) if init is not None)
    g = {"cuda": cuda, "ld_volatile": ld_volatile, "st_volatile": st_volatile, "now_ns": now_ns,
         "fence_system": fence_system, "NT": NT, "PW": PW, "int64": int64, "STAMPS": bool(stamps),
         "LAST": max(len(bodies), 1) + 2}
    g.update({f"body{k}": b for k, (b, _, _, _, _) in enumerate(bodies)})
    g.update({f"init{k}": i for k, (_, _, _, _, i) in enumerate(bodies) if i is not None})
    exec(compile(_SRC.format(ops=ops, init=inits), f"<streamrnn persistent step kernel, {len(bodies)} ops>", "exec"), g)
    return jit()(g["serve"])


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------
#: the fused host step's context (``Server.ctx``, int64): the last command served, whether a
#: launched kernel may be serving (host-kept), the staging row's address, the frame's offset in
#: it (items of the model dtype), I, the command / acknowledgement / output rows' addresses, O,
#: CPU cycles the fused step spins before it hands the wait to Python
C_SEQ, C_RUN, C_ROW, C_OFF, C_I, C_CTL, C_ACK, C_OUT, C_O, C_SPIN, C_LEN = range(11)
#: statuses of ``_row_step`` beside engine.cpu's: the row is staged but no command was sent
#: (no kernel is serving: ``Server.step`` launches one); the command was sent, not yet answered
#: (``Server.wait``)
ROW_STAGED, ROW_SENT = 16, 17


@njit(**NJIT_INLINE)
def _serve_row(x, out, sid, ctx):
    """Stage frame x (checked: finite) for stream ``sid`` as staging row 0, send the command,
    spin, copy the outputs to ``out`` (see ``_row_step_impl``)."""
    I = ctx[C_I]
    O = ctx[C_O]
    off = ctx[C_OFF]
    row = _view(ctx[C_ROW], off + I, x)  # [id | frame]: the frame from item off
    bad = 0
    for k in range(I):
        v = x[k]
        bad |= (v - v) != 0  # NaN or Inf
        row[off + k] = v
    if bad:
        for k in range(I):
            if (x[k] - x[k]) != 0:
                return _cpu.E_NONFINITE | (k << 8)
    _view(ctx[C_ROW], 1, ctx)[0] = sid  # the id: the stream's arena row
    ack = _view(ctx[C_ACK], 2, ctx)
    if ctx[C_RUN] == 0 or load_acquire(ack, 1) == 0:  # none launched, or it left (idle)
        return ROW_STAGED
    ctl = _view(ctx[C_CTL], 2, ctx)
    s = ctx[C_SEQ] + 1
    ctl[1] = 1
    store_release(ctl, 0, s)  # after the row and the row count
    t0 = cycles()
    while load_acquire(ack, 0) != s:
        if cycles() - t0 > ctx[C_SPIN]:
            return ROW_SENT
    ctx[C_SEQ] = s
    y = _view(ctx[C_OUT], O, out)
    for k in range(O):
        out[k] = y[k]
    return _cpu.OK


def _row_step_impl(x, out, ctx):
    """One frame of a stream through the resident kernel, in one call (bench/NOTES.md entry
    79): check x (length, finite) and stage it as row 0 (id 0) of the mapped staging rows, send
    the command (row count 1, then the sequence number, released after the row), spin on the
    acknowledgement (acquire loads: never hoisted out of the loop) for at most ``ctx[C_SPIN]``
    CPU cycles, then copy the outputs out. Returns 0 (served, ``out`` written), a status of
    engine.cpu (nothing sent), ``ROW_STAGED`` or ``ROW_SENT``. The GIL stays held: the caller's
    lock and this call keep a stream's commands in order, and the spin is ~20 µs."""
    if x.shape[0] != ctx[C_I]:
        return _cpu.E_XLEN
    if out.shape[0] != ctx[C_O]:
        return _cpu.E_OUTLEN
    return _serve_row(x, out, 0, ctx)


def _pool_row_impl(ids, X, out, alive, ctx):
    """``_row_step_impl`` for a pool's step of one stream: ids (1,), X (1, I), out (1, O); the
    id checked (range, open) as ``_Core.pack`` does (one row has no duplicates)."""
    if ids.shape[0] != 1 or X.shape[0] != 1 or X.shape[1] != ctx[C_I]:
        return _cpu.E_XLEN
    if out.shape[0] != 1 or out.shape[1] != ctx[C_O]:
        return _cpu.E_OUTLEN
    sid = ids[0]
    if sid < 0 or sid >= alive.shape[0]:
        return _cpu.E_ID_RANGE
    if alive[sid] == 0:
        return _cpu.E_ID_CLOSED
    return _serve_row(X[0], out[0], sid, ctx)


# one dispatcher per dtype, each compiled for its own only: frames or outputs of another dtype
# are refused by the dispatcher (TypeError; the caller converts and takes the general path),
# never written into the staging row as the wrong type
_ROW = {(k, f32): njit(**NJIT_GIL)(fn) for k, fn in (("stream", _row_step_impl), ("pool", _pool_row_impl))
        for f32 in (True, False)}


def row_step(dtype, kind: str = "stream"):
    """The fused host step of a stream (``_row_step_impl``) or of a pool's one-row step
    (``_pool_row_impl``), compiled for models of ``dtype`` only (at model load)."""
    from numba import types as nt

    f32 = np.dtype(dtype) == np.float32
    f, i1 = nt.float32 if f32 else nt.float64, nt.int64[::1]
    sig = (f[::1], f[::1], i1) if kind == "stream" else (i1, f[:, ::1], f[:, ::1], nt.uint8[::1], i1)
    return compile_only(_ROW[kind, f32], sig)


def mapped(shape, dtype):
    """``(device_array, host_view)`` of one buffer of mapped pinned memory (the kernel reads and
    writes it over PCIe while the host spins on it). Under the simulator a plain array, which
    the simulated launch copies in and back."""
    if SIM:
        a = np.zeros(shape, dtype)
        return a, a
    m = cuda.mapped_array(shape, dtype)  # pragma: no cover - real GPU only
    return m, np.ndarray.view(m, np.ndarray)  # pragma: no cover


class PersistError(RuntimeError):
    """The persistent kernel did not answer (see ``Server.step``)."""


class Server:
    """The persistent kernel of one ``_Core`` (pool or stream) and its command words.

    ``step()`` serves one row staged in the core's mapped staging rows; ``stop()`` makes the
    kernel exit and waits for it (before any other device work on the core's state).
    """

    #: seconds a step waits for the acknowledgement before it gives up (PersistError)
    TIMEOUT = 5.0
    #: seconds a launched kernel may take to become resident; a cooperative launch waits while
    #: other resident kernels hold the SMs it needs (PersistError: the core falls back)
    START_TIMEOUT = 0.02
    #: polls of the acknowledgement before ``step`` (Python) hands the wait to ``_wait`` (~0.3 ms)
    SPIN = 4096
    #: CPU cycles the fused host step (``row_step``) spins before it hands the wait to
    #: ``_wait`` (~0.4 ms at 2.6 GHz). Cycles, not polls: a poll of the cached acknowledgement
    #: word costs ~1 ns, so 4096 of them (8 µs) would give up before most steps are done
    SPIN_CYCLES = 1 << 20

    def __init__(self, core, ops, idle_ms: float, layers: int | None = None, stamps: bool = False):
        """``ops``: the core's one-row step ops (``CudaEngine.step_ops``); ``layers``: serve only
        the first so many (a benchmark of the protocol alone: ``layers=0``); ``stamps``: record
        the device-side phases of each step (benchmarks; ``phases()``)."""
        self.core = core
        eng = core.eng
        NT = ops[0][2]
        bodies = tuple((disp.body, first, *grid(1), getattr(disp, "init", None)) for disp, first, _, grid in ops)
        words = tuple(getattr(d, "words", 0) for d, _, _, _ in ops)[:layers]
        self.kernel = make_server(bodies[:layers], NT, core.pitch // 8, words, stamps)
        self.stamps = cuda.to_device(np.zeros(max(len(bodies[:layers]), 1) + 3 if stamps else 1, np.int64))
        self.NT = NT
        self.G = max(gx * gy for _, _, gx, gy, _ in bodies)
        #: on-chip LSTM layers; their unit blocks at most; items of one unit block of each
        self.onchip = sum(w > 0 for w in words)
        self._gy = max([gy for (_, _, _, gy, _), w in zip(bodies, words) if w], default=1)
        self._st = sum(words)
        self.ctl, self.ctl_h = mapped(2, np.int64)
        self.ack, self.ack_h = mapped(2, np.int64)
        self.sync = cuda.device_array(4, np.int64)
        self.idle_ns = int(idle_ms * 1e6)
        #: the fused host step's context (``C_*``; ``row_step``), which also holds the last
        #: command served (``seq``) and whether a launched kernel may be serving (``running``)
        self.ctx = np.zeros(C_LEN, np.int64)
        self.bind()
        self.seq = 0
        self.ctl_h[:] = 0
        self.ack_h[:] = 0
        self.running = False
        self.launches = 0
        self.sim = eng.sim
        # a stream of its own that does not synchronise with the legacy default stream: a copy
        # elsewhere on stream 0 does not wait for the resident kernel to exit
        self.stream = cuda.stream()
        if not self.sim and eng.drv is not None:  # pragma: no cover - real GPU only
            cu = eng.drv.cu
            try:
                h = eng.drv.check(cu.cuStreamCreate(int(cu.CUstream_flags.CU_STREAM_NON_BLOCKING)), "cuStreamCreate")
                self.stream = cuda.external_stream(int(h))
                self._hstream = h  # (kept alive with the server)
            except Exception as e:
                log.debug("streamrnn cuda: no non-blocking stream for the persistent kernel (%s)", e)
        #: bytes of dynamic shared memory: on a GPU one unit block of each on-chip layer per
        #: block (every unit block has a resident block of its own); in the simulator (one
        #: block, whose barriers span only itself) all of them
        self.smem = self._st * eng.isz
        if self.sim:
            self.G = 1
            self.smem *= self._gy
        else:  # pragma: no cover - real GPU only
            from .cuda_runtime import allow_smem

            k = self.kernel.compile(self._sig())
            allow_smem(eng.drv, k, self.smem)
            G = k.max_cooperative_grid_blocks(NT, self.smem)
            if G < self._gy:
                raise PersistError(f"the on-chip LSTM weights need {self._gy} resident blocks of "
                                   f"{self.smem} bytes of shared memory, {G} fit")
            self.G = min(self.G, G)

    @property
    def seq(self) -> int:
        """The last command served (a sequence number)."""
        return int(self.ctx[C_SEQ])

    @seq.setter
    def seq(self, v: int) -> None:
        self.ctx[C_SEQ] = v

    @property
    def running(self) -> bool:
        """A kernel was launched to serve commands and has not been seen to exit."""
        return bool(self.ctx[C_RUN])

    @running.setter
    def running(self, v: bool) -> None:
        self.ctx[C_RUN] = int(bool(v))

    def bind(self) -> None:
        """Point the fused host step's context at the core's current staging and output rows
        (``_Core._grow`` replaces them; it calls this)."""
        c, x = self.core, self.ctx
        x[C_ROW] = c.hin.ctypes.data
        x[C_OFF] = c.c0
        x[C_I] = c.eng.I
        x[C_CTL] = self.ctl_h.ctypes.data
        x[C_ACK] = self.ack_h.ctypes.data
        x[C_OUT] = c.hout.ctypes.data
        x[C_O] = c.eng.O
        x[C_SPIN] = self.SPIN_CYCLES

    def _args(self, once: bool):
        c = self.core
        return (c.eng.W, c.hin_w, c.in_w, c.ids_d, c.X_d, c.feat_d, c.hout_m, c.arena, self.ctl, self.ack,
                self.sync, self.stamps, self.seq, self.idle_ns, once)

    def _sig(self):  # pragma: no cover - real GPU only
        return tuple(self.kernel.typeof_pyval(a) for a in self._args(False))

    def _launch(self, once: bool) -> None:
        self.ack_h[1] = 1
        self.ack_h[0] = self.seq
        self.sync.copy_to_device(np.array([self.seq, 0, 0, 0], np.int64), stream=self.stream)
        self.kernel[self.G, self.NT, self.stream, self.smem](*self._args(once))
        self.launches += 1
        self.running = not once

    def step(self, n: int) -> None:
        """Serve rows [0, n) of the core's staging rows (n = 1)."""
        ctl, ack = self.ctl_h, self.ack_h
        s = self.seq + 1
        if self.running and ack[1] == 0:  # it left after its idle timeout: relaunch at once
            self.stream.synchronize()
            self.running = False
        ctl[1] = n
        ctl[0] = s
        if self.sim:
            self._launch(True)
            self.stream.synchronize()
            if ack[0] != s:
                raise PersistError("the persistent kernel did not serve its command (simulator)")
            self.seq = s
            return
        if not self.running:  # pragma: no cover - real GPU only
            self._launch(False)
        i = 0  # pragma: no cover - real GPU only
        while ack[0] != s:  # pragma: no cover - real GPU only
            i += 1
            if i > self.SPIN:  # (~0.3 ms) then the careful wait
                self._wait(s)
                return
        self.seq = s  # pragma: no cover - real GPU only

    def _wait(self, s: int) -> None:  # pragma: no cover - real GPU only
        ack = self.ack_h
        i = 0
        t0 = 0.0
        relaunched = False
        while ack[0] != s:
            i += 1
            if i & 1023:
                continue
            a1 = ack[1]
            if a1 == 0 and ack[0] != s:  # exited (idle) before it saw the command
                if relaunched:
                    self._fail(s, "it exited twice without serving the command")
                self.stream.synchronize()
                self._launch(False)
                relaunched = True
                t0 = 0.0
            if t0 == 0.0:
                t0 = time.perf_counter()
            elif a1 == 1 and time.perf_counter() - t0 > self.START_TIMEOUT:
                self._fail(s, f"it did not become resident within {self.START_TIMEOUT * 1e3:.0f} ms (the GPU "
                              "has no room for it now: other resident kernels, e.g. other persistent streams?)")
            elif time.perf_counter() - t0 > self.TIMEOUT:
                self._fail(s, f"no acknowledgement in {self.TIMEOUT} s")
        self.seq = s

    def _fail(self, s, why):  # pragma: no cover - real GPU only
        self.ctl_h[0] = -1  # ask it to exit when (if) it runs: the command is never served
        self.running = False
        raise PersistError(f"the persistent step kernel did not answer command {s}: {why}")

    def phases(self) -> dict:
        """With ``stamps``: the mean device time (µs) from the moment block 0 saw a command to
        the end of each phase, over the steps so far (stops the kernel to read them)."""
        self.stop()
        a = self.stamps.copy_to_host()
        steps = int(a[1]) if a.size > 2 else 0
        if steps == 0:
            return {"steps": 0}
        res = {"steps": steps, "staged": a[2] / steps / 1e3}
        res.update({f"layer {k} done": a[3 + k] / steps / 1e3 for k in range(a.size - 4)})
        res["all done"] = a[-1] / steps / 1e3
        return res

    def stop(self) -> None:
        """Make the kernel exit and wait for it; the next ``step`` relaunches it."""
        if not self.running:
            return
        self.ctl_h[0] = -1
        self.stream.synchronize()
        self.ctl_h[0] = self.seq
        self.running = False
