"""The float types F32, F16 and BF16: row decoders and the matvec row dot.

The row dot loads 16 weights at a time, converts them and multiplies with FMA; x
stays float32, so the only error is float32 rounding. `kind` 0/1/2 selects
F32/F16/BF16; it is invariant in the loops, which LLVM unswitches. Decoders write
`nb` elements at byte `o` of `w` to y, as kernels/drivers/decode.py calls them.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.qcodes import BF16, F16
from numallm.kernels.simd.scalar import at, load_bf16, load_f16, load_f32
from numallm.kernels.simd.vec import (
    vfmav16,
    vhsum16,
    vload16,
    vload_bf16x16,
    vload_f16x16,
    vload_f32x16,
    vzero16,
)
from numba import njit


@njit(nogil=True, cache=True)
def decode_f32(w, o, nb, y):  # type: ignore[no-untyped-def]
    y[:nb] = w[o:o + 4 * nb].view(np.float32)


@njit(nogil=True, cache=True)
def decode_f16(w, o, nb, y):  # type: ignore[no-untyped-def]
    for i in range(nb):
        y[i] = load_f16(w, o + 2 * i)


@njit(nogil=True, cache=True)
def decode_bf16(w, o, nb, y):  # type: ignore[no-untyped-def]
    for i in range(nb):
        y[i] = load_bf16(w, o + 2 * i)


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
