"""Quantized rows -> unsigned byte quants with a float scale and offset per sub-block.

The int8 tile GEMM (kernels/igemm.py) reads every quantized type in one form:
element k of a row is d[k // S] * q[k] + m[k // S] with q an unsigned byte and S the
type's sub-block size (`sub_size`: 16 where the type scales every 16 elements, else
32). The integer part q is exact; d and m fold the type's scales, mins and offsets
(Q4_0's -8, Q6_K's -32, ...; Q8_0's signed bytes become q = w + 128, m = -128 d) and
multiply the activation's int8 dot product and block sum in float32.
Bit layouts as kernels/decode.py (grouped Q4_0-Q8_0, file layout K-quants).
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.by_type import by_type
from numallm.kernels.llvm_scalar import at, load_f16, load_u32
from numallm.kernels.qcodes import (
    Q2_K,
    Q3_K,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
)
from numba import njit


@njit(inline="always", cache=True)
def grouped_nibble(w, qo, g, j, e):  # type: ignore[no-untyped-def]
    """Quant e of block j of a Q4 group of g blocks whose quants start at byte qo
    (kernels/repack.py: pairs of blocks share 32 bytes; an odd last block has 16)."""
    if j < g - (g & 1):
        return (at(w, qo + 32 * (j >> 1) + e) >> (4 * (j & 1))) & 15
    return (at(w, qo + 32 * (j >> 1) + (e & 15)) >> (4 * (e >> 4))) & 15


@njit(inline="always", cache=True)
def q3_k_scale(w, s, i):  # type: ignore[no-untyped-def]
    lo = (at(w, s + (i & 7)) >> (4 * (i >> 3))) & 15
    hi = (at(w, s + 8 + (i & 3)) >> (2 * (i >> 2))) & 3
    return np.int32(lo | (hi << 4)) - 32


@njit(inline="always", cache=True)
def k_scale_min(w, s, i):  # type: ignore[no-untyped-def]
    """6-bit (scale, min) number i of the 12-byte Q4_K/Q5_K scales at byte s."""
    if i < 4:
        return at(w, s + i) & 63, at(w, s + 4 + i) & 63
    sc = (at(w, s + 4 + i) & 15) | ((at(w, s + i - 4) >> 2) & 0x30)
    mn = (at(w, s + 4 + i) >> 4) | ((at(w, s + i) >> 2) & 0x30)
    return sc, mn


@njit(inline="always", cache=True)
def sub_size(qcode):  # type: ignore[no-untyped-def]
    """Elements per scale of the unpacked form."""
    if qcode == Q2_K or qcode == Q3_K or qcode == Q6_K:
        return 16
    return 32


@njit(nogil=True, cache=True)
def unpack_q45(w, o, nb, q, d, m, has_min, five):  # type: ignore[no-untyped-def]
    ts = 18 + 2 * has_min + 4 * five
    for g0 in range(0, nb, 8):
        g = min(8, nb - g0)
        base = o + ts * g0
        qo = base + (ts - 16) * g
        for j in range(g):
            b = g0 + j
            d[b] = load_f16(w, base + 2 * j)
            m[b] = load_f16(w, base + 2 * g + 2 * j) if has_min else -d[b] * np.float32(16 if five else 8)
            qh = load_u32(w, base + (4 if has_min else 2) * g + 4 * j) if five else np.uint32(0)
            for e in range(32):
                q[32 * b + e] = grouped_nibble(w, qo, g, j, e) | np.uint8(((qh >> np.uint32(e)) & np.uint32(1)) << np.uint32(4))


@njit(nogil=True, cache=True)
def unpack_q8_0(w, o, nb, q, d, m):  # type: ignore[no-untyped-def]
    for g0 in range(0, nb, 8):
        g = min(8, nb - g0)
        base = o + 34 * g0
        for j in range(g):
            b = g0 + j
            d[b] = load_f16(w, base + 2 * j)
            m[b] = np.float32(-128.0) * d[b]
            for e in range(32):
                q[32 * b + e] = at(w, base + 2 * g + 32 * j + e) ^ np.uint8(0x80)


@njit(nogil=True, cache=True)
def unpack_q2_k(w, o, nb, q, d, m):  # type: ignore[no-untyped-def]
    for b in range(nb):
        p = o + 84 * b
        dd = load_f16(w, p + 80)
        dmin = load_f16(w, p + 82)
        for s in range(16):
            sc = at(w, p + s)
            d[16 * b + s] = dd * np.float32(sc & 15)
            m[16 * b + s] = -(dmin * np.float32(sc >> 4))
        for e in range(256):
            half, r = e >> 7, e & 127
            q[256 * b + e] = (at(w, p + 16 + 32 * half + (r & 31)) >> (2 * (r >> 5))) & 3


@njit(nogil=True, cache=True)
def unpack_q3_k(w, o, nb, q, d, m):  # type: ignore[no-untyped-def]
    # value = d * scale * (q - 4) with q = 2 low bits | hmask bit << 2.
    for b in range(nb):
        p = o + 110 * b
        dd = load_f16(w, p + 108)
        for s in range(16):
            d[16 * b + s] = dd * np.float32(q3_k_scale(w, p + 96, s))
            m[16 * b + s] = np.float32(-4.0) * d[16 * b + s]
        for e in range(256):
            half, r = e >> 7, e & 127
            low = (at(w, p + 32 + 32 * half + (r & 31)) >> (2 * (r >> 5))) & 3
            q[256 * b + e] = low | (((at(w, p + (e & 31)) >> (e >> 5)) & 1) << 2)


@njit(nogil=True, cache=True)
def unpack_q45_k(w, o, nb, q, d, m, five):  # type: ignore[no-untyped-def]
    ts = 176 if five else 144
    qs = 48 if five else 16
    for b in range(nb):
        p = o + ts * b
        dd = load_f16(w, p)
        dmin = load_f16(w, p + 2)
        for s in range(8):
            sc, mn = k_scale_min(w, p + 4, s)
            d[8 * b + s] = dd * np.float32(sc)
            m[8 * b + s] = -(dmin * np.float32(mn))
            shift = 4 * (s & 1)
            for j in range(32):
                v = (at(w, p + qs + 32 * (s >> 1) + j) >> shift) & 15
                if five:
                    v |= ((at(w, p + 16 + j) >> s) & 1) << 4
                q[256 * b + 32 * s + j] = v


@njit(nogil=True, cache=True)
def unpack_q6_k(w, o, nb, q, d, m):  # type: ignore[no-untyped-def]
    for b in range(nb):
        p = o + 210 * b
        dd = load_f16(w, p + 208)
        for s in range(16):
            d[16 * b + s] = dd * np.float32(np.int8(at(w, p + 192 + s)))
            m[16 * b + s] = np.float32(-32.0) * d[16 * b + s]
        for e in range(256):
            half, r = e >> 7, e & 127
            ql = (at(w, p + 64 * half + (r & 63)) >> (4 * (r >> 6))) & 15
            qh = (at(w, p + 128 + 32 * half + (r & 31)) >> (2 * (r >> 5))) & 3
            q[256 * b + e] = ql | (qh << 4)


# Unpack the `nb` blocks of type `qcode` at byte `o` of `w` into q, d, m (see
# kernels/by_type.py for the dispatch).
unpack_row = by_type("unpack_row", {
    Q4_0: lambda qc, w, o, nb, q, d, m: unpack_q45(w, o, nb, q, d, m, False, False),
    Q4_1: lambda qc, w, o, nb, q, d, m: unpack_q45(w, o, nb, q, d, m, True, False),
    Q5_0: lambda qc, w, o, nb, q, d, m: unpack_q45(w, o, nb, q, d, m, False, True),
    Q5_1: lambda qc, w, o, nb, q, d, m: unpack_q45(w, o, nb, q, d, m, True, True),
    Q8_0: lambda qc, w, o, nb, q, d, m: unpack_q8_0(w, o, nb, q, d, m),
    Q2_K: lambda qc, w, o, nb, q, d, m: unpack_q2_k(w, o, nb, q, d, m),
    Q3_K: lambda qc, w, o, nb, q, d, m: unpack_q3_k(w, o, nb, q, d, m),
    Q4_K: lambda qc, w, o, nb, q, d, m: unpack_q45_k(w, o, nb, q, d, m, False),
    Q5_K: lambda qc, w, o, nb, q, d, m: unpack_q45_k(w, o, nb, q, d, m, True),
    Q6_K: lambda qc, w, o, nb, q, d, m: unpack_q6_k(w, o, nb, q, d, m),
})
