"""Activations and the mat-vec helper shared by the CPU cell kernels.

All ``@njit`` with the options of :mod:`streamrnn.config`; numba inlines them into the kernels.

Activations are applied to whole slices (``_vact``) so LLVM can vectorise them. For float32
models (``fast`` true), Sigmoid / Tanh / ScaledTanh use a rational approximation of tanh that
compiles to straight-line SIMD code (max relative error 2.7e-7 against float64 tanh, measured in
``tests/test_kernels_math.py``): a libm call per element cost ~30 ns and was most of the step.
float64 models use libm (``math.exp`` / ``math.tanh``), exact to the last bits.
"""
from __future__ import annotations


import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..config import NJIT
from . import formulas

# Rational minimax approximation of tanh on [-7.905, 7.905] (the form Eigen uses for float):
# tanh(x) ~ x * P(x^2) / Q(x^2); beyond the clamp, float32 tanh is +-1 to within 2.6e-7.
_A1, _A3, _A5, _A7, _A9, _A11, _A13 = (
    np.float32(4.89352455891786e-03), np.float32(6.37261928875436e-04),
    np.float32(1.48572235717979e-05), np.float32(5.12229709037114e-08),
    np.float32(-8.60467152213735e-11), np.float32(2.00018790482477e-13),
    np.float32(-2.76076847742355e-16),
)
_B0, _B2, _B4, _B6 = (
    np.float32(4.89352518554385e-03), np.float32(2.26843463243900e-03),
    np.float32(1.18534705686654e-04), np.float32(1.19825839466702e-06),
)
_CLAMP = np.float32(7.90531110763549805)
_HALF = np.float32(0.5)


@njit(**NJIT)
def _tanh32(v):
    """float32 tanh by rational approximation (vectorisable: no calls, no branches)."""
    v = min(max(v, -_CLAMP), _CLAMP)
    v2 = v * v
    p = v2 * _A13 + _A11
    p = p * v2 + _A9
    p = p * v2 + _A7
    p = p * v2 + _A5
    p = p * v2 + _A3
    p = p * v2 + _A1
    q = v2 * _B6 + _B4
    q = q * v2 + _B2
    q = q * v2 + _B0
    return (p * v) / q


def _host_has_avx512() -> bool:
    """True when numba compiles for this very CPU and it has AVX-512F (``vrcp14ps``)."""
    import numba

    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:  # a portable / cross target
        return False
    try:
        from llvmlite import binding as llb

        return bool(llb.get_host_cpu_features().get("avx512f", False))
    except Exception:  # pragma: no cover - llvmlite without host feature queries
        return False


_AVX512 = _host_has_avx512()


def _ir_tanh(builder, v, fma, sigmoid: bool = False):
    """LLVM IR of ``_tanh32`` on a float vector ``v`` (same polynomials and clamp). The final
    division uses AVX-512's 14-bit reciprocal estimate plus one Newton step (2 FMAs; ~1 ulp)
    where available: ``vdivps`` costs 10 cycles per 16 lanes, five of them per LSTM unit.

    ``sigmoid``: 1/2 + tanh(v/2)/2 instead, the halvings folded into the clamp and the
    coefficients (scalings by powers of two: exact), the 1/2 added by the last FMA: 17
    operations per vector instead of the 19 of a multiply, the tanh and an FMA."""
    vty = v.type
    s = 2.0 if sigmoid else 1.0  # v = s u for the tanh argument u; w = v^2 = s^2 u^2

    def c(x):
        return ir.Constant(vty, [float(np.float32(x))] * vty.count)

    def coef(a, k, extra=1.0):  # a w^k = (a / s^2k) v^2k, exact in float32
        return float(np.float32(a)) / s ** (2 * k) * extra

    lim = float(_CLAMP) * s
    v = builder.select(builder.fcmp_ordered("<", v, c(-lim)), c(-lim), v)
    v = builder.select(builder.fcmp_ordered(">", v, c(lim)), c(lim), v)
    v2 = builder.fmul(v, v)
    # tanh(u) = u P(u^2) / Q(u^2); sigmoid = 1/2 + (v / 4) P / Q: the 1/4 goes into P
    ps = [coef(a, k, 0.25 if sigmoid else 1.0) for k, a in enumerate((_A1, _A3, _A5, _A7, _A9, _A11, _A13))]
    qs = [coef(b, k) for k, b in enumerate((_B0, _B2, _B4, _B6))]
    p = builder.call(fma, [v2, c(ps[6]), c(ps[5])])
    for a in reversed(ps[:5]):
        p = builder.call(fma, [p, v2, c(a)])
    q = builder.call(fma, [v2, c(qs[3]), c(qs[2])])
    for b in reversed(qs[:2]):
        q = builder.call(fma, [q, v2, c(b)])
    num = builder.fmul(p, v)
    if not (_AVX512 and vty.count == 16 and isinstance(vty.element, ir.FloatType)):
        t = builder.fdiv(num, q)
        return builder.fadd(t, c(0.5)) if sigmoid else t
    rcp = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty, vty, ir.IntType(16)]), "llvm.x86.avx512.rcp14.ps.512")
    r = builder.call(rcp, [q, c(0.0), ir.Constant(ir.IntType(16), -1)])
    e = builder.call(fma, [builder.fneg(q), r, c(1.0)])  # 1 - q r
    r = builder.call(fma, [r, e, r])  # r (2 - q r)
    return builder.call(fma, [num, r, c(0.5)]) if sigmoid else builder.fmul(num, r)


