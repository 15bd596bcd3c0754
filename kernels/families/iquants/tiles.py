"""The tiled layout of IQ4_XS and its kernel: rows in vector lanes, as Q4_0's and Q4_K's
tiles (kernels/families/q4_q8/tiles.py, kernels/families/kquants/tiles.py), whose
packer, tile pass and tail handling it shares. (IQ4_NL and MXFP4, blocks of 32 like
Q4_0's, take Q4_0's kernel with a table lookup.)

Layout. A matrix's rows go by tiles of 16 (its last rows % 16 stay in the file's
layout and take the row kernel of iquants/rows.py). A tile holds, for each
super-block in turn, the super-block of its 16 rows as

    [d x 16 float16] [scales_h x 16 uint16] [vectors of 64 bytes]

where byte 4i + j of vector v is byte 4v + j of the rest of row i's super-block: its
4 bytes of scales_l (vector 0), then its 128 quant bytes (vectors 1-32: sub-block ib
of 32 elements in vectors 4 ib + 1 .. 4 ib + 4, low nibbles elements 4v + j, high
nibbles 4v + 16 + j, as Q4_0's).

Kernel. Per sub-block, one table lookup (vpshufb) and one vpdpbusd per nibble plane
and token, with the token's 4 activations broadcast, into 16 int32 lanes, one per
row, each token's accumulators starting at the table's bias times the token's block
sum (bias_sums); then the sub-block is converted and scaled once for the 16 rows (d
times the sub-block's 6-bit scale, decoded lane-wise). Tokens go through a tile 8, 4, 2 and 1 at a time, each
with its own accumulators and steps, so a token gets the same bits in any batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from numallm.kernels.families.iquants.simd import iq4xs_tile_scales
from numallm.kernels.families.iquants.tables import KVALUES_IQ4NL
from numallm.kernels.families.q4_q8.tiles import (
    IQ4_XS_KIND,
    TILE,
    dot_tokens,
    idot_iq4nl,
    scale_tokens,
    start_block,
    start_tokens,
    store_tokens,
)
from numallm.kernels.simd.scalar import at, load_f16
from numallm.kernels.simd.vec import vload_f16x16, vmul16, vzero16
from numba import njit

_TS = 136  # bytes of a super-block
_SCALES, _QUANTS = 32, 128  # where scales_h and the quant vectors start in a tile's super-block
_starts = start_tokens(start_block(IQ4_XS_KIND))
_dots = dot_tokens(idot_iq4nl)


@cache
def iq4xs_tile_kernel(ntok: int) -> Callable[..., None]:
    """kernel(w, p, nb, xq, xd, xs, t0, dst, dr, dc): dst[dr + j, dc + i] = row i of the
    IQ4_XS tile at byte p of w (nb super-blocks) dotted with token t0 + j, j < ntok,
    from the flat xq, xd of actq (q8_K; token t's blocks of 32 start at 8 nb t) and
    xs, their bias_sums."""

    @njit(nogil=True, cache=True)
    def kernel(w, p, nb, xq, xd, xs, t0, dst, dr, dc):  # type: ignore[no-untyped-def]
        f0 = f1 = f2 = f3 = f4 = f5 = f6 = f7 = vzero16()
        step, bstep = 256 * nb, 8 * nb  # xq bytes and blocks of 32 from one token to the next
        for b in range(nb):
            c = p + TILE * _TS * b
            dv = vload_f16x16(w, c)
            x = 256 * (t0 * nb + b)
            for ib in range(8):
                dl = vmul16(dv, iq4xs_tile_scales(w, c + _SCALES, ib))
                q = c + _QUANTS + 256 * ib
                xo = x + 32 * ib
                k = xo >> 5  # the token's block of 32 of sub-block ib
                i0, i1, i2, i3, i4, i5, i6, i7 = _starts(xs, k, bstep, ntok)
                for v in range(4):
                    i0, i1, i2, i3, i4, i5, i6, i7 = _dots(i0, i1, i2, i3, i4, i5, i6, i7, ntok, v, w, q + 64 * v, xq,
                                                           xo + 4 * v, step)
                f0, f1, f2, f3, f4, f5, f6, f7 = scale_tokens(f0, f1, f2, f3, f4, f5, f6, f7,
                                                              i0, i1, i2, i3, i4, i5, i6, i7,
                                                              ntok, dl, dl, xd, xs, k, bstep, False)
        store_tokens(dst, dr, dc, ntok, f0, f1, f2, f3, f4, f5, f6, f7)

    return kernel


@njit(nogil=True, cache=True)
def decode_tiled_iq4xs(w, p, i, nb, y):  # type: ignore[no-untyped-def]
    """Row i of the IQ4_XS tile at byte p as float32 into y, as ggml's dequantizer
    computes it: (d * (scale - 32)) * table value (blocks.unpack_iq4_xs's f and q)."""
    for b in range(nb):
        c = p + TILE * _TS * b
        d = load_f16(w, c + 2 * i)
        sh = np.uint32(at(w, c + _SCALES + 2 * i)) | (np.uint32(at(w, c + _SCALES + 2 * i + 1)) << np.uint32(8))
        for ib in range(8):
            lo = (np.uint32(at(w, c + 64 + 4 * i + ib // 2)) >> np.uint32(4 * (ib % 2))) & np.uint32(15)
            ls = np.int32(lo | (((sh >> np.uint32(2 * ib)) & np.uint32(3)) << np.uint32(4))) - 32
            dl = d * np.float32(ls)
            for e in range(16):
                byte = at(w, c + _QUANTS + 256 * ib + 64 * (e >> 2) + 4 * i + (e & 3))
                y[256 * b + 32 * ib + e] = dl * np.float32(KVALUES_IQ4NL[byte & 15])
                y[256 * b + 32 * ib + e + 16] = dl * np.float32(KVALUES_IQ4NL[byte >> 4])
