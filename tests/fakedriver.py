"""A CUDA driver for numba's simulator: the engine's graph and driver launch paths without a GPU.

On a GPU a pool steps through CUDA graphs or through raw driver calls (``cuLaunchKernel`` with
kernel parameters packed once, ``cuMemcpy*Async``, stream capture; ``streamrnn/engine/
cuda_pool.py``). The simulator has no driver, so the engine takes numba's launch path there and
that code would run only on hardware. ``install(engine, mode)`` puts this module's stand-in
under an engine built on the simulator, so that its next pools take the ``graph`` or ``driver``
path, with every kernel run by the simulator:

* ``cuLaunchKernel`` reads the kernel's arguments back from the ``void*`` array that
  ``_Params`` built (its compiled-kernel stand-in records each array under a number and each
  scalar as an int64), at the call: a graph node keeps the values it was captured with, as on
  a GPU, so a parameter changed after capture does not reach the replay;
* ``cuMemcpyHtoDAsync`` / ``cuMemcpyDtoHAsync`` copy bytes between the host addresses of the
  pinned rows and of the simulator's device arrays (both numpy memory here);
* ``cuStreamBeginCapture`` .. ``cuStreamEndCapture`` record the operations issued on the
  stream; ``cuGraphLaunch`` replays them (in order, at the call);
* ``ENTRY``: C callbacks at the addresses where the njit graph step (STREAMRNN_CUDA_HOSTCALL=njit)
  calls the driver's ``cuGraphLaunch`` / ``cuStreamSynchronize`` (``install(..., hostcall=True)``).

What it cannot show: operations run at once, in call order, so overlap between streams and
between host and device (step_chunked's two streams) is not exercised, only its bookkeeping.
``CALLS`` counts the driver calls by name, ``live()`` the graphs not destroyed.
"""
from __future__ import annotations

import ctypes
from collections import Counter

import numpy as np

CALLS: Counter = Counter()
_OBJECTS: dict = {}  # number -> an array argument of a packed launch
_FUNCS: dict = {}  # handle -> compiled kernel stand-in
_GRAPHS: dict = {}  # handle -> graph (instantiated or not)


def _keep(obj) -> int:
    key = len(_OBJECTS) + 1
    _OBJECTS[key] = obj
    return key


class _Compiled:
    """What ``dispatcher.compile(types)`` returns on a GPU, as far as the engine uses it."""

    def __init__(self, disp, types):
        self.disp, self.argument_types = disp, tuple(types)
        self._codelibrary = self
        self.handle = len(_FUNCS) + 1
        _FUNCS[self.handle] = self

    def get_cufunc(self):
        return self

    def _prepare_args(self, ty, val, stream, retr, kernelargs):
        if ty == "int":
            kernelargs.append(ctypes.c_int64(int(val)))
        else:
            kernelargs.append(ctypes.c_uint64(_keep(val)))

    def read_args(self, params: int) -> list:
        ptrs = (ctypes.c_void_p * len(self.argument_types)).from_address(params)
        vals = [ctypes.c_int64.from_address(p).value for p in ptrs]
        return [v if t == "int" else _OBJECTS[v] for t, v in zip(self.argument_types, vals)]


def _typeof_pyval(self, val):
    return "int" if isinstance(val, (int, np.integer)) else "array"


def _compile(self, sig):
    return _Compiled(self, sig)


class _Graph:
    def __init__(self, ops, instantiated=False):
        self.ops = list(ops)
        self.instantiated, self.destroyed = instantiated, False
        self.handle = len(_GRAPHS) + 1
        _GRAPHS[self.handle] = self

    def __int__(self):  # a CUgraphExec's handle value (the njit graph step launches it by value)
        return self.handle

    def replay(self):
        assert not self.destroyed, "a destroyed graph launched"
        for op in self.ops:
            op()