def _ir_fma(builder, vty):
    name = "llvm.fma.v%d%s" % (vty.count, "f32" if isinstance(vty.element, ir.FloatType) else "f64")
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), name)


@intrinsic
def _lstm_gates_v(typingctx, g, c, hv, H):
    """The common float32 LSTM update on 16-lane vectors for units 0 .. 16*(H//16); returns
    that count (0 for other dtypes: nothing is emitted then). g (4H,) holds
    the pre-activations in gate order i, o, f, c; c (H,) in/out; hv (>= 16*nv,) out:
    c = sigmoid(f) c + sigmoid(i) tanh(g_c), hv = sigmoid(o) tanh(c), with sigmoid(x) =
    tanh(x/2)/2 + 1/2 and the tanh of ``_ir_tanh``. The caller's scalar loop does the rest.
    Explicit 512-bit vectors, as in ``_make_panel_mm``: LLVM's own vectoriser keeps to 256 bits
    here and divides (bench/NOTES.md, entry 26)."""
    if not all(isinstance(a, types.Array) for a in (g, c, hv)) or H != types.int64:
        return None

    def codegen(context, builder, signature, args):
        ga, ca, ha, Hv = args
        i64 = ir.IntType(64)
        if g.dtype != types.float32:
            return ir.Constant(i64, 0)
        nvv = builder.ashr(Hv, ir.Constant(i64, 4))
        f32 = ir.FloatType()
        vty = ir.VectorType(f32, 16)
        fma = _ir_fma(builder, vty)
        gp = context.make_array(g)(context, builder, ga).data
        cp = context.make_array(c)(context, builder, ca).data
        hp = context.make_array(hv)(context, builder, ha).data

        def ptr(p, off):
            return builder.bitcast(builder.gep(p, [off]), vty.as_pointer())

        def sig(x):
            return _ir_tanh(builder, x, fma, sigmoid=True)

        with cgutils.for_range(builder, nvv) as loop:
            j = builder.mul(loop.index, ir.Constant(loop.index.type, 16))
            gi, go, gf, gc = (builder.load(ptr(gp, builder.add(j, builder.mul(Hv, ir.Constant(Hv.type, q)))), align=4)
                              for q in range(4))
            cv = builder.load(ptr(cp, j), align=4)
            cn = builder.call(fma, [sig(gf), cv, builder.fmul(sig(gi), _ir_tanh(builder, gc, fma))])
            builder.store(cn, ptr(cp, j), align=4)
            builder.store(builder.fmul(sig(go), _ir_tanh(builder, cn, fma)), ptr(hp, j), align=4)
        return builder.shl(nvv, ir.Constant(i64, 4))

    return types.int64(g, c, hv, H), codegen


_act = njit(**NJIT)(formulas.act)  # scalar activation k with ONNX semantics (libm)


