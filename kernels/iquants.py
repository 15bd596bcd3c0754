"""The i-quants (IQ1_S-IQ4_XS), the ternary types (TQ1_0, TQ2_0) and MXFP4: blocks ->
int8 values with a float32 factor per 16 elements.

Every one of these types dequantizes, in gguf-py's reference (ggml's), as
factor * value per element, where value is a small integer (a grid entry with its
sign, a 4-bit lookup, a ternary digit) and factor the same for 16 elements at least:
`unpack_<type>(w, p, q, qo, f, fo)` writes the block at byte p of w as
q[qo : qo + block] (int8) and f[fo : fo + block // 16] (float32), each factor
computed in gguf-py's float order, so that f * float32(q) is its dequantized value
bit for bit. IQ1_S and IQ1_M add a delta of +-1/8 to their grid values: their q is
8 * grid +- 1 and f carries the 1/8 (both products are the same real number, so
rounded alike). The dot products multiply q by the int8 activation exactly, then
by f and the activation's scale.

Tables: kernels/iq_tables.py (from gguf-py). Block layouts: ggml-common.h.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.iq_tables import (
    IQ1S_GRID,
    IQ2S_GRID,
    IQ2XS_GRID,
    IQ2XXS_GRID,
    IQ3S_GRID,
    IQ3XXS_GRID,
    KSIGNS,
)
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from llvmlite import ir
from numallm.kernels.by_type import by_type
from numallm.kernels.actq import _absmax16, _round16, quantize_rows
from numallm.kernels.iq_simd import (
    LUT_IQ4NL,
    LUT_MXFP4,
    dot_grid1,
    dot_grid4,
    dot_grid8,
    dot_lut4,
    dot_tq1,
    dot_tq2,
    izero,
    lut4_store,
    vimadd,
    vimadd2,
)
from numallm.kernels.llvm_scalar import at, half_to_float, load_f16, load_u32
from numallm.kernels.vec import I32, V8F32, _fma, _splat, dot_s8, f32x8, i32x8, vfma, vhsum, vzero
from numba import njit, types
from numba.extending import intrinsic

# GGML type codes (gguf.GGMLQuantizationType).
IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, IQ1_M = 16, 17, 18, 19, 20, 21, 22, 23, 29
TQ1_0, TQ2_0, MXFP4 = 34, 35, 39
IQ_CODES = (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4)
# The types llama.cpp multiplies with q8_0 activations (blocks of 32); the others
# take q8_K (one scale per 256).
Q8_0_PAIRED = (IQ4_NL, MXFP4)

# (block size, bytes per block) by code, as qcodes.geometry (merged there once the
# types are records of their own).
_GEOMETRY = np.zeros((max(IQ_CODES) + 1, 2), np.int64)
for _code in IQ_CODES:
    _GEOMETRY[_code] = GGML_QUANT_SIZES[GGMLQuantizationType(_code)]


@njit(inline="always", cache=True)
def geometry(qcode):  # type: ignore[no-untyped-def]
    return _GEOMETRY[qcode, 0], _GEOMETRY[qcode, 1]


_HALF = np.float32(0.5)
_QUARTER = np.float32(0.25)
_EIGHTH = np.float32(0.125)
# ggml_e8m0_to_fp32_half of every exponent byte, as gguf-py computes it.
_E8M0_HALF = np.ascontiguousarray(
    __import__("gguf").quants.MXFP4.e8m0_to_fp32_half(np.arange(256, dtype=np.uint8)), np.float32)


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


@njit(nogil=True, cache=True)
def unpack_iq2_xs(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 74 bytes: d, 32 uint16 (9-bit grid index, 7 sign bits) per 8 elements, 8 bytes of
    # two 4-bit scales (per 16 elements).
    d = load_f16(w, p)
    for ib in range(8):
        sc = np.uint32(at(w, p + 66 + ib))
        f[fo + 2 * ib] = _iq2_db(d, sc & np.uint32(15))
        f[fo + 2 * ib + 1] = _iq2_db(d, sc >> np.uint32(4))
    for g in range(32):
        v = _u16(w, p + 2 + 2 * g)
        _signed8(q, qo + 8 * g, IQ2XS_GRID, v & np.uint32(511), _ksigns(v >> np.uint32(9)))


@njit(nogil=True, cache=True)
def unpack_iq2_s(w, p, q, qo, f, fo):  # type: ignore[no-untyped-def]
    # 82 bytes: d, 32 low index bytes, 32 sign bytes, 8 bytes of 2 high index bits per
    # group, 8 bytes of two 4-bit scales.
    d = load_f16(w, p)
    for ib in range(8):
        sc = np.uint32(at(w, p + 74 + ib))
        f[fo + 2 * ib] = _iq2_db(d, sc & np.uint32(15))
        f[fo + 2 * ib + 1] = _iq2_db(d, sc >> np.uint32(4))
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
    d = _E8M0_HALF[at(w, p)]
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


# ---- dispatch and decoding -----------------------------------------------------------

_UNPACK = {
    IQ2_XXS: unpack_iq2_xxs, IQ2_XS: unpack_iq2_xs, IQ2_S: unpack_iq2_s, IQ3_XXS: unpack_iq3_xxs,
    IQ3_S: unpack_iq3_s, IQ1_S: unpack_iq1_s, IQ1_M: unpack_iq1_m, IQ4_NL: unpack_iq4_nl,
    IQ4_XS: unpack_iq4_xs, MXFP4: unpack_mxfp4, TQ1_0: unpack_tq1_0, TQ2_0: unpack_tq2_0,
}


def _unpack_impl(fn):  # type: ignore[no-untyped-def]
    return lambda qc, w, p, q, qo, f, fo: fn(w, p, q, qo, f, fo)


# unpack_block(qcode, w, p, q, qo, f, fo): the block of type qcode at byte p, see the
# module docstring; kernels/by_type.py compiles only the types a caller reaches.
unpack_block = by_type("unpack_block", {code: _unpack_impl(fn) for code, fn in _UNPACK.items()})


@njit(inline="always", cache=True)
def unpack_words(qcode, w, o, nb, q32, d, m, st, lane, S):  # type: ignore[no-untyped-def]
    """The int8 GEMM's form of nb blocks (kernels/unpack.py: word c of the row's unsigned
    quants to q32[st * c + lane], a d and m per S elements): q + 128 (the sign bit
    flipped), d the factor, m = -128 d."""
    bs, ts = geometry(qcode)
    q = np.empty(bs, np.int8)
    f = np.empty(bs // 16, np.float32)
    qw = q.view(np.uint32)
    for b in range(nb):
        unpack_block(qcode, w, o + ts * b, q, 0, f, 0)
        for c in range(bs // 4):
            q32[st * (bs // 4 * b + c) + lane] = qw[c] ^ np.uint32(0x80808080)
        for s in range(bs // S):
            fs = f[s * S // 16]
            d[st * (bs // S * b + s) + lane] = fs
            m[st * (bs // S * b + s) + lane] = np.float32(-128.0) * fs


@njit(nogil=True, cache=True)
def decode_iq(qcode, w, o, nb, y):  # type: ignore[no-untyped-def]
    """y[: nb * block] = the nb blocks at byte o of w, dequantized (gguf-py's bits)."""
    bs, ts = geometry(qcode)
    q = np.empty(bs, np.int8)
    f = np.empty(bs // 16, np.float32)
    for b in range(nb):
        unpack_block(qcode, w, o + ts * b, q, 0, f, 0)
        for k in range(bs):
            y[bs * b + k] = f[k >> 4] * np.float32(q[k])


# ---- activations -----------------------------------------------------------------------

@njit(nogil=True, cache=True)
def quantize_x_k(x, xq, xd, xs, xs16):  # type: ignore[no-untyped-def]
    """llama.cpp's q8_K (quantize_row_q8_K_ref): per 256 elements iscale = 127 / max|x|,
    q = rint(iscale * x), d = 1 / iscale. The arrays are actq.quantize_x's: xd gets d once
    per 32 elements (8 copies), xs and xs16 d times the sums per 32 and per 16, so every
    kernel reads both activation kinds alike. llama.cpp divides by the signed extreme
    (-127 / x_max): that flips the sign of q and d together, so every product d * q,
    and every dot product, is the same."""
    for b in range(x.shape[0] // 256):
        o = 256 * b
        amax = _absmax16(x, o)
        for c in range(1, 16):
            amax = max(amax, _absmax16(x, o + 16 * c))
        iscale = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        d = np.float32(1.0) / iscale if amax > 0 else np.float32(0.0)
        for c in range(8):
            s0 = _round16(x, o + 32 * c, iscale, xq, o + 32 * c)
            s1 = _round16(x, o + 32 * c + 16, iscale, xq, o + 32 * c + 16)
            xd[8 * b + c] = d
            xs16[16 * b + 2 * c] = d * np.float32(s0)
            xs16[16 * b + 2 * c + 1] = d * np.float32(s1)
            xs[8 * b + c] = d * np.float32(s0 + s1)


@njit(nogil=True, cache=True)
def quantize_rows_for(qcode, X):  # type: ignore[no-untyped-def]
    """(xq [n, cols] int8, xd [n, cols // 32] float32) of every row of X, as llama.cpp
    quantizes activations for this weight type (its vec_dot_type): q8_0 blocks of 32
    for IQ4_NL and MXFP4 (kernels/actq.py), q8_K for the others."""
    n, cols = X.shape
    if qcode == IQ4_NL or qcode == MXFP4:
        xq, xd, xs, xs16 = quantize_rows(X)
        return xq, xd
    xf = np.ascontiguousarray(X).reshape(-1)
    xq = np.empty(n * cols, np.int8)
    xd = np.empty(n * cols // 32, np.float32)
    quantize_x_k(xf, xq, xd, np.empty(n * cols // 32, np.float32), np.empty(n * cols // 16, np.float32))
    return xq.reshape((n, cols)), xd.reshape((n, cols // 32))


# ---- dot products ------------------------------------------------------------------------

@intrinsic
def vfma2(typingctx, acc, v, s0, s1):  # type: ignore[no-untyped-def]
    """acc + float(v) * [s0 x 4, s1 x 4]: the I32x8 of a 32-element dot (lanes 0-3 the
    first 16 elements) scaled per 16 elements."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        a, vi, x0, x1 = args
        lo = _splat(builder, x0, V8F32)
        hi = _splat(builder, x1, V8F32)
        s = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, 8), [0, 1, 2, 3, 8, 9, 10, 11]))
        return _fma(builder, builder.sitofp(vi, V8F32), s, a)
    return f32x8(f32x8, i32x8, types.float32, types.float32), codegen


@njit(inline="always", cache=True)
def _dot_chunks(acc, q, qo, f, fo, xq, xo, xd, xdo, n32):  # type: ignore[no-untyped-def]
    """acc + the n32 chunks of 32 int8 values at q[qo] (factors f[fo] per 16) times the
    activation's at xq[xo] (scales xd[xdo] per 32)."""
    for c in range(n32):
        xdc = at(xd, xdo + c)
        acc = vfma2(acc, dot_s8(q, qo + 32 * c, xq, xo + 32 * c),
                    at(f, fo + 2 * c) * xdc, at(f, fo + 2 * c + 1) * xdc)
    return acc


@njit(inline="always", cache=True)
def _dot_chunks4(q, qo, f, fo, xq, xd, t, cols, out, r):  # type: ignore[no-untyped-def]
    """out[t:t+4, r] = the row at q[qo] (factors f[fo]) . tokens t..t+3 of the flat xq, xd:
    each weight chunk loaded once for the four."""
    a0 = vzero()
    a1 = vzero()
    a2 = vzero()
    a3 = vzero()
    x0 = t * cols
    d0 = t * cols // 32
    m = cols // 32
    for c in range(m):
        f0 = at(f, fo + 2 * c)
        f1 = at(f, fo + 2 * c + 1)
        qc = qo + 32 * c
        xc = x0 + 32 * c
        a0 = vfma2(a0, dot_s8(q, qc, xq, xc), f0 * at(xd, d0 + c), f1 * at(xd, d0 + c))
        a1 = vfma2(a1, dot_s8(q, qc, xq, xc + cols), f0 * at(xd, d0 + m + c), f1 * at(xd, d0 + m + c))
        a2 = vfma2(a2, dot_s8(q, qc, xq, xc + 2 * cols), f0 * at(xd, d0 + 2 * m + c), f1 * at(xd, d0 + 2 * m + c))
        a3 = vfma2(a3, dot_s8(q, qc, xq, xc + 3 * cols), f0 * at(xd, d0 + 3 * m + c), f1 * at(xd, d0 + 3 * m + c))
    out[t, r] = vhsum(a0)
    out[t + 1, r] = vhsum(a1)
    out[t + 2, r] = vhsum(a2)
    out[t + 3, r] = vhsum(a3)


@njit(nogil=True, cache=True)
def rows_iq4_nl(w, rb, nb, mx, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """IQ4_NL, or MXFP4 (mx): per block of 32 one table dot and one scale."""
    ts = 17 if mx else 18
    for r in range(r0, r1):
        acc = vzero()
        for b in range(nb):
            p = r * rb + ts * b
            if mx:
                acc = vfma(acc, dot_lut4(w, p + 1, xq, 32 * b, LUT_MXFP4), _E8M0_HALF[at(w, p)] * at(xd, b))
            else:
                acc = vfma(acc, dot_lut4(w, p + 2, xq, 32 * b, LUT_IQ4NL), load_f16(w, p) * at(xd, b))
        out[r] = vhsum(acc)


@njit(nogil=True, cache=True)
def rows_iq4_xs(w, rb, nb, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """IQ4_XS: a super-block's 8 table dots summed in integers, each times its 6-bit
    scale minus 32, then one float scale d * xd (q8_K: one xd per 256)."""
    for r in range(r0, r1):
        acc = vzero()
        for b in range(nb):
            p = r * rb + 136 * b
            sh = _u16(w, p + 2)
            isum = izero()
            for ib in range(8):
                lo = (np.uint32(at(w, p + 4 + ib // 2)) >> np.uint32(4 * (ib % 2))) & np.uint32(15)
                ls = np.int32(lo | (((sh >> np.uint32(2 * ib)) & np.uint32(3)) << np.uint32(4))) - 32
                isum = vimadd(isum, dot_lut4(w, p + 8 + 16 * ib, xq, 256 * b + 32 * ib, LUT_IQ4NL), ls)
            acc = vfma(acc, isum, load_f16(w, p) * at(xd, 8 * b))
        out[r] = vhsum(acc)


@njit(inline="always", cache=True)
def _ks4(a):  # type: ignore[no-untyped-def]
    """The 4 sign bytes of the 4 x 7-bit ksigns indices in the low 28 bits of a, as a uint32."""
    return (np.uint32(KSIGNS[a & np.uint32(127)]) | (np.uint32(KSIGNS[(a >> np.uint32(7)) & np.uint32(127)]) << np.uint32(8))
            | (np.uint32(KSIGNS[(a >> np.uint32(14)) & np.uint32(127)]) << np.uint32(16))
            | (np.uint32(KSIGNS[(a >> np.uint32(21)) & np.uint32(127)]) << np.uint32(24)))


@njit(inline="always", cache=True)
def _byte(v, k):  # type: ignore[no-untyped-def]
    return (v >> np.uint32(8 * k)) & np.uint32(255)


@njit(nogil=True, cache=True)
def rows_iq2_xxs(w, rb, nb, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """IQ2_XXS: per 32 elements one grid dot (4 rows, signs from ksigns) times its
    integer scale 2 ls + 1; per super-block one float scale d * xd / 8."""
    for r in range(r0, r1):
        acc = vzero()
        for b in range(nb):
            p = r * rb + 66 * b
            isum = izero()
            for ib in range(8):
                a0 = load_u32(w, p + 2 + 8 * ib)
                a1 = load_u32(w, p + 6 + 8 * ib)
                v = dot_grid8(IQ2XXS_GRID, _byte(a0, 0), _byte(a0, 1), _byte(a0, 2), _byte(a0, 3), _ks4(a1),
                              xq, 256 * b + 32 * ib)
                isum = vimadd(isum, v, np.int32(2 * (a1 >> np.uint32(28)) + 1))
            acc = vfma(acc, isum, load_f16(w, p) * at(xd, 8 * b) * _EIGHTH)
        out[r] = vhsum(acc)


@njit(inline="always", cache=True)
def _xs_group(w, p, g, grid_is_s):  # type: ignore[no-untyped-def]
    """(grid index, sign byte) of group g (8 elements) of an IQ2_XS / IQ2_S block at p."""
    if grid_is_s:
        hi = (np.uint32(at(w, p + 66 + g // 4)) >> np.uint32(2 * (g % 4))) & np.uint32(3)
        return np.uint32(at(w, p + 2 + g)) | (hi << np.uint32(8)), np.uint32(at(w, p + 34 + g))
    v = _u16(w, p + 2 + 2 * g)
    return v & np.uint32(511), np.uint32(KSIGNS[v >> np.uint32(9)])


@njit(nogil=True, cache=True)
def rows_iq2_xs(w, rb, nb, two_s, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """IQ2_XS, and IQ2_S (two_s): grid dots per 32, each half of 16 times its own
    integer scale 2 ls + 1."""
    ts = 82 if two_s else 74
    so = 74 if two_s else 66
    for r in range(r0, r1):
        acc = vzero()
        for b in range(nb):
            p = r * rb + ts * b
            isum = izero()
            for ib in range(8):
                g0, s0 = _xs_group(w, p, 4 * ib, two_s)
                g1, s1 = _xs_group(w, p, 4 * ib + 1, two_s)
                g2, s2 = _xs_group(w, p, 4 * ib + 2, two_s)
                g3, s3 = _xs_group(w, p, 4 * ib + 3, two_s)
                signs = s0 | (s1 << np.uint32(8)) | (s2 << np.uint32(16)) | (s3 << np.uint32(24))
                if two_s:
                    v = dot_grid8(IQ2S_GRID, g0, g1, g2, g3, signs, xq, 256 * b + 32 * ib)
                else:
                    v = dot_grid8(IQ2XS_GRID, g0, g1, g2, g3, signs, xq, 256 * b + 32 * ib)
                sc = np.int32(at(w, p + so + ib))
                isum = vimadd2(isum, v, 2 * (sc & 15) + 1, 2 * (sc >> 4) + 1)
            acc = vfma(acc, isum, load_f16(w, p) * at(xd, 8 * b) * _EIGHTH)
        out[r] = vhsum(acc)


@njit(nogil=True, cache=True)
def rows_iq3_xxs(w, rb, nb, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """IQ3_XXS: per 32 elements a dot of 8 grid rows of 4, scale (2 ls + 1) / 4."""
    for r in range(r0, r1):
        acc = vzero()
        for b in range(nb):
            p = r * rb + 98 * b
            isum = izero()
            for ib in range(8):
                i0 = load_u32(w, p + 2 + 8 * ib)
                i1 = load_u32(w, p + 6 + 8 * ib)
                a = load_u32(w, p + 66 + 4 * ib)
                v = dot_grid4(IQ3XXS_GRID, _byte(i0, 0), _byte(i0, 1), _byte(i0, 2), _byte(i0, 3),
                              _byte(i1, 0), _byte(i1, 1), _byte(i1, 2), _byte(i1, 3), _ks4(a), xq, 256 * b + 32 * ib)
                isum = vimadd(isum, v, np.int32(2 * (a >> np.uint32(28)) + 1))
            acc = vfma(acc, isum, load_f16(w, p) * at(xd, 8 * b) * _QUARTER)
        out[r] = vhsum(acc)


@njit(inline="always", cache=True)
def _iq3s_index(w, p, ib, k, qh):  # type: ignore[no-untyped-def]
    return np.uint32(at(w, p + 2 + 8 * ib + k)) | (((qh >> np.uint32(k)) & np.uint32(1)) << np.uint32(8))


@njit(nogil=True, cache=True)
def rows_iq3_s(w, rb, nb, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """IQ3_S: per 32 elements a dot of 8 grid rows of 4 (9-bit indices), signs a bit per
    element, scale 1 + 2 ls."""
    for r in range(r0, r1):
        acc = vzero()
        for b in range(nb):
            p = r * rb + 110 * b
            isum = izero()
            for ib in range(8):
                qh = np.uint32(at(w, p + 66 + ib))
                v = dot_grid4(IQ3S_GRID, _iq3s_index(w, p, ib, 0, qh), _iq3s_index(w, p, ib, 1, qh),
                              _iq3s_index(w, p, ib, 2, qh), _iq3s_index(w, p, ib, 3, qh),
                              _iq3s_index(w, p, ib, 4, qh), _iq3s_index(w, p, ib, 5, qh),
                              _iq3s_index(w, p, ib, 6, qh), _iq3s_index(w, p, ib, 7, qh),
                              load_u32(w, p + 74 + 4 * ib), xq, 256 * b + 32 * ib)
                sc = (np.int32(at(w, p + 106 + ib // 2)) >> (4 * (ib % 2))) & 15
                isum = vimadd(isum, v, 1 + 2 * sc)
            acc = vfma(acc, isum, load_f16(w, p) * at(xd, 8 * b))
        out[r] = vhsum(acc)


_DELTA_POS = np.uint32(0x01010101)  # four int8 +1
_DELTA_NEG = np.uint32(0xFFFFFFFF)  # four int8 -1


@njit(nogil=True, cache=True)
def rows_iq1_s(w, rb, nb, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """IQ1_S: per 32 elements a dot of 8 grid + delta, times 2 ls + 1; d * xd / 8."""
    for r in range(r0, r1):
        acc = vzero()
        for b in range(nb):
            p = r * rb + 50 * b
            isum = izero()
            for ib in range(8):
                h = _u16(w, p + 34 + 2 * ib)
                i = load_u32(w, p + 2 + 4 * ib)
                v = dot_grid1(IQ1S_GRID, _byte(i, 0) | ((h & np.uint32(7)) << np.uint32(8)),
                              _byte(i, 1) | (((h >> np.uint32(3)) & np.uint32(7)) << np.uint32(8)),
                              _byte(i, 2) | (((h >> np.uint32(6)) & np.uint32(7)) << np.uint32(8)),
                              _byte(i, 3) | (((h >> np.uint32(9)) & np.uint32(7)) << np.uint32(8)),
                              _DELTA_NEG if h & np.uint32(0x8000) else _DELTA_POS, xq, 256 * b + 32 * ib)
                isum = vimadd(isum, v, np.int32(2 * ((h >> np.uint32(12)) & np.uint32(7)) + 1))
            acc = vfma(acc, isum, load_f16(w, p) * at(xd, 8 * b) * _EIGHTH)
        out[r] = vhsum(acc)


@njit(inline="always", cache=True)
def _iq1m_group(w, p, g):  # type: ignore[no-untyped-def]
    """(grid index, delta byte as uint32) of group g of the IQ1_M block at p."""
    hn = (np.uint32(at(w, p + 32 + g // 2)) >> np.uint32(4 * (g % 2))) & np.uint32(15)
    return (np.uint32(at(w, p + g)) | ((hn & np.uint32(7)) << np.uint32(8)),
            np.uint32(255) if hn & np.uint32(8) else np.uint32(1))


@njit(nogil=True, cache=True)
def rows_iq1_m(w, rb, nb, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """IQ1_M: as IQ1_S with a delta per 8 elements and a 3-bit scale per 16."""
    for r in range(r0, r1):
        acc = vzero()
        for b in range(nb):
            p = r * rb + 56 * b
            s0, s1, s2, s3 = _u16(w, p + 48), _u16(w, p + 50), _u16(w, p + 52), _u16(w, p + 54)
            dbits = ((s0 >> np.uint32(12)) | ((s1 >> np.uint32(8)) & np.uint32(0xF0))
                     | ((s2 >> np.uint32(4)) & np.uint32(0xF00)) | (s3 & np.uint32(0xF000)))
            isum = izero()
            for ib in range(8):
                g0, e0 = _iq1m_group(w, p, 4 * ib)
                g1, e1 = _iq1m_group(w, p, 4 * ib + 1)
                g2, e2 = _iq1m_group(w, p, 4 * ib + 2)
                g3, e3 = _iq1m_group(w, p, 4 * ib + 3)
                v = dot_grid1(IQ1S_GRID, g0, g1, g2, g3,
                              e0 | (e1 << np.uint32(8)) | (e2 << np.uint32(16)) | (e3 << np.uint32(24)),
                              xq, 256 * b + 32 * ib)
                s = s0 if ib < 2 else (s1 if ib < 4 else (s2 if ib < 6 else s3))
                sh = np.uint32(6 * (ib % 2))
                isum = vimadd2(isum, v, np.int32(2 * ((s >> sh) & np.uint32(7)) + 1),
                               np.int32(2 * ((s >> (sh + np.uint32(3))) & np.uint32(7)) + 1))
            acc = vfma(acc, isum, half_bits(dbits) * at(xd, 8 * b) * _EIGHTH)
        out[r] = vhsum(acc)


@njit(nogil=True, cache=True)
def rows_tq2_0(w, rb, nb, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """TQ2_0: 8 ternary dots of 32 per super-block, one scale d * xd."""
    for r in range(r0, r1):
        acc = vzero()
        for b in range(nb):
            p = r * rb + 66 * b
            isum = izero()
            for h in range(2):
                for s in range(4):
                    isum = vimadd(isum, dot_tq2(w, p + 32 * h, 2 * s, xq, 256 * b + 128 * h + 32 * s), 1)
            acc = vfma(acc, isum, load_f16(w, p + 64) * at(xd, 8 * b))
        out[r] = vhsum(acc)


@njit(nogil=True, cache=True)
def rows_tq1_0(w, rb, nb, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    """TQ1_0: 8 base-3 digit dots of 32 per super-block, one scale d * xd."""
    for r in range(r0, r1):
        acc = vzero()
        for b in range(nb):
            p = r * rb + 54 * b
            x = 256 * b
            isum = dot_tq1(w, p, 0, xq, x)
            isum = vimadd(isum, dot_tq1(w, p, 1, xq, x + 32), 1)
            isum = vimadd(isum, dot_tq1(w, p, 2, xq, x + 64), 1)
            isum = vimadd(isum, dot_tq1(w, p, 3, xq, x + 96), 1)
            isum = vimadd(isum, dot_tq1(w, p, 4, xq, x + 128), 1)
            isum = vimadd(isum, dot_tq1(w, p, 5, xq, x + 160), 1)
            isum = vimadd(isum, dot_tq1(w, p, 6, xq, x + 192), 1)
            isum = vimadd(isum, dot_tq1(w, p, 7, xq, x + 224), 1)
            acc = vfma(acc, isum, load_f16(w, p + 52) * at(xd, 8 * b))
        out[r] = vhsum(acc)


# out[r] = row r . x for r in [r0, r1) by type (kernels/by_type.py).
rows_dot_iq = by_type("rows_dot_iq", {
    IQ4_NL: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_iq4_nl(w, rb, nb, False, xq, xd, out, r0, r1),
    MXFP4: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_iq4_nl(w, rb, nb, True, xq, xd, out, r0, r1),
    IQ4_XS: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_iq4_xs(w, rb, nb, xq, xd, out, r0, r1),
    IQ2_XXS: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_iq2_xxs(w, rb, nb, xq, xd, out, r0, r1),
    IQ2_XS: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_iq2_xs(w, rb, nb, False, xq, xd, out, r0, r1),
    IQ2_S: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_iq2_xs(w, rb, nb, True, xq, xd, out, r0, r1),
    IQ3_XXS: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_iq3_xxs(w, rb, nb, xq, xd, out, r0, r1),
    IQ3_S: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_iq3_s(w, rb, nb, xq, xd, out, r0, r1),
    IQ1_S: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_iq1_s(w, rb, nb, xq, xd, out, r0, r1),
    IQ1_M: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_iq1_m(w, rb, nb, xq, xd, out, r0, r1),
    TQ2_0: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_tq2_0(w, rb, nb, xq, xd, out, r0, r1),
    TQ1_0: lambda qc, w, rb, nb, xq, xd, out, r0, r1: rows_tq1_0(w, rb, nb, xq, xd, out, r0, r1),
})


@njit(nogil=True, cache=True)
def matvec_iq(qcode, w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
    bs, ts = geometry(qcode)
    nb = cols // bs
    xq, xd = quantize_rows_for(qcode, x.reshape((1, cols)))
    rows_dot_iq(qcode, w, nb * ts, nb, xq[0], xd[0], out, r0, r1)


TILE_ROWS = 16  # rows unpacked at once for matmul: 16 * cols int8 stay in L2


@njit(nogil=True, cache=True)
def matmul_iq(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    """Every token's activations quantized once; each tile of TILE_ROWS rows unpacked
    once to int8 and factors, then dotted with every token."""
    bs, ts = geometry(qcode)
    nb = cols // bs
    rb = nb * ts
    n = X.shape[0]
    xq, xd = quantize_rows_for(qcode, X)
    fq, fd = xq.reshape(-1), xd.reshape(-1)
    qt = np.empty(TILE_ROWS * cols, np.int8)
    ft = np.empty(TILE_ROWS * cols // 16, np.float32)
    for rt in range(r0, r1, TILE_ROWS):
        nr = min(TILE_ROWS, r1 - rt)
        for i in range(nr):
            for b in range(nb):
                unpack_block(qcode, w, (rt + i) * rb + ts * b, qt, i * cols + bs * b, ft, (i * cols + bs * b) // 16)
        for i in range(nr):
            for t in range(0, n - 3, 4):
                _dot_chunks4(qt, i * cols, ft, i * cols // 16, fq, fd, t, cols, out, rt + i)
            for t in range(n - n % 4, n):
                acc = _dot_chunks(vzero(), qt, i * cols, ft, i * cols // 16, fq, t * cols, fd, t * cols // 32, cols // 32)
                out[t, rt + i] = vhsum(acc)


@njit(nogil=True, cache=True)
def get_rows_iq(qcode, w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
    bs, ts = geometry(qcode)
    nb = cols // bs
    for i in range(ids.shape[0]):
        r = ids[i]
        if r < 0 or r >= rows:
            raise IndexError("get_rows: row id out of range")
        decode_iq(qcode, w, r * nb * ts, nb, out[i])
