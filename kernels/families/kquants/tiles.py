"""The tiled layouts of Q4_K, Q5_K and Q6_K and their kernels: rows in vector lanes, as
Q4_0's tiles (kernels/families/q4_q8/tiles.py), whose packer, tile pass and tail handling
they share.

Layout. A matrix's rows go by tiles of 16 (its last rows % 16 stay in the file's
layout and take the row kernels of kquants/rows.py). A tile holds, for each
super-block in turn, the super-block of its 16 rows as its float16 fields for the 16
rows (Q4_K, Q5_K: d then dmin; Q6_K: d), then vectors of 64 bytes whose byte 4i + j
is byte 4v + j of the rest of row i's super-block (vector v): Q4_K the 12 scale
bytes and 128 quant bytes, Q5_K the scales, 32 bytes of 5th bits and the quants;
Q6_K's 128 bytes of low bits, 64 of high bits and 16 scales likewise, but its vectors
in the order the kernel first reads them (q4_q8/tiles.q6k_vector), so a tile streams
in address order. The tile keeps its rows' bytes, so rows keep their size and place
by tiles.

Kernels. A quant vector holds 4 consecutive quants of every row of the tile; one
vpdpbusd per nibble plane and token adds their products with the token's 4
activations (broadcast) into 16 int32 lanes, one per row, of the sub-block's
accumulator (Q5_K and Q6_K first or in their high bits from the same bytes of a
high-bit vector, shifted into place: one variable shift serves both nibbles). The
activation is q8_K (one xd per 256, as llama.cpp pairs these types), so a super-block
needs one float step per token: after a group's vectors its two accumulators are
multiplied by their sub-blocks' 6-bit (Q6_K: int8) scales, decoded lane-wise for the
16 rows, into one int32 sum (vpmulld), which is converted and scaled by d * xd once
per super-block; the mins (Q4_K, Q5_K) come in then through the activation's sums per
32, and Q6_K's offset of 32 by starting each sub-block's accumulator at -32 times its
activations' sum (q4_q8/tiles.bias_sums per 16). On Zen 4 every per-token vector op
beside the dots (a multiply and an add alike) takes about one cycle of vpdpbusd's
pipes, so these per-sub-block steps cost Q6_K half as much as its dots
(benchmarks/README.md, rounds ten and eleven). A row kernel instead spends a permute, a
conversion and an FMA per 64 elements of each row and decodes each row's scales
alone. Tokens go through a tile 8, 4, 2 and 1 at a time (two int32 accumulators and
a super-block sum per token); each keeps its own accumulators and steps, so a token
gets the same bits in a batch of any size.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from numallm.kernels.families.kquants.rows import k_scale_min
from numallm.kernels.families.kquants.simd import (
    idot16_nib,
    idot16_nibh,
    iscaled16,
    isplat16,
    q4k_tile_scales,
    q6k_tile_scales,
    vfloat16,
)
from numallm.kernels.families.q4_q8.tiles import MAX_TOKENS, TILE, q6k_vector, store_tokens, tile_pass_of, with_type_code
from numallm.kernels.qcodes import Q4_K, Q5_K, Q6_K
from numallm.kernels.simd.i32x16 import izero16, vfmai16
from numallm.kernels.simd.scalar import at, load_f16
from numallm.kernels.simd.vec import vfma16, vload_f16x16, vmul16, vscale16, vzero16
from numba import njit

TS = {Q4_K: 144, Q5_K: 176, Q6_K: 210}  # bytes per super-block and row
# Where the vectors start in a tile's super-block: Q4_K, Q5_K after d and dmin the 3
# scale vectors (at 64), Q5_K's 8 of qh (QH5), the 32 of quants (Q4_K at 256, Q5_K
# at 768); Q6_K after d its 52 vectors in the order the kernel reads them (q6k_vector).
QH5 = 256
WIDE = MAX_TOKENS


def kq_tiles(kind: int) -> Callable[..., None]:
    """The tile pass of Q4_K, Q5_K or Q6_K (a GGML code) with the type code first
    (traits' `tiles`); Q6_K's kernel takes -32 times the activation's sums per 16 (its
    offset, bias_sums) where the others take its sums per 32. Without AVX-512 at most 2
    tokens a pass (tile_pass_of never calls the wider kernels, for which narrower ones
    stand in)."""
    kernels = tuple(kq_tile_kernel(min(n, WIDE), kind) for n in (8, 4, 2, 1))
    pass_ = tile_pass_of(kernels, WIDE)
    return with_type_code(pass_, bias=32, per=16) if kind == Q6_K else with_type_code(pass_)


@cache
def kq_tile_kernel(ntok: int, kind: int) -> Callable[..., None]:
    """kernel(w, p, nb, xq, xd, xs, t0, dst, dr, dc): dst[dr + j, dc + i] = row i of the
    tile of type `kind` at byte p of w (nb super-blocks) dotted with token t0 + j,
    j < ntok, from the flat xq, xd and xs (Q6_K: bias_sums per 16) of the activation
    quantized as q8_K (one xd per 256; token t's blocks of 32 start at 8 nb t). The
    super-block goes by groups of vectors that make one sub-block of the low nibbles and
    one of the high ones (_layout); each group's two integer dots are multiplied by
    their scales into one int32 sum per super-block (at most 2**27 in size), converted
    and scaled by d * xd once."""
    ts = TS[kind]
    six = kind == Q6_K
    groups, per = (8, 4) if six else (4, 8)
    if six:
        layout, scales, start, close = _layout6, _scales6, _start6, _close6
    else:
        layout, scales, start, close = _layout45, _scales45, _start45, _close45
    dots = _dots4 if kind == Q4_K else (_dots5 if kind == Q5_K else _dots6)

    @njit(nogil=True, cache=True)
    def kernel(w, p, nb, xq, xd, xs, t0, dst, dr, dc):  # type: ignore[no-untyped-def]
        f0 = f1 = f2 = f3 = f4 = f5 = f6 = f7 = vzero16()
        step = 256 * nb  # from one token to the next
        for b in range(nb):
            c = p + TILE * ts * b
            x = 256 * (t0 * nb + b)
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = izero16()
            for g in range(groups):
                slo, shi = scales(w, c, g)
                l1 = h1 = l2 = h2 = l3 = h3 = l4 = h4 = l5 = h5 = l6 = h6 = l7 = h7 = izero16()
                l0, h0 = start(xs, x, g)
                if ntok > 1:
                    l1, h1 = start(xs, x + step, g)
                if ntok > 2:
                    l2, h2 = start(xs, x + 2 * step, g)
                    l3, h3 = start(xs, x + 3 * step, g)
                if ntok > 4:
                    l4, h4 = start(xs, x + 4 * step, g)
                    l5, h5 = start(xs, x + 5 * step, g)
                    l6, h6 = start(xs, x + 6 * step, g)
                    l7, h7 = start(xs, x + 7 * step, g)
                for v in range(per):
                    qv, hp, bit, xv = layout(kind, c, x, g, v)
                    l0, h0 = dots(l0, h0, w, qv, hp, bit, xq, xv)
                    if ntok > 1:
                        l1, h1 = dots(l1, h1, w, qv, hp, bit, xq, xv + step)
                    if ntok > 2:
                        l2, h2 = dots(l2, h2, w, qv, hp, bit, xq, xv + 2 * step)
                        l3, h3 = dots(l3, h3, w, qv, hp, bit, xq, xv + 3 * step)
                    if ntok > 4:
                        l4, h4 = dots(l4, h4, w, qv, hp, bit, xq, xv + 4 * step)
                        l5, h5 = dots(l5, h5, w, qv, hp, bit, xq, xv + 5 * step)
                        l6, h6 = dots(l6, h6, w, qv, hp, bit, xq, xv + 6 * step)
                        l7, h7 = dots(l7, h7, w, qv, hp, bit, xq, xv + 7 * step)
                s0 = iscaled16(s0, l0, slo, h0, shi)  # unused tokens' sums: dead code
                s1 = iscaled16(s1, l1, slo, h1, shi)
                s2 = iscaled16(s2, l2, slo, h2, shi)
                s3 = iscaled16(s3, l3, slo, h3, shi)
                s4 = iscaled16(s4, l4, slo, h4, shi)
                s5 = iscaled16(s5, l5, slo, h5, shi)
                s6 = iscaled16(s6, l6, slo, h6, shi)
                s7 = iscaled16(s7, l7, slo, h7, shi)
            f0 = close(f0, s0, w, c, xd, xs, x)
            if ntok > 1:
                f1 = close(f1, s1, w, c, xd, xs, x + step)
            if ntok > 2:
                f2 = close(f2, s2, w, c, xd, xs, x + 2 * step)
                f3 = close(f3, s3, w, c, xd, xs, x + 3 * step)
            if ntok > 4:
                f4 = close(f4, s4, w, c, xd, xs, x + 4 * step)
                f5 = close(f5, s5, w, c, xd, xs, x + 5 * step)
                f6 = close(f6, s6, w, c, xd, xs, x + 6 * step)
                f7 = close(f7, s7, w, c, xd, xs, x + 7 * step)
        store_tokens(dst, dr, dc, ntok, f0, f1, f2, f3, f4, f5, f6, f7)

    return kernel


@njit(inline="always", cache=True)
def _layout45(kind, c, x, g, v):  # type: ignore[no-untyped-def]
    """Q4_K, Q5_K: vector v of group g (elements 64g..64g + 63) is quant vector 8g + v:
    lane i row i's quants 64g + 4v.. (low nibbles) and 64g + 32 + 4v.. (high); Q5_K's
    5th bits are bits 2g and 2g + 1 of qh vector v. (quant vector, qh vector, bit,
    the low nibbles' first activation)."""
    quants = 768 if kind == Q5_K else 256
    return c + quants + 64 * (8 * g + v), c + QH5 + 64 * v, 2 * g, x + 64 * g + 4 * v


@njit(inline="always", cache=True)
def _layout6(kind, c, x, g, v):  # type: ignore[no-untyped-def]
    """Q6_K: element 128h + 32s + l of a row is ql[64h + 32 (s % 2) + l] >> 4 (s // 2)
    plus bits 2s, 2s + 1 of qh[32h + l] as bits 4-5, scale 8h + 2s + l // 16. Group
    g = (h, s0, quarter) takes the ql vectors of l in [16 quarter, 16 quarter + 16):
    s = s0 in their low nibbles, s0 + 2 in their high ones, one sub-block of 16 each."""
    h, s0, qt = _part6(g)
    # q6k_vector(16h + 8s0 + 4qt + v) and q6k_vector(32 + 8h + 4qt + v) written out:
    # affine in v, so the compiler steps the addresses instead of recomputing them
    first = c + 32 + 64 * (26 * h + 2 + 12 * qt)
    return (first + 64 * ((2 - s0) * v + 8 * s0), first + 64 * (1 + 2 * v), 2 * s0,
            x + 128 * h + 32 * s0 + 16 * qt + 4 * v)


@njit(inline="always", cache=True)
def _part6(g):  # type: ignore[no-untyped-def]
    """Q6_K group g's (h, s0, quarter), in the layout's order: s0 fastest, so the qh
    vectors read with s0 = 0 are in L1 for s0 = 1."""
    return g >> 2, g & 1, (g >> 1) & 1


@njit(inline="always", cache=True)
def _scales45(w, c, g):  # type: ignore[no-untyped-def]
    """Q4_K, Q5_K: the scales of sub-blocks 2g and 2g + 1 of the 16 rows."""
    return q4k_tile_scales(w, c + 64, 2 * g, False), q4k_tile_scales(w, c + 64, 2 * g + 1, False)


@njit(inline="always", cache=True)
def _scales6(w, c, g):  # type: ignore[no-untyped-def]
    """Q6_K: the scales of group g's two sub-blocks."""
    h, s0, qt = _part6(g)
    j = 2 * s0 + qt  # scale 8h + j of vector 2h, scale 8h + j + 4 of vector 2h + 1
    return (q6k_tile_scales(w, c + 32 + 64 * q6k_vector(48 + 2 * h), j),
            q6k_tile_scales(w, c + 32 + 64 * q6k_vector(49 + 2 * h), j))


@njit(inline="always", cache=True)
def _start45(xs, x, g):  # type: ignore[no-untyped-def]
    """Q4_K, Q5_K: a group's integer dots start at 0 (the mins come in at close)."""
    return izero16(), izero16()


@njit(inline="always", cache=True)
def _start6(xs, x, g):  # type: ignore[no-untyped-def]
    """Q6_K: a group's two dots start at -32 times their activations' sum (bias_sums
    per 16), so they come out as the dots of q - 32."""
    h, s0, qt = _part6(g)
    k = (x >> 4) + 8 * h + 2 * s0 + qt
    return isplat16(xs, k), isplat16(xs, k + 4)


@njit(inline="always", cache=True)
def _close45(f, s, w, c, xd, xs, x):  # type: ignore[no-untyped-def]
    """Q4_K, Q5_K: f plus a super-block's scaled integer sum times d * xd, and its mins
    times -dmin and the activation's sums per 32 (the decoding is the same for every
    token: the compiler does it once)."""
    k = x >> 5
    f = vfmai16(f, s, vload_f16x16(w, c), at(xd, k))
    mv = vscale16(vload_f16x16(w, c + 32), np.float32(-1.0))
    for j in range(8):
        f = vfma16(f, vmul16(mv, vfloat16(q4k_tile_scales(w, c + 64, j, True))), at(xs, k + j))
    return f


@njit(inline="always", cache=True)
def _close6(f, s, w, c, xd, xs, x):  # type: ignore[no-untyped-def]
    """Q6_K: f plus a super-block's integer sum (offset included) times d * xd."""
    return vfmai16(f, s, vload_f16x16(w, c), at(xd, x >> 5))


@njit(inline="always", cache=True)
def _dots4(lo, hi, w, qv, hp, bit, xq, xv):  # type: ignore[no-untyped-def]
    """A Q4_K quant vector's low and high nibbles dotted into lo and hi."""
    return idot16_nib(lo, w, qv, xq, xv, False), idot16_nib(hi, w, qv, xq, xv + 32, True)


@njit(inline="always", cache=True)
def _dots5(lo, hi, w, qv, hp, bit, xq, xv):  # type: ignore[no-untyped-def]
    """The same for Q5_K, bits `bit` and bit + 1 of the qh vector at hp their 5th bits."""
    return (idot16_nibh(lo, w, qv, hp, bit, xq, xv, False, 1, 1),
            idot16_nibh(hi, w, qv, hp, bit, xq, xv + 32, True, 1, 1))


@njit(inline="always", cache=True)
def _dots6(lo, hi, w, qv, hp, bit, xq, xv):  # type: ignore[no-untyped-def]
    """A Q6_K ql vector's low nibbles (qh bits `bit`, bit + 1 as bits 4-5) and high
    nibbles (bits bit + 4, bit + 5: s two further) dotted into lo and hi."""
    return (idot16_nibh(lo, w, qv, hp, bit, xq, xv, False, 2, 4),
            idot16_nibh(hi, w, qv, hp, bit, xq, xv + 64, True, 2, 4))


@njit(nogil=True, cache=True)
def decode_tiled_q6k(w, p, i, nb, y):  # type: ignore[no-untyped-def]
    """Row i of the Q6_K tile at byte p as float32 into y, as kquants/rows.decode_q6_k."""
    for b in range(nb):
        c = p + TILE * 210 * b
        d = load_f16(w, c + 2 * i)
        for e in range(256):
            h, r = e >> 7, e & 127
            s, l = r >> 5, r & 31
            lb = 64 * h + 32 * (s & 1) + l  # ql byte
            ql = (at(w, c + 32 + 64 * q6k_vector(lb >> 2) + 4 * i + (lb & 3)) >> (4 * (s >> 1))) & 15
            hb = 32 * h + l  # qh byte
            qh = (at(w, c + 32 + 64 * q6k_vector(32 + (hb >> 2)) + 4 * i + (hb & 3)) >> (2 * s)) & 3
            q = np.int32(ql | (qh << 4)) - 32
            k = e >> 4  # scale byte
            sc = np.int32(np.int8(at(w, c + 32 + 64 * q6k_vector(48 + (k >> 2)) + 4 * i + (k & 3))))
            y[256 * b + e] = d * np.float32(sc * q)


@njit(nogil=True, cache=True)
def decode_tiled_kq(five, w, p, i, nb, y):  # type: ignore[no-untyped-def]
    """Row i of the Q4_K (Q5_K: five) tile at byte p as float32 into y, as ggml's
    dequantizer computes it: (d * scale) * q - dmin * min (kquants/rows.unpack_q45_k's
    d and m)."""
    ts, quants = (176, 768) if five else (144, 256)
    sc = np.empty(12, np.uint8)
    for b in range(nb):
        c = p + TILE * ts * b
        dd = load_f16(w, c + 2 * i)
        dmin = load_f16(w, c + 32 + 2 * i)
        for k in range(12):
            sc[k] = at(w, c + 64 + 64 * (k >> 2) + 4 * i + (k & 3))
        for s in range(8):
            scale, mn = k_scale_min(sc, 0, s)
            d = dd * np.float32(scale)
            m = -(dmin * np.float32(mn))
            g, shift = s >> 1, 4 * (s & 1)
            for e in range(32):
                byte = at(w, c + quants + 512 * g + 64 * (e >> 2) + 4 * i + (e & 3))
                q = (byte >> shift) & 15
                if five:  # bit s of qh byte e
                    q |= ((at(w, c + QH5 + 64 * (e >> 2) + 4 * i + (e & 3)) >> s) & 1) << 4
                y[256 * b + 32 * s + e] = d * np.float32(q) + m
