"""Portable matvec / matmul / get_rows on any CPU: decode a row to float32, then dot.

These run wherever Numba runs and are the reference the SIMD kernels are tested
beside. x stays float32 here (no activation quantization), so their only error is
float32 rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from numallm.kernels.decode import (BF16, F16, F32, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1,
                                    Q5_K, Q6_K, Q8_0, decode_row)

# Rows decoded together by matmul: a tile of rows is decoded once and used for every
# token of the batch, so each weight block is read once per matmul call.
ROW_TILE = 16


@njit(inline="always", cache=True)
def geometry(qcode):  # type: ignore[no-untyped-def]
    """(block size, bytes per block) of a GGML type code."""
    if qcode == F32:
        return 1, 4
    if qcode == F16 or qcode == BF16:
        return 1, 2
    if qcode == Q4_0:
        return 32, 18
    if qcode == Q4_1:
        return 32, 20
    if qcode == Q5_0:
        return 32, 22
    if qcode == Q5_1:
        return 32, 24
    if qcode == Q8_0:
        return 32, 34
    if qcode == Q2_K:
        return 256, 84
    if qcode == Q3_K:
        return 256, 110
    if qcode == Q4_K:
        return 256, 144
    if qcode == Q5_K:
        return 256, 176
    if qcode == Q6_K:
        return 256, 210
    return 0, 0


@njit(nogil=True, fastmath=True, cache=True)
def fdot(a, b):  # type: ignore[no-untyped-def]
    # fastmath lets LLVM reassociate the sum into vector lanes; the order changes the
    # rounding only at float32 epsilon level.
    acc = np.float32(0.0)
    for k in range(a.shape[0]):
        acc += a[k] * b[k]
    return acc


@njit(nogil=True, fastmath=True, cache=True)
def fdot4(w, i, x):  # type: ignore[no-untyped-def]
    """Dots of rows i..i+3 of w with x, loading x once for four rows."""
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for k in range(x.shape[0]):
        xk = x[k]
        a0 += w[i, k] * xk
        a1 += w[i + 1, k] * xk
        a2 += w[i + 2, k] * xk
        a3 += w[i + 3, k] * xk
    return a0, a1, a2, a3


@njit(nogil=True, cache=True)
def matvec(qcode, w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
    bs, ts = geometry(qcode)
    nb = cols // bs
    rb = nb * ts
    buf = np.empty(cols, np.float32)
    for r in range(r0, r1):
        decode_row(qcode, w, r * rb, nb, buf)
        out[r] = fdot(buf, x)


@njit(nogil=True, cache=True)
def matmul(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    bs, ts = geometry(qcode)
    nb = cols // bs
    rb = nb * ts
    tile = np.empty((ROW_TILE, cols), np.float32)
    for rt in range(r0, r1, ROW_TILE):
        nr = min(ROW_TILE, r1 - rt)
        for i in range(nr):
            decode_row(qcode, w, (rt + i) * rb, nb, tile[i])
        for t in range(X.shape[0]):
            xt = X[t]
            i = 0
            while i + 4 <= nr:
                a0, a1, a2, a3 = fdot4(tile, i, xt)
                out[t, rt + i] = a0
                out[t, rt + i + 1] = a1
                out[t, rt + i + 2] = a2
                out[t, rt + i + 3] = a3
                i += 4
            while i < nr:
                out[t, rt + i] = fdot(tile[i], xt)
                i += 1


@njit(nogil=True, cache=True)
def get_rows(qcode, w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
    bs, ts = geometry(qcode)
    nb = cols // bs
    rb = nb * ts
    for i in range(ids.shape[0]):
        r = ids[i]
        if r < 0 or r >= rows:
            raise IndexError("get_rows: row id out of range")
        decode_row(qcode, w, r * rb, nb, out[i])
