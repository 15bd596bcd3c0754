"""matmul of a batch of tokens by int8 dot products on a tile of rows held in cache.

The activations are quantized once per call (kernels/actq.py, as llama.cpp's q8
blocks). Each tile of TILE_ROWS weight rows is unpacked once (kernels/unpack.py) into
unsigned byte quants interleaved by 4 columns (tile[64 c + 4 i + j] = q[row i, 4 c + j],
so one 64-byte vector holds 4 columns of all 16 rows) and a scale and offset per
sub-block and row. Then for each group of TILE_TOKENS tokens and each sub-block, every
tile vector is loaded once and multiplied by each token's 4 activations broadcast
(vec_tile.idot16: one vpdpbusd with AVX512-VNNI), into one int32 accumulator per
token; at the end of the sub-block each accumulator becomes float32 scaled by the
rows' d times the token's block scale, plus the rows' m times the token's block sum.
The integer products are exact, so this gives what matvec gives (kernels/fast.py)
up to float32 summation order.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.actq import quantize_rows
from numallm.kernels.cpu import has_avx512
from numallm.kernels.gemm import store_tile
from numallm.kernels.llvm_scalar import at
from numallm.kernels.qcodes import row_geometry
from numallm.kernels.unpack import sub_size, unpack_row
from numallm.kernels.vec import vfma16, vload16, vstore16, vzero16
from numallm.kernels.vec_tile import idot16, izero16, vfmai16
from numba import njit

TILE_ROWS = 16  # the lanes of one I32x16
# Two registers per token (int32 and float32 accumulators): 8 tokens fill 16 of the
# 32 zmm registers; with AVX2 an I32x16 takes two of the 16 ymm registers.
TILE_TOKENS = 8 if has_avx512() else 3


@njit(nogil=True, cache=True)
def _tile_times_tokens(tq, td, tm, S, xq, xd, xsum, t0, nt, res):  # type: ignore[no-untyped-def]
    """res[16j:16j+16] = the tile's 16 rows . token t0 + j for j < nt <= TILE_TOKENS;
    xsum is the activation's sum per S elements (xs for S = 32, xs16 for 16)."""
    nsub = td.shape[0] // TILE_ROWS
    x0 = xq[t0]
    x1 = xq[t0 + min(1, nt - 1)]
    x2 = xq[t0 + min(2, nt - 1)]
    x3 = xq[t0 + min(3, nt - 1)]
    x4 = xq[t0 + min(4, nt - 1)]
    x5 = xq[t0 + min(5, nt - 1)]
    x6 = xq[t0 + min(6, nt - 1)]
    x7 = xq[t0 + min(7, nt - 1)]
    d0, s0 = xd[t0], xsum[t0]
    d1, s1 = xd[t0 + min(1, nt - 1)], xsum[t0 + min(1, nt - 1)]
    d2, s2 = xd[t0 + min(2, nt - 1)], xsum[t0 + min(2, nt - 1)]
    d3, s3 = xd[t0 + min(3, nt - 1)], xsum[t0 + min(3, nt - 1)]
    d4, s4 = xd[t0 + min(4, nt - 1)], xsum[t0 + min(4, nt - 1)]
    d5, s5 = xd[t0 + min(5, nt - 1)], xsum[t0 + min(5, nt - 1)]
    d6, s6 = xd[t0 + min(6, nt - 1)], xsum[t0 + min(6, nt - 1)]
    d7, s7 = xd[t0 + min(7, nt - 1)], xsum[t0 + min(7, nt - 1)]
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
                i0 = idot16(i0, tq, p, x0, 4 * c)
                i1 = idot16(i1, tq, p, x1, 4 * c)
                i2 = idot16(i2, tq, p, x2, 4 * c)
                if TILE_TOKENS > 3:
                    i3 = idot16(i3, tq, p, x3, 4 * c)
                    i4 = idot16(i4, tq, p, x4, 4 * c)
                    i5 = idot16(i5, tq, p, x5, 4 * c)
                    i6 = idot16(i6, tq, p, x6, 4 * c)
                    i7 = idot16(i7, tq, p, x7, 4 * c)
        dv = vload16(td, 16 * s)
        mv = vload16(tm, 16 * s)
        b = S * s // 32
        f0 = vfma16(vfmai16(f0, i0, dv, at(d0, b)), mv, at(s0, s))
        f1 = vfma16(vfmai16(f1, i1, dv, at(d1, b)), mv, at(s1, s))
        f2 = vfma16(vfmai16(f2, i2, dv, at(d2, b)), mv, at(s2, s))
        if TILE_TOKENS > 3:
            f3 = vfma16(vfmai16(f3, i3, dv, at(d3, b)), mv, at(s3, s))
            f4 = vfma16(vfmai16(f4, i4, dv, at(d4, b)), mv, at(s4, s))
            f5 = vfma16(vfmai16(f5, i5, dv, at(d5, b)), mv, at(s5, s))
            f6 = vfma16(vfmai16(f6, i6, dv, at(d6, b)), mv, at(s6, s))
            f7 = vfma16(vfmai16(f7, i7, dv, at(d7, b)), mv, at(s7, s))
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
    xq, xd, xs, xs16 = quantize_rows(X)
    xsum = xs if S == 32 else xs16
    q = np.empty(cols, np.uint8)
    d = np.empty(nsub, np.float32)
    m = np.empty(nsub, np.float32)
    tq = np.zeros(cols * TILE_ROWS, np.uint8)
    tq32 = tq.view(np.uint32)
    td = np.zeros(nsub * TILE_ROWS, np.float32)
    tm = np.zeros(nsub * TILE_ROWS, np.float32)
    res = np.empty(TILE_ROWS * TILE_TOKENS, np.float32)
    for rt in range(r0, r1, TILE_ROWS):
        nr = min(TILE_ROWS, r1 - rt)
        for i in range(nr):
            unpack_row(qcode, w, (rt + i) * rb, nb, q, d, m)
            q32 = q.view(np.uint32)
            for c in range(cols // 4):
                tq32[16 * c + i] = q32[c]
            for s in range(nsub):
                td[16 * s + i] = d[s]
                tm[16 * s + i] = m[s]
        for t in range(0, n, TILE_TOKENS):
            nt = min(TILE_TOKENS, n - t)
            _tile_times_tokens(tq, td, tm, S, xq, xd, xsum, t, nt, res)
            store_tile(res, out, t, nt, rt, nr)
