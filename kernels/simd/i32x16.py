"""16-lane integer vectors, as LLVM IR: the inner steps of the int8 tile GEMM
(kernels/drivers/gemm_int8.py) and of the tiled kernel (kernels/families/q4_q8/tiles.py: idot16_q4, idot16_q8);
its 64-byte dot `_dpbusd16` also serves the K-quant matvec dots (kernels/families/kquants/simd.py).

An I32x16 holds one int32 accumulator per row of a 16-row weight tile. `idot16`
adds to it, for every row, the dot product of 4 weight quants (unsigned bytes, the
row's 4 consecutive bytes of a 64-byte tile vector) with 4 int8 activations of one
token broadcast to all rows: 64 multiply-adds in one instruction, by the features
Numba compiles for (kernels/simd/cpu.py):
  avx512vnni  one vpdpbusd on a zmm register, the activation a broadcast operand
  otherwise   two halves through vec._dot_u8s8 (vpdpbusd on ymm, vpmaddubsw +
              vpmaddwd, or plain LLVM vectors), each added to its half.
vpmaddubsw saturates pairs above 2**15: callers keep the quants below 128 on that
path (Q8_0's signed quants go through idot16_q8, which has its own).
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir
from numallm.kernels.simd.cpu import target_features
from numallm.kernels.simd.vec import (
    I8,
    I32,
    V16F32,
    _as_i64,
    _call,
    _dot_s8s8,
    _dot_u8s8,
    _is_bytes,
    _load_bytes,
    _splat,
    f32x16,
)
from numba.core import types
from numba.core.datamodel import models, register_default
from numba.extending import intrinsic

V16I32 = ir.VectorType(I32, 16)
V64I8 = ir.VectorType(I8, 64)


class I32x16Type(types.Type):
    def __init__(self) -> None:
        super().__init__(name="I32x16")


i32x16 = I32x16Type()


@register_default(I32x16Type)
class I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):  # type: ignore[no-untyped-def]
        super().__init__(dmm, fe_type, V16I32)


def has_vnni512() -> bool:
    """vpdpbusd on zmm registers."""
    return {"avx512vnni", "avx512f"} <= target_features()


def _dpbusd16(builder: ir.IRBuilder, acc: ir.Value, u: ir.Value, s: ir.Value) -> ir.Value:
    """acc + (<64 x u8> u . <64 x s8> s, each lane the sum of its 4 bytes' products)."""
    if has_vnni512():
        return _call(builder, "llvm.x86.avx512.vpdpbusd.512", V16I32,
                     [acc, builder.bitcast(u, V16I32), builder.bitcast(s, V16I32)])
    return builder.add(acc, _by_halves(builder, u, s, _dot_u8s8))


def _by_halves(builder: ir.IRBuilder, a: ir.Value, b: ir.Value,
               dot: Callable[[ir.IRBuilder, ir.Value, ir.Value], ir.Value]) -> ir.Value:
    """The I32x16 of 4-byte dots of two <64 x i8> without 512-bit VNNI: `dot` on each
    32-byte half (an I32x8 each), joined."""
    undef = ir.Constant(V64I8, ir.Undefined)
    halves = []
    for h in range(2):
        pick = ir.Constant(ir.VectorType(I32, 32), list(range(32 * h, 32 * h + 32)))
        halves.append(dot(builder, builder.shuffle_vector(a, undef, pick), builder.shuffle_vector(b, undef, pick)))
    return builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(I32, 16), list(range(16))))


@intrinsic
def izero16(typingctx):  # type: ignore[no-untyped-def]
    """An I32x16 of zeros."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return ir.Constant(V16I32, None)
    return i32x16(), codegen


@intrinsic
def ifill16(typingctx, s):  # type: ignore[no-untyped-def]
    """An I32x16 with every lane the int32 s (a broadcast; from memory, one load)."""
    if not (isinstance(s, types.Integer) and s.bitwidth == 32):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _splat(builder, args[0], V16I32)
    return i32x16(s), codegen


@intrinsic(prefer_literal=True)
def isum(typingctx, xq, o, n):  # type: ignore[no-untyped-def]
    """The sum of the n (a constant, 16 or 32) int8 xq[o:o+n] as an int32 (unchecked)."""
    if not (_is_bytes(xq) and isinstance(o, types.Integer) and isinstance(n, types.IntegerLiteral)
            and n.literal_value in (16, 32)):
        return None
    m = n.literal_value

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        v16 = ir.VectorType(ir.IntType(16), m)
        x = builder.sext(_load_bytes(context, builder, sig.args[0], args[0], _as_i64(builder, args[1]), m), v16)
        return builder.sext(_call(builder, f"llvm.vector.reduce.add.v{m}i16", ir.IntType(16), [x]), I32)
    return types.int32(xq, o, n), codegen


@intrinsic
def iadd16(typingctx, a, b):  # type: ignore[no-untyped-def]
    """a + b, lane by lane, for I32x16 a and b."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.add(args[0], args[1])
    return i32x16(i32x16, i32x16), codegen


