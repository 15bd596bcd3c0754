"""Attention's inner products over KV cache rows: float32 queries against rows stored
as float16 bits (uint16) or float32.

Written as plain loops over an element-wise half-to-float intrinsic (one `fpext half`,
vcvtph2ps, with F16C; integer bit moves elsewhere, see llvm_scalar.half_to_float), so
LLVM vectorises them: a table lookup per element (a gather) ran at a fraction of
this. fastmath only lets the sums be reassociated into vector lanes, as ggml's SIMD
sums are.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from numallm.kernels.llvm_scalar import half_to_float


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


# Attention calls these once per head over its positions: a call per position, with a
# view of each row, cost more than the arithmetic (Numba counts references to every
# view, atomically): 11 ns per head and position on SmolLM2, against 6 ns now.

@njit(nogil=True, fastmath=True, cache=True)
def rows_dot(q, rows, start, end, scale, out):  # type: ignore[no-untyped-def]
    """out[j] = scale * sum(q * rows[j]) for j in [start, end): rows is a C-contiguous
    [positions, len(q)] block of cache rows."""
    d = q.shape[0]
    flat = rows.reshape(-1)
    for j in range(start, end):
        s = np.float32(0.0)
        base = j * d
        for i in range(d):
            s += q[i] * element(flat, base + i)
        out[j] = s * scale


@njit(nogil=True, fastmath=True, cache=True)
def rows_axpy(acc, w, scale, rows, start, end):  # type: ignore[no-untyped-def]
    """acc += (w[j] * scale) * rows[j] for j in [start, end), rows as for rows_dot."""
    d = acc.shape[0]
    flat = rows.reshape(-1)
    for j in range(start, end):
        wj = w[j] * scale
        base = j * d
        for i in range(d):
            acc[i] += wj * element(flat, base + i)
