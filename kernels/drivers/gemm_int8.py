"""matmul of a batch of tokens by int8 dot products on a tile of rows held in cache.

The activations are quantized once per call (kernels/drivers/actq.py, as llama.cpp's q8
blocks). Each tile of TILE_ROWS weight rows is unpacked once (kernels/drivers/unpack.py, 4
quants per uint32 word, each word straight to its place in the tile) into
unsigned byte quants interleaved by 4 columns (tile[64 c + 4 i + j] = q[row i, 4 c + j],
so one 64-byte vector holds 4 columns of all 16 rows) and a scale and offset per
sub-block and row. The quantized activations are regrouped once per call by
TILE_TOKENS tokens, interleaved by 4 columns (_interleave_tokens). Then for each
group and each sub-block, every tile vector is loaded once and multiplied by each
token's 4 activations broadcast (simd/i32x16.idot16: one vpdpbusd with AVX512-VNNI,
its broadcast operand at a constant offset from one pointer), into one int32
accumulator per token; at the end of the sub-block each accumulator becomes float32
scaled by the rows' d times the token's block scale, plus the rows' m times the token's block sum.
The integer products are exact, so this gives what matvec gives (kernels/drivers/rows.py)
up to float32 summation order.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.drivers.actq import quantize_rows_for
from numallm.kernels.drivers.gemm_float import store_tile
from numallm.kernels.drivers.unpack import unpack_strided
from numallm.kernels.simd.cpu import has_avx512
from numallm.kernels.simd.i32x16 import idot16, izero16, vfmai16
from numallm.kernels.simd.scalar import at
from numallm.kernels.simd.vec import vfma16, vload16, vstore16, vzero16
from numallm.kernels.traits import row_geometry
from numallm.kernels.traits import sub_size
from numba import njit

TILE_ROWS = 16  # the lanes of one I32x16
# Two registers per token (int32 and float32 accumulators): 8 tokens fill 16 of the
# 32 zmm registers; with AVX2 an I32x16 takes two of the 16 ymm registers.
TILE_TOKENS = 8 if has_avx512() else 3


@njit(nogil=True, cache=True)
def _interleave_tokens(xq, xd, xsum):  # type: ignore[no-untyped-def]
    """The activations by groups of TILE_TOKENS tokens, interleaved so that one pointer
    and constant offsets reach all of a group's tokens (8 row pointers of their own
    would not fit in the general registers beside the tile's): gx[g, 4 T c + 4 j + k]
    = xq[T g + j, 4 c + k], gd[g, T b + j] = xd[T g + j, b], gs[g, T s + j] =
    xsum[T g + j, s] with T = TILE_TOKENS; a last partial group repeats its last token."""
    n, cols = xq.shape
    T = TILE_TOKENS
    ng = (n + T - 1) // T
    gx = np.empty((ng, cols * T), np.int8)
    gd = np.empty((ng, xd.shape[1] * T), np.float32)
    gs = np.empty((ng, xsum.shape[1] * T), np.float32)
    gx32 = gx.view(np.uint32)
    for g in range(ng):
        for j in range(T):
            t = min(T * g + j, n - 1)
            x32 = xq[t].view(np.uint32)
            for c in range(cols // 4):
                gx32[g, T * c + j] = x32[c]
            for k in range(xd.shape[1]):
                gd[g, T * k + j] = xd[t, k]
            for k in range(xsum.shape[1]):
                gs[g, T * k + j] = xsum[t, k]
    return gx, gd, gs


@njit(nogil=True, cache=True)
def _tile_times_tokens(tq, td, tm, S, gx, gd, gs, res):  # type: ignore[no-untyped-def]
    """res[16j:16j+16] = the tile's 16 rows . token j of a group (_interleave_tokens:
    gx, gd, gs are one group's rows) for j < TILE_TOKENS; gs holds the activation's
    sums per S elements (xs for S = 32, xs16 for 16)."""
    nsub = td.shape[0] // TILE_ROWS
    T = TILE_TOKENS
    f0 = vzero16()
    f1 = vzero16()
    f2 = vzero16()
    f3 = vzero16()
    f4 = vzero16()
    f5 = vzero16()
    f6 = vzero16()
    f7 = vzero16()
    for s in range(nsub):
        i0 = izero16()
        i1 = izero16()
        i2 = izero16()
        i3 = izero16()
        i4 = izero16()
        i5 = izero16()
        i6 = izero16()
        i7 = izero16()
        # Four tile vectors (16 columns) per step: a constant trip count LLVM unrolls.
        for c0 in range(S * s // 4, S * (s + 1) // 4, 4):
            for c in range(c0, c0 + 4):
                p = 64 * c
                i0 = idot16(i0, tq, p, gx, 4 * T * c)
                i1 = idot16(i1, tq, p, gx, 4 * T * c + 4)
                i2 = idot16(i2, tq, p, gx, 4 * T * c + 8)
                if TILE_TOKENS > 3:
                    i3 = idot16(i3, tq, p, gx, 4 * T * c + 12)
                    i4 = idot16(i4, tq, p, gx, 4 * T * c + 16)
                    i5 = idot16(i5, tq, p, gx, 4 * T * c + 20)
                    i6 = idot16(i6, tq, p, gx, 4 * T * c + 24)
                    i7 = idot16(i7, tq, p, gx, 4 * T * c + 28)
        dv = vload16(td, 16 * s)
        mv = vload16(tm, 16 * s)
        b = T * (S * s // 32)
        f0 = vfma16(vfmai16(f0, i0, dv, at(gd, b)), mv, at(gs, T * s))
        f1 = vfma16(vfmai16(f1, i1, dv, at(gd, b + 1)), mv, at(gs, T * s + 1))
        f2 = vfma16(vfmai16(f2, i2, dv, at(gd, b + 2)), mv, at(gs, T * s + 2))
        if TILE_TOKENS > 3:
            f3 = vfma16(vfmai16(f3, i3, dv, at(gd, b + 3)), mv, at(gs, T * s + 3))
            f4 = vfma16(vfmai16(f4, i4, dv, at(gd, b + 4)), mv, at(gs, T * s + 4))
            f5 = vfma16(vfmai16(f5, i5, dv, at(gd, b + 5)), mv, at(gs, T * s + 5))
            f6 = vfma16(vfmai16(f6, i6, dv, at(gd, b + 6)), mv, at(gs, T * s + 6))
            f7 = vfma16(vfmai16(f7, i7, dv, at(gd, b + 7)), mv, at(gs, T * s + 7))
    vstore16(res, 0, f0)
    vstore16(res, 16, f1)
    vstore16(res, 32, f2)
    if TILE_TOKENS > 3:
        vstore16(res, 48, f3)
        vstore16(res, 64, f4)
        vstore16(res, 80, f5)
        vstore16(res, 96, f6)
        vstore16(res, 112, f7)


@njit(nogil=True, cache=True)
def matmul(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    nb, rb = row_geometry(qcode, cols)
    n = X.shape[0]
    S = sub_size(qcode)
    nsub = cols // S
    xq, xd, xs, xs16 = quantize_rows_for(qcode, X)
    gx, gd, gs = _interleave_tokens(xq, xd, xs if S == 32 else xs16)
    tq = np.zeros(cols * TILE_ROWS, np.uint8)
    td = np.zeros(nsub * TILE_ROWS, np.float32)
    tm = np.zeros(nsub * TILE_ROWS, np.float32)
    res = np.empty(TILE_ROWS * TILE_TOKENS, np.float32)
    for rt in range(r0, r1, TILE_ROWS):
        nr = min(TILE_ROWS, r1 - rt)
        for i in range(nr):
            unpack_strided(qcode, w, (rt + i) * rb, nb, tq.view(np.uint32), td, tm, TILE_ROWS, i)
        for t in range(0, n, TILE_TOKENS):
            nt = min(TILE_TOKENS, n - t)
            _tile_times_tokens(tq, td, tm, S, gx[t // TILE_TOKENS], gd[t // TILE_TOKENS], gs[t // TILE_TOKENS], res)
            store_tile(res, out, t, nt, rt, nr)