@intrinsic
def idot16(typingctx, acc, tile, p, xq, xo):  # type: ignore[no-untyped-def]
    """acc[i] + sum_{j<4} tile[p + 4i + j] * xq[xo + j] for the 16 lanes i (unchecked)."""
    if not (_is_bytes(tile) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, ta, pv, xa, xov = args
        u = _load_bytes(context, builder, sig.args[1], ta, _as_i64(builder, pv), 64)
        x4 = _load_bytes(context, builder, sig.args[3], xa, _as_i64(builder, xov), 4)
        s = builder.bitcast(_splat(builder, builder.bitcast(x4, I32), V16I32), V64I8)
        return _dpbusd16(builder, a, u, s)
    return i32x16(i32x16, tile, p, xq, xo), codegen


@intrinsic
def vfmai16(typingctx, acc, iv, v, s):  # type: ignore[no-untyped-def]
    """acc + float(iv) * v * s for an I32x16 iv, an F32x16 v and a float32 s."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, ivv, vv, sc = args
        scaled = builder.fmul(builder.sitofp(ivv, V16F32), vv)
        return _call(builder, "llvm.fmuladd.v16f32", V16F32, [scaled, _splat(builder, sc, V16F32), a])
    return f32x16(f32x16, i32x16, f32x16, types.float32), codegen


def _broadcast4(context, builder, arrty, arr, off):  # type: ignore[no-untyped-def]
    """The 4 bytes arr[off:off+4] repeated over 64 bytes."""
    x4 = _load_bytes(context, builder, arrty, arr, _as_i64(builder, off), 4)
    return builder.bitcast(_splat(builder, builder.bitcast(x4, I32), V16I32), V64I8)


@intrinsic
def idot16_q4(typingctx, acc, w, p, xq, xo):  # type: ignore[no-untyped-def]
    """acc plus, for the 16 rows of a nibble vector of the tiled layout (kernels/families/q4_q8/tiles.py:
    lane i = 4 file bytes of row i, low nibbles elements c..c+3, high nibbles
    c+16..c+19), their dot with xq[xo:xo+4] and xq[xo+16:xo+20]."""
    if not (_is_bytes(w) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, wa, pv, xa, xov = args
        raw = _load_bytes(context, builder, sig.args[1], wa, _as_i64(builder, pv), 64)
        lo = builder.and_(raw, ir.Constant(V64I8, [15] * 64))
        hi = builder.lshr(raw, ir.Constant(V64I8, [4] * 64))
        a = _dpbusd16(builder, a, lo, _broadcast4(context, builder, sig.args[3], xa, xov))
        xh = builder.add(_as_i64(builder, xov), ir.Constant(ir.IntType(64), 16))
        return _dpbusd16(builder, a, hi, _broadcast4(context, builder, sig.args[3], xa, xh))
    return i32x16(i32x16, w, p, xq, xo), codegen


# Q8_0's quants are signed: with VNNI on zmm they are dotted as unsigned w + 128 (one
# xor), and the kernel takes 128 * d * (the activation's block sum) off each block.
Q8_BIAS = 128 if has_vnni512() else 0


@intrinsic
def idot16_q8(typingctx, acc, w, p, xq, xo):  # type: ignore[no-untyped-def]
    """acc plus, for the 16 rows of a Q8_0 vector of the tiled layout (lane i = 4 signed
    quants of row i), their dot with xq[xo:xo+4], plus Q8_BIAS times the sum of those
    4 activations."""
    if not (_is_bytes(w) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, wa, pv, xa, xov = args
        raw = _load_bytes(context, builder, sig.args[1], wa, _as_i64(builder, pv), 64)
        x = _broadcast4(context, builder, sig.args[3], xa, xov)
        if Q8_BIAS:
            return _dpbusd16(builder, a, builder.xor(raw, ir.Constant(V64I8, [0x80] * 64)), x)
        return builder.add(a, _by_halves(builder, raw, x, _dot_s8s8))
    return i32x16(i32x16, w, p, xq, xo), codegen