@njit(**NJIT)
def _vact(x, k, a, b, fast):
    """x[:] = act_k(x) in place on a contiguous slice; ``fast`` selects the float32 SIMD forms."""
    n = x.shape[0]
    if fast and k == 0:
        for j in range(n):
            x[j] = _HALF * _tanh32(_HALF * x[j]) + _HALF
    elif fast and k == 1:
        for j in range(n):
            x[j] = _tanh32(x[j])
    elif fast and k == 6:
        af, bf = np.float32(a), np.float32(b)
        for j in range(n):
            x[j] = af * _tanh32(bf * x[j])
    elif k == 2:
        for j in range(n):
            x[j] = max(x[j], 0.0) if x[j] == x[j] else x[j]
    elif k >= 0:
        for j in range(n):
            x[j] = _act(x[j], k, a, b)


@njit(**NJIT)
def _vclip(x, c):
    """Clip a slice to [-c, c] in place; c == 0 means no clipping."""
    if c > 0:
        for j in range(x.shape[0]):
            x[j] = min(max(x[j], -c), c)


_clip = njit(**NJIT)(formulas.clip)  # scalar clip to [-c, c] (c == 0: none)


@njit(**NJIT)
def _matvec_acc(W, off, rows, cols, col0, ncol, v, g, g0):
    """g[g0 : g0+ncol] += v[:rows] @ M[:, col0 : col0+ncol] for M = W[off:].reshape(rows, cols).

    A sequence of contiguous axpy over M's rows, four rows per pass (a quarter of the loads and
    stores of g), so LLVM vectorises the inner loop with FMAs. Slices are indexed by the bare
    loop variable: numba's negative-index wraparound on ``g0 + j`` would stop vectorisation.
    """
    gv = g[g0 : g0 + ncol]
    k = 0
    while k + 4 <= rows:
        b0 = off + k * cols + col0
        w0 = W[b0 : b0 + ncol]
        w1 = W[b0 + cols : b0 + cols + ncol]
        w2 = W[b0 + 2 * cols : b0 + 2 * cols + ncol]
        w3 = W[b0 + 3 * cols : b0 + 3 * cols + ncol]
        v0, v1, v2, v3 = v[k], v[k + 1], v[k + 2], v[k + 3]
        for j in range(ncol):
            gv[j] += v0 * w0[j] + v1 * w1[j] + v2 * w2[j] + v3 * w3[j]
        k += 4
    while k < rows:
        b0 = off + k * cols + col0
        w0 = W[b0 : b0 + ncol]
        v0 = v[k]
        for j in range(ncol):
            gv[j] += v0 * w0[j]
        k += 1


# PW: columns per weight panel (``_matvec_pan``; 128 float32 = 16 ymm accumulators);
# PWH: columns per panel of a Dense layer (``_matvec_pan16``)
from ..engine.pack import PW, PWH  # noqa: E402
_PWH4 = 4 * PWH  # a global, so numba types it as a compile-time constant


@intrinsic
def _stack_like(typingctx, arr, n):
    """A pointer to ``n`` (a compile-time constant) uninitialised elements of ``arr``'s dtype
    on the stack. LLVM keeps such a non-escaping array in registers once the loops over it are
    unrolled, which numba cannot be asked for otherwise (its arrays live on the heap)."""
    if not isinstance(n, types.IntegerLiteral) or not isinstance(arr, types.Array):
        return None
    size, dt = n.literal_value, arr.dtype

    def codegen(context, builder, signature, args):
        lty = context.get_value_type(dt)
        ptr = cgutils.alloca_once(builder, ir.ArrayType(lty, size))
        return builder.bitcast(ptr, lty.as_pointer())

    return types.CPointer(dt)(arr, n), codegen


#: how a panel tile's accumulators start (``_make_panel_mm``)
ACC, ZERO, BIAS = 0, 1, 2


