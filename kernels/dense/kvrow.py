"""Attention's inner products over KV cache rows: float32 queries against rows stored
as float16 bits (uint16) or float32; and kv_put, which writes a row.

Rows are converted 16 at a time (vcvtph2ps with F16C; integer bit moves elsewhere, see
llvm_scalar.half_to_float); a table lookup per element (a gather) ran at a fraction of
this. Head dimensions that are not a multiple of 16 take plain loops over an
element-wise conversion, which fastmath lets LLVM reassociate into vector lanes, as
ggml's SIMD sums are.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from numallm.kernels.simd.cpu import target_features
from numallm.kernels.simd.scalar import half_to_float
from numallm.kernels.simd.vec import (
    _as_i64,
    _f32_ptr,
    _is_f32_vector,
    vadd16,
    vfma16,
    vfmav16,
    vhsum4_store,
    vhsum16,
    vload16,
    vload_f16x16,
    vload_f32x16,
    vstore16,
    vzero16,
)


@intrinsic
def _half(typingctx, row, i):  # type: ignore[no-untyped-def]
    """float32 of the float16 bits row[i] (no bounds or wraparound check)."""
    if not (isinstance(row, types.Array) and row.dtype == types.uint16 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        idx = args[1] if args[1].type.width == 64 else builder.sext(args[1], ir.IntType(64))
        return half_to_float(builder, builder.load(builder.gep(arr.data, [idx])))

    return types.float32(row, i), codegen


@njit(nogil=True)
def _f32_bits_to_f16(bits: int) -> int:
    # Round to nearest even, as numpy's astype(float16) and ggml's conversion do.
    sign = (bits >> 16) & 0x8000
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    if exp == 0xFF:
        return sign | 0x7C00 | (0x200 if mant != 0 else 0)
    e = exp - 112  # rebias 127 -> 15
    if e >= 31:
        return sign | 0x7C00
    if e <= 0:
        if e < -10:
            return sign
        mant |= 0x800000
        shift = 14 - e
        half = mant >> shift
        rem = mant & ((1 << shift) - 1)
        halfway = 1 << (shift - 1)
        if rem > halfway or (rem == halfway and (half & 1) != 0):
            half += 1
        return sign | half
    half = (e << 10) | (mant >> 13)
    rem = mant & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and (half & 1) != 0):
        half += 1  # a carry into the exponent is the correct rounding (up to inf)
    return sign | half


_F16C = "f16c" in target_features()


@intrinsic
def _put_f16x16(typingctx, row, off, src):  # type: ignore[no-untyped-def]
    """row[off:off+16] = the float16 bits of src[off:off+16] (vcvtps2ph, round to nearest
    even: what _f32_bits_to_f16 gives), unchecked."""
    if not (isinstance(row, types.Array) and row.dtype == types.uint16 and _is_f32_vector(src)):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        v = builder.load(_f32_ptr(context, builder, sig.args[2], args[2], args[1]), align=4)
        h = builder.bitcast(builder.fptrunc(v, ir.VectorType(ir.HalfType(), 16)), ir.VectorType(ir.IntType(16), 16))
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [_as_i64(builder, args[1])])
        builder.store(h, builder.bitcast(ptr, h.type.as_pointer()), align=2)
        return context.get_dummy_value()
    return types.none(row, off, src), codegen


def kv_put(row, src):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled via the overload
    """row[:] = src (float32), as the cache row's type stores it: float16 bits or float32."""
    raise NotImplementedError


@overload(kv_put)
def _kv_put(row, src):  # type: ignore[no-untyped-def]
    if row.dtype == types.uint16:
        def put_f16(row, src):  # type: ignore[no-untyped-def]
            n = row.shape[0]
            done = n - n % 16 if _F16C else 0  # 16 at a time: a fifth of the scalar loop's time
            for i in range(0, done, 16):
                _put_f16x16(row, i, src)
            bits = src.view(np.uint32)
            for i in range(done, n):
                row[i] = _f32_bits_to_f16(np.int64(bits[i]))
        return put_f16

    def put_f32(row, src):  # type: ignore[no-untyped-def]
        for i in range(row.shape[0]):
            row[i] = src[i]
    return put_f32


@njit(nogil=True, cache=True)
def f32_to_f16_bits(src: np.ndarray, out: np.ndarray) -> None:
    """Convert float32 values to float16 bits (exposed for tests of the conversion)."""
    kv_put(out, src)


def element(row, i):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled via the overload
    """row[i] as float32, for a float16-bits (uint16) or float32 row."""
    raise NotImplementedError


