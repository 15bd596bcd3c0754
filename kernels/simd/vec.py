"""Explicit SIMD for Numba: 8-lane vector types and the integer dot products.

Numba cannot express vector registers, and its auto-vectorised loops over quantized
blocks stay far below memory bandwidth (issue 5 measured 1.5-5.5 GB/s). So the inner
step of every quantized kernel is written here as LLVM vector IR through
numba.extending.intrinsic, and the kernels (kernels/families/kquants/rows.py) are ordinary Numba
loops that carry `F32x8` accumulators between these intrinsics.

The central operation `_dot_u8s8` multiplies 32 unsigned bytes (the weight's
quants) by 32 signed bytes (the int8-quantized activation) and sums each run of 4
products into one of 8 int32 lanes (so lanes 0-3 hold elements 0-15 and lanes 4-7
elements 16-31). It is emitted as, by kernels/simd/cpu.py's features:
  vnni    one vpdpbusd (AVX512-VNNI+VL or AVX-VNNI)
  avx2    vpmaddubsw then vpmaddwd with ones (no overflow: |q| <= 63 * 127 * 2 < 2**15,
          and 128 * 127 * 2 for the |w| of Q8_0)
  generic widen to i32, multiply, add groups of 4: plain LLVM that every target lowers.
The features are those Numba compiles for, which are part of its cache key, so a
cached kernel always carries the path of the CPU it runs on.
"""

from __future__ import annotations

from llvmlite import ir
from numallm.kernels.simd.cpu import has_avx2, has_vnni256
from numallm.kernels.simd.scalar import half_to_float
from numba.core import cgutils, types
from numba.core.datamodel import models, register_default
from numba.extending import intrinsic

I1, I8, I16, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F32 = ir.FloatType()
V32I8, V16I16, V8I32, V8F32 = (ir.VectorType(I8, 32), ir.VectorType(I16, 16),
                               ir.VectorType(I32, 8), ir.VectorType(F32, 8))


class F32x8Type(types.Type):
    def __init__(self) -> None:
        super().__init__(name="F32x8")


class I32x8Type(types.Type):
    def __init__(self) -> None:
        super().__init__(name="I32x8")


f32x8 = F32x8Type()
i32x8 = I32x8Type()


@register_default(F32x8Type)
class F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):  # type: ignore[no-untyped-def]
        super().__init__(dmm, fe_type, V8F32)


@register_default(I32x8Type)
class I32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):  # type: ignore[no-untyped-def]
        super().__init__(dmm, fe_type, V8I32)


# ---- IR helpers -------------------------------------------------------------------

def _call(builder: ir.IRBuilder, name: str, ret: ir.Type, args: list[ir.Value]) -> ir.Value:
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


def _splat(builder: ir.IRBuilder, val: ir.Value, vty: ir.VectorType) -> ir.Value:
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), val, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(I32, vty.count), [0] * vty.count))


def _const_vec(vty: ir.VectorType, value: int) -> ir.Constant:
    return ir.Constant(vty, [value] * vty.count)


def _load_bytes(context, builder, arrty, arr, off, n):  # type: ignore[no-untyped-def]
    """<n x i8> from arr.data + off (unaligned)."""
    data = context.make_array(arrty)(context, builder, arr).data
    ptr = builder.gep(builder.bitcast(data, I8.as_pointer()), [off])
    return builder.load(builder.bitcast(ptr, ir.VectorType(I8, n).as_pointer()), align=1)


