"""Activation quantization for the SIMD kernels: float32 x -> int8 blocks of 32.

As llama.cpp's q8_0/q8_1: per block of 32, d = max|x| / 127 and q = round(x / d), so
|q| <= 127 (never -128, which the sign trick of vec._dot_s8s8 needs). Kept with it:
xs[b] = d * sum(q) for the weight types with a min or an offset, and the same per 16
elements, xs16, for the K-quants whose scales cover 16 elements. The rounding
error is at most d/2 per element, which gives the SIMD kernels a relative L2 error of
about 5e-3 against float64; tests/test_kernels.py bounds it.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def quantize_x(x, xq, xd, xs, xs16):  # type: ignore[no-untyped-def]
    for b in range(x.shape[0] // 32):
        amax = np.float32(0.0)
        for j in range(32):
            amax = max(amax, abs(x[32 * b + j]))
        d = amax / np.float32(127.0)
        inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        s0 = 0
        s1 = 0
        for j in range(16):
            q0 = np.int32(np.rint(x[32 * b + j] * inv))
            q1 = np.int32(np.rint(x[32 * b + 16 + j] * inv))
            xq[32 * b + j] = q0
            xq[32 * b + 16 + j] = q1
            s0 += q0
            s1 += q1
        xd[b] = d
        xs16[2 * b] = d * np.float32(s0)
        xs16[2 * b + 1] = d * np.float32(s1)
        xs[b] = d * np.float32(s0 + s1)


@njit(nogil=True, cache=True)
def quantized_x(x):  # type: ignore[no-untyped-def]
    """(xq, xd, xs, xs16) of x, freshly allocated (cols + 4 * cols / 8 bytes)."""
    n = x.shape[0]
    xq = np.empty(n, np.int8)
    xd = np.empty(n // 32, np.float32)
    xs = np.empty(n // 32, np.float32)
    xs16 = np.empty(n // 16, np.float32)
    quantize_x(x, xq, xd, xs, xs16)
    return xq, xd, xs, xs16


@njit(nogil=True, cache=True)
def quantize_rows(X):  # type: ignore[no-untyped-def]
    """(xq, xd, xs, xs16) of every row of X[n, cols], each array with n rows."""
    n, cols = X.shape
    xq = np.empty((n, cols), np.int8)
    xd = np.empty((n, cols // 32), np.float32)
    xs = np.empty((n, cols // 32), np.float32)
    xs16 = np.empty((n, cols // 16), np.float32)
    for t in range(n):
        quantize_x(X[t], xq[t], xd[t], xs[t], xs16[t])
    return xq, xd, xs, xs16
