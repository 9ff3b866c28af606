"""A race checker for numba's CUDA simulator (a small ``compute-sanitizer --tool racecheck``).

On a GPU, two threads of one block that touch the same word between the same two barriers, at
least one of them writing, race: what the reader gets, or which write stays, depends on how the
warps are scheduled. The simulator runs each CUDA thread as a Python thread, so such a race gives
a wrong result only when Python happens to switch threads at the wrong moment, and a kernel that
passes its parity tests here can still be wrong on hardware.

This module records every access instead, with the thread and the barrier interval ("epoch") it
happened in, and reports each pair of accesses that conflict:

* a write, and a read or a write of another thread, in the same epoch;
* an atomic (``cuda.atomic.*``, or a volatile access through one of SYNC_FUNCTIONS), and a plain
  read or write of another thread, in the same epoch (atomics among themselves do not race);
* with ``global_memory=True``, the same between two blocks of one launch, in global memory,
  whatever the epochs (nothing orders the blocks of a launch);
* a read of shared memory that no thread of the block has written yet (it starts undefined in
  every block; the simulator hands the next block what the last one left).

Shared memory (static and dynamic, by 4-byte word, so overlapping views of the dynamic buffer
are seen) is always checked; the kernels' array arguments (global memory) with
``install(global_memory=True)``. Epochs are counted per thread at each ``cuda.syncthreads()``
(and at the grid sync, which the simulator runs as one: a cooperative grid is one block there).
A read whose value is dropped when it races (a load clamped to a valid index so that it can be
issued unconditionally) is excused by UNUSED_MARK in a comment on its line; a read of undefined
shared memory whose result is dropped, by UNDEFINED_MARK.

Use: ``install()`` before the first kernel runs (it patches the simulator in this process), then
``check()`` after the kernels, which raises :class:`RaceError` listing what was found.
"""
from __future__ import annotations

import itertools
import linecache
import operator
import sys
import threading

import numpy as np
from numba.cuda.simulator import kernel as _kernel
from numba.cuda.simulator import kernelapi as _kapi
from numba.cuda.simulator.cudadrv import devicearray as _devarray

__all__ = ["RaceError", "install", "races", "accesses", "check", "reset"]

READ, WRITE, ATOMIC = "read", "write", "atomic"
#: device functions whose accesses are synchronisation, like atomics: the volatile loads and
#: stores of flags and counters (streamrnn/layers/cuda_sync.py; plain accesses in the simulator)
SYNC_FUNCTIONS = {"ld_volatile", "st_volatile"}
#: a read on a source line with this text in a comment may race: its value is not used when it
#: does (e.g. a load clamped to a valid index so that it can be issued unconditionally); the
#: comment says why
UNUSED_MARK = "simrace: value unused"
#: a read on a source line with this text (or UNUSED_MARK) may read shared memory that no
#: thread of the block has written: the kernel computes on rows it then drops (e.g. the rows
#: past the last sequence of a group, kept for a constant trip count)
UNDEFINED_MARK = "simrace: undefined dropped"
MAX_REPORTS = 20

_lock = threading.Lock()
_blocks: dict = {}  # the same, for the blocks of a launch (global memory)
_written: dict = {}  # address of a shared-memory word -> the block (serial) that last wrote it
_table: dict = {}  # address of a 4-byte word -> [epoch key, (tid, loc) of the last write or None, {tid: loc} of reads, {tid: loc} of atomics]
_races: list = []
_seen: set = set()
_serial = itertools.count()
_skip_files = {__file__, _kapi.__file__, _kernel.__file__, _devarray.__file__}
_installed = False
_strict = False
_count = [0]  # accesses recorded


class RaceError(AssertionError):
    """Conflicting accesses between two barriers (or blocks), or a read of undefined shared memory."""


