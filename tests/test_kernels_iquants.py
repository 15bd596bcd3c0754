"""The i-quants, TQ1_0, TQ2_0 and MXFP4 beyond tests/test_kernels.py (which runs their
matvec, matmul and unpacked form with the other types): decoding bit for bit as
gguf-py and matvec on edge-case blocks, and llama.cpp's q8_K activations.

Edge cases: every byte 0xFF (the last grid entries, all signs set, the largest
sub-scales), every byte 0, zero block scales under random quants, and the largest
negative float16 scale.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as T
from iq_blocks import RANDOM_BLOCK_TYPES, random_blocks
from numallm import kernels as K
from numallm.kernels import jit
from numallm.kernels.drivers.actq import quantize_x_k
from test_kernels import error_bound


def _cases(qtype: T, rows: int, cols: int) -> list[np.ndarray]:
    return [random_blocks(qtype, rows, cols, seed=1),
            random_blocks(qtype, rows, cols, fill=0xFF, scale=3.0),
            random_blocks(qtype, rows, cols, fill=0x00, scale=0.0),
            random_blocks(qtype, rows, cols, seed=2, scale=0.0),
            random_blocks(qtype, rows, cols, seed=3, scale=-65504.0)]


@pytest.mark.parametrize("qtype", sorted(RANDOM_BLOCK_TYPES), ids=lambda t: t.name)
def test_edge_blocks_decode_bit_exact(qtype: T) -> None:
    bs = GGML_QUANT_SIZES[qtype][0]
    rows, cols = 21, 2 * bs  # a tile of 16 rows for the tiled types, then 5 in file layout
    get_rows = jit.kernels_for(int(qtype)).get_rows  # this type's kernels only
    ids = np.array([4, 0, 2, 2, 1, 3, 15, 16, 20])
    for raw in _cases(qtype, rows, cols):
        ref = quants.dequantize(raw, qtype).reshape(rows, cols)
        out = np.full((len(ids), cols), np.nan, np.float32)
        get_rows(K.pack(qtype, raw, rows, cols), rows, cols, ids, out)
        assert np.array_equal(out.view(np.uint32), ref[ids].view(np.uint32))


@pytest.mark.parametrize("qtype", sorted(RANDOM_BLOCK_TYPES), ids=lambda t: t.name)
def test_edge_blocks_matvec(qtype: T) -> None:
    """matvec (the grid types' AVX-512 VBMI super-block dots on such a CPU) on the edge
    blocks: the last grid rows, every sign and delta bit, zero and extreme scales."""
    bs = GGML_QUANT_SIZES[qtype][0]
    rows, cols = 21, 2 * bs
    x = np.random.default_rng(5).standard_normal(cols).astype(np.float32)
    for raw in _cases(qtype, rows, cols):
        W = quants.dequantize(raw, qtype).reshape(rows, cols).astype(np.float64)
        out = np.full(rows, np.nan, np.float32)
        K.matvec(qtype, K.pack(qtype, raw, rows, cols), rows, cols, x, out, 0, rows)
        assert np.all(np.abs(out - W @ x) <= error_bound(qtype, W, x))


def test_q8_k_is_llama_cpps() -> None:
    """quantize_x_k against quantize_row_q8_K_ref written out in numpy: the same q and d
    up to one sign per block (llama.cpp divides by the signed extreme; the products
    d * q are the same), and block sums as actq.quantize_x keeps them."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(1024).astype(np.float32)
    x[256:512] = 0  # an all-zero block
    x[600] = -9.0  # a negative extreme
    xq, xd = np.empty(1024, np.int8), np.empty(32, np.float32)
    xs, xs16 = np.empty(32, np.float32), np.empty(64, np.float32)
    quantize_x_k(x, xq, xd, xs, xs16)
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
    sums = xq.astype(np.float32).reshape(-1, 16).sum(axis=1)
    assert np.array_equal(xs16, np.repeat(xd, 2) * sums)
    assert np.array_equal(xs, xd * sums.reshape(-1, 2).sum(axis=1))
