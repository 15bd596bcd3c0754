"""Attention's inner products over KV cache rows: float32 queries against rows stored
as float16 bits (uint16) or float32.

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

from numallm.kernels.simd.scalar import half_to_float
from numallm.kernels.simd.vec import (
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
