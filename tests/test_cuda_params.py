"""``engine.cuda_runtime._Params`` against numba-cuda's own argument packing, without a GPU.

On a GPU the driver and graph paths launch kernels with parameters packed once by ``_Params``
(numba's ``_prepare_args``: an array is 5 + 2 ndim words, its data pointer the fifth), and the
GEMM-per-step sequence path (STREAMRNN_CUDA_SEQ=gemm) moves only the data pointers of the
frames' and outputs' rows from one step to the next (``stepper``). The simulator's stand-in
driver (tests/fakedriver.py) packs arrays differently, so there the sequence path repacks each
step (``set_arg``) and the pointer arithmetic of ``stepper`` would not run. Here it runs against
the real packing: device arrays over made-up addresses (nothing is dereferenced, no context).
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

pytest.importorskip("numba.cuda")
from numba import types  # noqa: E402
from numba.cuda.cudadrv import devicearray  # noqa: E402
from numba.cuda.dispatcher import _Kernel  # noqa: E402

from streamrnn.engine.cuda_runtime import _Params  # noqa: E402


class _Mem:
    """A device allocation as far as DeviceNDArray needs one: an address and a size."""

    def __init__(self, addr: int, size: int):
        self.handle = self.device_pointer_value = addr
        self.size = size
        self.owner = None

    @property
    def device_ctypes_pointer(self):
        return ctypes.c_void_p(self.handle)

    def view(self, start, stop=None):
        return _Mem(self.handle + start, (self.size if stop is None else stop) - start)

    def own(self):
        return self


class _Kern:
    """What ``_Params`` uses of a compiled kernel: its argument types and numba's packing."""

    extensions: list = []
    _prepare_args = _Kernel._prepare_args

    def __init__(self, argument_types):
        self.argument_types = argument_types


def _dev(shape, dtype, addr):
    dtype = np.dtype(dtype)
    strides = tuple(int(np.prod(shape[i + 1:])) * dtype.itemsize for i in range(len(shape)))
    return devicearray.DeviceNDArray(shape, strides, dtype, gpu_data=_Mem(addr, int(np.prod(shape)) * dtype.itemsize))


_row = devicearray.DeviceNDArray.__getitem__.__wrapped__  # a[t] without a CUDA context


def _numba_words(k: _Kern, args) -> list:
    """numba-cuda's packing of args, word by word as unsigned 64-bit values (the oracle)."""
    flat: list = []
    for t, v in zip(k.argument_types, args):
        k._prepare_args(t, v, 0, [], flat)
    return [int(getattr(w, "value", w) or 0) & 0xFFFFFFFFFFFFFFFF for w in flat]


def _words(p: _Params) -> list:
    """The words cuLaunchKernel would read: through the pointer array, as the driver does."""
    ptrs = (ctypes.c_void_p * len(p._vals)).from_address(p.ptr)
    return [ctypes.c_uint64.from_address(a).value for a in ptrs]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stepper_moves_only_the_data_pointer(dtype):
    rng = np.random.default_rng()
    T, B, I, O = 6, 3, 5, 2
    base = int(rng.integers(1, 1 << 20)) << 16
    X = _dev((T, B, I), dtype, base)
    Y = _dev((T, B, O), dtype, base + (1 << 32))
    ids = _dev((B,), np.int64, base + (2 << 32))
    f = types.float32 if dtype == "float32" else types.float64
    k = _Kern((types.Array(f, 2, "C"), types.Array(types.int64, 1, "C"), types.Array(f, 2, "C"), types.int64))
    p = _Params(k, (_row(X, 0), ids, _row(Y, 0), 1))
    sx = p.stepper(0, _row(X, 0), _row(X, 1), X.strides[0])
    sy = p.stepper(2, _row(Y, 0), _row(Y, 1), Y.strides[0])
    assert sx is not None and sy is not None
    for t in rng.permutation(T):
        n = int(rng.integers(1, B + 1))
        sx(t)
        sy(t)
        p.n.value = n
        assert _words(p) == _numba_words(k, (_row(X, t), ids, _row(Y, t), n)), t  # numba's packing of this step
    # set_arg repacks the same words
    p.set_arg(0, _row(X, 4))
    assert _words(p)[: 5 + 4] == _numba_words(k, (_row(X, 4), ids, _row(Y, 0), 1))[: 5 + 4]
    # where the two arrays are not one stride apart, or are the same, there is no stepper
    assert p.stepper(0, _row(X, 0), _row(X, 1), X.strides[0] + 4) is None
    assert p.stepper(0, _row(X, 2), _row(X, 2), X.strides[0]) is None
    assert p.stepper(0, _row(X, 0), _dev((B, I), dtype, base + 7 * X.strides[0]), X.strides[0]) is None


def test_set_arg_refuses_another_shape_of_words():
    X = _dev((4, 3), np.float32, 1 << 40)
    k = _Kern((types.Array(types.float32, 2, "C"), types.int64))
    p = _Params(k, (X, 1))
    k1 = _Kern((types.Array(types.float32, 1, "C"), types.int64))
    p._kernel = k1  # a 1-D array packs into fewer words than the slots hold
    with pytest.raises(TypeError, match="argument 0: expected 9 parameter words, got 7"):
        p.set_arg(0, _row(X, 0))


def test_the_pools_row_count_is_the_last_word():
    """A pool's launch (``_Core._bound``): W, ids and frames as strided views of the staging rows,
    feat, out, arena, then n, which ``_enqueue`` sets per call through ``params.n``: the words
    read through ``ptr`` then equal numba's packing of the same arguments with that n."""
    rng = np.random.default_rng()
    nmax, P, I, O, S, F = 8, 32, 5, 2, 6, 7  # rows, bytes per staging row [id | frame | pad], ...
    base = int(rng.integers(1, 1 << 20)) << 16
    W = _dev((100,), np.float32, base)
    rows = _dev((nmax, P), np.uint8, base + (1 << 32))
    ids = _row(rows.view(np.int64), (slice(None), 0))  # strided: 'A' layout
    X = _row(rows.view(np.float32), (slice(None), slice(2, 2 + I)))
    feat, out, arena = (_dev(s, np.float32, base + (k << 33)) for k, s in ((1, (nmax, F)), (2, (nmax, O)), (3, (20, S))))
    args = (W, ids, X, feat, out, arena)
    k = _Kern(tuple(a._numba_type_ for a in args) + (types.int64,))
    assert k.argument_types[1].layout == "A" and k.argument_types[2].layout == "A"
    p = _Params(k, args + (1,))
    for n in rng.integers(1, nmax + 1, 4):
        p.n.value = int(n)
        assert _words(p) == _numba_words(k, args + (int(n),)), n
