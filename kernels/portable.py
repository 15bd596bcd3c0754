"""Float kernels on any CPU: decode a row to float32, then dot (matvec, get_rows).

The matvec of F32, F16 and BF16 weights, and every get_rows. x stays float32 (no
activation quantization), so the only error is float32 rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from numallm.kernels.decode import (BF16, F16, F32, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1,
                                    Q5_K, Q6_K, Q8_0, decode_row)

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
def get_rows(qcode, w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
    bs, ts = geometry(qcode)
    nb = cols // bs
    rb = nb * ts
    for i in range(ids.shape[0]):
        r = ids[i]
        if r < 0 or r >= rows:
            raise IndexError("get_rows: row id out of range")
        decode_row(qcode, w, r * rb, nb, out[i])