class _Shared(np.ndarray):
    """A view of simulated shared memory whose element reads and writes are recorded."""

    def __array_finalize__(self, obj):
        self._label = getattr(obj, "_label", None)  # (name, buffer start address, global?)

    def __array_ufunc__(self, ufunc, method, *args, **kwargs):
        # arithmetic on whole views gives plain (untraced) arrays
        args = tuple(a.view(np.ndarray) if isinstance(a, _Shared) else a for a in args)
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, _Shared) else o for o in kwargs["out"])
        return getattr(ufunc, method)(*args, **kwargs)

    def _base(self) -> int:
        ptr = self.__dict__.get("_ptr")
        if ptr is None:
            ptr = self.__dict__["_ptr"] = _pointer(self)
        return ptr

    def __getitem__(self, idx):
        r = np.ndarray.__getitem__(self, idx)
        if not isinstance(r, np.ndarray):  # one element (a view is recorded when it is accessed)
            _record(READ, self._base(), self.itemsize, _element_offset(self, idx), self._label)
        return r

    def __setitem__(self, idx, value):
        np.ndarray.__setitem__(self, idx, value)
        target = np.ndarray.__getitem__(self, idx)
        if isinstance(target, np.ndarray):  # a slice: every element of it
            if not np.shares_memory(target, self):
                raise TypeError(f"simrace: index {idx!r} of a shared array is not a view")
            base = _pointer(target) - _pointer(self)
            grids = np.indices(target.shape).reshape(target.ndim, -1).T
            for off in base + grids @ np.array(target.strides, dtype=np.int64):
                _record(WRITE, self._base(), self.itemsize, int(off), self._label)
        else:
            _record(WRITE, self._base(), self.itemsize, _element_offset(self, idx), self._label)


