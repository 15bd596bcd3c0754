"""Numba-callable entry points, dispatching on the integer GGML type code.

Call these from your own `@njit(nogil=True)` code (e.g. a whole token per pinned
worker): `qcode` is `int(GGMLQuantizationType)`, `w` a packed buffer from
numallm.kernels.pack, every other argument as in numallm.kernels.matvec & co.
matvec of quantized types runs the SIMD kernels of kernels/fast.py (activation
quantized to int8 blocks, see kernels/actq.py), of F32, F16 and BF16 the float
kernel of kernels/floatdot.py; matmul of GEMM_MIN_TOKENS or more the int8 tile GEMM of
kernels/igemm.py for quantized weights (on the same int8 quantization of x, so that
every batch size gives the same numbers as token-by-token matvec) and the float32
micro-kernel of kernels/gemm.py for float weights. The
instruction set is the one Numba compiles for (see kernels/cpu.py), so a cached
build never runs on a CPU it was not built for.
Each call checks its shapes and row range once (ValueError) and then reads memory
unchecked.
"""

from __future__ import annotations

import numpy as np
from numallm.kernels import fast, gemm, igemm
from numallm.kernels.actq import as_quantized
from numallm.kernels.cpu import has_vnni256
from numallm.kernels.decode import get_rows as decode_rows
from numallm.kernels.floatdot import rows_float
from numallm.kernels.qcodes import BF16, F16, F32, Q8_0, geometry
from numba import njit

# From this many tokens on, unpacking a tile of rows once (kernels/igemm.py) beats the
# int8 row kernels run once per token (kernels/fast.py): the unpack costs what 20-40
# tokens through the row kernels do (benchmarks/README.md). Float weights always
# take the tile GEMM.
GEMM_MIN_TOKENS = 32
# Q8_0's quants as unsigned bytes (w + 128) would saturate vpmaddubsw: without VNNI
# its batches take the float32 micro-kernel.
INT8_GEMM_Q8_0 = has_vnni256()


@njit(nogil=True, cache=True)
def _check(qcode, w, rows, cols, r0, r1):  # type: ignore[no-untyped-def]
    bs, ts = geometry(qcode)
    if bs == 0:
        raise ValueError("unsupported GGML type code")
    if cols <= 0 or cols % bs != 0:
        raise ValueError("cols is not a positive multiple of the type's block size")
    if w.shape[0] < rows * (cols // bs) * ts:
        raise ValueError("weight buffer is smaller than rows * row bytes")
    if r0 < 0 or r1 < r0 or r1 > rows:
        raise ValueError("row range [r0, r1) is not inside [0, rows)")


@njit(nogil=True, cache=True)
def matvec(qcode, w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
    """out[r0:r1] = W[r0:r1] @ x."""
    _check(qcode, w, rows, cols, r0, r1)
    if x.shape[0] != cols or out.shape[0] < r1:
        raise ValueError("matvec: x must have cols elements and out at least r1")
    if qcode == F32 or qcode == F16 or qcode == BF16:
        rows_float(qcode, w, cols, x, out, r0, r1)
    else:
        fast.matvec(qcode, w, rows, cols, x, out, r0, r1)


@njit(nogil=True, cache=True)
def matmul(qcode, w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
    """out[:, r0:r1] = X @ W[r0:r1].T for X float32[n, cols], out float32[n, rows]."""
    _check(qcode, w, rows, cols, r0, r1)
    if X.shape[1] != cols or out.shape[0] != X.shape[0] or out.shape[1] < r1:
        raise ValueError("matmul: X must be [n, cols] and out [n, >= r1]")
    if qcode == F32 or qcode == F16 or qcode == BF16:
        gemm.matmul(qcode, w, rows, cols, X, out, r0, r1)
    elif X.shape[0] < GEMM_MIN_TOKENS:
        fast.matmul(qcode, w, rows, cols, X, out, r0, r1)
    elif qcode == Q8_0 and not INT8_GEMM_Q8_0:
        gemm.matmul(qcode, w, rows, cols, as_quantized(X), out, r0, r1)
    else:
        igemm.matmul(qcode, w, rows, cols, X, out, r0, r1)


@njit(nogil=True, cache=True)
def get_rows(qcode, w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
    """out[i] = W[ids[i]] as float32."""
    _check(qcode, w, rows, cols, 0, rows)
    if out.shape[0] != ids.shape[0] or out.shape[1] != cols:
        raise ValueError("get_rows: out must be [len(ids), cols]")
    decode_rows(qcode, w, rows, cols, ids, out)


@njit(nogil=True, cache=True)
def dequantize(qcode, w, rows, cols):  # type: ignore[no-untyped-def]
    """The whole weight as float32[rows, cols]."""
    out = np.empty((rows, cols), np.float32)
    get_rows(qcode, w, rows, cols, np.arange(rows), out)
    return out
