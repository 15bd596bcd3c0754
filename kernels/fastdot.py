"""Row dot products of quantized weights with an int8-quantized activation (SIMD).

`rows_<type>(w, rb, nb, xq, xd, xs, x16, out, r0, r1)` sets out[r] for r in [r0, r1)
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
from numba import njit

from numallm.kernels.decode import (Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0,
                                    k_scale_min, q3_k_scale)
from numallm.kernels.llvm_scalar import at, load_f16, load_u32
from numallm.kernels.vec import dot_planes, dot_q4, dot_q5, dot_s8, vadd, vfma, vfma2, vhsum, vzero


@njit(nogil=True, cache=True)
def rows_q4_0(w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        a1 = vzero()
        c = np.float32(0.0)
        for b in range(0, nb - 1, 2):
            p = o + 18 * b
            d0 = load_f16(w, p)
            d1 = load_f16(w, p + 18)
            a0 = vfma(a0, dot_q4(w, p + 2, xq, 32 * b), d0 * at(xd, b))
            a1 = vfma(a1, dot_q4(w, p + 20, xq, 32 * b + 32), d1 * at(xd, b + 1))
            c += d0 * at(xs, b) + d1 * at(xs, b + 1)
        if nb & 1:
            b = nb - 1
            d0 = load_f16(w, o + 18 * b)
            a0 = vfma(a0, dot_q4(w, o + 18 * b + 2, xq, 32 * b), d0 * at(xd, b))
            c += d0 * at(xs, b)
        out[r] = vhsum(vadd(a0, a1)) - np.float32(8.0) * c


@njit(nogil=True, cache=True)
def rows_q4_1(w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        a1 = vzero()
        c = np.float32(0.0)
        for b in range(0, nb - 1, 2):
            p = o + 20 * b
            a0 = vfma(a0, dot_q4(w, p + 4, xq, 32 * b), load_f16(w, p) * at(xd, b))
            a1 = vfma(a1, dot_q4(w, p + 24, xq, 32 * b + 32), load_f16(w, p + 20) * at(xd, b + 1))
            c += load_f16(w, p + 2) * at(xs, b) + load_f16(w, p + 22) * at(xs, b + 1)
        if nb & 1:
            b = nb - 1
            p = o + 20 * b
            a0 = vfma(a0, dot_q4(w, p + 4, xq, 32 * b), load_f16(w, p) * at(xd, b))
            c += load_f16(w, p + 2) * at(xs, b)
        out[r] = vhsum(vadd(a0, a1)) + c


@njit(nogil=True, cache=True)
def rows_q5_0(w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        c = np.float32(0.0)
        for b in range(nb):
            p = o + 22 * b
            d = load_f16(w, p)
            a0 = vfma(a0, dot_q5(w, p + 6, load_u32(w, p + 2), xq, 32 * b), d * at(xd, b))
            c += d * at(xs, b)
        out[r] = vhsum(a0) - np.float32(16.0) * c


@njit(nogil=True, cache=True)
def rows_q5_1(w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        c = np.float32(0.0)
        for b in range(nb):
            p = o + 24 * b
            a0 = vfma(a0, dot_q5(w, p + 8, load_u32(w, p + 4), xq, 32 * b), load_f16(w, p) * at(xd, b))
            c += load_f16(w, p + 2) * at(xs, b)
        out[r] = vhsum(a0) + c


@njit(nogil=True, cache=True)
def rows_q8_0(w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        a1 = vzero()
        for b in range(0, nb - 1, 2):
            p = o + 34 * b
            a0 = vfma(a0, dot_s8(w, p + 2, xq, 32 * b), load_f16(w, p) * at(xd, b))
            a1 = vfma(a1, dot_s8(w, p + 36, xq, 32 * b + 32), load_f16(w, p + 34) * at(xd, b + 1))
        if nb & 1:
            b = nb - 1
            p = o + 34 * b
            a0 = vfma(a0, dot_s8(w, p + 2, xq, 32 * b), load_f16(w, p) * at(xd, b))
        out[r] = vhsum(vadd(a0, a1))


@njit(nogil=True, cache=True)
def rows_q2_k(w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    # Elements 128h + 32s + j: bits 2s of qs[32h + j]; scale bytes 8h + 2s (+1) cover 16 each.
    for r in range(r0, r1):
        o = r * rb
        acc = vzero()
        c = np.float32(0.0)
        for b in range(nb):
            p = o + 84 * b
            d = load_f16(w, p + 80)
            dmin = load_f16(w, p + 82)
            for h in range(2):
                for s in range(4):
                    xb = 8 * b + 4 * h + s
                    sa = at(w, p + 8 * h + 2 * s)
                    sb = at(w, p + 8 * h + 2 * s + 1)
                    v = dot_planes(w, p + 16 + 32 * h, 2 * s, 3, p, 0, 0, 0, xq, 32 * xb)
                    dx = d * at(xd, xb)
                    acc = vfma2(acc, v, dx * np.float32(sa & 15), dx * np.float32(sb & 15))
                    c += dmin * at(xd, xb) * np.float32(np.int32(sa >> 4) * at(x16, 2 * xb) + np.int32(sb >> 4) * at(x16, 2 * xb + 1))
        out[r] = vhsum(acc) - c


@njit(nogil=True, cache=True)
def rows_q3_k(w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    # q + 4 = (2 bits of qs) | (hmask bit << 2), in 0..7; the -4 goes through x16.
    for r in range(r0, r1):
        o = r * rb
        acc = vzero()
        c = np.float32(0.0)
        for b in range(nb):
            p = o + 110 * b
            d = load_f16(w, p + 108)
            for h in range(2):
                for s in range(4):
                    xb = 8 * b + 4 * h + s
                    sa = q3_k_scale(w, p + 96, 8 * h + 2 * s)
                    sb = q3_k_scale(w, p + 96, 8 * h + 2 * s + 1)
                    v = dot_planes(w, p + 32 + 32 * h, 2 * s, 3, p, 4 * h + s, 1, 2, xq, 32 * xb)
                    dx = d * at(xd, xb)
                    acc = vfma2(acc, v, dx * np.float32(sa), dx * np.float32(sb))
                    c += dx * np.float32(sa * at(x16, 2 * xb) + sb * at(x16, 2 * xb + 1))
        out[r] = vhsum(acc) - np.float32(4.0) * c


@njit(nogil=True, cache=True)
def rows_q4_k(w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        a1 = vzero()
        c = np.float32(0.0)
        for b in range(nb):
            p = o + 144 * b
            d = load_f16(w, p)
            dmin = load_f16(w, p + 2)
            for s in range(0, 8, 2):
                xb = 8 * b + s
                sc0, mn0 = k_scale_min(w, p + 4, s)
                sc1, mn1 = k_scale_min(w, p + 4, s + 1)
                q = p + 16 + 16 * s
                a0 = vfma(a0, dot_planes(w, q, 0, 15, q, 0, 0, 0, xq, 32 * xb), d * np.float32(sc0) * at(xd, xb))
                a1 = vfma(a1, dot_planes(w, q, 4, 15, q, 0, 0, 0, xq, 32 * xb + 32), d * np.float32(sc1) * at(xd, xb + 1))
                c += dmin * (np.float32(mn0) * at(xs, xb) + np.float32(mn1) * at(xs, xb + 1))
        out[r] = vhsum(vadd(a0, a1)) - c


@njit(nogil=True, cache=True)
def rows_q5_k(w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    for r in range(r0, r1):
        o = r * rb
        a0 = vzero()
        a1 = vzero()
        c = np.float32(0.0)
        for b in range(nb):
            p = o + 176 * b
            d = load_f16(w, p)
            dmin = load_f16(w, p + 2)
            for s in range(0, 8, 2):
                xb = 8 * b + s
                sc0, mn0 = k_scale_min(w, p + 4, s)
                sc1, mn1 = k_scale_min(w, p + 4, s + 1)
                q = p + 48 + 16 * s
                a0 = vfma(a0, dot_planes(w, q, 0, 15, p + 16, s, 1, 4, xq, 32 * xb), d * np.float32(sc0) * at(xd, xb))
                a1 = vfma(a1, dot_planes(w, q, 4, 15, p + 16, s + 1, 1, 4, xq, 32 * xb + 32), d * np.float32(sc1) * at(xd, xb + 1))
                c += dmin * (np.float32(mn0) * at(xs, xb) + np.float32(mn1) * at(xs, xb + 1))
        out[r] = vhsum(vadd(a0, a1)) - c


@njit(nogil=True, cache=True)
def rows_q6_k(w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    # Elements 128h + 32g + j: low nibble plane ql[64h + 32(g&1) + j] >> 4(g>>1), two high
    # bits qh[32h + j] >> 2g; q - 32 with the -32 through x16; int8 scales per 16.
    for r in range(r0, r1):
        o = r * rb
        acc = vzero()
        c = np.float32(0.0)
        for b in range(nb):
            p = o + 210 * b
            d = load_f16(w, p + 208)
            for h in range(2):
                for g in range(4):
                    xb = 8 * b + 4 * h + g
                    sa = np.int32(np.int8(at(w, p + 192 + 8 * h + 2 * g)))
                    sb = np.int32(np.int8(at(w, p + 193 + 8 * h + 2 * g)))
                    v = dot_planes(w, p + 64 * h + 32 * (g & 1), 4 * (g >> 1), 15, p + 128 + 32 * h, 2 * g, 3, 4, xq, 32 * xb)
                    dx = d * at(xd, xb)
                    acc = vfma2(acc, v, dx * np.float32(sa), dx * np.float32(sb))
                    c += dx * np.float32(sa * at(x16, 2 * xb) + sb * at(x16, 2 * xb + 1))
        out[r] = vhsum(acc) - np.float32(32.0) * c


@njit(nogil=True, cache=True)
def rows_dot(qcode, w, rb, nb, xq, xd, xs, x16, out, r0, r1):  # type: ignore[no-untyped-def]
    """out[r] = row r . x for r in [r0, r1); dispatch on the GGML type code (quantized types)."""
    if qcode == Q4_0:
        rows_q4_0(w, rb, nb, xq, xd, xs, x16, out, r0, r1)
    elif qcode == Q4_1:
        rows_q4_1(w, rb, nb, xq, xd, xs, x16, out, r0, r1)
    elif qcode == Q5_0:
        rows_q5_0(w, rb, nb, xq, xd, xs, x16, out, r0, r1)
    elif qcode == Q5_1:
        rows_q5_1(w, rb, nb, xq, xd, xs, x16, out, r0, r1)
    elif qcode == Q8_0:
        rows_q8_0(w, rb, nb, xq, xd, xs, x16, out, r0, r1)
    elif qcode == Q2_K:
        rows_q2_k(w, rb, nb, xq, xd, xs, x16, out, r0, r1)
    elif qcode == Q3_K:
        rows_q3_k(w, rb, nb, xq, xd, xs, x16, out, r0, r1)
    elif qcode == Q4_K:
        rows_q4_k(w, rb, nb, xq, xd, xs, x16, out, r0, r1)
    elif qcode == Q5_K:
        rows_q5_k(w, rb, nb, xq, xd, xs, x16, out, r0, r1)
    elif qcode == Q6_K:
        rows_q6_k(w, rb, nb, xq, xd, xs, x16, out, r0, r1)
