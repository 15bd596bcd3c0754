"""Rows of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 in the grouped layout (families/q4_q8/grouped.py):
SIMD row dots, the int8 GEMM's unpacker (unpack_q45) and Q8_0's decoder.

The row dots' contract is that of families/kquants/rows.py. Per full group of 8 blocks one vcvtph2ps turns
the 8 weight scales into floats and one multiply applies the activation's 8 block
scales; each block then costs a 32-byte load (or half of one, for the nibble
pairs), a mask or shift, one integer dot (vpdpbusd or its AVX2 pair) and one FMA.
The last group of a row (1-7 blocks) takes the per-block path.

rows_q45_x4/_x2 do the same for 4 or 2 tokens per pass over a row (drivers/rows.matmul,
for Q5_0 and Q5_1: the other three types multiply batches in tiles, families/q4_q8/tiles.py): each token keeps its own accumulators and runs exactly the single-token
steps below (the same inline helpers, in the same order), so its result is
bit-identical to rows_q45/rows_q8_0; the tokens' steps on a block share one load and
unpack of the weight, which LLVM merges once the helpers are inlined and their loops
unrolled. (The 4-token kernels written as two calls of the pair helpers below ran
15% slower: LLVM no longer merged the pairs' loads.)
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.simd.scalar import at, bits_to_bytes, field4, load_f16, load_u32
from numallm.kernels.simd.vec import (
    dot_planes,
    dot_q4,
    dot_q5,
    dot_q5p,
    dot_s8,
    vadd,
    vfma,
    vfmav,
    vhsum,
    vlane,
    vload8,
    vload_h8,
    vmul,
    vzero,
)
from numba import njit


@njit(inline="always", cache=True)
def dot_block(w, qo, qh, g, j, five, xq, xo):  # type: ignore[no-untyped-def]
    """Integer dot of block j of a Q4/Q5 group of g blocks (quants from byte qo, the
    block's high bits qh if five) with xq[xo:xo+32]."""
    p = qo + 32 * (j >> 1)
    if j < g - (g & 1):
        if five:
            return dot_q5p(w, p, 4 * (j & 1), qh, xq, xo)
        return dot_planes(w, p, 4 * (j & 1), 15, p, 0, 0, 0, xq, xo)
    if five:
        return dot_q5(w, p, qh, xq, xo)
    return dot_q4(w, p, xq, xo)


@njit(inline="always", cache=True)
def q45_scales(w, base, has_min, xd, xs, b0, cv):  # type: ignore[no-untyped-def]
    """The 8 block factors d * xd of a full group, and cv plus m * xs (or d * xs for
    the offset, applied at the end), 8 blocks at once."""
    d8 = vload_h8(w, base)
    cv = vfmav(cv, vload_h8(w, base + 16) if has_min else d8, vload8(xs, b0))
    return vmul(d8, vload8(xd, b0)), cv


@njit(inline="always", cache=True)
def q45_pair(w, qo, qhb, i, five, xq, xo, dsc, a0, a1):  # type: ignore[no-untyped-def]
    """Blocks 2i (into a0) and 2i+1 (into a1) of a full group."""
    a0 = vfma(a0, dot_block(w, qo, load_u32(w, qhb + 8 * i) if five else 0, 8, 2 * i, five, xq, xo),
              vlane(dsc, 2 * i))
    a1 = vfma(a1, dot_block(w, qo, load_u32(w, qhb + 8 * i + 4) if five else 0, 8, 2 * i + 1, five, xq, xo + 32),
              vlane(dsc, 2 * i + 1))
    return a0, a1


@njit(inline="always", cache=True)
def q45_tail_block(w, base, qo, qhb, g, j, b, has_min, five, xq, xd, xs, xb, a0, c):  # type: ignore[no-untyped-def]
    """Block j of the last group (g blocks), block b of the row (block xb + b of the
    activation): into a0 and c."""
    d = load_f16(w, base + 2 * j)
    qh = load_u32(w, qhb + 4 * j) if five else 0
    a0 = vfma(a0, dot_block(w, qo, qh, g, j, five, xq, 32 * (xb + b)), d * at(xd, xb + b))
    return a0, c + (load_f16(w, base + 2 * g + 2 * j) if has_min else d) * at(xs, xb + b)


@njit(inline="always", cache=True)
def q45_result(has_min, offset, a0, a1, c):  # type: ignore[no-untyped-def]
    return vhsum(vadd(a0, a1)) + (c if has_min else offset * c)


@njit(nogil=True, cache=True)
def rows_q45(w, rb, nb, has_min, five, xq, xd, xs, out, r0, r1):  # type: ignore[no-untyped-def]
    """Q4_0, Q4_1 (has_min: d*q + m), Q5_0 (five: a 5th bit), Q5_1 (both); without a min
    the quants are offset by -8 (Q4_0) or -16 (Q5_0)."""
    ts = 18 + 2 * has_min + 4 * five
    offset = np.float32(0.0 if has_min else (-16.0 if five else -8.0))
    nfull = nb // 8
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        a1 = vzero()
        cv = vzero()
        for gi in range(nfull):
            base = o + 8 * ts * gi
            b0 = 8 * gi
            dsc, cv = q45_scales(w, base, has_min, xd, xs, b0, cv)
            qhb = base + (32 if has_min else 16)
            qo = base + 8 * (ts - 16)
            for i in range(4):
                a0, a1 = q45_pair(w, qo, qhb, i, five, xq, 64 * i + 32 * b0, dsc, a0, a1)
        c = vhsum(cv)
        g = nb - 8 * nfull
        base = o + 8 * ts * nfull
        qhb = base + (4 if has_min else 2) * g
        qo = base + (ts - 16) * g
        for j in range(g):
            a0, c = q45_tail_block(w, base, qo, qhb, g, j, 8 * nfull + j, has_min, five, xq, xd, xs, 0, a0, c)
        out[r] = q45_result(has_min, offset, a0, a1, c)


@njit(inline="always", cache=True)
def q45_group_pair(w, base, ts, has_min, five, xq, xd, xs, b0, xa, xb, acc):  # type: ignore[no-untyped-def]
    """The full group at byte base (its first block b0) for two tokens whose blocks start
    at block xa and xb; acc = their accumulators (a00, a01, a10, a11, cv0, cv1). Each
    token runs rows_q45's steps in rows_q45's order."""
    a00, a01, a10, a11, cv0, cv1 = acc
    dsc0, cv0 = q45_scales(w, base, has_min, xd, xs, xa + b0, cv0)
    dsc1, cv1 = q45_scales(w, base, has_min, xd, xs, xb + b0, cv1)
    qhb = base + (32 if has_min else 16)
    qo = base + 8 * (ts - 16)
    for i in range(4):
        xo = 64 * i + 32 * b0
        a00, a01 = q45_pair(w, qo, qhb, i, five, xq, xo + 32 * xa, dsc0, a00, a01)
        a10, a11 = q45_pair(w, qo, qhb, i, five, xq, xo + 32 * xb, dsc1, a10, a11)
    return a00, a01, a10, a11, cv0, cv1


@njit(inline="always", cache=True)
def q45_finish_pair(w, o, nb, ts, has_min, five, offset, xq, xd, xs, xa, xb, acc):  # type: ignore[no-untyped-def]
    """The last group (1-7 blocks) of the row at byte o for the token pair of acc (see
    q45_group_pair), then the pair's two results."""
    a00, a01, a10, a11, cv0, cv1 = acc
    c0, c1 = vhsum(cv0), vhsum(cv1)
    nfull = nb // 8
    g = nb - 8 * nfull
    base = o + 8 * ts * nfull
    qhb = base + (4 if has_min else 2) * g
    qo = base + (ts - 16) * g
    for j in range(g):
        b = 8 * nfull + j
        a00, c0 = q45_tail_block(w, base, qo, qhb, g, j, b, has_min, five, xq, xd, xs, xa, a00, c0)
        a10, c1 = q45_tail_block(w, base, qo, qhb, g, j, b, has_min, five, xq, xd, xs, xb, a10, c1)
    return q45_result(has_min, offset, a00, a01, c0), q45_result(has_min, offset, a10, a11, c1)


@njit(inline="always", cache=True)
def _zeros6():  # type: ignore[no-untyped-def]
    return (vzero(), vzero(), vzero(), vzero(), vzero(), vzero())


@njit(nogil=True, cache=True)
def rows_q45_x2(w, rb, nb, has_min, five, xq, xd, xs, out, t0, r0, r1):  # type: ignore[no-untyped-def]
    """rows_q45_x4 for the two tokens t0 and t0+1 (a batch's remainder after its fours)."""
    ts = 18 + 2 * has_min + 4 * five
    offset = np.float32(0.0 if has_min else (-16.0 if five else -8.0))
    xa, xb = t0 * nb, (t0 + 1) * nb
    for r in range(r0, r1):
        o = r * rb
        p01 = _zeros6()
        for gi in range(nb // 8):
            p01 = q45_group_pair(w, o + 8 * ts * gi, ts, has_min, five, xq, xd, xs, 8 * gi, xa, xb, p01)
        out[t0, r], out[t0 + 1, r] = q45_finish_pair(w, o, nb, ts, has_min, five, offset, xq, xd, xs, xa, xb, p01)


@njit(nogil=True, cache=True)
def rows_q45_x4(w, rb, nb, has_min, five, xq, xd, xs, out, t0, r0, r1):  # type: ignore[no-untyped-def]
    """rows_q45 for tokens t0..t0+3: xq, xd, xs are quantize_rows' 2-D arrays flattened
    (token t's blocks start at block t * nb; no per-token slices, whose reference
    counting per call cost as much as a tile's work), out is [tokens, rows]."""
    ts = 18 + 2 * has_min + 4 * five
    offset = np.float32(0.0 if has_min else (-16.0 if five else -8.0))
    nfull = nb // 8
    xb0, xb1, xb2, xb3 = t0 * nb, (t0 + 1) * nb, (t0 + 2) * nb, (t0 + 3) * nb
    for r in range(r0, r1):
        o = r * rb
        a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = vzero()
        cv0 = cv1 = cv2 = cv3 = vzero()
        for gi in range(nfull):
            base = o + 8 * ts * gi
            b0 = 8 * gi
            dsc0, cv0 = q45_scales(w, base, has_min, xd, xs, xb0 + b0, cv0)
            dsc1, cv1 = q45_scales(w, base, has_min, xd, xs, xb1 + b0, cv1)
            dsc2, cv2 = q45_scales(w, base, has_min, xd, xs, xb2 + b0, cv2)
            dsc3, cv3 = q45_scales(w, base, has_min, xd, xs, xb3 + b0, cv3)
            qhb = base + (32 if has_min else 16)
            qo = base + 8 * (ts - 16)
            for i in range(4):
                xo = 64 * i + 32 * b0
                a00, a01 = q45_pair(w, qo, qhb, i, five, xq, xo + 32 * xb0, dsc0, a00, a01)
                a10, a11 = q45_pair(w, qo, qhb, i, five, xq, xo + 32 * xb1, dsc1, a10, a11)
                a20, a21 = q45_pair(w, qo, qhb, i, five, xq, xo + 32 * xb2, dsc2, a20, a21)
                a30, a31 = q45_pair(w, qo, qhb, i, five, xq, xo + 32 * xb3, dsc3, a30, a31)
        out[t0, r], out[t0 + 1, r] = q45_finish_pair(w, o, nb, ts, has_min, five, offset, xq, xd, xs, xb0, xb1,
                                                     (a00, a01, a10, a11, cv0, cv1))
        out[t0 + 2, r], out[t0 + 3, r] = q45_finish_pair(w, o, nb, ts, has_min, five, offset, xq, xd, xs, xb2, xb3,
                                                         (a20, a21, a30, a31, cv2, cv3))


@njit(inline="always", cache=True)
def q8_pair(w, base, i, xq, b0, dsc, a0, a1):  # type: ignore[no-untyped-def]
    """Blocks 2i (into a0) and 2i+1 (into a1) of a full Q8_0 group at base; b0 is the
    group's first block in xq."""
    a0 = vfma(a0, dot_s8(w, base + 16 + 64 * i, xq, 64 * i + 32 * b0), vlane(dsc, 2 * i))
    a1 = vfma(a1, dot_s8(w, base + 48 + 64 * i, xq, 64 * i + 32 + 32 * b0), vlane(dsc, 2 * i + 1))
    return a0, a1


@njit(inline="always", cache=True)
def q8_tail_block(w, base, g, j, b, xq, xd, xb, a0):  # type: ignore[no-untyped-def]
    return vfma(a0, dot_s8(w, base + 2 * g + 32 * j, xq, 32 * (xb + b)), load_f16(w, base + 2 * j) * at(xd, xb + b))


@njit(nogil=True, cache=True)
def rows_q8_0(w, rb, nb, xq, xd, out, r0, r1):  # type: ignore[no-untyped-def]
    nfull = nb // 8
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        a1 = vzero()
        for gi in range(nfull):
            base = o + 272 * gi
            b0 = 8 * gi
            dsc = vmul(vload_h8(w, base), vload8(xd, b0))
            for i in range(4):
                a0, a1 = q8_pair(w, base, i, xq, b0, dsc, a0, a1)
        g = nb - 8 * nfull
        base = o + 272 * nfull
        for j in range(g):
            a0 = q8_tail_block(w, base, g, j, 8 * nfull + j, xq, xd, 0, a0)
        out[r] = vhsum(vadd(a0, a1))


@njit(nogil=True, cache=True)
def decode_q8_0(w, o, nb, y):  # type: ignore[no-untyped-def]
    # Grouped layout (kernels/families/q4_q8/grouped.py): [d x g] [32 int8 x g].
    for g0 in range(0, nb, 8):
        g = min(8, nb - g0)
        base = o + 34 * g0
        for j in range(g):
            d = load_f16(w, base + 2 * j)
            for e in range(32):
                y[32 * (g0 + j) + e] = d * np.float32(np.int8(at(w, base + 2 * g + 32 * j + e)))


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
            # kernels/families/q4_q8/grouped.py: pairs of blocks share 32 bytes (low, high nibbles); an
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