def _make_panel_mm(R: int, NV: int = 0, PS: int = PW):
    """An intrinsic ``f(W, base, K, A, a0, lda, G, g0, ldg, init, Bv, b0)``: for each r < R,
    G[g0 + r*ldg :][:C] = S + A[a0 + r*lda :][:K] @ P, S by ``init``: ``ACC`` G's own values,
    ``ZERO`` nothing, ``BIAS`` the row Bv[b0:][:C] (a bias folded into the GEMM); for the panel
    P = W[base:] viewed as (K, PS) rows of which the first C = NV vectors are used (NV = 0:
    all PS columns), in LLVM IR with explicit 64-byte vectors (``<16 x float>``)
    and ``llvm.fma``; the R x PW/16 accumulators stay in registers over all K rows.

    Why IR: numba's loop vectoriser follows the host's preference for 256-bit vectors on Intel
    AVX-512 parts; explicit 512-bit vector types are legalised to zmm registers (or split into
    ymm / xmm on CPUs without AVX-512), which halves the FMA count per row (bench/NOTES.md,
    entry 17). R = 1: the mat-vec of one stream; R = 6, NV = 4: the tile of the pool's GEMM.
    """

    @intrinsic
    def panel_mm(typingctx, W, base, K, A, a0, lda, G, g0, ldg, init, Bv, b0):
        if not all(isinstance(a, types.Array) for a in (W, A, G, Bv)) or not isinstance(init, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            Wa, basev, Kv, Aa, a0v, ldav, Ga, g0v, ldgv, initv, Ba, b0v = args
            lty = context.get_value_type(W.dtype)
            size = context.get_abi_sizeof(lty)
            vw = 64 // size  # elements per vector
            vty = ir.VectorType(lty, vw)
            i64, i32 = ir.IntType(64), ir.IntType(32)
            name = "llvm.fma.v%d%s" % (vw, "f32" if size == 4 else "f64")
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), name)
            pw = builder.gep(context.make_array(W)(context, builder, Wa).data, [basev])
            pa = builder.gep(context.make_array(A)(context, builder, Aa).data, [a0v])
            pg = builder.gep(context.make_array(G)(context, builder, Ga).data, [g0v])
            arow = [builder.gep(pa, [builder.mul(ldav, ir.Constant(i64, r))]) for r in range(R)]
            grow = [builder.gep(pg, [builder.mul(ldgv, ir.Constant(i64, r))]) for r in range(R)]

            def vec_ptr(p, i):
                return builder.bitcast(builder.gep(p, [ir.Constant(i64, i * vw)]), vty.as_pointer())

            nv = NV or PS // vw  # vectors per row
            acc = {(r, i): cgutils.alloca_once(builder, vty)  # promoted to registers by LLVM
                   for r in range(R) for i in range(nv)}

            def is_(mode):
                return builder.icmp_signed("==", initv, ir.Constant(initv.type, mode))

            with builder.if_else(is_(ACC)) as (from_g, other):
                with from_g:
                    for (r, i), slot in acc.items():
                        builder.store(builder.load(vec_ptr(grow[r], i), align=size), slot)
                with other:
                    pb = builder.gep(context.make_array(Bv)(context, builder, Ba).data, [b0v])
                    with builder.if_else(is_(BIAS)) as (from_b, from_zero):
                        with from_b:
                            b = [builder.load(vec_ptr(pb, i), align=size) for i in range(nv)]
                            for (r, i), slot in acc.items():
                                builder.store(b[i], slot)
                        with from_zero:
                            for slot in acc.values():
                                builder.store(ir.Constant(vty, None), slot)
            bcast = ir.Constant(ir.VectorType(i32, vw), [0] * vw)
            with cgutils.for_range(builder, Kv) as loop:
                k = loop.index
                row = builder.gep(pw, [builder.mul(k, ir.Constant(i64, PS))])
                w = [builder.load(vec_ptr(row, i), align=size) for i in range(nv)]
                for r in range(R):
                    a = builder.load(builder.gep(arow[r], [k]))
                    a = builder.insert_element(ir.Constant(vty, ir.Undefined), a, ir.Constant(i32, 0))
                    a = builder.shuffle_vector(a, ir.Constant(vty, ir.Undefined), bcast)
                    for i in range(nv):
                        builder.store(builder.call(fma, [a, w[i], builder.load(acc[r, i])]), acc[r, i])
            for (r, i), slot in acc.items():
                builder.store(builder.load(slot), vec_ptr(grow[r], i), align=size)
            return context.get_dummy_value()

        return types.none(W, base, K, A, a0, lda, G, g0, ldg, init, Bv, b0), codegen

    return panel_mm


