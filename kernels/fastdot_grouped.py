"""SIMD row dots for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 in the grouped layout of kernels/repack.py.

Same contract as kernels/fastdot.py. Per full group of 8 blocks one vcvtph2ps turns
the 8 weight scales into floats and one multiply applies the activation's 8 block
scales; each block then costs a 32-byte load (or half of one, for the nibble
pairs), a mask or shift, one integer dot (vpdpbusd or its AVX2 pair) and one FMA.
The last group of a row (1-7 blocks) takes the per-block path.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.llvm_scalar import at, load_f16, load_u32
from numallm.kernels.vec import (
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
            d8 = vload_h8(w, base)
            dsc = vmul(d8, vload8(xd, b0))
            # m * sum(x), or d * sum(x) for the offset (applied below), 8 blocks at once.
            cv = vfmav(cv, vload_h8(w, base + 16) if has_min else d8, vload8(xs, b0))
            qhb = base + (32 if has_min else 16)
            qo = base + 8 * (ts - 16)
            for i in range(4):
                xo = 64 * i + 32 * b0
                a0 = vfma(a0, dot_block(w, qo, load_u32(w, qhb + 8 * i) if five else 0, 8, 2 * i, five, xq, xo),
                          vlane(dsc, 2 * i))
                a1 = vfma(a1, dot_block(w, qo, load_u32(w, qhb + 8 * i + 4) if five else 0, 8, 2 * i + 1, five, xq, xo + 32),
                          vlane(dsc, 2 * i + 1))
        c = vhsum(cv)
        g = nb - 8 * nfull
        base = o + 8 * ts * nfull
        qhb = base + (4 if has_min else 2) * g
        qo = base + (ts - 16) * g
        for j in range(g):
            b = 8 * nfull + j
            d = load_f16(w, base + 2 * j)
            qh = load_u32(w, qhb + 4 * j) if five else 0
            a0 = vfma(a0, dot_block(w, qo, qh, g, j, five, xq, 32 * b), d * at(xd, b))
            c += (load_f16(w, base + 2 * g + 2 * j) if has_min else d) * at(xs, b)
        out[r] = vhsum(vadd(a0, a1)) + (c if has_min else offset * c)


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
                a0 = vfma(a0, dot_s8(w, base + 16 + 64 * i, xq, 64 * i + 32 * b0), vlane(dsc, 2 * i))
                a1 = vfma(a1, dot_s8(w, base + 48 + 64 * i, xq, 64 * i + 32 + 32 * b0), vlane(dsc, 2 * i + 1))
        g = nb - 8 * nfull
        base = o + 272 * nfull
        for j in range(g):
            b = 8 * nfull + j
            a0 = vfma(a0, dot_s8(w, base + 2 * g + 32 * j, xq, 32 * b), load_f16(w, base + 2 * j) * at(xd, b))
        out[r] = vhsum(vadd(a0, a1))
