"""Host-side atomics for njit code that talks to another agent through shared memory (the
persistent step kernel's command and acknowledgement words in mapped pinned memory,
``persist.py``; a thread standing in for the GPU in the tests).

A plain array load in an ``@njit`` spin loop is a load LLVM may hoist out of the loop (it sees
no store to that address inside it), which turns a poll into an endless loop: the device-side
twin of this bug is NOTES entry 65 (numba's ``cuda.ldcv``). ``load_acquire`` is an atomic load
(acquire ordering), which LLVM may neither hoist nor merge, and after which no later load or
store may be moved; ``store_release`` is an atomic store after which every earlier store is
visible. On x86-64 both are plain ``mov`` instructions: the cost is the ordering the compiler
keeps, not a fence.
"""
from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _item_ptr(context, builder, aryty, ary_val, idx):
    ary = context.make_array(aryty)(context, builder, ary_val)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)


def _check(arr, i) -> bool:
    return (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64
            and isinstance(i, types.Integer))


@intrinsic
def load_acquire(typingctx, arr, i):
    """``arr[i]`` of a 1-D int64 array as an atomic load with acquire ordering."""
    if not _check(arr, i):
        return None
    sig = types.int64(arr, i)

    def codegen(context, builder, sig, args):
        ptr = _item_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def store_release(typingctx, arr, i, v):
    """``arr[i] = v`` on a 1-D int64 array as an atomic store with release ordering: every
    earlier store of this thread is visible to an agent that sees this one."""
    if not _check(arr, i) or not isinstance(v, types.Integer):
        return None
    sig = types.void(arr, i, v)

    def codegen(context, builder, sig, args):
        ptr = _item_ptr(context, builder, sig.args[0], args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()

    return sig, codegen
