"""matvec and matmul over quantized types with the SIMD row dots of kernels/fastdot.py.

The activation is quantized to int8 once per call (actq), then each row in [r0, r1)
is one call of fastdot.rows_dot. matmul (used for fewer than jit.GEMM_MIN_TOKENS
tokens) quantizes every token once and walks the weight in tiles of ROW_TILE rows: a tile (a few KiB) stays in L1/L2 while all tokens use it, so every
weight block is read from memory once per call, and the int8 tokens (n * cols bytes)
are streamed from cache.
"""

from __future__ import annotations

from numallm.kernels.actq import quantize_rows, quantized_x
from numallm.kernels.fastdot import rows_dot
from numallm.kernels.qcodes import row_geometry
from numba import njit

ROW_TILE = 16


@njit(nogil=True, cache=True)
def matvec(qcode, w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
    nb, rb = row_geometry(qcode, cols)
    xq, xd, xs, xs16 = quantized_x(x)
    rows_dot(qcode, w, rb, nb, xq, xd, xs, xs16, out, r0, r1)


@njit(nogil=True, cache=True)
def matmul(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    nb, rb = row_geometry(qcode, cols)
    n = X.shape[0]
    xq, xd, xs, xs16 = quantize_rows(X)
    for rt in range(r0, r1, ROW_TILE):
        re = min(rt + ROW_TILE, r1)
        for t in range(n):
            rows_dot(qcode, w, rb, nb, xq[t], xd[t], xs[t], xs16[t], out[t], rt, re)
