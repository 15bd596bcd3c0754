"""Scalar loads and bit casts Numba lacks (it has no float16 type), as LLVM IR intrinsics.

Half to float is `fpext half` (one vcvtph2ps) where the target has F16C; elsewhere
LLVM would call compiler-rt's __extendhfsf2, which Numba's JIT cannot resolve, so we
emit the integer conversion instead. Loads are unaligned-safe generic LLVM.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numallm.kernels.simd.cpu import target_features
from numba import njit, types
from numba.extending import intrinsic


def half_to_float(builder: ir.IRBuilder, h: ir.Value) -> ir.Value:
    """float32 of the half bit pattern h: an i16 scalar, or a vector of i16 (lane-wise)."""
    n = h.type.count if isinstance(h.type, ir.VectorType) else 0

    def ty(scalar: ir.Type) -> ir.Type:
        return ir.VectorType(scalar, n) if n else scalar

    def const(scalar: ir.Type, value: object) -> ir.Constant:
        return ir.Constant(ty(scalar), [value] * n if n else value)

    i32, f32 = ir.IntType(32), ir.FloatType()
    if "f16c" in target_features():
        return builder.fpext(builder.bitcast(h, ty(ir.HalfType())), ty(f32))
    v = builder.zext(h, ty(i32))
    # Magnitude bits moved into float position, then scaled by 2**112 to re-bias the
    # exponent (this also normalises half subnormals); inf/nan get the full exponent.
    mag = builder.shl(builder.and_(v, const(i32, 0x7FFF)), const(i32, 13))
    scaled = builder.bitcast(builder.fmul(builder.bitcast(mag, ty(f32)), const(f32, 2.0 ** 112)), ty(i32))
    is_special = builder.icmp_unsigned("==", builder.and_(v, const(i32, 0x7C00)), const(i32, 0x7C00))
    bits = builder.select(is_special, builder.or_(mag, const(i32, 0x7F800000)), scaled)
    sign = builder.shl(builder.and_(v, const(i32, 0x8000)), const(i32, 16))
    return builder.bitcast(builder.or_(bits, sign), ty(f32))


def _elem_ptr(context, builder, arrty, arr, idx, elty):  # type: ignore[no-untyped-def]
    """Pointer to element `idx` (no wraparound, no bounds check) cast to elty*."""
    data = context.make_array(arrty)(context, builder, arr).data
    if idx.type.width < 64:
        idx = builder.sext(idx, ir.IntType(64))
    return builder.bitcast(builder.gep(data, [idx]), elty.as_pointer())


def _is_byte_array(t) -> bool:  # type: ignore[no-untyped-def]
    return isinstance(t, types.Array) and t.ndim == 1 and t.dtype in (types.uint8, types.int8)


# Raw loads from a byte buffer at byte offset p. Numba's own indexing checks every
# signed index for wraparound (a compare and cmov per load, which dominated the SIMD
# kernels' loops); the kernels validate their ranges once per call instead.

@intrinsic
def load_f16(typingctx, w, p):  # type: ignore[no-untyped-def]
    """float32 of the little-endian IEEE half at bytes w[p:p+2]."""
    if not (_is_byte_array(w) and isinstance(p, types.Integer)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(16))
        return half_to_float(builder, builder.load(ptr, align=1))

    return types.float32(w, p), codegen


@intrinsic
def load_u32(typingctx, w, p):  # type: ignore[no-untyped-def]
    """The little-endian uint32 at bytes w[p:p+4]."""
    if not (_is_byte_array(w) and isinstance(p, types.Integer)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.load(_elem_ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(32)), align=1)

    return types.uint32(w, p), codegen


@intrinsic
def at(typingctx, a, i):  # type: ignore[no-untyped-def]
    """a[i] for a 1-D array, without wraparound or bounds check."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        elty = context.get_data_type(sig.args[0].dtype)
        return builder.load(_elem_ptr(context, builder, sig.args[0], args[0], args[1], elty))

    return a.dtype(a, i), codegen


@intrinsic
def load_f32(typingctx, w, p):  # type: ignore[no-untyped-def]
    """The little-endian float32 at bytes w[p:p+4]."""
    if not (_is_byte_array(w) and isinstance(p, types.Integer)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.load(_elem_ptr(context, builder, sig.args[0], args[0], args[1], ir.FloatType()), align=1)

    return types.float32(w, p), codegen


@intrinsic
def load_bf16(typingctx, w, p):  # type: ignore[no-untyped-def]
    """float32 of the little-endian bfloat16 at bytes w[p:p+2] (its top 16 bits)."""
    if not (_is_byte_array(w) and isinstance(p, types.Integer)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        h = builder.load(_elem_ptr(context, builder, sig.args[0], args[0], args[1], ir.IntType(16)), align=1)
        bits = builder.shl(builder.zext(h, ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(w, p), codegen


def _mover(nbytes: int):  # type: ignore[no-untyped-def]
    """An intrinsic move(dst, o, src, s): bytes dst[o:o+nbytes] = src[s:s+nbytes], one
    unaligned load and store (of an integer, or a byte vector above 8 bytes), unchecked."""
    ity = ir.IntType(8 * nbytes) if nbytes <= 8 else ir.VectorType(ir.IntType(8), nbytes)

    def typer(typingctx, dst, o, src, s):  # type: ignore[no-untyped-def]
        if not (_is_byte_array(dst) and _is_byte_array(src)):
            return None

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            d, ov, sa, sv = args
            v = builder.load(_elem_ptr(context, builder, sig.args[2], sa, sv, ity), align=1)
            builder.store(v, _elem_ptr(context, builder, sig.args[0], d, ov, ity), align=1)
            return context.get_dummy_value()
        return types.none(dst, o, src, s), codegen

    typer.__name__ = typer.__qualname__ = f"move{nbytes}"
    return intrinsic(typer)


move2 = _mover(2)
move4 = _mover(4)
move32 = _mover(32)


@njit(inline="always", cache=True)
def bits_to_bytes(b):  # type: ignore[no-untyped-def]
    """The 4 low bits of b as the low bits of the 4 bytes of a uint32 (bit j -> byte j)."""
    b = np.uint32(b)
    return ((b & np.uint32(1)) | ((b & np.uint32(2)) << np.uint32(7))
            | ((b & np.uint32(4)) << np.uint32(14)) | ((b & np.uint32(8)) << np.uint32(21)))


@njit(inline="always", cache=True)
def field4(w, p, shift, mask):  # type: ignore[no-untyped-def]
    """The bit field (byte >> shift) & mask of the 4 bytes w[p:p+4] at once, one per byte
    of a uint32: the bits a byte receives from its neighbour lie above the mask."""
    return (load_u32(w, p) >> np.uint32(shift)) & np.uint32(mask)