@overload(element, inline="always")
def _element(row, i):  # type: ignore[no-untyped-def]
    if row.dtype == types.uint16:
        return lambda row, i: _half(row, i)
    return lambda row, i: row[i]


# Attention calls these once per head over its positions, on the whole cache flattened
# (rows at base + j * d): a view per head or position costs a reference count, and
# the workers count references to the same cache arrays at once (atomic operations on
# one shared cache line). A head dimension that is a multiple of 16 (64, 128, 256: every
# model so far) takes explicit 16-lane vectors; LLVM's own vectorisation of these
# loops, with a trip count it cannot see, ran about three times slower.

def _row16(rows, raw, e):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled via the overload
    """16 elements of the flat cache `rows` from element e as an F32x16; raw: its bytes."""
    raise NotImplementedError


@overload(_row16, inline="always")
def _row16_impl(rows, raw, e):  # type: ignore[no-untyped-def]
    if rows.dtype == types.uint16:
        return lambda rows, raw, e: vload_f16x16(raw, 2 * e)
    return lambda rows, raw, e: vload_f32x16(raw, 4 * e)


@njit(nogil=True, fastmath=True, cache=True)
def rows_dot(q, rows, base, start, end, scale, out):  # type: ignore[no-untyped-def]
    """out[j] = scale * sum(q * row j) for j in [start, end), where row j is
    rows[base + j * d: base + (j + 1) * d] of a flat cache, d = len(q)."""
    d = q.shape[0]
    j = start
    if d % 16 == 0:
        raw = rows.view(np.uint8)
        # four rows at a time: four independent sums, reduced together
        while j + 4 <= end:
            b = base + j * d
            a0 = a1 = a2 = a3 = vzero16()
            for c in range(0, d, 16):
                qc = vload16(q, c)
                a0 = vfmav16(a0, qc, _row16(rows, raw, b + c))
                a1 = vfmav16(a1, qc, _row16(rows, raw, b + d + c))
                a2 = vfmav16(a2, qc, _row16(rows, raw, b + 2 * d + c))
                a3 = vfmav16(a3, qc, _row16(rows, raw, b + 3 * d + c))
            vhsum4_store(out, j, scale, a0, a1, a2, a3)
            j += 4
        for k in range(j, end):
            b = base + k * d
            acc = vzero16()
            for c in range(0, d, 16):
                acc = vfmav16(acc, vload16(q, c), _row16(rows, raw, b + c))
            out[k] = vhsum16(acc) * scale
        return
    for k in range(j, end):
        s = np.float32(0.0)
        b = base + k * d
        for i in range(d):
            s += q[i] * element(rows, b + i)
        out[k] = s * scale


@njit(inline="always", fastmath=True, cache=True)
def _axpy64(a0, a1, a2, a3, rows, raw, e, wj):  # type: ignore[no-untyped-def]
    """(a0, a1, a2, a3) + wj * the 64 elements of the flat cache from element e."""
    return (vfma16(a0, _row16(rows, raw, e), wj), vfma16(a1, _row16(rows, raw, e + 16), wj),
            vfma16(a2, _row16(rows, raw, e + 32), wj), vfma16(a3, _row16(rows, raw, e + 48), wj))


