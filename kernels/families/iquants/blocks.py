"""The i-quants (IQ1_S-IQ4_XS), the ternary types (TQ1_0, TQ2_0) and MXFP4: blocks ->
int8 values with a float32 factor per 16 elements, and the forms the drivers read.

Every one of these types dequantizes, in gguf-py's reference (ggml's), as
factor * value per element, where value is a small integer (a grid entry with its
sign, a 4-bit lookup, a ternary digit) and factor the same for 16 elements at least:
`unpack_<type>(w, p, q, qo, f, fo)` writes the block at byte p of w as
q[qo : qo + block] (int8) and f[fo : fo + block // 16] (float32), each factor
computed in gguf-py's float order, so that f * float32(q) is its dequantized value
bit for bit (`decode`). IQ1_S and IQ1_M add a delta of +-1/8 to their grid values:
their q is 8 * grid +- 1 and f carries the 1/8 (both products are the same real
number, so rounded alike). `unpack_words` gives the int8 GEMM its unsigned form.
The row dots (rows.py) decode in vectors instead.

Tables: tables.py (from gguf-py). Block layouts: ggml-common.h.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numallm.kernels.families.iquants.simd import LUT_IQ4NL, LUT_MXFP4, lut4_store
from numallm.kernels.families.iquants.tables import (
    E8M0_HALF,
    IQ1S_GRID,
    IQ2S_GRID,
    IQ2XS_GRID,
    IQ2XXS_GRID,
    IQ3S_GRID,
    IQ3XXS_GRID,
    KSIGNS,
)
from numallm.kernels.simd.scalar import at, half_to_float, load_f16, load_u32
from numba import njit, types
from numba.extending import intrinsic

_HALF = np.float32(0.5)
_QUARTER = np.float32(0.25)
_EIGHTH = np.float32(0.125)

@intrinsic
def half_bits(typingctx, h):  # type: ignore[no-untyped-def]
    """float32 of the IEEE half whose bits are the low 16 of the integer h."""
    if not isinstance(h, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return half_to_float(builder, builder.trunc(args[0], ir.IntType(16)))
    return types.float32(h), codegen


@njit(inline="always", cache=True)
def _u16(w, p):  # type: ignore[no-untyped-def]
    return np.uint32(at(w, p)) | (np.uint32(at(w, p + 1)) << np.uint32(8))


@njit(inline="always", cache=True)
def _signed8(q, o, grid, gi, signs):  # type: ignore[no-untyped-def]
    """q[o:o+8] = grid row gi, element j negated where bit j of signs is set."""
    for j in range(8):
        g = np.int32(grid[gi, j])
        q[o + j] = -g if (signs >> j) & 1 else g


@njit(inline="always", cache=True)
def _signed4x2(q, o, grid, g0, g1, signs):  # type: ignore[no-untyped-def]
    """q[o:o+8] = grid rows g0 then g1 (4 values each), signed by the bits of signs."""
    for j in range(4):
        a = np.int32(grid[g0, j])
        b = np.int32(grid[g1, j])
        q[o + j] = -a if (signs >> j) & 1 else a
        q[o + 4 + j] = -b if (signs >> (j + 4)) & 1 else b


@njit(inline="always", cache=True)
def _ksigns(v):  # type: ignore[no-untyped-def]
    return np.int32(KSIGNS[v & np.uint32(127)])


@njit(inline="always", cache=True)
def _iq2_db(d, ls):  # type: ignore[no-untyped-def]
    return d * (_HALF + np.float32(ls)) * _QUARTER


@njit(nogil=True, cache=True)
def unpack_iq2_xxs(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 66 bytes: d, then per 32 elements two uint32: 4 grid indices (bytes); 4 x 7 sign
    # bits and a 4-bit scale.
    d = load_f16(w, p)
    for ib in range(8):
        a0 = load_u32(w, p + 2 + 8 * ib)
        a1 = load_u32(w, p + 6 + 8 * ib)
        db = _iq2_db(d, a1 >> np.uint32(28))
        f[fo + 2 * ib] = db
        f[fo + 2 * ib + 1] = db
        for h in range(4):
            _signed8(q, qo + 32 * ib + 8 * h, IQ2XXS_GRID, (a0 >> np.uint32(8 * h)) & np.uint32(255),
                     _ksigns(a1 >> np.uint32(7 * h)))


@njit(inline="always", cache=True)
def _iq2_nibble_scales(w, p, s, f, fo):  # type: ignore[no-untyped-def]
    """IQ2_XS, IQ2_S: d at p, 8 bytes of two 4-bit scales (per 16 elements) at s."""
    d = load_f16(w, p)
    for ib in range(8):
        sc = np.uint32(at(w, s + ib))
        f[fo + 2 * ib] = _iq2_db(d, sc & np.uint32(15))
        f[fo + 2 * ib + 1] = _iq2_db(d, sc >> np.uint32(4))


@njit(nogil=True, cache=True)
def unpack_iq2_xs(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 74 bytes: d, 32 uint16 (9-bit grid index, 7 sign bits) per 8 elements, 8 bytes of
    # two 4-bit scales (per 16 elements).
    _iq2_nibble_scales(w, p, p + 66, f, fo)
    for g in range(32):
        v = _u16(w, p + 2 + 2 * g)
        _signed8(q, qo + 8 * g, IQ2XS_GRID, v & np.uint32(511), _ksigns(v >> np.uint32(9)))


@njit(nogil=True, cache=True)
def unpack_iq2_s(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 82 bytes: d, 32 low index bytes, 32 sign bytes, 8 bytes of 2 high index bits per
    # group, 8 bytes of two 4-bit scales.
    _iq2_nibble_scales(w, p, p + 74, f, fo)
    for g in range(32):
        hi = (np.uint32(at(w, p + 66 + g // 4)) >> np.uint32(2 * (g % 4))) & np.uint32(3)
        _signed8(q, qo + 8 * g, IQ2S_GRID, np.uint32(at(w, p + 2 + g)) | (hi << np.uint32(8)),
                 np.int32(at(w, p + 34 + g)))


@njit(nogil=True, cache=True)
def unpack_iq3_xxs(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 98 bytes: d, 64 grid indices (4 elements each), 8 uint32 of 4 x 7 sign bits and a
    # 4-bit scale per 32 elements.
    d = load_f16(w, p)
    for ib in range(8):
        a = load_u32(w, p + 66 + 4 * ib)
        db = d * (_HALF + np.float32(a >> np.uint32(28))) * _HALF
        f[fo + 2 * ib] = db
        f[fo + 2 * ib + 1] = db
        for h in range(4):
            g = p + 2 + 8 * ib + 2 * h
            _signed4x2(q, qo + 32 * ib + 8 * h, IQ3XXS_GRID, at(w, g), at(w, g + 1),
                       _ksigns(a >> np.uint32(7 * h)))


@njit(nogil=True, cache=True)
def unpack_iq3_s(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 110 bytes: d, 64 low index bytes (4 elements each), 8 bytes of high index bits,
    # 32 sign bytes (a bit per element), 4 bytes of two 4-bit scales (per 32).
    d = load_f16(w, p)
    for ib in range(8):
        sc = (np.uint32(at(w, p + 106 + ib // 2)) >> np.uint32(4 * (ib % 2))) & np.uint32(15)
        db = d * np.float32(1 + 2 * sc)
        f[fo + 2 * ib] = db
        f[fo + 2 * ib + 1] = db
    for k in range(32):
        qh = np.uint32(at(w, p + 66 + k // 4))
        g0 = np.uint32(at(w, p + 2 + 2 * k)) | (((qh >> np.uint32(2 * (k % 4))) & np.uint32(1)) << np.uint32(8))
        g1 = np.uint32(at(w, p + 3 + 2 * k)) | (((qh >> np.uint32(2 * (k % 4) + 1)) & np.uint32(1)) << np.uint32(8))
        _signed4x2(q, qo + 8 * k, IQ3S_GRID, g0, g1, np.int32(at(w, p + 74 + k)))


@njit(inline="always", cache=True)
def _iq1_group(q, o, gi, neg):  # type: ignore[no-untyped-def]
    """q[o:o+8] = 8 * grid row gi + (-1 if neg else 1): 8 times grid + delta."""
    s = -1 if neg else 1
    for j in range(8):
        q[o + j] = 8 * np.int32(IQ1S_GRID[gi, j]) + s


@njit(nogil=True, cache=True)
def unpack_iq1_s(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 50 bytes: d, 32 low index bytes (8 elements each), 8 uint16 per 32 elements: 4 x 3
    # high index bits, a 3-bit scale, the delta's sign.
    d = load_f16(w, p)
    for ib in range(8):
        h = _u16(w, p + 34 + 2 * ib)
        dl = d * np.float32(2 * ((h >> np.uint32(12)) & np.uint32(7)) + 1)
        f[fo + 2 * ib] = dl * _EIGHTH
        f[fo + 2 * ib + 1] = dl * _EIGHTH
        neg = (h & np.uint32(0x8000)) != 0
        for g in range(4):
            gi = np.uint32(at(w, p + 2 + 4 * ib + g)) | (((h >> np.uint32(3 * g)) & np.uint32(7)) << np.uint32(8))
            _iq1_group(q, qo + 32 * ib + 8 * g, gi, neg)


@njit(nogil=True, cache=True)
def unpack_iq1_m(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 56 bytes: 32 low index bytes, 16 bytes of two (3 high index bits, delta sign)
    # nibbles, 4 uint16 of four 3-bit scales (per 16) whose top nibbles make d.
    s0, s1, s2, s3 = _u16(w, p + 48), _u16(w, p + 50), _u16(w, p + 52), _u16(w, p + 54)
    dbits = ((s0 >> np.uint32(12)) | ((s1 >> np.uint32(8)) & np.uint32(0xF0))
             | ((s2 >> np.uint32(4)) & np.uint32(0xF00)) | (s3 & np.uint32(0xF000)))
    d = half_bits(dbits)
    for k in range(16):
        s = s0 if k < 4 else (s1 if k < 8 else (s2 if k < 12 else s3))
        dl = d * np.float32(2 * ((s >> np.uint32(3 * (k % 4))) & np.uint32(7)) + 1)
        f[fo + k] = dl * _EIGHTH
    for g in range(32):
        hn = (np.uint32(at(w, p + 32 + g // 2)) >> np.uint32(4 * (g % 2))) & np.uint32(15)
        _iq1_group(q, qo + 8 * g, np.uint32(at(w, p + g)) | ((hn & np.uint32(7)) << np.uint32(8)),
                   (hn & np.uint32(8)) != 0)


@njit(nogil=True, cache=True)
def unpack_iq4_nl(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 18 bytes for 32 elements: d, 16 bytes of nibbles (low: 0-15, high: 16-31).
    d = load_f16(w, p)
    f[fo] = d
    f[fo + 1] = d
    lut4_store(w, p + 2, q, qo, LUT_IQ4NL)


@njit(nogil=True, cache=True)
def unpack_iq4_xs(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 136 bytes: d, uint16 of 8 x 2 high scale bits, 4 bytes of two low scale nibbles,
    # then per 32 elements 16 bytes of nibbles as IQ4_NL; scales are 6-bit, minus 32.
    d = load_f16(w, p)
    sh = _u16(w, p + 2)
    for ib in range(8):
        lo = (np.uint32(at(w, p + 4 + ib // 2)) >> np.uint32(4 * (ib % 2))) & np.uint32(15)
        ls = np.int32(lo | (((sh >> np.uint32(2 * ib)) & np.uint32(3)) << np.uint32(4))) - 32
        dl = d * np.float32(ls)
        f[fo + 2 * ib] = dl
        f[fo + 2 * ib + 1] = dl
        lut4_store(w, p + 8 + 16 * ib, q, qo + 32 * ib, LUT_IQ4NL)


@njit(nogil=True, cache=True)
def unpack_mxfp4(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 17 bytes for 32 elements: an e8m0 exponent, 16 bytes of e2m1 nibbles.
    d = E8M0_HALF[at(w, p)]
    f[fo] = d
    f[fo + 1] = d
    lut4_store(w, p + 1, q, qo, LUT_MXFP4)


@njit(inline="always", cache=True)
def _ternary(v):  # type: ignore[no-untyped-def]
    """The leading base-3 digit of a byte holding a fraction of 3**5 (minus 1)."""
    return np.int32(((v & np.uint32(255)) * np.uint32(3)) >> np.uint32(8)) - 1


@njit(nogil=True, cache=True)
def unpack_tq1_0(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 54 bytes: 48 bytes of 5 base-3 digits (32 then 16 bytes), 4 bytes of 4 digits, d.
    # Digit n of byte b is the leading digit of b * 3**n (mod 256).
    d = load_f16(w, p + 52)
    for k in range(16):
        f[fo + k] = d
    pw = 1
    for n in range(5):
        for m in range(32):
            q[qo + 32 * n + m] = _ternary(np.uint32(at(w, p + m)) * np.uint32(pw))
        for m in range(16):
            q[qo + 160 + 16 * n + m] = _ternary(np.uint32(at(w, p + 32 + m)) * np.uint32(pw))
        if n < 4:
            for m in range(4):
                q[qo + 240 + 4 * n + m] = _ternary(np.uint32(at(w, p + 48 + m)) * np.uint32(pw))
        pw *= 3


@njit(nogil=True, cache=True)
def unpack_tq2_0(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 66 bytes: 64 bytes of four 2-bit values (q + 1), d. Element 128h + 32s + m is
    # bits 2s of byte 32h + m.
    d = load_f16(w, p + 64)
    for k in range(16):
        f[fo + k] = d
    for h in range(2):
        for s in range(4):
            for m in range(32):
                q[qo + 128 * h + 32 * s + m] = np.int32((at(w, p + 32 * h + m) >> (2 * s)) & 3) - 1



@njit(inline="always", cache=True)
def unpack_words(unpack, bs, ts, w, o, nb, q32, d, m, st, lane, S, off):  # type: ignore[no-untyped-def]
    """The int8 GEMM's form of nb blocks (drivers/unpack.py: word c of the row's unsigned
    quants to q32[st * c + lane], a d and m per S elements) through unpack (a type's
    unpack_*, bs elements in ts bytes per block): q + off, d the factor, m = -off d.
    off (at most 128) is the type's largest |q|, so that the AVX2 GEMM's byte pairs
    (vpmaddubsw) stay below 2**15."""
    q = np.empty(bs, np.int8)
    f = np.empty(bs // 16, np.float32)
    qw = q.view(np.uint32)
    # q ^ 0x80 is q + 128 in each byte; minus 128 - off in each byte borrows nothing
    # (every byte is at least 128 - off).
    shift = np.uint32(128 - off) * np.uint32(0x01010101)
    for b in range(nb):
        unpack(w, o + ts * b, q, 0, f, 0)
        for c in range(bs // 4):
            q32[st * (bs // 4 * b + c) + lane] = (qw[c] ^ np.uint32(0x80808080)) - shift
        for s in range(bs // S):
            fs = f[s * S // 16]
            d[st * (bs // S * b + s) + lane] = fs
            m[st * (bs // S * b + s) + lane] = np.float32(-off) * fs


@njit(inline="always", cache=True)
def decode_blocks(unpack, bs, ts, w, o, nb, y):  # type: ignore[no-untyped-def]
    """y[: nb * bs] = the nb blocks at byte o of w, dequantized (gguf-py's bits)."""
    q = np.empty(bs, np.int8)
    f = np.empty(bs // 16, np.float32)
    for b in range(nb):
        unpack(w, o + ts * b, q, 0, f, 0)
        for k in range(bs):
            y[bs * b + k] = f[k >> 4] * np.float32(q[k])
