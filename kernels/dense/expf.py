"""exp in float32 16 lanes at a time, for softmax and SiLU: ggml's approximation.

Numba calls the C library's expf once per element (4-5 ns each): for a decode step of 8
tokens that was about 7% of the time, in SiLU (n_ff values per token and layer) and in
attention's softmax (one per cached position and head). This is the routine ggml's CPU
backend uses for both (ggml_v_expf, adapted from ARM's optimized routines: at most
1.5 ulp from expf; above 88.38 it gives inf, below -103.97 zero), in its AVX2/NEON
form: 2^n from exponent bits, times a degree-5 polynomial of the reduced argument.

The scalar `expf_approx` runs the very same operations (every multiply-add a fused
llvm.fma), so an element's bits do not depend on whether it fell in a 16-lane chunk or
in a loop's tail: a token's result stays independent of how rows are split between
workers or batched.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numallm.kernels.simd.vec import I32, V16F32, _call, _f32_ptr, _is_f32_vector, _splat, f32x16, vhsum16, vload16, vstore16
from numba import njit, types
from numba.extending import intrinsic


def _const(ty: ir.Type, value: float | int) -> ir.Constant:
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [value] * ty.count)
    return ir.Constant(ty, value)


def _expf_ir(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """ggml_v_expf's AVX2 form on a float or <N x float> value."""
    fty = x.type
    ity = ir.VectorType(I32, fty.count) if isinstance(fty, ir.VectorType) else I32
    fma_name = f"llvm.fma.v{fty.count}f32" if isinstance(fty, ir.VectorType) else "llvm.fma.f32"

    def c(v: float) -> ir.Constant:
        return _const(fty, v)

    def fma(a: ir.Value, b: ir.Value, acc: ir.Value) -> ir.Value:
        return _call(builder, fma_name, fty, [a, b, acc])

    def bits(v: ir.Value) -> ir.Value:
        return builder.bitcast(v, ity)

    r = c(float.fromhex("0x1.8p23"))
    z = fma(x, c(float.fromhex("0x1.715476p+0")), r)
    n = builder.fsub(z, r)
    b = fma(builder.fneg(n), c(float.fromhex("0x1.7f7d1cp-20")),
            fma(builder.fneg(n), c(float.fromhex("0x1.62e4p-1")), x))
    e = builder.shl(bits(z), _const(ity, 23))
    k = builder.bitcast(builder.add(e, bits(c(1.0))), fty)
    u = builder.fmul(b, b)
    j = fma(fma(fma(c(float.fromhex("0x1.0e4020p-7")), b, c(float.fromhex("0x1.573e2ep-5"))), u,
                fma(c(float.fromhex("0x1.555e66p-3")), b, c(float.fromhex("0x1.fffdb6p-2")))),
            u, builder.fmul(c(float.fromhex("0x1.ffffecp-1")), b))
    absn = _call(builder, f"llvm.fabs.v{fty.count}f32" if isinstance(fty, ir.VectorType) else "llvm.fabs.f32",
                 fty, [n])
    normal = fma(k, j, k)
    # |n| > 126: 2^n is not a normal float; scale in two steps (ggml's slow path)
    d = builder.and_(builder.sext(builder.fcmp_ordered("<=", n, c(0.0)), ity), _const(ity, 0x82000000 - (1 << 32)))
    s1 = builder.bitcast(builder.add(d, _const(ity, 0x7F000000)), fty)
    s2 = builder.bitcast(builder.sub(e, d), fty)
    wide = builder.fmul(fma(s2, j, s2), s1)
    out = builder.select(builder.fcmp_ordered(">", absn, c(126.0)), wide, normal)
    return builder.select(builder.fcmp_ordered(">", absn, c(192.0)), builder.fmul(s1, s1), out)


@intrinsic
def vexp16(typingctx, v):  # type: ignore[no-untyped-def]
    """exp of each lane of an F32x16 (ggml_v_expf)."""
    if v is not f32x16:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _expf_ir(builder, args[0])
    return f32x16(f32x16), codegen


@intrinsic
def expf_approx(typingctx, x):  # type: ignore[no-untyped-def]
    """exp(x) for a float32 x by the same operations as vexp16."""
    if x is not types.float32:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _expf_ir(builder, args[0])
    return types.float32(types.float32), codegen


@intrinsic
def _silu_mul16(typingctx, g, u, off):  # type: ignore[no-untyped-def]
    """g[off:off+16] = silu(g) * u[off:off+16] (unchecked)."""
    if not (_is_f32_vector(g) and _is_f32_vector(u)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        gp = _f32_ptr(context, builder, sig.args[0], args[0], args[2])
        a = builder.load(gp, align=4)
        uv = builder.load(_f32_ptr(context, builder, sig.args[1], args[1], args[2]), align=4)
        s = builder.fdiv(a, builder.fadd(_const(V16F32, 1.0), _expf_ir(builder, builder.fneg(a))))
        builder.store(builder.fmul(s, uv), gp, align=4)
        return context.get_dummy_value()
    return types.none(g, u, off), codegen


@njit(nogil=True, cache=True)
def silu_mul(g, u, lo, hi):  # type: ignore[no-untyped-def]
    """g[i] = silu(g[i]) * u[i] for i in [lo, hi) of two float32 rows, silu(a) = a / (1 + exp(-a))."""
    i = lo
    while i + 16 <= hi:
        _silu_mul16(g, u, i)
        i += 16
    for k in range(i, hi):
        a = g[k]
        g[k] = a / (np.float32(1.0) + expf_approx(-a)) * u[k]


@njit(nogil=True, cache=True)
def exp_shifted(s, lo, hi, shift):  # type: ignore[no-untyped-def]
    """s[i] = exp(s[i] - shift) for i in [lo, hi) of a float32 row; returns their sum
    (float64 over float32 sums of 16, as ggml's softmax adds them)."""
    total = 0.0
    i = lo
    while i + 16 <= hi:
        v = vexp16(_minus16(vload16(s, i), shift))
        vstore16(s, i, v)
        total += vhsum16(v)
        i += 16
    for k in range(i, hi):
        e = expf_approx(s[k] - shift)
        s[k] = e
        total += e
    return total


@intrinsic
def _minus16(typingctx, v, x):  # type: ignore[no-untyped-def]
    """v - x for an F32x16 v and a float32 x."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.fsub(args[0], _splat(builder, args[1], V16F32))
    return f32x16(f32x16, types.float32), codegen

