"""Quantized rows -> unsigned byte quants with a float scale and offset per sub-block.

The int8 tile GEMM (kernels/igemm.py) reads the quantized types without a tiled
layout (kernels/tiled.py) in one form, and decode.py the affine ones:
element k of a row is d[k // S] * q[k] + m[k // S] with q an unsigned byte and S the
type's sub-block size (`sub_size`: 16 where the type scales every 16 elements, else
32). The integer part q is exact; d and m fold the type's scales, mins and offsets
(Q4_0's -8, Q6_K's -32, ...) and
multiply the activation's int8 dot product and block sum in float32.
Bit layouts as kernels/decode.py (grouped Q4_0-Q5_1, file layout K-quants). Quants
are unpacked 4 at a time, as the 4 bytes of a uint32 from one unaligned 4-byte load,
shift and mask (`field4`): a byte loop was 3-4x slower and was the K-quant GEMM's
largest cost beside its dot products.
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
)
from numba import njit


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


# Every unpack_* writes word c (quants 4c..4c+3, byte j = quant 4c+j) of the row to
# q32[st * c + lane] and the sub-block s's d and m to d[st * s + lane], m[st * s + lane]:
# st = 1 is a plain row (unpack_row), st = TILE_ROWS a row of the interleaved tile of
# kernels/igemm.py, written in place.


@njit(nogil=True, cache=True)
def unpack_q45(w, o, nb, q32, d, m, st, lane, has_min, five):  # type: ignore[no-untyped-def]
    ts = 18 + 2 * has_min + 4 * five
    for g0 in range(0, nb, 8):
        g = min(8, nb - g0)
        base = o + ts * g0
        qo = base + (ts - 16) * g
        for j in range(g):
            b = g0 + j
            dj = load_f16(w, base + 2 * j)
            d[st * b + lane] = dj
            m[st * b + lane] = load_f16(w, base + 2 * g + 2 * j) if has_min else -dj * np.float32(16 if five else 8)
            qh = load_u32(w, base + (4 if has_min else 2) * g + 4 * j) if five else np.uint32(0)
            # kernels/repack.py: pairs of blocks share 32 bytes (low, high nibbles); an
            # odd last block has 16 (quants 0-15 low, 16-31 high nibbles).
            pair = j < g - (g & 1)
            for c in range(8):
                e = 4 * c
                if pair:
                    v = field4(w, qo + 32 * (j >> 1) + e, 4 * (j & 1), 0x0F0F0F0F)
                else:
                    v = field4(w, qo + 32 * (j >> 1) + (e & 15), 4 * (e >> 4), 0x0F0F0F0F)
                if five:
                    v |= bits_to_bytes(qh >> np.uint32(e)) << np.uint32(4)
                q32[st * (8 * b + c) + lane] = v


@njit(nogil=True, cache=True)
def unpack_q2_k(w, o, nb, q32, d, m, st, lane):  # type: ignore[no-untyped-def]
    for b in range(nb):
        p = o + 84 * b
        dd = load_f16(w, p + 80)
        dmin = load_f16(w, p + 82)
        for s in range(16):
            sc = at(w, p + s)
            d[st * (16 * b + s) + lane] = dd * np.float32(sc & 15)
            m[st * (16 * b + s) + lane] = -(dmin * np.float32(sc >> 4))
        # Quant e (half = e >> 7, r = e & 127): bits 2 (r >> 5) of byte 32 half + r % 32.
        for c in range(64):
            half, r = c >> 5, (4 * c) & 127
            q32[st * (64 * b + c) + lane] = field4(w, p + 16 + 32 * half + (r & 31), 2 * (r >> 5), 0x03030303)


@njit(nogil=True, cache=True)
def unpack_q3_k(w, o, nb, q32, d, m, st, lane):  # type: ignore[no-untyped-def]
    # value = d * scale * (q - 4) with q = 2 low bits | hmask bit << 2.
    for b in range(nb):
        p = o + 110 * b
        dd = load_f16(w, p + 108)
        for s in range(16):
            ds = dd * np.float32(q3_k_scale(w, p + 96, s))
            d[st * (16 * b + s) + lane] = ds
            m[st * (16 * b + s) + lane] = np.float32(-4.0) * ds
        for c in range(64):
            e = 4 * c
            half, r = e >> 7, e & 127
            low = field4(w, p + 32 + 32 * half + (r & 31), 2 * (r >> 5), 0x03030303)
            high = field4(w, p + (e & 31), e >> 5, 0x01010101)
            q32[st * (64 * b + c) + lane] = low | (high << np.uint32(2))


@njit(nogil=True, cache=True)
def unpack_q45_k(w, o, nb, q32, d, m, st, lane, five):  # type: ignore[no-untyped-def]
    ts = 176 if five else 144
    qs = 48 if five else 16
    for b in range(nb):
        p = o + ts * b
        dd = load_f16(w, p)
        dmin = load_f16(w, p + 2)
        for s in range(8):
            sc, mn = k_scale_min(w, p + 4, s)
            d[st * (8 * b + s) + lane] = dd * np.float32(sc)
            m[st * (8 * b + s) + lane] = -(dmin * np.float32(mn))
            for c in range(8):
                v = field4(w, p + qs + 32 * (s >> 1) + 4 * c, 4 * (s & 1), 0x0F0F0F0F)
                if five:
                    v |= field4(w, p + 16 + 4 * c, s, 0x01010101) << np.uint32(4)
                q32[st * (64 * b + 8 * s + c) + lane] = v


@njit(nogil=True, cache=True)
def unpack_q6_k(w, o, nb, q32, d, m, st, lane):  # type: ignore[no-untyped-def]
    for b in range(nb):
        p = o + 210 * b
        dd = load_f16(w, p + 208)
        for s in range(16):
            ds = dd * np.float32(np.int8(at(w, p + 192 + s)))
            d[st * (16 * b + s) + lane] = ds
            m[st * (16 * b + s) + lane] = np.float32(-32.0) * ds
        for c in range(64):
            half, r = c >> 5, (4 * c) & 127
            ql = field4(w, p + 64 * half + (r & 63), 4 * (r >> 6), 0x0F0F0F0F)
            qh = field4(w, p + 128 + 32 * half + (r & 31), 2 * (r >> 5), 0x03030303)
            q32[st * (64 * b + c) + lane] = ql | (qh << np.uint32(4))


# Unpack the `nb` blocks of type `qcode` at byte `o` of `w` into q32, d, m with stride
# st at lane (see above; kernels/by_type.py for the dispatch).
unpack_strided = by_type("unpack_strided", {
    Q4_0: lambda qc, w, o, nb, q32, d, m, st, lane: unpack_q45(w, o, nb, q32, d, m, st, lane, False, False),
    Q4_1: lambda qc, w, o, nb, q32, d, m, st, lane: unpack_q45(w, o, nb, q32, d, m, st, lane, True, False),
    Q5_0: lambda qc, w, o, nb, q32, d, m, st, lane: unpack_q45(w, o, nb, q32, d, m, st, lane, False, True),
    Q5_1: lambda qc, w, o, nb, q32, d, m, st, lane: unpack_q45(w, o, nb, q32, d, m, st, lane, True, True),
    Q2_K: lambda qc, w, o, nb, q32, d, m, st, lane: unpack_q2_k(w, o, nb, q32, d, m, st, lane),
    Q3_K: lambda qc, w, o, nb, q32, d, m, st, lane: unpack_q3_k(w, o, nb, q32, d, m, st, lane),
    Q4_K: lambda qc, w, o, nb, q32, d, m, st, lane: unpack_q45_k(w, o, nb, q32, d, m, st, lane, False),
    Q5_K: lambda qc, w, o, nb, q32, d, m, st, lane: unpack_q45_k(w, o, nb, q32, d, m, st, lane, True),
    Q6_K: lambda qc, w, o, nb, q32, d, m, st, lane: unpack_q6_k(w, o, nb, q32, d, m, st, lane),
})


@njit(nogil=True, cache=True)
def unpack_row(qcode, w, o, nb, q, d, m):  # type: ignore[no-untyped-def]
    """Unpack the `nb` blocks of type `qcode` at byte `o` of `w` into the byte quants q
    (one per element) and the sub-blocks' d and m."""
    unpack_strided(qcode, w, o, nb, q.view(np.uint32), d, m, 1, 0)
