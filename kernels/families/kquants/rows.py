"""The K-quants Q2_K-Q6_K in the file's block layout: SIMD row dots, the int8 GEMM's
unpackers and the decoders whose reference does not compute d * q + m. Q2_K and Q3_K
are read so throughout; of Q4_K, Q5_K and Q6_K only a matrix's last rows % 16 are,
the others being tiled at load (kquants/tiles.py).

`rows_<type>(w, rb, nb, ..., xq, xd, xs, xs16, out, r0, r1)` sets out[r] for r in
[r0, r1) to the dot product of row r (the `nb` blocks at byte r * rb of w) with x
given as drivers/actq.quantize_x made it. The row loop lives inside each kernel
because a Numba call per row costs atomic reference counting of every array
argument, which halved the speed on rows of a few KiB. Quants (as unsigned bytes)
are dotted with int8 activations in integers and scaled in float32 by the weight's
and the activation's block scales; offsets (Q3_K's -4, ...) and mins are applied
once per block through the activation's block sums instead of per element.

Each row dot runs one kquants/simd.kquant_dot per super-block (four 64-element
vpdpbusd dots, each lane scaled by its sub-block's factor); per super-block it only
decodes the scales (and mins) with vector ops into one factor vector, and applies
the mins or offsets with one FMA on the activation's block sums.

`unpack_<type>(w, o, nb, q32, d, m, st, lane)` writes the unpacked form of
drivers/unpack.py; `decode_<type>(w, o, nb, y)` the float32 row of drivers/decode.py.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.families.kquants.simd import bytes16, k_factors16, kquant_dot, q3k_scales16
from numallm.kernels.qcodes import Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
from numallm.kernels.simd.scalar import at, field4, load_f16
from numallm.kernels.simd.vec import (
    vadd16,
    vcat8,
    vfmav16,
    vhigh8,
    vhsum,
    vhsum16,
    vload8,
    vload8_pairs,
    vload16,
    vmul16,
    vscale16,
    vzero16,
)
from numba import njit


@njit(nogil=True, cache=True)
def rows_q23_k(w, rb, nb, three, xq, xd, xs16, out, r0, r1):  # type: ignore[no-untyped-def]
    """Q2_K, and Q3_K (three). Both have 16 sub-blocks of 16 per super-block. Q2_K:
    scale bytes 0-15, low nibble the scale, high nibble the min (applied through
    xs16), d and dmin at 80, 82. Q3_K: q + 4 (in 0..7) is what kquant_dot dots, its
    6-bit signed scales at 96, d at 108, the -4 through xs16."""
    ts = 110 if three else 84
    for r in range(r0, r1):
        o = r * rb
        acc = vzero16()
        cv = vzero16()
        for b in range(nb):
            p = o + ts * b
            xs = vload16(xs16, 16 * b)
            if three:
                dsc = vscale16(q3k_scales16(w, p + 96), load_f16(w, p + 108))
                cv = vfmav16(cv, dsc, xs)
                acc = vadd16(acc, kquant_dot(w, p, vmul16(dsc, vload8_pairs(xd, 8 * b)), xq, 256 * b, Q3_K))
            else:
                dsc = vscale16(bytes16(w, p, 1), load_f16(w, p + 80))
                cv = vfmav16(cv, vscale16(bytes16(w, p, 2), load_f16(w, p + 82)), xs)
                acc = vadd16(acc, kquant_dot(w, p, vmul16(dsc, vload8_pairs(xd, 8 * b)), xq, 256 * b, Q2_K))
        out[r] = vhsum16(acc) - (np.float32(4.0) if three else np.float32(1.0)) * vhsum16(cv)


@njit(nogil=True, cache=True)
def rows_q45_k(w, rb, nb, five, xq, xd, xs, out, r0, r1):  # type: ignore[no-untyped-def]
    """Q4_K, and Q5_K (five: a 5th bit from the qh plane). One multiply makes the 8
    sub-block factors d * sc * xd (lanes 0-7 of f) and the 8 min terms dmin * m * xs
    (lanes 8-15), which are summed per row and subtracted once."""
    ts = 176 if five else 144
    for r in range(r0, r1):
        o = r * rb
        acc = vzero16()
        cv = vzero16()
        for b in range(nb):
            p = o + ts * b
            f = vmul16(k_factors16(w, p), vcat8(vload8(xd, 8 * b), vload8(xs, 8 * b)))
            cv = vadd16(cv, f)
            if five:
                acc = vadd16(acc, kquant_dot(w, p, f, xq, 256 * b, Q5_K))
            else:
                acc = vadd16(acc, kquant_dot(w, p, f, xq, 256 * b, Q4_K))
        out[r] = vhsum16(acc) - vhsum(vhigh8(cv))


@njit(nogil=True, cache=True)
def rows_q6_k(w, rb, nb, xq, xd, xs16, out, r0, r1):  # type: ignore[no-untyped-def]
    """Q6_K: q + 32 (in 0..63) is what kquant_dot dots, int8 scales per 16 elements at
    192, d at 208, the -32 through xs16."""
    for r in range(r0, r1):
        o = r * rb
        acc = vzero16()
        cv = vzero16()
        for b in range(nb):
            p = o + 210 * b
            dsc = vscale16(bytes16(w, p + 192, 0), load_f16(w, p + 208))
            cv = vfmav16(cv, dsc, vload16(xs16, 16 * b))
            acc = vadd16(acc, kquant_dot(w, p, vmul16(dsc, vload8_pairs(xd, 8 * b)), xq, 256 * b, Q6_K))
        out[r] = vhsum16(acc) - np.float32(32.0) * vhsum16(cv)


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


@njit(nogil=True, cache=True)
def decode_q3_k(w, o, nb, y):  # type: ignore[no-untyped-def]
    # 110 bytes: hmask[32], qs[64], scales[12] (16 x 6 bits), d.
    for b in range(nb):
        p = o + 110 * b
        d = load_f16(w, p + 108)
        for e in range(256):
            half, r = e >> 7, e & 127
            ql = np.int32((w[p + 32 + 32 * half + (r & 31)] >> (2 * (r >> 5))) & 3)
            hbit = (w[p + (e & 31)] >> (e >> 5)) & 1
            q = ql - 4 * np.int32(1 - hbit)
            y[256 * b + e] = d * np.float32(q3_k_scale(w, p + 96, e >> 4) * q)


@njit(nogil=True, cache=True)
def decode_q6_k(w, o, nb, y):  # type: ignore[no-untyped-def]
    # 210 bytes: ql[128], qh[64], scales int8[16], d.
    for b in range(nb):
        p = o + 210 * b
        d = load_f16(w, p + 208)
        for e in range(256):
            half, r = e >> 7, e & 127
            ql = (w[p + 64 * half + (r & 63)] >> (4 * (r >> 6))) & 15
            qh = (w[p + 128 + 32 * half + (r & 31)] >> (2 * (r >> 5))) & 3
            q = np.int32(ql | (qh << 4)) - 32
            y[256 * b + e] = d * np.float32(np.int32(np.int8(w[p + 192 + (e >> 4)])) * q)


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