@njit(nogil=True, fastmath=True, cache=True)
def rows_axpy(acc, w, scale, rows, base, start, end):  # type: ignore[no-untyped-def]
    """acc += (w[j] * scale) * row j for j in [start, end), rows as for rows_dot."""
    d = acc.shape[0]
    if d % 64 == 0:
        raw = rows.view(np.uint8)
        # 64 columns at a time over every row: each row's four pieces share one weight,
        # and two rows in turn make eight sums (one would wait out each add's latency)
        for c in range(0, d, 64):
            a0, a1, a2, a3 = vload16(acc, c), vload16(acc, c + 16), vload16(acc, c + 32), vload16(acc, c + 48)
            b0 = b1 = b2 = b3 = vzero16()
            j = start
            while j + 2 <= end:
                e = base + j * d + c
                a0, a1, a2, a3 = _axpy64(a0, a1, a2, a3, rows, raw, e, w[j] * scale)
                b0, b1, b2, b3 = _axpy64(b0, b1, b2, b3, rows, raw, e + d, w[j + 1] * scale)
                j += 2
            if j < end:
                a0, a1, a2, a3 = _axpy64(a0, a1, a2, a3, rows, raw, base + j * d + c, w[j] * scale)
            vstore16(acc, c, vadd16(a0, b0))
            vstore16(acc, c + 16, vadd16(a1, b1))
            vstore16(acc, c + 32, vadd16(a2, b2))
            vstore16(acc, c + 48, vadd16(a3, b3))
        return
    if d % 16 == 0:
        raw = rows.view(np.uint8)
        for c in range(0, d, 16):
            # four sums in turn: one would wait out each multiply-add's latency
            a0 = vload16(acc, c)
            a1 = a2 = a3 = vzero16()
            j = start
            while j + 4 <= end:
                e = base + j * d + c
                a0 = vfma16(a0, _row16(rows, raw, e), w[j] * scale)
                a1 = vfma16(a1, _row16(rows, raw, e + d), w[j + 1] * scale)
                a2 = vfma16(a2, _row16(rows, raw, e + 2 * d), w[j + 2] * scale)
                a3 = vfma16(a3, _row16(rows, raw, e + 3 * d), w[j + 3] * scale)
                j += 4
            for k in range(j, end):
                a0 = vfma16(a0, _row16(rows, raw, base + k * d + c), w[k] * scale)
            vstore16(acc, c, vadd16(vadd16(a0, a1), vadd16(a2, a3)))
        return
    for j in range(start, end):
        wj = w[j] * scale
        b = base + j * d
        for i in range(d):
            acc[i] += wj * element(rows, b + i)


# Four queries at a time (a prompt's tokens of one head and slot, engine/forward.py): each
# row of the cache is read and converted once for the four, a quarter of the loads and
# conversions of four single calls, which bound these loops. Every (query, row) sum is
# the single functions' own chain (the same FMAs in the same order, the same reduction
# tree), so a token's result does not depend on the company it came in.

@njit(nogil=True, fastmath=True, cache=True)
def rows_dot_x4(q4, rows, base, start, end, scale, out, stride):  # type: ignore[no-untyped-def]
    """out[k * stride + j] = scale * sum(q_k * row j) for k < 4 and j in [start, end),
    where q_k = q4[k * d:(k + 1) * d], rows as for rows_dot, d % 16 == 0 (unchecked);
    the same bits as rows_dot of each q_k."""
    d = q4.shape[0] // 4
    raw = rows.view(np.uint8)
    j = start
    while j + 4 <= end:
        b = base + j * d
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = vzero16()
        a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = vzero16()
        for c in range(0, d, 16):
            r0 = _row16(rows, raw, b + c)
            r1 = _row16(rows, raw, b + d + c)
            r2 = _row16(rows, raw, b + 2 * d + c)
            r3 = _row16(rows, raw, b + 3 * d + c)
            qc = vload16(q4, c)
            a00, a01, a02, a03 = vfmav16(a00, qc, r0), vfmav16(a01, qc, r1), vfmav16(a02, qc, r2), vfmav16(a03, qc, r3)
            qc = vload16(q4, d + c)
            a10, a11, a12, a13 = vfmav16(a10, qc, r0), vfmav16(a11, qc, r1), vfmav16(a12, qc, r2), vfmav16(a13, qc, r3)
            qc = vload16(q4, 2 * d + c)
            a20, a21, a22, a23 = vfmav16(a20, qc, r0), vfmav16(a21, qc, r1), vfmav16(a22, qc, r2), vfmav16(a23, qc, r3)
            qc = vload16(q4, 3 * d + c)
            a30, a31, a32, a33 = vfmav16(a30, qc, r0), vfmav16(a31, qc, r1), vfmav16(a32, qc, r2), vfmav16(a33, qc, r3)
        vhsum4_store(out, j, scale, a00, a01, a02, a03)
        vhsum4_store(out, stride + j, scale, a10, a11, a12, a13)
        vhsum4_store(out, 2 * stride + j, scale, a20, a21, a22, a23)
        vhsum4_store(out, 3 * stride + j, scale, a30, a31, a32, a33)
        j += 4
    for k in range(j, end):
        b = base + k * d
        a0 = a1 = a2 = a3 = vzero16()
        for c in range(0, d, 16):
            r = _row16(rows, raw, b + c)
            a0 = vfmav16(a0, vload16(q4, c), r)
            a1 = vfmav16(a1, vload16(q4, d + c), r)
            a2 = vfmav16(a2, vload16(q4, 2 * d + c), r)
            a3 = vfmav16(a3, vload16(q4, 3 * d + c), r)
        out[k] = vhsum16(a0) * scale
        out[stride + k] = vhsum16(a1) * scale
        out[2 * stride + k] = vhsum16(a2) * scale
        out[3 * stride + k] = vhsum16(a3) * scale


