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

import threading

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_compile_lock = threading.Lock()


def compile_only(fn, sig):
    """Compile the njit dispatcher ``fn`` for ``sig`` (once; at model load), then forbid other
    compilations: a call with other types raises TypeError (the callers convert their
    arguments and take their general path) instead of compiling in a real-time step or
    writing values of another dtype through an address. Returns ``fn``."""
    with _compile_lock:
        if not fn.signatures:
            fn.compile(sig)
            fn.disable_compile()
    return fn


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



def _call_codegen(context, builder, sig, llargs):
    """Call the C function at integer address llargs[0] with the other arguments as 64-bit
    integers; its ``int`` (32-bit) result widened to int64."""
    from llvmlite import ir

    i64 = ir.IntType(64)
    fnty = ir.FunctionType(ir.IntType(32), [i64] * (len(llargs) - 1))
    fn = builder.inttoptr(context.cast(builder, llargs[0], sig.args[0], types.int64), fnty.as_pointer())
    vals = [context.cast(builder, v, t, types.int64) for v, t in zip(llargs[1:], sig.args[1:])]
    return builder.sext(builder.call(fn, vals), i64)


@intrinsic
def call_ptr1(typingctx, addr, a):
    """``int f(a)`` for the C function at integer address ``addr`` (pointer or 64-bit integer
    argument; x86-64 C ABI). For CUDA driver entry points from njit code (bench/NOTES.md entry
    80: ``cuStreamSynchronize``)."""
    if not (isinstance(addr, types.Integer) and isinstance(a, types.Integer)):
        return None
    return types.int64(addr, a), _call_codegen


@intrinsic
def call_ptr2(typingctx, addr, a, b):
    """``int f(a, b)`` for the C function at integer address ``addr`` (see ``call_ptr1``;
    ``cuGraphLaunch``)."""
    if not all(isinstance(t, types.Integer) for t in (addr, a, b)):
        return None
    return types.int64(addr, a, b), _call_codegen


@intrinsic
def cycles(typingctx):
    """The CPU's cycle counter (``llvm.readcyclecounter``: ``rdtsc`` on x86-64; a constant
    rate on current CPUs). For bounding a spin by time rather than by polls: a poll of a cached
    line costs ~1 ns, one that misses ~100 ns, so a count of polls says little about time."""
    sig = types.int64()

    def codegen(context, builder, sig, args):
        from llvmlite import ir

        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.readcyclecounter")
        return builder.call(fn, [])

    return sig, codegen
