"""The CUDA runtime the engine runs on: numba.cuda (or its simulator), and the thin launch path.

* ``cuda``: numba's CUDA module, or None where it cannot be imported (a CPU-only install);
  ``simulator()`` says whether numba's simulator (NUMBA_ENABLE_CUDASIM=1) stands in for a GPU and
  ``check_device()`` raises the user's error where neither is there.
* ``_Driver``, ``_Params``, ``allow_smem``, ``_dptr``: cuda-bindings' driver calls with kernel
  parameters packed once (``cuLaunchKernel``, graph capture and replay: :mod:`.cuda_pool`).
* ``make_current()``: raw driver calls from a thread need the CUDA context current in it.

Imported only by the CUDA engine (:mod:`streamrnn.engine.cuda` and its ``cuda_*`` modules, and
:mod:`streamrnn.engine.persist`), so only when a model is built with ``device="cuda"``.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

from ..errors import StreamRNNError

try:  # numba-cuda (or numba's bundled CUDA target); absent on CPU-only installs
    from numba import cuda
    from numba.cuda import config as _cuda_config

    _IMPORT_ERROR = None
except Exception as e:  # pragma: no cover - depends on the install
    cuda = None
    _cuda_config = None
    _IMPORT_ERROR = e

_tls = threading.local()  # per thread: the CUDA context was made current

_NO_GPU = "device: expected a CUDA GPU for device='cuda', got none ({})"


def simulator() -> bool:
    """True when numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) stands in for a GPU."""
    return bool(_cuda_config is not None and _cuda_config.ENABLE_CUDASIM)


def check_device() -> None:
    """Raise ``StreamRNNError`` (the device error of ``device="cuda"``) unless numba.cuda can
    run kernels here: on a GPU, or on numba's simulator."""
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


def make_current() -> None:
    """Make the CUDA context current in this thread (once per thread): raw driver calls
    (cuda-bindings, or the driver's entry points from njit code) need it."""
    if not getattr(_tls, "ctx", False):
        cuda.current_context()
        _tls.ctx = True


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


def _cvalue(v):
    """One flattened kernel parameter as a ctypes value (numba's ``_prepare_args`` gives ctypes
    values, or plain bools and ints)."""
    if isinstance(v, ctypes._SimpleCData):
        return v
    if isinstance(v, (bool, np.bool_)):
        return ctypes.c_uint8(int(v))
    if isinstance(v, (int, np.integer)):
        return ctypes.c_uint64(int(v) & 0xFFFFFFFFFFFFFFFF)
    raise TypeError(f"kernel argument of type {type(v).__name__}")


class _Params:
    """Kernel parameters of one launch as a C ``void*`` array (numba's argument ABI, built
    with the kernel's own ``_prepare_args``); the trailing int64 scalar (n) stays writable, and
    ``set_arg`` repacks one argument in place."""

    def __init__(self, kernel, args):
        vals, retrs, self._slots = [], [], []
        for t, v in zip(kernel.argument_types, args):
            flat, retr = [], []
            kernel._prepare_args(t, v, 0, retr, flat)
            self._slots.append((len(vals), len(flat)))
            vals += [_cvalue(f) for f in flat]
            retrs.append(retr)
        self._kernel = kernel
        self._vals = vals
        self._ptrs = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        self.ptr = ctypes.addressof(self._ptrs)
        self.n = vals[-1]
        self._keep = [list(args), retrs]

    def set_arg(self, k: int, value) -> None:
        """Argument k repacked for ``value``, an array of the type it was packed with (e.g. the
        next row of the same array). A launch after this call sees it; one before does not
        (``cuLaunchKernel`` copies the parameters at the call, a graph at its capture)."""
        flat, retr = [], []
        self._kernel._prepare_args(self._kernel.argument_types[k], value, 0, retr, flat)
        a, m = self._slots[k]
        if len(flat) != m:
            raise TypeError(f"argument {k}: expected {m} parameter words, got {len(flat)}")
        for slot, v in zip(self._vals[a : a + m], flat):
            slot.value = _cvalue(v).value
        self._keep[0][k], self._keep[1][k] = value, retr

    def stepper(self, k: int, v0, v1, stride: int):
        """``step(t)``: argument k set to the t-th of equally spaced arrays v0, v1, ... (the
        rows of one array, ``stride`` bytes apart) by moving one word, the data pointer: no
        array view and no ``_prepare_args`` per step (~15 and ~5 µs of host time each). Where
        the packed words of v0 and v1 do not differ in exactly that word by ``stride`` (e.g.
        a stand-in driver), None: the caller repacks with ``set_arg``. The caller keeps the
        array of the rows alive."""
        words = []
        for v in (v0, v1):
            flat, retr = [], []
            self._kernel._prepare_args(self._kernel.argument_types[k], v, 0, retr, flat)
            words.append([_cvalue(f).value or 0 for f in flat])
        a, m = self._slots[k]
        diff = [i for i in range(m) if words[0][i] != words[1][i]] if len(words[0]) == len(words[1]) == m else []
        if len(diff) != 1 or words[1][diff[0]] - words[0][diff[0]] != stride:
            return None
        self.set_arg(k, v0)
        slot, base = self._vals[a + diff[0]], words[0][diff[0]]

        def step(t: int) -> None:
            slot.value = base + t * stride

        return step


def _dptr(a) -> int:
    return int(a.__cuda_array_interface__["data"][0])
