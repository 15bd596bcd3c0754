"""Row dot products of quantized weights with an int8-quantized activation (SIMD).

Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 live in kernels/fastdot_grouped.py (their grouped
layout); the K-quants, read in file layout, are here.

`rows_<type>(w, rb, nb, xq, xd, xs, xs16, out, r0, r1)` sets out[r] for r in [r0, r1)
to the dot product of row r (the `nb` blocks at byte r * rb of w, the file's block
layout) with x given as actq.quantize_x made it. The row loop lives inside each
kernel because a Numba call per row costs atomic reference counting of every array
argument, which halved the speed on rows of a few KiB. Every weight block becomes an integer dot product of its quants (as
unsigned bytes) with 32 int8 activations (vec.dot_*), scaled in float32 by the
weight's and the activation's block scales; offsets (Q4_0's -8, ...) and mins are
applied once per block through the activation's block sums instead of per element.
Two accumulators per row hide the latency of the float adds.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.fastdot_grouped import rows_q8_0, rows_q45
from numallm.kernels.llvm_scalar import at, load_f16
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
from numallm.kernels.vec import (
    dot_planes,
    k_scales8,
    q3k_scales8,
    vadd,
    vfma,
    vfmai,
    vfmav,
    vhsum,
    vhsum16,
    vlane,
    vload8,
    vload_b8,
    vmul,
    vpair,
    vsplat,
    vzero,
    vzero16,
)
from numallm.kernels.vec_tile import dot_planes64, vadd16, vfmaiv16, vquad16
from numba import njit


@njit(nogil=True, cache=True)
def rows_q23_k(w, rb, nb, three, xq, xd, xs16, out, r0, r1):  # type: ignore[no-untyped-def]
    """Q2_K, and Q3_K (three). Elements 128h + 32s + j take bits 2s of byte 32h + j of
    the quants. Q2_K: scale bytes 8h + 2s (+1) cover 16 elements each, low nibble the
    scale, high nibble the min (applied through xs16). Q3_K: q + 4 = those 2 bits |
    hmask bit << 2, in 0..7, 6-bit signed scales, the -4 through xs16. Sub-blocks s and
    s + 1 go through one 64-element dot (vec_tile.dot_planes64)."""
    ts = 110 if three else 84
    hm = 1 if three else 0  # the hmask plane's bit mask and per-sub-block bit step
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero16()
        a1 = vzero16()
        cv = vzero()
        for b in range(nb):
            p = o + ts * b
            d = vsplat(load_f16(w, p + (108 if three else 80)))
            for h in range(2):
                xs8 = vload8(xs16, 16 * b + 8 * h)
                if three:
                    sc = vmul(q3k_scales8(w, p + 96, h), d)
                    cv = vfmav(cv, sc, xs8)
                else:
                    sc = vmul(vload_b8(w, p + 8 * h, 1), d)
                    cv = vfmav(cv, vmul(vload_b8(w, p + 8 * h, 2), vsplat(load_f16(w, p + 82))), xs8)
                xb = 8 * b + 4 * h
                q = p + (32 if three else 16) + 32 * h
                # High plane: Q3_K's hmask bit 4h + s as bit 2; none for Q2_K (mask 0).
                a0 = vfmaiv16(a0, dot_planes64(w, q, 0, 3, p, 4 * h, hm, 2, 0, 2, hm, xq, 32 * xb),
                              vquad16(sc, 0, at(xd, xb), at(xd, xb + 1)))
                a1 = vfmaiv16(a1, dot_planes64(w, q, 4, 3, p, 4 * h + 2, hm, 2, 0, 2, hm, xq, 32 * xb + 64),
                              vquad16(sc, 2, at(xd, xb + 2), at(xd, xb + 3)))
        out[r] = vhsum16(vadd16(a0, a1)) - (np.float32(4.0) if three else np.float32(1.0)) * vhsum(cv)


@njit(nogil=True, cache=True)
def rows_q45_k(w, rb, nb, five, xq, xd, xs, out, r0, r1):  # type: ignore[no-untyped-def]
    """Q4_K, and Q5_K (five: a 5th bit from the qh plane). The 8 scales and mins of a
    super-block are unpacked as vectors (k_scales8): one multiply makes all
    8 sub-block factors d * sc * xd and one FMA applies the 8 min terms."""
    ts = 176 if five else 144
    qs = 48 if five else 16
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        a1 = vzero()
        cv = vzero()
        for b in range(nb):
            p = o + ts * b
            xb = 8 * b
            dsc = vmul(vmul(k_scales8(w, p + 4, False), vsplat(load_f16(w, p))), vload8(xd, xb))
            cv = vfmav(cv, vmul(k_scales8(w, p + 4, True), vsplat(load_f16(w, p + 2))), vload8(xs, xb))
            for s in range(0, 8, 2):
                q = p + qs + 16 * s
                a0 = vfma(a0, dot_planes(w, q, 0, 15, p + 16, s, 1 if five else 0, 4, xq, 32 * (xb + s)),
                          vlane(dsc, s))
                a1 = vfma(a1, dot_planes(w, q, 4, 15, p + 16, s + 1, 1 if five else 0, 4, xq, 32 * (xb + s + 1)),
                          vlane(dsc, s + 1))
        out[r] = vhsum(vadd(a0, a1)) - vhsum(cv)


@njit(nogil=True, cache=True)
def rows_q6_k(w, rb, nb, xq, xd, xs, xs16, out, r0, r1):  # type: ignore[no-untyped-def]
    # Elements 128h + 32g + j: low nibble plane ql[64h + 32(g&1) + j] >> 4(g>>1), two high
    # bits qh[32h + j] >> 2g; q - 32 with the -32 through xs16; int8 scales per 16,
    # converted 8 at a time (vload_b8) and scaled by d once per half super-block.
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        a1 = vzero()
        cv = vzero()
        for b in range(nb):
            p = o + 210 * b
            d = vsplat(load_f16(w, p + 208))
            for h in range(2):
                sc = vmul(vload_b8(w, p + 192 + 8 * h, 0), d)
                cv = vfmav(cv, sc, vload8(xs16, 16 * b + 8 * h))
                for g in range(0, 4, 2):
                    xb = 8 * b + 4 * h + g
                    v0 = dot_planes(w, p + 64 * h, 4 * (g >> 1), 15, p + 128 + 32 * h, 2 * g, 3, 4, xq, 32 * xb)
                    v1 = dot_planes(w, p + 64 * h + 32, 4 * (g >> 1), 15, p + 128 + 32 * h, 2 * g + 2, 3, 4, xq, 32 * xb + 32)
                    a0 = vfmai(a0, v0, vmul(vpair(sc, g), vsplat(at(xd, xb))))
                    a1 = vfmai(a1, v1, vmul(vpair(sc, g + 1), vsplat(at(xd, xb + 1))))
        out[r] = vhsum(vadd(a0, a1)) - np.float32(32.0) * vhsum(cv)


@njit(nogil=True, cache=True)
def rows_dot(qcode, w, rb, nb, xq, xd, xs, xs16, out, r0, r1):  # type: ignore[no-untyped-def]
    """out[r] = row r . x for r in [r0, r1); dispatch on the GGML type code (quantized types)."""
    if qcode == Q4_0:
        rows_q45(w, rb, nb, False, False, xq, xd, xs, out, r0, r1)
    elif qcode == Q4_1:
        rows_q45(w, rb, nb, True, False, xq, xd, xs, out, r0, r1)
    elif qcode == Q5_0:
        rows_q45(w, rb, nb, False, True, xq, xd, xs, out, r0, r1)
    elif qcode == Q5_1:
        rows_q45(w, rb, nb, True, True, xq, xd, xs, out, r0, r1)
    elif qcode == Q8_0:
        rows_q8_0(w, rb, nb, xq, xd, out, r0, r1)
    elif qcode == Q2_K:
        rows_q23_k(w, rb, nb, False, xq, xd, xs16, out, r0, r1)
    elif qcode == Q3_K:
        rows_q23_k(w, rb, nb, True, xq, xd, xs16, out, r0, r1)
    elif qcode == Q4_K:
        rows_q45_k(w, rb, nb, False, xq, xd, xs, out, r0, r1)
    elif qcode == Q5_K:
        rows_q45_k(w, rb, nb, True, xq, xd, xs, out, r0, r1)
    elif qcode == Q6_K:
        rows_q6_k(w, rb, nb, xq, xd, xs, xs16, out, r0, r1)