def _pointer(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _element_offset(a: np.ndarray, idx) -> int:
    """Byte offset of a[idx] (one element) from a's first element."""
    if type(idx) is not tuple:
        idx = (idx,)
    if len(idx) != a.ndim:
        raise TypeError(f"simrace: unsupported index {idx!r} of a {a.ndim}-d array")
    off = 0
    for i, n, st in zip(idx, a.shape, a.strides):
        off += (operator.index(i) % n) * st  # a slice or an array raises TypeError
    return off


def _caller():
    """(file name, line, function name) of the kernel code that made the access."""
    f = sys._getframe(3)
    while f.f_code.co_filename in _skip_files:
        f = f.f_back
    return f.f_code.co_filename, f.f_lineno, f.f_code.co_name


def _where(loc) -> str:
    return "/".join(loc[0].rsplit("/", 2)[-2:]) + f":{loc[1]}"


def _excused(kind: str, loc, marks=(UNUSED_MARK,)) -> bool:
    """A read on a line marked with one of marks."""
    line = linecache.getline(loc[0], loc[1]) if kind == READ else ""
    return any(m in line for m in marks)


def _record(kind: str, base: int, size: int, offset: int, label) -> None:
    """Record one access of the size-byte element at base + offset; label = (array name, its
    start address, whether it is global memory)."""
    t = threading.current_thread()
    mgr = getattr(t, "_manager", None)
    if mgr is None or label is None:  # not a simulated thread, or not a traced array
        return
    loc = _caller()
    if t._race_atomic or loc[2] in SYNC_FUNCTIONS:
        kind = ATOMIC
    start = base + offset
    block = t.__dict__.get("_race_block")
    if block is None:
        block = t._race_block = tuple(t.blockIdx)
    inside = ((mgr._race_serial, t._race_epoch), t.thread_id, (block, t._race_epoch))
    across = ((mgr._race_launch,), block, None)
    with _lock:
        _count[0] += 1
        # by 4-byte word (a shared-memory bank's width): a float64 covers two, and a float32
        # view of the same dynamic buffer overlaps it in one
        for addr in range(start, start + size, 4) if size >= 4 else (start,):
            _record_word(_table, kind, label, addr, loc, *inside)
            if label[2]:  # global memory: also against the launch's other blocks
                _record_word(_blocks, kind, label, addr, loc, *across)
            else:  # shared memory starts undefined in every block
                if kind != WRITE and _written.get(addr) != mgr._race_serial and \
                        not _excused(kind, loc, (UNUSED_MARK, UNDEFINED_MARK)):
                    _report(label, addr, (kind, t.thread_id, loc), None, (block, t._race_epoch))
                if kind != READ:
                    _written[addr] = mgr._race_serial


def _record_word(table, kind, label, addr, loc, key, agent, scope) -> None:
    """Check one access of word addr by agent (a thread id, or a block index) against the table's
    record of the word under the same key (barrier interval, or launch), then add it there;
    scope: (block, barrier count) for threads, None for blocks."""
    rec = table.get(addr)
    if rec is None or rec[0] != key:
        rec = table[addr] = [key, None, {}, {}]
    _, writer, reads, atomics = rec
    others = []
    if writer is not None and writer[0] != agent:
        others.append((WRITE,) + writer)
    if kind != READ:
        others += [(READ, u, l) for u, l in reads.items() if u != agent][:1]
    if kind != ATOMIC:
        others += [(ATOMIC, u, l) for u, l in atomics.items() if u != agent][:1]
    for other in others:
        if not (kind == ATOMIC and other[0] == ATOMIC) and not _excused(kind, loc) and not _excused(other[0], other[2]):
            _report(label, addr, (kind, agent, loc), other, scope)
    if kind == WRITE:
        rec[1] = (agent, loc)
    elif kind == READ:
        reads.setdefault(agent, loc)
    else:
        atomics.setdefault(agent, loc)


def _report(label, addr, this, other, scope) -> None:
    """other: the conflicting access, or None for a read of shared memory never written."""
    name, start, _ = label
    sig = (name, (this[0], this[2][:2])) if other is None else \
        (name,) + tuple(sorted([(this[0], this[2][:2]), (other[0], other[2][:2])]))
    if sig in _seen:
        return
    _seen.add(sig)
    who = "block" if scope is None else "thread"
    where = ("in two blocks of one launch (no barrier orders blocks)" if scope is None else
             f"between the same two barriers (block {scope[0]}, after barrier {scope[1]})")
    if other is None:
        msg = (f"{name}, byte {addr - start}: thread {this[1]} {this[0]} at {_where(this[2])} "
               f"before any thread of block {scope[0]} wrote it (shared memory starts undefined)")
    else:
        msg = (f"{name}, byte {addr - start}: {who} {this[1]} {this[0]} at {_where(this[2])} "
               f"and {who} {other[1]} {other[0]} at {_where(other[2])}, {where}")
    if len(_races) < MAX_REPORTS:
        _races.append(msg)
    if _strict:  # raised in the simulated thread: the launch fails with this message
        raise RaceError(msg)


def _poison(a: np.ndarray) -> np.ndarray:
    """Fill a (contiguous) with all-ones bytes: NaN as floats, -1 as integers."""
    a.view(np.uint8).fill(0xFF)
    return a


def _traced(arr: np.ndarray, name: str, start: int) -> _Shared:
    v = arr.view(_Shared)
    v._label = (name, start, False)
    return v


def install(strict: bool = False, global_memory: bool = False, poison: bool = True) -> None:
    """Patch numba's simulator in this process so that memory accesses are recorded.

    strict=True: the first race raises RaceError in the thread that found it, which fails the
    kernel launch (before a wrong result can fail some later comparison instead).
    global_memory=True: accesses of the kernels' array arguments (global memory) are recorded
    too, and checked between threads of a block and between the blocks of a launch.
    poison=True: every block's shared memory and every thread's local arrays start as all-ones
    bytes (NaN in a float, -1 in an integer) instead of what the simulator leaves there (the
    previous block's values, or zeros): a kernel that uses a value it never wrote then gives NaN,
    and a parity check fails. This also checks the claims of UNDEFINED_MARK.
    """
    global _installed, _strict
    _strict = strict
    if _installed:
        return
    _installed = True
    from numba.core import types
    from numba.np import numpy_support

    alloc_lock = threading.Lock()

    def shared_array(self, shape, dtype, alignment=None):
        # numba's FakeCUDAShared.array (one array per source line of the call), with its
        # check-then-set of the dict under a lock (without it, when Python switches threads in
        # between, two threads of a block get different arrays: a rare CI failure of the
        # "persist" simulator case, and every run of it with sys.setswitchinterval(1e-6)),
        # and the result traced
        if alignment is not None:
            raise RuntimeError("Array alignment is not supported in cudasim")
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        if shape == 0:  # dynamic shared memory: every such array is a view of one buffer
            count = self._dynshared_size // dtype.itemsize
            buf = self._dynshared
            return _traced(np.frombuffer(buf.data, dtype=dtype, count=count), "dynamic shared memory", _pointer(buf))
        f = sys._getframe(1)
        caller = (f.f_code.co_filename, f.f_lineno)
        with alloc_lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
                if poison:
                    _poison(res)
        name = f"shared array {caller[0].rsplit('/', 1)[-1]}:{caller[1]}"
        return _traced(res, name, _pointer(res))

    _kapi.FakeCUDAShared.array = shared_array

    if poison:
        local = _kapi.FakeCUDALocal.array

        def local_array(self, shape, dtype, alignment=None):
            return _poison(local(self, shape, dtype, alignment))

        _kapi.FakeCUDALocal.array = local_array

    if global_memory:
        fake = _devarray.FakeWithinKernelCUDAArray
        get, put = fake.__getitem__, fake.__setitem__

        def global_label(item):  # (label, pointer) of a FakeCUDAArray, made once
            lab = item.__dict__.get("_race_label")
            if lab is None:
                ary = item._ary
                lab = item.__dict__["_race_label"] = (f"global array {ary.dtype}{ary.shape}", _pointer(ary), True)
            return lab

        def getitem(self, idx):
            r = get(self, idx)
            if not isinstance(r, fake):  # one element
                item = self._item
                lab = global_label(item)
                _record(READ, lab[1], item._ary.itemsize, _element_offset(item._ary, idx), lab)
            return r

        def setitem(self, idx, value):
            put(self, idx, value)
            item = self._item
            lab = global_label(item)
            _record(WRITE, lab[1], item._ary.itemsize, _element_offset(item._ary, idx), lab)

        fake.__getitem__, fake.__setitem__ = getitem, setitem

    sync = _kernel.BlockThread.syncthreads

    def syncthreads(self):
        sync(self)
        self._race_epoch += 1

    _kernel.BlockThread.syncthreads = syncthreads
    _kernel.BlockThread._race_epoch = 0
    _kernel.BlockThread._race_atomic = False

    run = _kernel.BlockManager.run

    def block_run(self, *args, **kwargs):
        self._race_serial = next(_serial)
        launch = _kernel._kernel_context  # the launch's FakeCUDAModule
        if not hasattr(launch, "_race_serial"):
            launch._race_serial = next(_serial)
        self._race_launch = launch._race_serial
        if poison:  # a block's shared memory starts undefined, not as the last block left it
            for a in launch._shared._allocations.values():
                _poison(a)
            _poison(launch._shared._dynshared)
        return run(self, *args, **kwargs)

    _kernel.BlockManager.run = block_run

    def atomic(fn):
        def wrapped(self, *args):
            t = threading.current_thread()
            prev, t._race_atomic = getattr(t, "_race_atomic", False), True
            try:
                return fn(self, *args)
            finally:
                t._race_atomic = prev
        return wrapped

    for name, fn in list(vars(_kapi.FakeCUDAAtomic).items()):
        if not name.startswith("_") and callable(fn):
            setattr(_kapi.FakeCUDAAtomic, name, atomic(fn))


def races() -> list[str]:
    """What was found so far (at most MAX_REPORTS, one per pair of source lines)."""
    return list(_races)


def accesses() -> int:
    """How many shared-memory accesses were recorded since install() or reset()."""
    return _count[0]


def reset() -> None:
    """Forget what was recorded and found."""
    with _lock:
        _count[0] = 0
        _table.clear()
        _blocks.clear()
        _written.clear()
        _races.clear()
        _seen.clear()


def check() -> None:
    """Raise RaceError listing what was found, if anything."""
    if _races:
        raise RaceError(f"{len(_races)} race(s):\n" + "\n".join(_races))