_panel_fma = _make_panel_mm(1)  # one row, all PW columns: the mat-vec of one stream
# the pool's GEMM: tiles of 6 rows x half a panel; the last rows of a chunk in tiles of 4, 2, 1
_panel_mm6h, _panel_mm4h, _panel_mm2h, _panel_mm1h = (_make_panel_mm(R, 4) for R in (6, 4, 2, 1))
# Dense heads over many rows: tiles of 8 rows x one 16-column panel (PWH), then 4, 2, 1 rows
_pan16_mm8, _pan16_mm4, _pan16_mm2, _pan16_mm1 = (_make_panel_mm(R, 0, PWH) for R in (8, 4, 2, 1))


@njit(**NJIT)
def _gemm_pan16(A, lda, K, W, pan, npan, G, ldg, n, b0):
    """G[:n, :npan*PWH] = A[:n, :K] @ M + W[b0:] (a bias row), M stored as npan panels of PWH
    columns at W[pan:] (the Dense layers' panels); A, G 2-D C-contiguous. Each 8-row tile
    loads a panel row once for 8 FMAs (~4x the one-row mat-vec ``_matvec_pan16``, whose FMA
    chains wait on latency)."""
    for p in range(npan):
        base, c = pan + p * K * PWH, p * PWH
        r = 0
        while r + 8 <= n:
            _pan16_mm8(W, base, K, A, r * lda, lda, G, r * ldg + c, ldg, BIAS, W, b0 + c)
            r += 8
        if r + 4 <= n:
            _pan16_mm4(W, base, K, A, r * lda, lda, G, r * ldg + c, ldg, BIAS, W, b0 + c)
            r += 4
        if r + 2 <= n:
            _pan16_mm2(W, base, K, A, r * lda, lda, G, r * ldg + c, ldg, BIAS, W, b0 + c)
            r += 2
        if r < n:
            _pan16_mm1(W, base, K, A, r * lda, lda, G, r * ldg + c, ldg, BIAS, W, b0 + c)


@njit(**NJIT)
def _gemm_pan6(A, lda, a0, K, W, pan, npan, G, ldg, n, init, Bv, b0):
    """G[:n, :npan*PW] = S + A[:n, a0 : a0+K] @ M, M stored as npan column panels at W[pan:],
    S by ``init`` (``ACC``: G, ``ZERO``, ``BIAS``: the row Bv[b0:]); A, G flat row-major with
    leading dimensions lda, ldg. Register tiles of 6 rows x 64 columns (24 zmm accumulators;
    4 weight loads + 6 broadcasts per 24 FMAs):
    measured 155-170 GFLOP/s on one core here, against 116-133 with 3 rows x 128 columns
    (twice the weight loads per FMA, from L2) (bench/NOTES.md, entry 21)."""
    H2 = PW // 2
    for p in range(npan):
        for half in range(2):
            base = pan + p * K * PW + half * H2
            c = p * PW + half * H2
            r = 0
            while r + 6 <= n:
                _panel_mm6h(W, base, K, A, r * lda + a0, lda, G, r * ldg + c, ldg, init, Bv, b0 + c)
                r += 6
            if r + 4 <= n:  # each tile reads the panel once: the last 1-5 rows in 4, 2, 1
                _panel_mm4h(W, base, K, A, r * lda + a0, lda, G, r * ldg + c, ldg, init, Bv, b0 + c)
                r += 4
            if r + 2 <= n:
                _panel_mm2h(W, base, K, A, r * lda + a0, lda, G, r * ldg + c, ldg, init, Bv, b0 + c)
                r += 2
            if r < n:
                _panel_mm1h(W, base, K, A, r * lda + a0, lda, G, r * ldg + c, ldg, init, Bv, b0 + c)


@njit(**NJIT)
def _matvec_pan(W, pan, rows, npan, v, g, g0, rev):
    """g[g0 : g0 + npan*PW] += v[:rows] @ M[:, :npan*PW], M stored as column panels of PW.

    Panel p is W[pan + p*rows*PW :] viewed as (rows, PW): one contiguous stream of weights per
    panel, the PW accumulators stay in registers across all rows (no load / store of g per row,
    unlike the axpy form). Measured against ``_matvec_acc`` (bench/NOTES.md, entry 16):
    1.9-3x on L1-resident matrices, 1.3-1.8x on L2-resident ones, equal from L3.
    ``rev``: the panels last to first (each panel still front to back).
    """
    for q in range(npan):
        p = npan - 1 - q if rev else q
        _panel_fma(W, pan + p * rows * PW, rows, v, 0, 0, g, g0 + p * PW, 0, ACC, W, 0)


