"""A team of spinning worker threads for ``pool.step`` (CPU), woken in well under a microsecond.

numba's OpenMP workers wait passively here (``config.py``): waking them costs 60-90 us, as much
as a whole H=128, B=64 step (bench/NOTES.md, entries 18, 30, 39). The team's workers are plain
Python threads that run a compiled, GIL-free loop spinning on a shared counter (``pause`` between
reads), so a job posted by the calling thread starts on every core within a cache-line transfer.
After ``STREAMRNN_SPIN_US`` microseconds (default 500) without work a worker goes to sleep on an
``Event``; the next call wakes it, and meanwhile the calling thread does the work alone
(``STREAMRNN_SPIN_US=0``: the workers sleep after every job, like passive OpenMP threads).

Correctness never depends on a worker arriving: the rows of a job are claimed chunk by chunk
with an atomic compare-and-swap on ``ctl[NEXT]`` (the job's sequence number in the high 32 bits,
the next free row in the low 32), so the caller takes every chunk nobody else took, then waits
only for the chunks a worker has already started.

This module holds the primitives (atomics on int64 arrays, ``pause``) and the threads; the job
kernels that use them are in ``engine/cpu.py`` (``_team``, for the caller and the workers).
"""
from __future__ import annotations

import atexit
import logging
import os
import platform
import sys
import threading
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..config import NJIT

log = logging.getLogger(__name__)

#: ``ctl`` slots, one 64-byte cache line each: the job's claim counter, the rows finished, the
#: stop flag (and at MODE: 1 where workers sleep on a futex, 0 where on an Event), the job (JOB: rows, threads, address and length of the job's int64 context, the
#: smallest chunk), then one line per thread t (index SLEEP + LINE * t: its "asleep" flag, the
#: rows it has taken so far)
LINE = 8
NEXT, DONE, STOP, JOB, SLEEP = 0, LINE, 2 * LINE, 3 * LINE, 4 * LINE
MODE = STOP + 1
ROW_MASK = (1 << 32) - 1  # NEXT = seq << 32 | next free row; row ROW_MASK: the job is closed
SEQ_MASK = (1 << 31) - 1


def _elem_ptr(context, builder, aty, arr, idx, ity):
    ary = context.make_array(aty)(context, builder, arr)
    i = context.cast(builder, idx, ity, types.intp)
    return builder.gep(ary.data, [i])


def _int64_array(arr, i):
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and isinstance(i, types.Integer)


@intrinsic
def aload(typingctx, arr, i):
    """arr[i], an atomic (sequentially consistent) load of an int64 array element."""
    if not _int64_array(arr, i):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1]), "seq_cst", 8)

    return types.int64(arr, i), codegen


