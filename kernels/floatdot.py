"""matvec of float weights (F32, F16, BF16): 16-lane loads, conversion, FMA.

x stays float32, so the only error is float32 rounding. `kind` 0/1/2 selects
F32/F16/BF16; it is invariant in the loops, which LLVM unswitches.
"""

from __future__ import annotations

from numallm.kernels.llvm_scalar import at, load_bf16, load_f16, load_f32
from numallm.kernels.qcodes import BF16, F16
from numallm.kernels.vec import (
    vfmav16,
    vhsum16,
    vload16,
    vload_bf16x16,
    vload_f16x16,
    vload_f32x16,
    vzero16,
)
from numba import njit


@njit(inline="always", cache=True)
def _w16(w, p, kind):  # type: ignore[no-untyped-def]
    if kind == 0:
        return vload_f32x16(w, p)
    if kind == 1:
        return vload_f16x16(w, p)
    return vload_bf16x16(w, p)


@njit(inline="always", cache=True)
def _w1(w, p, kind):  # type: ignore[no-untyped-def]
    if kind == 0:
        return load_f32(w, p)
    if kind == 1:
        return load_f16(w, p)
    return load_bf16(w, p)


@njit(nogil=True, cache=True)
def rows_float(qcode, w, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
    kind = 1 if qcode == F16 else (2 if qcode == BF16 else 0)
    es = 4 if kind == 0 else 2
    rb = cols * es
    n32 = cols // 32 * 32
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero16()
        a1 = vzero16()
        for k in range(0, n32, 32):
            a0 = vfmav16(a0, _w16(w, o + es * k, kind), vload16(x, k))
            a1 = vfmav16(a1, _w16(w, o + es * k + 16 * es, kind), vload16(x, k + 16))
        acc = vhsum16(a0) + vhsum16(a1)
        for k in range(n32, cols):
            acc += _w1(w, o + es * k, kind) * at(x, k)
        out[r] = acc