@njit(inline="always", fastmath=True, cache=True)
def _axpy32(a0, a1, rows, raw, e, wj):  # type: ignore[no-untyped-def]
    """(a0, a1) + wj * the 32 elements of the flat cache from element e."""
    return vfma16(a0, _row16(rows, raw, e), wj), vfma16(a1, _row16(rows, raw, e + 16), wj)


@njit(inline="always", fastmath=True, cache=True)
def _axpy32_finish(acc, o, a0, a1, b0, b1, w, wo, rows, raw, base, d, c, j, end):  # type: ignore[no-untyped-def]
    """rows_axpy's chains of 32 columns (a: rows start, start + 2, ..., b: the rows between)
    taken on from row j to `end` and stored, a + b, at acc[o:o + 32]."""
    while j + 2 <= end:
        e = base + j * d + c
        a0, a1 = _axpy32(a0, a1, rows, raw, e, w[wo + j])
        b0, b1 = _axpy32(b0, b1, rows, raw, e + d, w[wo + j + 1])
        j += 2
    if j < end:
        a0, a1 = _axpy32(a0, a1, rows, raw, base + j * d + c, w[wo + j])
    vstore16(acc, o, vadd16(a0, b0))
    vstore16(acc, o + 16, vadd16(a1, b1))


@njit(nogil=True, fastmath=True, cache=True)
def rows_axpy_x4(acc4, w, stride, rows, base, start, ends):  # type: ignore[no-untyped-def]
    """acc_k += w[k * stride + j] * row j for j in [start, ends[k]) and k < 4, where
    acc_k = acc4[k * d:(k + 1) * d], d % 64 == 0 (unchecked); the same bits as rows_axpy
    of each acc_k with scale 1 (its 64-column form: the same two chains a lane). The
    weights come scaled (a product per row and query, not per row, query and column
    block; broadcast from memory)."""
    d = acc4.shape[0] // 4
    raw = rows.view(np.uint8)
    common = min(min(ends[0], ends[1]), min(ends[2], ends[3]))
    for c in range(0, d, 32):
        a00, a01 = vload16(acc4, c), vload16(acc4, c + 16)
        a10, a11 = vload16(acc4, d + c), vload16(acc4, d + c + 16)
        a20, a21 = vload16(acc4, 2 * d + c), vload16(acc4, 2 * d + c + 16)
        a30, a31 = vload16(acc4, 3 * d + c), vload16(acc4, 3 * d + c + 16)
        b00 = b01 = b10 = b11 = b20 = b21 = b30 = b31 = vzero16()
        j = start
        while j + 2 <= common:
            e = base + j * d + c
            r0, r1 = _row16(rows, raw, e), _row16(rows, raw, e + 16)
            a00, a01 = vfma16(a00, r0, w[j]), vfma16(a01, r1, w[j])
            a10, a11 = vfma16(a10, r0, w[stride + j]), vfma16(a11, r1, w[stride + j])
            a20, a21 = vfma16(a20, r0, w[2 * stride + j]), vfma16(a21, r1, w[2 * stride + j])
            a30, a31 = vfma16(a30, r0, w[3 * stride + j]), vfma16(a31, r1, w[3 * stride + j])
            r0, r1 = _row16(rows, raw, e + d), _row16(rows, raw, e + d + 16)
            b00, b01 = vfma16(b00, r0, w[j + 1]), vfma16(b01, r1, w[j + 1])
            b10, b11 = vfma16(b10, r0, w[stride + j + 1]), vfma16(b11, r1, w[stride + j + 1])
            b20, b21 = vfma16(b20, r0, w[2 * stride + j + 1]), vfma16(b21, r1, w[2 * stride + j + 1])
            b30, b31 = vfma16(b30, r0, w[3 * stride + j + 1]), vfma16(b31, r1, w[3 * stride + j + 1])
            j += 2
        _axpy32_finish(acc4, c, a00, a01, b00, b01, w, 0, rows, raw, base, d, c, j, ends[0])
        _axpy32_finish(acc4, d + c, a10, a11, b10, b11, w, stride, rows, raw, base, d, c, j, ends[1])
        _axpy32_finish(acc4, 2 * d + c, a20, a21, b20, b21, w, 2 * stride, rows, raw, base, d, c, j, ends[2])
        _axpy32_finish(acc4, 3 * d + c, a30, a31, b30, b31, w, 3 * stride, rows, raw, base, d, c, j, ends[3])