@intrinsic
def astore(typingctx, arr, i, v):
    """arr[i] = v, an atomic (sequentially consistent) store."""
    if not (_int64_array(arr, i) and isinstance(v, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        builder.store_atomic(context.cast(builder, args[2], sig.args[2], types.int64), ptr, "seq_cst", 8)
        return context.get_dummy_value()

    return types.void(arr, i, v), codegen


@intrinsic
def aadd(typingctx, arr, i, v):
    """arr[i] += v atomically; returns the old value."""
    if not (_int64_array(arr, i) and isinstance(v, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.atomic_rmw("add", ptr, context.cast(builder, args[2], sig.args[2], types.int64), "seq_cst")

    return types.int64(arr, i, v), codegen


@intrinsic
def acas(typingctx, arr, i, old, new):
    """If arr[i] == old, set it to new, atomically; True when it did."""
    if not (_int64_array(arr, i) and isinstance(old, types.Integer) and isinstance(new, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        o = context.cast(builder, args[2], sig.args[2], types.int64)
        n = context.cast(builder, args[3], sig.args[3], types.int64)
        res = builder.cmpxchg(ptr, o, n, "seq_cst", "seq_cst")
        return builder.extract_value(res, 1)

    return types.boolean(arr, i, old, new), codegen


_ARCH = platform.machine().lower()


@intrinsic
def cpu_pause(typingctx):
    """The CPU's spin-wait hint (x86 ``pause``, ARM ``yield``; nothing elsewhere), as an LLVM
    intrinsic (numba's LLVM has no inline-assembly parser)."""

    def codegen(context, builder, sig, args):
        if _ARCH in ("x86_64", "amd64"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        elif _ARCH in ("aarch64", "arm64"):
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i32]), "llvm.aarch64.hint")
            builder.call(fn, [ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(), codegen


#: Linux futexes let a worker sleep and be woken inside compiled code, without the GIL (an
#: ``Event`` needs it twice: to go to sleep and to come back, ~5 ms when the caller's thread is
#: busy in Python). Other systems use the Event.
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(_ARCH)
FUTEX = sys.platform.startswith("linux") and _SYS_FUTEX is not None
FUTEX_WAIT, FUTEX_WAKE = 128, 129  # the _PRIVATE operations


@intrinsic
def futex(typingctx, arr, i, op, val):
    """``syscall(SYS_futex, &arr[i], op, val, NULL)`` on the low 32 bits of an int64 element:
    FUTEX_WAIT sleeps while they equal ``val`` (returns at once otherwise, or on any wake-up),
    FUTEX_WAKE wakes up to ``val`` sleepers. -1 where there are no futexes (``FUTEX``)."""
    if not (_int64_array(arr, i) and isinstance(op, types.Integer) and isinstance(val, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        if not FUTEX:
            return ir.Constant(i64, -1)
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64], var_arg=True), "syscall")
        op_ = context.cast(builder, args[2], sig.args[2], types.int64)
        val_ = context.cast(builder, args[3], sig.args[3], types.int64)
        return builder.call(fn, [ir.Constant(i64, _SYS_FUTEX), builder.ptrtoint(ptr, i64), op_, val_, ir.Constant(i64, 0)])

    return types.int64(arr, i, op, val), codegen


@njit(**NJIT)
def wake_worker(ctl, t):
    """Wake worker t if it sleeps on its futex (its flag SLEEP + LINE * t: 1 -> 0)."""
    s = SLEEP + LINE * t
    if aload(ctl, s) == 1:
        astore(ctl, s, 0)
        futex(ctl, s, FUTEX_WAKE, 1)


@njit(**NJIT)
def _stop(ctl):
    """Tell every worker to stop (an atomic store, then wake those asleep on their futex)."""
    astore(ctl, STOP, 1)
    for t in range(1, (ctl.shape[0] - SLEEP) // LINE):
        wake_worker(ctl, t)


@njit(**NJIT)
def _spin(ctl, n):
    """n idle iterations of a worker's wait loop (calibration of ``STREAMRNN_SPIN_US``)."""
    s = 0
    for _ in range(n):
        s += aload(ctl, STOP)
        cpu_pause()
    return s


def spin_us() -> float:
    """How long an idle worker spins before it sleeps (``STREAMRNN_SPIN_US``, default 500 us;
    0: it sleeps as soon as a job is done)."""
    try:
        return max(0.0, float(os.environ.get("STREAMRNN_SPIN_US", "500")))
    except ValueError:
        log.warning("STREAMRNN_SPIN_US=%r is not a number; using 500", os.environ["STREAMRNN_SPIN_US"])
        return 500.0


class Team:
    """``nworkers`` threads, each running ``loop(ctl, t, spin)`` (a compiled GIL-free function
    that returns 0 when told to stop; after ``spin`` idle iterations it sleeps on a futex, or,
    with ``futex=False``, returns 1 and the thread sleeps on an Event until ``wake`` sets it).
    ``lock`` serialises jobs: one job at a time uses ``ctl``; a caller that cannot take it at
    once runs its job alone."""

    def __init__(self, nworkers: int, loop, spin: float, futex: bool = FUTEX):
        self.ctl = np.zeros(SLEEP + LINE * (nworkers + 1), np.int64)
        self.ctl[MODE] = int(bool(futex) and FUTEX)
        self.nworkers = nworkers
        self.lock = threading.Lock()
        self._loop = loop
        self._events = [threading.Event() for _ in range(nworkers + 1)]
        _spin(self.ctl, 1)  # compile (or load from the cache) first
        t0 = time.perf_counter()
        _spin(self.ctl, 20000)
        per_us = 20000 / max(1e-9, (time.perf_counter() - t0) * 1e6)
        self.spin = max(1, int(spin * per_us))  # idle iterations before a worker sleeps
        self._threads = [threading.Thread(target=self._run, args=(t,), name=f"streamrnn-team-{t}", daemon=True)
                         for t in range(1, nworkers + 1)]
        for th in self._threads:
            th.start()
        log.debug("team of %d spinning workers (%d idle iterations, %.0f us)", nworkers, self.spin, spin)

    def _run(self, t: int) -> None:
        while self._loop(self.ctl, t, self.spin):
            self.asleep = True
            self._events[t].wait()
            self._events[t].clear()

    #: some worker went to sleep since the last ``wake`` (a plain attribute: one read per call;
    #: a worker that falls asleep just after a call has read it joins from the next call on)
    asleep = False

    def wake(self) -> None:
        """Wake the workers sleeping on their Event (a job is about to be posted; without
        futexes only). Setting the Event of a worker that is awake costs it one more pass."""
        self.asleep = False
        for e in self._events[1:]:
            e.set()

    def rows(self) -> np.ndarray:
        """Rows each thread has taken so far (index 0: the calling threads; a diagnostic)."""
        return self.ctl[SLEEP + 1 :: LINE].copy()

    def stop(self) -> None:
        _stop(self.ctl)
        for e in self._events:
            e.set()
        for th in self._threads:
            th.join(timeout=1.0)


_team: Team | None = None
_team_lock = threading.Lock()


def running() -> Team | None:
    """The process's team if it has been started (one global read: ``pool.step`` calls it)."""
    return _team


def get(nworkers: int, loop) -> Team | None:
    """The process's team (started on first use with ``nworkers`` workers running ``loop``),
    or None where there is no other core to share the work with."""
    global _team
    if _team is not None:
        return _team
    s = spin_us()
    if nworkers < 1:
        return None
    with _team_lock:
        if _team is None:
            _team = Team(nworkers, loop, s)
    return _team


def _shutdown() -> None:
    global _team
    if _team is not None:
        _team.stop()
        _team = None


def _forget() -> None:  # a forked child has none of the parent's threads
    global _team
    _team = None


atexit.register(_shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)
