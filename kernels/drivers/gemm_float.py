"""matmul for batches of tokens: decode a tile of rows once, then a float32 micro-kernel.

For float weights (F32, F16, BF16); quantized batches take the tiled kernel
(families/q4_q8/tiles.py) or the faster int8 tile GEMM (drivers/gemm_int8.py).

A tile of TILE_ROWS weight rows is decoded to float32 (drivers/decode.py) and stored
k-major (tile[k, i] = W[row i, k]), then every group of TILE_TOKENS tokens is
multiplied with it by outer products: per k one 16-float load of the tile and one
broadcast FMA per token into its 16-lane accumulator: 16 multiply-adds per instruction, the
int8 matvec kernels about 3. The decode is paid once per tile and the weight is
read from memory once per call; benchmarks/README.md has the speed against matvec.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels.drivers.decode import decode_row
from numallm.kernels.simd.cpu import has_avx512
from numallm.kernels.simd.scalar import at
from numallm.kernels.simd.vec import vfma16, vload16, vstore16, vzero16
from numallm.kernels.traits import row_geometry
from numba import njit

TILE_ROWS = 16  # one 16-lane vector of the tile per k
# Eight FMA chains cover the FMA latency on AVX-512 (32 registers); AVX2 has 16 ymm
# registers, which hold six 16-lane accumulators (two ymm each) and the tile vector.
TILE_TOKENS = 8 if has_avx512() else 6


@njit(nogil=True, cache=True)
def _tile_times_tokens(tile, X, t0, nt, res):  # type: ignore[no-untyped-def]
    """res[16j:16j+16] = tile^T . X[t0 + j] for j < nt <= TILE_TOKENS. Accumulators 6 and
    7 exist only when TILE_TOKENS is 8 (a compile-time constant: LLVM drops them)."""
    cols = X.shape[1]
    x0 = X[t0]
    x1 = X[t0 + min(1, nt - 1)]
    x2 = X[t0 + min(2, nt - 1)]
    x3 = X[t0 + min(3, nt - 1)]
    x4 = X[t0 + min(4, nt - 1)]
    x5 = X[t0 + min(5, nt - 1)]
    x6 = X[t0 + min(6, nt - 1)]
    x7 = X[t0 + min(7, nt - 1)]
    a0 = vzero16()
    a1 = vzero16()
    a2 = vzero16()
    a3 = vzero16()
    a4 = vzero16()
    a5 = vzero16()
    a6 = vzero16()
    a7 = vzero16()
    for k in range(cols):
        v = vload16(tile, 16 * k)
        a0 = vfma16(a0, v, at(x0, k))
        a1 = vfma16(a1, v, at(x1, k))
        a2 = vfma16(a2, v, at(x2, k))
        a3 = vfma16(a3, v, at(x3, k))
        a4 = vfma16(a4, v, at(x4, k))
        a5 = vfma16(a5, v, at(x5, k))
        if TILE_TOKENS == 8:
            a6 = vfma16(a6, v, at(x6, k))
            a7 = vfma16(a7, v, at(x7, k))
    vstore16(res, 0, a0)
    vstore16(res, 16, a1)
    vstore16(res, 32, a2)
    vstore16(res, 48, a3)
    vstore16(res, 64, a4)
    vstore16(res, 80, a5)
    if TILE_TOKENS == 8:
        vstore16(res, 96, a6)
        vstore16(res, 112, a7)


@njit(inline="always", cache=True)
def store_tile(res, out, t, nt, rt, nr):  # type: ignore[no-untyped-def]
    """out[t + j, rt + i] = res[16 j + i]: a micro-kernel's results for nt tokens x nr rows."""
    for j in range(nt):
        for i in range(nr):
            out[t + j, rt + i] = res[16 * j + i]


@njit(nogil=True, cache=True)
def matmul(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    nb, rb = row_geometry(qcode, cols)
    n = X.shape[0]
    row = np.empty(cols, np.float32)
    tile = np.zeros(cols * TILE_ROWS, np.float32)
    res = np.empty(TILE_ROWS * TILE_TOKENS, np.float32)
    for rt in range(r0, r1, TILE_ROWS):
        nr = min(TILE_ROWS, r1 - rt)
        for i in range(nr):
            decode_row(qcode, w, (rt + i) * rb, nb, row)
            for k in range(cols):
                tile[16 * k + i] = row[k]
        for t in range(0, n, TILE_TOKENS):
            nt = min(TILE_TOKENS, n - t)
            _tile_times_tokens(tile, X, t, nt, res)
            store_tile(res, out, t, nt, rt, nr)