@njit(**NJIT)
def _matvec_pan16(W, pan, rows, npan, v, g):
    """As ``_matvec_pan`` with PWH-column panels, for narrow Dense heads: four partial sums over
    rows (k mod 4) so the 2-vector accumulator chains do not wait on FMA latency."""
    acc = _stack_like(W, _PWH4)
    for p in range(npan):
        for j in range(4 * PWH):
            acc[j] = 0
        base = pan + p * rows * PWH
        k = 0
        while k + 4 <= rows:
            w = W[base + k * PWH : base + k * PWH + 4 * PWH]
            v0, v1, v2, v3 = v[k], v[k + 1], v[k + 2], v[k + 3]
            for j in range(PWH):
                acc[j] += v0 * w[j]
                acc[PWH + j] += v1 * w[PWH + j]
                acc[2 * PWH + j] += v2 * w[2 * PWH + j]
                acc[3 * PWH + j] += v3 * w[3 * PWH + j]
            k += 4
        while k < rows:
            w = W[base + k * PWH : base + k * PWH + PWH]
            for j in range(PWH):
                acc[j] += v[k] * w[j]
            k += 1
        gv = g[p * PWH : p * PWH + PWH]
        for j in range(PWH):
            gv[j] += (acc[j] + acc[PWH + j]) + (acc[2 * PWH + j] + acc[3 * PWH + j])


def _bf16_to_f32_codegen(context, builder, signature, args):
    """bfloat16 bits -> float32: zero-extend to 32 bits, shift left 16, bitcast."""
    w = builder.zext(args[0], ir.IntType(32))
    w = builder.shl(w, ir.Constant(ir.IntType(32), 16))
    return builder.bitcast(w, ir.FloatType())


@intrinsic
def _bf16_to_f32(typingctx, u):
    """bfloat16 bits (uint16) -> float32, in registers: zero-extend, shift left 16, bitcast.
    (numba widens integer arithmetic to 64 bits, so a plain-Python shift would not vectorise
    as well, and numba has no scalar bitcast.)"""
    if not isinstance(u, types.Integer) or u.bitwidth != 16:
        return None
    return types.float32(u), _bf16_to_f32_codegen


@njit(**NJIT)
def _matvec_h(W, Wh, off, pan, rows, cols, col0, ncol, v, g, g0, rev):
    """As ``_matvec_acc``, reading the matrix from ``Wh`` (bfloat16 bits, uint16) when the model
    was packed with bfloat16 weights (``Wh`` longer than 1), else from ``W``: from its column
    panels at ``pan`` (``_matvec_pan``) where the model has them (``pan`` >= 0) and the columns
    start at 0, the columns past the last whole panel from the row-major copy at ``off``.

    The bfloat16 -> float32 widening happens in registers inside the vectorised axpy, so half
    the weight bytes cross the memory hierarchy; accumulation stays float32. Measured on a
    1024 x 2048 mat-vec (8 MiB of float32 weights, from L3): 298 -> 157 us; on a 256 x 512 one
    (L2-resident) it is slower, 6.0 -> 7.4 us: the mode pays off for large models only.

    ``rev``: read the matrix back to front (panels last to first, or rows last to first where
    all columns come from the row-major copy). A recurrence that alternates the two orders
    reads first what it read last, which L2 still holds (bench/NOTES.md, entries 32-33).
    """
    whole = col0 == 0 and ncol == cols
    if Wh.shape[0] <= 1:
        npan = ncol // PW if pan >= 0 and col0 == 0 else 0
        if npan > 0:
            _matvec_pan(W, pan, rows, npan, v, g, g0, rev)
        done = npan * PW
        if rev and npan == 0 and whole:
            _rows_rev(W, off, rows, cols, v, g[g0 : g0 + ncol])
        elif done < ncol:
            _matvec_acc(W, off, rows, cols, col0 + done, ncol - done, v, g, g0 + done)
        return
    if rev and whole:
        _rows_rev(Wh, off, rows, cols, v, g[g0 : g0 + ncol])
        return
    gv = g[g0 : g0 + ncol]
    k = 0
    while k + 4 <= rows:
        b0 = off + k * cols + col0
        w0 = Wh[b0 : b0 + ncol]
        w1 = Wh[b0 + cols : b0 + cols + ncol]
        w2 = Wh[b0 + 2 * cols : b0 + 2 * cols + ncol]
        w3 = Wh[b0 + 3 * cols : b0 + 3 * cols + ncol]
        v0, v1, v2, v3 = v[k], v[k + 1], v[k + 2], v[k + 3]
        for j in range(ncol):
            gv[j] += (v0 * _bf16_to_f32(w0[j]) + v1 * _bf16_to_f32(w1[j])
                      + v2 * _bf16_to_f32(w2[j]) + v3 * _bf16_to_f32(w3[j]))
        k += 4
    while k < rows:
        b0 = off + k * cols + col0
        w0 = Wh[b0 : b0 + ncol]
        v0 = v[k]
        for j in range(ncol):
            gv[j] += v0 * _bf16_to_f32(w0[j])
        k += 1