def _as_i8(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """Truncate/extend an integer scalar to i8 (shift amounts, masks)."""
    return builder.trunc(v, I8) if v.type.width > 8 else (builder.zext(v, I8) if v.type.width < 8 else v)


def _as_i64(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    return builder.sext(v, I64) if v.type.width < 64 else v


def _dot_u8s8(builder: ir.IRBuilder, u: ir.Value, s: ir.Value) -> ir.Value:
    """<32 x i8> unsigned . <32 x i8> signed -> <8 x i32>, lane i = sum of elements 4i..4i+3."""
    if has_vnni256():
        zero = ir.Constant(V8I32, None)
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", V8I32,
                     [zero, builder.bitcast(u, V8I32), builder.bitcast(s, V8I32)])
    if has_avx2():
        pairs = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", V16I16, [u, s])
        return _call(builder, "llvm.x86.avx2.pmadd.wd", V8I32, [pairs, _const_vec(V16I16, 1)])
    wide = ir.VectorType(I32, 32)
    prod = builder.mul(builder.zext(u, wide), builder.sext(s, wide))
    acc = None
    for k in range(4):
        part = builder.shuffle_vector(prod, ir.Constant(wide, ir.Undefined),
                                      ir.Constant(ir.VectorType(I32, 8), [4 * i + k for i in range(8)]))
        acc = part if acc is None else builder.add(acc, part)
    return acc


def _dot_s8s8(builder: ir.IRBuilder, a: ir.Value, s: ir.Value) -> ir.Value:
    """<32 x i8> signed . <32 x i8> signed, lanes as in _dot_u8s8. s must avoid -128."""
    if has_avx2():
        # |a| . (s * sign(a)) as u8 . s8, llama.cpp's trick; |-128| = 128 is right as u8.
        absa = _call(builder, "llvm.abs.v32i8", V32I8, [a, ir.Constant(I1, 0)])
        return _dot_u8s8(builder, absa, _call(builder, "llvm.x86.avx2.psign.b", V32I8, [s, a]))
    wide = ir.VectorType(I32, 32)
    prod = builder.mul(builder.sext(a, wide), builder.sext(s, wide))
    acc = None
    for k in range(4):
        part = builder.shuffle_vector(prod, ir.Constant(wide, ir.Undefined),
                                      ir.Constant(ir.VectorType(I32, 8), [4 * i + k for i in range(8)]))
        acc = part if acc is None else builder.add(acc, part)
    return acc


def _qh_bits_to_16s(builder: ir.IRBuilder, qh: ir.Value) -> ir.Value:
    """<32 x i8> whose byte j is 16 if bit j of the integer qh is set, else 0: byte j
    takes byte j/8 of qh and keeps bit j%8 (a vpshufb, an and, a compare, as
    llama.cpp's bytes_from_bits_32)."""
    qh4 = builder.bitcast(builder.trunc(qh, I32) if qh.type.width > 32 else qh, ir.VectorType(I8, 4))
    spread = builder.shuffle_vector(qh4, ir.Constant(ir.VectorType(I8, 4), ir.Undefined),
                                    ir.Constant(ir.VectorType(I32, 32), [j // 8 for j in range(32)]))
    bits = builder.and_(spread, ir.Constant(V32I8, [1 << (j % 8) for j in range(32)]))
    return builder.select(builder.icmp_unsigned("!=", bits, ir.Constant(V32I8, None)),
                          _const_vec(V32I8, 16), ir.Constant(V32I8, None))


def _nibbles16(builder: ir.IRBuilder, raw16: ir.Value) -> ir.Value:
    """16 bytes of packed nibbles -> <32 x i8>: low nibbles (elements 0-15), then high ones."""
    v16 = ir.VectorType(I8, 16)
    lo = builder.and_(raw16, _const_vec(v16, 15))
    hi = builder.lshr(raw16, _const_vec(v16, 4))
    return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, 32), list(range(32))))


def _fma(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    """a * b + c in one rounding (vfmadd where the target has FMA, a libcall-free
    expansion elsewhere)."""
    return _call(builder, "llvm.fmuladd.v8f32", V8F32, [a, b, c])


# ---- float accumulators --------------------------------------------------------------

@intrinsic
def vzero(typingctx):  # type: ignore[no-untyped-def]
    """An F32x8 of zeros."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return ir.Constant(V8F32, None)
    return f32x8(), codegen


@intrinsic
def vfma(typingctx, acc, v, s):  # type: ignore[no-untyped-def]
    """acc + float(v) * s, for an I32x8 v and a float32 s."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, vi, sc = args
        return _fma(builder, builder.sitofp(vi, V8F32), _splat(builder, sc, V8F32), a)
    return f32x8(f32x8, i32x8, types.float32), codegen


@intrinsic
def vadd(typingctx, a, b):  # type: ignore[no-untyped-def]
    """a + b, lane by lane."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.fadd(args[0], args[1])
    return f32x8(f32x8, f32x8), codegen


@intrinsic
def vhsum(typingctx, a):  # type: ignore[no-untyped-def]
    """Sum of the 8 lanes as float32."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        v = args[0]
        for half in (4, 2, 1):
            mask = ir.Constant(ir.VectorType(I32, 8), [i + half if i < half else i for i in range(8)])
            v = builder.fadd(v, builder.shuffle_vector(v, ir.Constant(V8F32, ir.Undefined), mask))
        return builder.extract_element(v, ir.Constant(I32, 0))
    return types.float32(f32x8), codegen


@intrinsic
def vmul(typingctx, a, b):  # type: ignore[no-untyped-def]
    """a * b, lane by lane."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.fmul(args[0], args[1])
    return f32x8(f32x8, f32x8), codegen


@intrinsic
def vfmav(typingctx, acc, a, b):  # type: ignore[no-untyped-def]
    """acc + a * b, lane by lane."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _fma(builder, args[1], args[2], args[0])
    return f32x8(f32x8, f32x8, f32x8), codegen


@intrinsic
def vlane(typingctx, a, i):  # type: ignore[no-untyped-def]
    """Lane i of a, as float32 (i a constant after unrolling: one shuffle)."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.extract_element(args[0], builder.trunc(args[1], I32) if args[1].type.width > 32 else args[1])
    return types.float32(f32x8, i), codegen


@intrinsic
def vload8(typingctx, a, off):  # type: ignore[no-untyped-def]
    """a[off:off+8] of a float32 array as F32x8, unchecked."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [_as_i64(builder, args[1])]), V8F32.as_pointer())
        return builder.load(ptr, align=4)
    return f32x8(a, off), codegen


@intrinsic
def vload_h8(typingctx, w, p):  # type: ignore[no-untyped-def]
    """The 8 float16 at bytes w[p:p+16] as F32x8 (one vcvtph2ps with F16C)."""
    if not _is_bytes(w):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        raw = _load_bytes(context, builder, sig.args[0], args[0], _as_i64(builder, args[1]), 16)
        return half_to_float(builder, builder.bitcast(raw, ir.VectorType(I16, 8)))
    return f32x8(w, p), codegen


# ---- integer block dot products ----------------------------------------------------

def _is_bytes(t) -> bool:  # type: ignore[no-untyped-def]
    return isinstance(t, types.Array) and t.dtype in (types.uint8, types.int8) and t.ndim == 1


@intrinsic
def dot_q4(typingctx, w, p, xq, xo):  # type: ignore[no-untyped-def]
    """Q4_0/Q4_1 quants: 16 bytes of nibbles at w[p] (elements j, j+16 in byte j) . xq[xo:xo+32]."""
    if not (_is_bytes(w) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, xa, xov = args
        u = _nibbles16(builder, _load_bytes(context, builder, sig.args[0], wa, _as_i64(builder, pv), 16))
        s = _load_bytes(context, builder, sig.args[2], xa, _as_i64(builder, xov), 32)
        return _dot_u8s8(builder, u, s)
    return i32x8(w, p, xq, xo), codegen


@intrinsic
def dot_q5(typingctx, w, p, qh, xq, xo):  # type: ignore[no-untyped-def]
    """Q5_0/Q5_1 quants: nibbles as dot_q4 plus bit j of the uint32 qh as bit 4 of element j."""
    if not (_is_bytes(w) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, qhv, xa, xov = args
        u = _nibbles16(builder, _load_bytes(context, builder, sig.args[0], wa, _as_i64(builder, pv), 16))
        high = _qh_bits_to_16s(builder, qhv)
        s = _load_bytes(context, builder, sig.args[3], xa, _as_i64(builder, xov), 32)
        return _dot_u8s8(builder, builder.or_(u, high), s)
    return i32x8(w, p, qh, xq, xo), codegen


@intrinsic
def dot_q5p(typingctx, w, p, shift, qh, xq, xo):  # type: ignore[no-untyped-def]
    """Q5 quants of one block of a grouped pair: (w[p:p+32] >> shift) & 15, plus bit j
    of qh as bit 4 of element j, . xq[xo:xo+32]."""
    if not (_is_bytes(w) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, sv, qhv, xa, xov = args
        raw = _load_bytes(context, builder, sig.args[0], wa, _as_i64(builder, pv), 32)
        lo = builder.and_(builder.lshr(raw, _splat(builder, _as_i8(builder, sv), V32I8)), _const_vec(V32I8, 15))
        s = _load_bytes(context, builder, sig.args[4], xa, _as_i64(builder, xov), 32)
        return _dot_u8s8(builder, builder.or_(lo, _qh_bits_to_16s(builder, qhv)), s)
    return i32x8(w, p, shift, qh, xq, xo), codegen


@intrinsic
def dot_s8(typingctx, w, p, xq, xo):  # type: ignore[no-untyped-def]
    """Q8_0 quants: 32 signed bytes at w[p] . xq[xo:xo+32]."""
    if not (_is_bytes(w) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        wa, pv, xa, xov = args
        a = _load_bytes(context, builder, sig.args[0], wa, _as_i64(builder, pv), 32)
        s = _load_bytes(context, builder, sig.args[2], xa, _as_i64(builder, xov), 32)
        return _dot_s8s8(builder, a, s)
    return i32x8(w, p, xq, xo), codegen


def planes_ir(context, builder, wt, args):  # type: ignore[no-untyped-def]
    """<32 x i8> ((w[pl:pl+32] >> sl) & ml) | (((w[ph:ph+32] >> sh) & mh) << hs) for
    args = (w, pl, sl, ml, ph, sh, mh, hs) of array type wt."""
    wa, plv, slv, mlv, phv, shv, mhv, hsv = args

    def plane(pv, shift, mask):  # type: ignore[no-untyped-def]
        raw = _load_bytes(context, builder, wt, wa, _as_i64(builder, pv), 32)
        return builder.and_(builder.lshr(raw, _splat(builder, _as_i8(builder, shift), V32I8)),
                            _splat(builder, _as_i8(builder, mask), V32I8))

    lo = plane(plv, slv, mlv)
    return builder.or_(lo, builder.shl(plane(phv, shv, mhv), _splat(builder, _as_i8(builder, hsv), V32I8)))


@intrinsic
def dot_planes(typingctx, w, pl, sl, ml, ph, sh, mh, hs, xq, xo):  # type: ignore[no-untyped-def]
    """Quants of 32 elements . xq[xo:xo+32], from two bit planes of 32 bytes each:
    q = ((w[pl:pl+32] >> sl) & ml) | (((w[ph:ph+32] >> sh) & mh) << hs); mh = 0 means no
    high plane. Shifts and masks are small constants at every call site."""
    if not (_is_bytes(w) and _is_bytes(xq)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        u = planes_ir(context, builder, sig.args[0], args[:8])
        s = _load_bytes(context, builder, sig.args[8], args[8], _as_i64(builder, args[9]), 32)
        return _dot_u8s8(builder, u, s)
    return i32x8(w, pl, sl, ml, ph, sh, mh, hs, xq, xo), codegen


# ---- 16-lane float32 for the matmul micro-kernel -------------------------------------

V16F32 = ir.VectorType(F32, 16)


class F32x16Type(types.Type):
    def __init__(self) -> None:
        super().__init__(name="F32x16")


f32x16 = F32x16Type()


@register_default(F32x16Type)
class F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):  # type: ignore[no-untyped-def]
        super().__init__(dmm, fe_type, V16F32)


def _f32_ptr(context, builder, arrty, arr, off):  # type: ignore[no-untyped-def]
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [_as_i64(builder, off)]), V16F32.as_pointer())


def _is_f32_vector(t) -> bool:  # type: ignore[no-untyped-def]
    return isinstance(t, types.Array) and t.ndim == 1 and t.dtype == types.float32


@intrinsic
def vzero16(typingctx):  # type: ignore[no-untyped-def]
    """An F32x16 of zeros."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return ir.Constant(V16F32, None)
    return f32x16(), codegen


@intrinsic
def vload16(typingctx, a, off):  # type: ignore[no-untyped-def]
    """a[off:off+16] of a float32 array, unchecked."""
    if not _is_f32_vector(a):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.load(_f32_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)
    return f32x16(a, off), codegen


@intrinsic
def vstore16(typingctx, a, off, v):  # type: ignore[no-untyped-def]
    """a[off:off+16] = v, unchecked."""
    if not _is_f32_vector(a):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        builder.store(args[2], _f32_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()
    return types.none(a, off, f32x16), codegen


@intrinsic
def vstore16_at(typingctx, a, r, c, v):  # type: ignore[no-untyped-def]
    """a[r, c:c+16] = v for a 2-D float32 array whose rows are contiguous, unchecked."""
    if not (isinstance(a, types.Array) and a.ndim == 2 and a.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer2(context, builder, data=arr.data,
                                        shape=cgutils.unpack_tuple(builder, arr.shape),
                                        strides=cgutils.unpack_tuple(builder, arr.strides),
                                        layout=sig.args[0].layout,
                                        inds=[_as_i64(builder, args[1]), _as_i64(builder, args[2])],
                                        wraparound=False, boundscheck=False)
        builder.store(args[3], builder.bitcast(ptr, V16F32.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(a, r, c, f32x16), codegen


@intrinsic
def vadd16(typingctx, a, b):  # type: ignore[no-untyped-def]
    """a + b, lane by lane."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.fadd(args[0], args[1])
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def vfma16(typingctx, acc, v, s):  # type: ignore[no-untyped-def]
    """acc + v * s for a float32 scalar s (a broadcast FMA)."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, vv, sc = args
        return _call(builder, "llvm.fmuladd.v16f32", V16F32, [vv, _splat(builder, sc, V16F32), a])
    return f32x16(f32x16, f32x16, types.float32), codegen


@intrinsic
def vfmav16(typingctx, acc, a, b):  # type: ignore[no-untyped-def]
    """acc + a * b, lane by lane."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return _call(builder, "llvm.fmuladd.v16f32", V16F32, [args[1], args[2], args[0]])
    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def vhsum16(typingctx, a):  # type: ignore[no-untyped-def]
    """Sum of the 16 lanes as float32."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        v = args[0]
        for half in (8, 4, 2, 1):
            mask = ir.Constant(ir.VectorType(I32, 16), [i + half if i < half else i for i in range(16)])
            v = builder.fadd(v, builder.shuffle_vector(v, ir.Constant(V16F32, ir.Undefined), mask))
        return builder.extract_element(v, ir.Constant(I32, 0))
    return types.float32(f32x16), codegen


@intrinsic
def vhsum4_store(typingctx, out, j, scale, a0, a1, a2, a3):  # type: ignore[no-untyped-def]
    """out[j:j+4] = scale * (the lane sums of a0, a1, a2, a3): the four reductions as one
    tree, each level adding two halves of every vector side by side (half the shuffles
    of four vhsum16s)."""
    if not _is_f32_vector(out):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        def halves(x, y, lo, hi):  # x ++ y picked at lo, plus picked at hi
            lo_v, hi_v = (builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, len(i)), i)) for i in (lo, hi))
            return builder.fadd(lo_v, hi_v)
        v0, v1, v2, v3 = args[3:]
        s01 = halves(v0, v1, [*range(8), *range(16, 24)], [*range(8, 16), *range(24, 32)])  # 8 of v0, 8 of v1
        s23 = halves(v2, v3, [*range(8), *range(16, 24)], [*range(8, 16), *range(24, 32)])
        lo4 = [0, 1, 2, 3, 8, 9, 10, 11]
        t = halves(s01, s23, [*lo4, *(16 + k for k in lo4)], [*(4 + k for k in lo4), *(20 + k for k in lo4)])
        u = halves(t, t, [0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15])  # 2 each
        w = halves(u, u, [0, 2, 4, 6], [1, 3, 5, 7])  # one sum each, in order
        v4 = ir.VectorType(F32, 4)
        w = builder.fmul(w, _splat(builder, args[2], v4))
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [_as_i64(builder, args[1])]), v4.as_pointer())
        builder.store(w, ptr, align=4)
        return context.get_dummy_value()
    return types.none(out, j, types.float32, f32x16, f32x16, f32x16, f32x16), codegen


def _float_weights16(decode):  # type: ignore[no-untyped-def]
    """An intrinsic loading 16 weights at byte p of w as F32x16, via decode(builder, bytes)."""
    nbytes = decode.nbytes

    def typer(typingctx, w, p):  # type: ignore[no-untyped-def]
        if not _is_bytes(w):
            return None

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            raw = _load_bytes(context, builder, sig.args[0], args[0], _as_i64(builder, args[1]), nbytes)
            return decode(builder, raw)
        return f32x16(w, p), codegen

    typer.__name__ = typer.__qualname__ = decode.__name__
    return intrinsic(typer)


def _f32x16_of_f32(builder: ir.IRBuilder, raw: ir.Value) -> ir.Value:
    return builder.bitcast(raw, V16F32)


def _f32x16_of_f16(builder: ir.IRBuilder, raw: ir.Value) -> ir.Value:
    return half_to_float(builder, builder.bitcast(raw, ir.VectorType(I16, 16)))


def _f32x16_of_bf16(builder: ir.IRBuilder, raw: ir.Value) -> ir.Value:
    v32 = ir.VectorType(I32, 16)
    wide = builder.zext(builder.bitcast(raw, ir.VectorType(I16, 16)), v32)
    return builder.bitcast(builder.shl(wide, _const_vec(v32, 16)), V16F32)


_f32x16_of_f32.nbytes = 64  # type: ignore[attr-defined]
_f32x16_of_f16.nbytes = 32  # type: ignore[attr-defined]
_f32x16_of_bf16.nbytes = 32  # type: ignore[attr-defined]
vload_f32x16 = _float_weights16(_f32x16_of_f32)
vload_f16x16 = _float_weights16(_f32x16_of_f16)
vload_bf16x16 = _float_weights16(_f32x16_of_bf16)


# ---- 16 lanes from 8, products and scaling --------------------------------------------

@intrinsic
def vload8_pairs(typingctx, a, off):  # type: ignore[no-untyped-def]
    """F32x16 with lane k = a[off + k // 2] of a float32 array: the activation's 8 block
    scales (per 32 elements) repeated for the 16 sub-blocks of 16, unchecked."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        v8 = builder.load(builder.bitcast(builder.gep(data, [_as_i64(builder, args[1])]), V8F32.as_pointer()), align=4)
        return builder.shuffle_vector(v8, ir.Constant(V8F32, ir.Undefined),
                                      ir.Constant(ir.VectorType(I32, 16), [k // 2 for k in range(16)]))
    return f32x16(a, off), codegen


@intrinsic
def vcat8(typingctx, a, b):  # type: ignore[no-untyped-def]
    """The F32x16 [a, b] of two F32x8."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.shuffle_vector(args[0], args[1], ir.Constant(ir.VectorType(I32, 16), list(range(16))))
    return f32x16(f32x8, f32x8), codegen


@intrinsic
def vhigh8(typingctx, a):  # type: ignore[no-untyped-def]
    """Lanes 8-15 of an F32x16 as F32x8."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.shuffle_vector(args[0], ir.Constant(V16F32, ir.Undefined), ir.Constant(ir.VectorType(I32, 8), list(range(8, 16))))
    return f32x8(f32x16), codegen


@intrinsic
def vmul16(typingctx, a, b):  # type: ignore[no-untyped-def]
    """a * b lane by lane, for two F32x16."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.fmul(args[0], args[1])
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def vscale16(typingctx, a, s):  # type: ignore[no-untyped-def]
    """a * s for an F32x16 a and a float32 s."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.fmul(args[0], _splat(builder, args[1], V16F32))
    return f32x16(f32x16, types.float32), codegen

