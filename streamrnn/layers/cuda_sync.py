"""Device helpers for memory that the host or other blocks change while a kernel runs
(numba.cuda): volatile int64 loads and stores, the GPU's nanosecond timer, a system-scope
fence. Used by the resident step kernel (:mod:`streamrnn.engine.persist`) and by the phase
stamps of the persistent sequence kernel (``make_lstm_seq_grid``).

numba's own ``cuda.ldcv`` is an inline asm without side effects: LLVM hoists it out of a poll
loop (bench/NOTES.md entry 65), hence these. Under the CUDA simulator they are plain accesses
and the timer reads 0.
"""
from __future__ import annotations

from numba import cuda

from .dense.cuda import SIM, jit

if SIM:
    @jit(device=True)
    def ld_volatile(a, i):
        return a[i]

    @jit(device=True)
    def st_volatile(a, i, v):
        a[i] = v

    @jit(device=True)
    def now_ns():
        return 0

    @jit(device=True)
    def fence_system():
        pass
else:  # pragma: no cover - compiled for a real GPU only (ptx_check compiles them without one)
    from llvmlite import ir
    from numba import types as _nt
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    def _word_ptr(context, builder, sig, args):
        aty, ity = sig.args[0], sig.args[1]
        ary = context.make_array(aty)(context, builder, args[0])
        idx = context.cast(builder, args[1], ity, _nt.intp)
        return cgutils.get_item_pointer(context, builder, aty, ary, [idx], wraparound=False)

    @intrinsic
    def ld_volatile(typingctx, a, i):
        """``a[i]`` (int64, 1-D) loaded with ``ld.volatile.global``: never cached, never hoisted
        (an asm with side effects and a memory clobber)."""
        sig = _nt.int64(a, i)

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64).as_pointer()])
            asm = ir.InlineAsm(fnty, "ld.volatile.global.u64 $0, [$1];", "=l,l,~{memory}", side_effect=True)
            return builder.call(asm, [_word_ptr(context, builder, sig, args)])

        return sig, codegen

    @intrinsic
    def st_volatile(typingctx, a, i, v):
        """``a[i] = v`` (int64, 1-D) with ``st.volatile.global`` (not merged, not sunk)."""
        sig = _nt.void(a, i, _nt.int64)

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(64).as_pointer(), ir.IntType(64)])
            asm = ir.InlineAsm(fnty, "st.volatile.global.u64 [$0], $1;", "l,l,~{memory}", side_effect=True)
            v = context.cast(builder, args[2], sig.args[2], _nt.int64)
            builder.call(asm, [_word_ptr(context, builder, sig, args), v])
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def now_ns(typingctx):
        """The GPU's global nanosecond timer (``%globaltimer``)."""
        sig = _nt.int64()

        def codegen(context, builder, sig, args):
            fnty = ir.FunctionType(ir.IntType(64), [])
            asm = ir.InlineAsm(fnty, "mov.u64 $0, %globaltimer;", "=l", side_effect=True)
            return builder.call(asm, [])

        return sig, codegen

    @jit(device=True)
    def fence_system():
        cuda.threadfence_system()