@intrinsic
def _wf(typingctx, w):
    """A weight as float: bfloat16 bits (uint16) widened as ``_bf16_to_f32``; a float as is.
    Lets one loop read either copy of the weights (``_rows_rev``)."""
    if isinstance(w, types.Float):
        return w(w), lambda context, builder, signature, args: args[0]
    if isinstance(w, types.Integer) and w.bitwidth == 16:
        return types.float32(w), _bf16_to_f32_codegen
    return None


@njit(**NJIT)
def _rows_rev(M, off, rows, cols, v, g):
    """g[:cols] += v[:rows] @ M[off:].reshape(rows, cols) with the rows back to front (the
    last 4-row block first); M float weights or bfloat16 bits (``_wf``)."""
    k = rows
    while k % 4:
        k -= 1
        w0 = M[off + k * cols : off + (k + 1) * cols]
        v0 = v[k]
        for j in range(cols):
            g[j] += v0 * _wf(w0[j])
    while k >= 4:
        k -= 4
        b0 = off + k * cols
        w0 = M[b0 : b0 + cols]
        w1 = M[b0 + cols : b0 + 2 * cols]
        w2 = M[b0 + 2 * cols : b0 + 3 * cols]
        w3 = M[b0 + 3 * cols : b0 + 4 * cols]
        v0, v1, v2, v3 = v[k], v[k + 1], v[k + 2], v[k + 3]
        for j in range(cols):
            g[j] += v0 * _wf(w0[j]) + v1 * _wf(w1[j]) + v2 * _wf(w2[j]) + v3 * _wf(w3[j])


#: how a cell kernel gets its recurrent product h @ Rt: it computes it, or the caller already
#: added it (engine/cpu.py: _rec_rev, which reads the matrix back to front)
REC_FWD, REC_DONE = 0, 1


@njit(**NJIT)
def _rec_product(W, Wh, off, pan, rows, cols, ncol, v, g, rec):
    """g[:ncol] += v[:rows] @ M[:, :ncol] (M the recurrent matrix at ``off`` / ``pan``) as
    ``rec`` says (``REC_*``; see ``_matvec_h``)."""
    if rec == REC_FWD:
        _matvec_h(W, Wh, off, pan, rows, cols, 0, ncol, v, g, 0, False)


@njit(**dict(NJIT, fastmath={"contract", "reassoc"}))
def _dot(W, off, x, n):
    """sum(W[off:off+n] * x[:n]). Reassociation is allowed here (and only here) so LLVM keeps
    vector partial sums: a dot product of a narrow Dense head, not a recurrent state."""
    w = W[off : off + n]
    s = w[0] * 0
    for k in range(n):
        s += w[k] * x[k]
    return s


@njit(**dict(NJIT, fastmath={"contract", "reassoc"}))
def _all_finite(x, n):
    """True when x[:n] holds no NaN or Inf: x - x is NaN exactly for those and 0 otherwise, so
    the sum stays 0. Reassociation lets LLVM keep several vector partial sums (no ``nnan``: the
    NaNs are the point): 64 x 128 floats in ~0.2 us, against ~1.3 us for an OR of per-element
    compares, which LLVM left one narrow vector per iteration (NOTES entry 49)."""
    if n == 0:
        return True
    s = x[0] - x[0]
    for k in range(n):
        s += x[k] - x[k]
    return s == 0
