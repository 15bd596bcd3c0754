"""The tiled layouts of Q4_K and Q5_K and their kernel: rows in vector lanes, as Q4_0's
tiles (kernels/families/q4_q8/tiles.py), whose packer, tile pass and tail handling they
share.

Layout. A matrix's rows go by tiles of 16 (its last rows % 16 stay in the file's
layout and take the row kernel of kquants/rows.py). A tile holds, for each
super-block in turn, the super-block of its 16 rows as

    [d x 16 float16] [dmin x 16 float16] [vectors of 64 bytes]

where byte 4i + j of vector v is byte 4v + j of the rest of row i's super-block: the
12 scale bytes (3 vectors), Q5_K's 32 bytes of 5th bits (8), the 128 quant bytes
(32). The tile keeps its rows' bytes, so rows keep their size and place by tiles.

Kernel. Quant vector 8g + v holds, in lane i, row i's quants 4v..4v + 3 of group g
of 64 elements: low nibbles elements 64g + 4v + j (sub-block 2g), high nibbles
64g + 32 + 4v + j (sub-block 2g + 1), Q5_K's 5th bits in bits 2g, 2g + 1 of the same
bytes of qh vector v. One vpdpbusd per nibble plane and token adds their products
with the token's 4 activations (broadcast) into 16 int32 lanes, one per row. After a
group's 8 vectors each sub-block is converted and scaled once for the 16 rows
(d * scale * xd), the mins applied through the activation's block sums, with the 16
rows' scales decoded lane-wise from the scale vectors (q4k_tile_scales). A row
kernel instead spends a permute, a conversion and an FMA per 64 elements of each row
and decodes each row's scales alone. Tokens go through a tile 8, 4, 2 and 1 at a
time (two int32 accumulators per token); each keeps its own accumulators and steps,
so a token gets the same bits in a batch of any size.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from numallm.kernels.families.kquants.rows import k_scale_min
from numallm.kernels.families.kquants.simd import idot16_nib, idot16_nib5, q4k_tile_scales
from numallm.kernels.families.q4_q8.tiles import MAX_TOKENS, TILE, store_tokens, tile_pass_of, with_type_code
from numallm.kernels.simd.i32x16 import izero16, vfmai16
from numallm.kernels.simd.scalar import at, load_f16
from numallm.kernels.simd.vec import vfma16, vload_f16x16, vmul16, vzero16
from numba import njit

QH5 = 256  # where Q5_K's qh vectors start in a tile's super-block (after d, dmin, scales)


def kq_tiles(five: bool) -> Callable[..., None]:
    """The tile pass of Q4_K (Q5_K: five) with the type code first (traits' `tiles`);
    without AVX-512 at most 2 tokens a pass (tile_pass_of never calls the wider
    kernels, for which narrower ones stand in)."""
    return with_type_code(tile_pass_of(tuple(kq_tile_kernel(min(n, MAX_TOKENS), five) for n in (8, 4, 2, 1)),
                                       MAX_TOKENS))


@cache
def kq_tile_kernel(ntok: int, five: bool) -> Callable[..., None]:
    """kernel(w, p, nb, xq, xd, xs, t0, dst, dr, dc): dst[dr + j, dc + i] = row i of the
    Q4_K (Q5_K: five) tile at byte p of w (nb super-blocks) dotted with token t0 + j,
    j < ntok, from the flat xq, xd, xs of actq.quantize_rows (token t's blocks of 32
    start at 8 nb t)."""
    ts = 176 if five else 144
    quants = 768 if five else 256  # where the quant vectors start (Q5_K: after 8 of qh)
    dots = _dots5 if five else _dots4

    @njit(nogil=True, cache=True)
    def kernel(w, p, nb, xq, xd, xs, t0, dst, dr, dc):  # type: ignore[no-untyped-def]
        f0 = f1 = f2 = f3 = f4 = f5 = f6 = f7 = vzero16()
        step, bstep = 256 * nb, 8 * nb  # xq bytes and blocks of 32 from one token to the next
        for b in range(nb):
            c = p + TILE * ts * b
            dv = vload_f16x16(w, c)
            mv = vload_f16x16(w, c + 32)
            x = 256 * (t0 * nb + b)
            for g in range(4):
                dlo = vmul16(dv, q4k_tile_scales(w, c + 64, 2 * g, False))
                dhi = vmul16(dv, q4k_tile_scales(w, c + 64, 2 * g + 1, False))
                mlo = vmul16(mv, q4k_tile_scales(w, c + 64, 2 * g, True))
                mhi = vmul16(mv, q4k_tile_scales(w, c + 64, 2 * g + 1, True))
                l0 = h0 = l1 = h1 = l2 = h2 = l3 = h3 = izero16()
                l4 = h4 = l5 = h5 = l6 = h6 = l7 = h7 = izero16()
                q = c + quants + 512 * g
                xo = x + 64 * g
                for v in range(8):
                    qv = q + 64 * v
                    hp = c + QH5 + 64 * v
                    xv = xo + 4 * v
                    l0, h0 = dots(l0, h0, w, qv, hp, 2 * g, xq, xv)
                    if ntok > 1:
                        l1, h1 = dots(l1, h1, w, qv, hp, 2 * g, xq, xv + step)
                    if ntok > 2:
                        l2, h2 = dots(l2, h2, w, qv, hp, 2 * g, xq, xv + 2 * step)
                        l3, h3 = dots(l3, h3, w, qv, hp, 2 * g, xq, xv + 3 * step)
                    if ntok > 4:
                        l4, h4 = dots(l4, h4, w, qv, hp, 2 * g, xq, xv + 4 * step)
                        l5, h5 = dots(l5, h5, w, qv, hp, 2 * g, xq, xv + 5 * step)
                        l6, h6 = dots(l6, h6, w, qv, hp, 2 * g, xq, xv + 6 * step)
                        l7, h7 = dots(l7, h7, w, qv, hp, 2 * g, xq, xv + 7 * step)
                k = xo >> 5  # the token's block of 32 of sub-block 2g
                f0 = _group(f0, l0, h0, dlo, dhi, mlo, mhi, xd, xs, k)
                if ntok > 1:
                    f1 = _group(f1, l1, h1, dlo, dhi, mlo, mhi, xd, xs, k + bstep)
                if ntok > 2:
                    f2 = _group(f2, l2, h2, dlo, dhi, mlo, mhi, xd, xs, k + 2 * bstep)
                    f3 = _group(f3, l3, h3, dlo, dhi, mlo, mhi, xd, xs, k + 3 * bstep)
                if ntok > 4:
                    f4 = _group(f4, l4, h4, dlo, dhi, mlo, mhi, xd, xs, k + 4 * bstep)
                    f5 = _group(f5, l5, h5, dlo, dhi, mlo, mhi, xd, xs, k + 5 * bstep)
                    f6 = _group(f6, l6, h6, dlo, dhi, mlo, mhi, xd, xs, k + 6 * bstep)
                    f7 = _group(f7, l7, h7, dlo, dhi, mlo, mhi, xd, xs, k + 7 * bstep)
        store_tokens(dst, dr, dc, ntok, f0, f1, f2, f3, f4, f5, f6, f7)

    return kernel


@njit(inline="always", cache=True)
def _dots4(lo, hi, w, qv, hp, bit, xq, xv):  # type: ignore[no-untyped-def]
    """A Q4_K quant vector's low and high nibbles dotted into lo and hi."""
    return idot16_nib(lo, w, qv, xq, xv, False), idot16_nib(hi, w, qv, xq, xv + 32, True)


@njit(inline="always", cache=True)
def _dots5(lo, hi, w, qv, hp, bit, xq, xv):  # type: ignore[no-untyped-def]
    """The same for Q5_K, bits `bit` and bit + 1 of the qh vector at hp their 5th bits."""
    return (idot16_nib5(lo, w, qv, hp, bit, xq, xv, False),
            idot16_nib5(hi, w, qv, hp, bit + 1, xq, xv + 32, True))


@njit(inline="always", cache=True)
def _group(f, lo, hi, dlo, dhi, mlo, mhi, xd, xs, k):  # type: ignore[no-untyped-def]
    """f plus a group's two sub-blocks: their integer dots scaled by d * scale * xd,
    minus dmin * min times the activation's block sums."""
    f = vfmai16(f, lo, dlo, at(xd, k))
    f = vfmai16(f, hi, dhi, at(xd, k + 1))
    f = vfma16(f, mlo, -at(xs, k))
    return vfma16(f, mhi, -at(xs, k + 1))


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