class FakeCu:
    """The cuda-bindings ``driver`` functions and enums that the engine calls."""

    class CUstreamCaptureMode:
        CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1

    def __init__(self):
        self.capturing: dict = {}  # stream -> operations recorded

    def _issue(self, stream, op) -> tuple:
        if stream in self.capturing:
            self.capturing[stream].append(op)
        else:
            op()
        return (0,)

    @staticmethod
    def CUstream(handle):
        return ("stream", int(handle))

    def cuKernelGetFunction(self, handle):
        CALLS["cuKernelGetFunction"] += 1
        return (0, _FUNCS[handle])

    def cuLaunchKernel(self, fn, gx, gy, gz, bx, by, bz, smem, stream, params, extra):
        CALLS["cuLaunchKernel"] += 1
        assert gz == by == bz == 1 and smem == 0 and extra == 0, (gz, by, bz, smem, extra)
        args = fn.read_args(params)  # the parameters as they are now
        return self._issue(stream, lambda: fn.disp[(gx, gy), bx](*args))

    def cuMemcpyHtoDAsync(self, dst, src, nbytes, stream):
        CALLS["cuMemcpyHtoDAsync"] += 1
        return self._issue(stream, lambda: ctypes.memmove(dst, src, nbytes))

    def cuMemcpyDtoHAsync(self, dst, src, nbytes, stream):
        CALLS["cuMemcpyDtoHAsync"] += 1
        return self._issue(stream, lambda: ctypes.memmove(dst, src, nbytes))

    def cuStreamSynchronize(self, stream):
        CALLS["cuStreamSynchronize"] += 1
        assert stream not in self.capturing, "synchronize during a capture"
        return (0,)

    def cuStreamBeginCapture(self, stream, mode):
        assert stream not in self.capturing
        self.capturing[stream] = []
        return (0,)

    def cuStreamEndCapture(self, stream):
        return (0, _Graph(self.capturing.pop(stream)))

    def cuGraphInstantiate(self, graph, flags):
        CALLS["cuGraphInstantiate"] += 1
        return (0, _Graph(graph.ops, instantiated=True))

    def cuGraphDestroy(self, graph):
        return (0,)

    def cuGraphExecDestroy(self, g):
        CALLS["cuGraphExecDestroy"] += 1
        assert not g.destroyed, "a graph destroyed twice"
        g.destroyed = True
        return (0,)

    def cuGraphLaunch(self, g, stream):
        CALLS["cuGraphLaunch"] += 1
        return self._issue(stream, g.replay)


# The driver's C entry points that the njit graph step (STREAMRNN_CUDA_HOSTCALL=njit) calls by
# address: cuGraphLaunch(exec handle, stream) and cuStreamSynchronize(stream), as C callbacks
@ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_int64)
def _entry_launch(g, stream):
    CALLS["entry cuGraphLaunch"] += 1
    _GRAPHS[g].replay()
    return 0


@ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64)
def _entry_sync(stream):
    CALLS["entry cuStreamSynchronize"] += 1
    return 0


ENTRY = tuple(ctypes.cast(f, ctypes.c_void_p).value for f in (_entry_launch, _entry_sync))


def live() -> int:
    """Instantiated graphs not destroyed yet (each holds device resources on a GPU)."""
    return sum(g.instantiated and not g.destroyed for g in _GRAPHS.values())


def _dptr(a) -> int:
    """The address of a simulator device array's memory (numpy memory)."""
    return int(a._ary.ctypes.data)


def install(engine, mode: str = "graph", hostcall: bool = False) -> None:
    """Make ``engine`` (a ``CudaEngine`` built on the simulator) give its next pools and streams
    the ``mode`` launch path ("graph" or "driver") through ``FakeCu``, outputs in mapped memory;
    ``hostcall``: a graph step of a pool as one njit call (STREAMRNN_CUDA_HOSTCALL=njit) that
    calls ``ENTRY``."""
    from numba.cuda.simulator import api
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    from streamrnn.engine import cuda_pool, cuda_runtime

    assert engine.sim and mode in ("graph", "driver")
    FakeCUDAKernel.compile = _compile
    FakeCUDAKernel.typeof_pyval = _typeof_pyval
    api.stream.handle = property(lambda s: id(s) & 0xFFFFFFFF)  # streams of the simulator: no handle
    cuda_pool._dptr = _dptr
    cuda_runtime._tls.ctx = True  # the simulator has no context to make current
    drv = cuda_runtime._Driver.__new__(cuda_runtime._Driver)
    drv.cu, drv.OK = FakeCu(), 0
    engine.drv, engine.mode, engine.mapped_out = drv, mode, True
    if hostcall:
        assert mode == "graph"
        engine.entry = ENTRY
