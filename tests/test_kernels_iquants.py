"""The i-quants, TQ1_0, TQ2_0 and MXFP4 against gguf-py (gguf.quants.dequantize) and
float64 math.

Weights are random bytes with sane float16 scales (every bit pattern of the grid
indices, signs and sub-scales is a block a file can hold), plus edge cases: every
byte 0xFF (the last grid entries, all signs set, the largest sub-scales), every byte
0, and zero scales. Dequantization must give gguf-py's float32 bits; matvec and
matmul must stay within the error of quantizing the activation as llama.cpp pairs
it with each type (q8_0: blocks of 32 for IQ4_NL and MXFP4; q8_K: blocks of 256 for
the others), |x - x_hat| <= d_b / 2 per element, plus float32 rounding.
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as T
from numallm.kernels import iquants as I
from iq_blocks import random_blocks
from numba import njit

IQ_TYPES = tuple(T(c) for c in I.IQ_CODES)


def reference(qtype: T, raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return quants.dequantize(raw, qtype).reshape(rows, cols)


def error_bound(qtype: T, W: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-row bound on |kernel - W @ x| (see the module docstring)."""
    blk = 32 if int(qtype) in I.Q8_0_PAIRED else 256
    absw = np.abs(W)
    xa = np.abs(x.astype(np.float64))
    d = xa.reshape(-1, blk).max(axis=1) / 127
    return 1e-5 * (absw @ xa) + absw.reshape(W.shape[0], -1, blk).sum(axis=2) @ (d / 2) + 1e-30


@cache
def kernels(code: int):  # type: ignore[no-untyped-def]
    """matvec, matmul, get_rows compiled for one type (its code a constant)."""
    @njit
    def matvec(w, rows, cols, x, out, r0, r1):  # type: ignore[no-untyped-def]
        I.matvec_iq(code, w, rows, cols, x, out, r0, r1)

    @njit
    def matmul(w, rows, cols, X, out, r0, r1):  # type: ignore[no-untyped-def]
        I.matmul_iq(code, w, rows, cols, X, out, r0, r1)

    @njit
    def get_rows(w, rows, cols, ids, out):  # type: ignore[no-untyped-def]
        I.get_rows_iq(code, w, rows, cols, ids, out)

    return matvec, matmul, get_rows


def _cases(qtype: T, rows: int, cols: int) -> list[np.ndarray]:
    return [random_blocks(qtype, rows, cols, seed=1),
            random_blocks(qtype, rows, cols, fill=0xFF, scale=3.0),        # last entries, all signs
            random_blocks(qtype, rows, cols, fill=0x00, scale=0.0),        # zero scales
            random_blocks(qtype, rows, cols, seed=2, scale=0.0),           # zero d, random quants
            random_blocks(qtype, rows, cols, seed=3, scale=-65504.0)]      # largest negative d


@pytest.mark.parametrize("qtype", IQ_TYPES, ids=lambda t: t.name)
def test_dequantize_is_bit_exact(qtype: T) -> None:
    bs = GGML_QUANT_SIZES[qtype][0]
    rows, cols = 5, 2 * bs
    get_rows = kernels(int(qtype))[2]
    for raw in _cases(qtype, rows, cols):
        ref = reference(qtype, raw, rows, cols)
        ids = np.array([4, 0, 2, 2, 1, 3])
        out = np.full((len(ids), cols), np.nan, np.float32)
        get_rows(raw.reshape(-1), rows, cols, ids, out)
        assert np.array_equal(out.view(np.uint32), ref[ids].view(np.uint32))


def test_q8_k_is_llama_cpps() -> None:
    """quantize_x_k against quantize_row_q8_K_ref written out in numpy: the same q and d
    up to one sign per block (llama.cpp divides by the signed extreme; the products
    d * q are the same)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(1024).astype(np.float32)
    x[256:512] = 0  # an all-zero block
    x[600] = -9.0  # a negative extreme
    xq = np.empty(1024, np.int8)
    xd = np.empty(32, np.float32)
    xs, xs16 = np.empty(32, np.float32), np.empty(64, np.float32)
    I.quantize_x_k(x, xq, xd, xs, xs16)
    sums = xq.astype(np.float32).reshape(-1, 16).sum(axis=1)
    assert np.array_equal(xs16, np.repeat(xd, 2) * sums)
    assert np.array_equal(xs, xd * sums.reshape(-1, 2).sum(axis=1))
    for b in range(4):
        xb = x[256 * b:256 * b + 256]
        mx = xb[np.argmax(np.abs(xb))]
        if mx == 0:
            q, d = np.zeros(256), np.float32(0)
        else:
            iscale = np.float32(-127.0) / mx
            q = np.minimum(127, np.rint(iscale * xb))
            d = np.float32(1) / iscale
        sign = -1 if mx > 0 else 1
        assert np.array_equal(xq[256 * b:256 * b + 256], sign * q)
        assert np.all(xd[8 * b:8 * b + 8] == sign * d)


@pytest.mark.parametrize("qtype", IQ_TYPES, ids=lambda t: t.name)
def test_matvec_and_matmul_within_activation_error(qtype: T) -> None:
    bs = GGML_QUANT_SIZES[qtype][0]
    matvec, matmul, _ = kernels(int(qtype))
    rng = np.random.default_rng(5)
    for rows, cols in ((1, bs), (19, 3 * bs)):
        raw = random_blocks(qtype, rows, cols, seed=rows)
        w = raw.reshape(-1)
        W = reference(qtype, raw, rows, cols).astype(np.float64)
        X = rng.standard_normal((5, cols)).astype(np.float32)
        out = np.full(rows + 2, np.nan, np.float32)
        cuts = sorted({0, rows // 3, rows})  # uneven shares, as a NUMA split gives
        for r0, r1 in itertools.pairwise(cuts):
            matvec(w, rows, cols, X[0], out, r0, r1)
        assert np.all(np.abs(out[:rows] - W @ X[0]) <= error_bound(qtype, W, X[0]))
        assert np.isnan(out[rows:]).all()
        r0, r1 = (0, 1) if rows == 1 else (2, 19)
        outs = np.full((5, rows), np.nan, np.float32)
        matmul(w, rows, cols, X, outs, r0, r1)
        for t in range(5):
            err = np.abs(outs[t, r0:r1] - W[r0:r1] @ X[t])
            assert np.all(err <= error_bound(qtype, W[r0:r1], X[t])), t
        assert np.isnan(outs[:, :r0]).all() and np.isnan(outs[:, r1:]).all()
