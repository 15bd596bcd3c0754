"""Below the GEMM threshold, the multi-token kernels (for Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K,
IQ4_NL, IQ4_XS and MXFP4 the tile kernels of kernels/families/q4_q8/tiles.py, kquants/tiles.py
and iquants/tiles.py by 8, 4, 2 and 1 tokens;
rows_q45_x2/_x4 for Q5_0 and Q5_1; a rows_dot per token for the other K-quants) give every token exactly the
single-token matvec's output, and for the tiled types so does every batch size: the
server promises a request's greedy output is the same alone or beside others, and a
prompt's logits do not depend on how it was cut into chunks."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from numallm import kernels as K
from test_kernels import make_weight


@pytest.mark.parametrize("qtype", (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K,
                                   T.Q6_K, T.IQ4_NL, T.IQ4_XS, T.MXFP4), ids=lambda t: t.name)
def test_matmul_is_bit_identical_to_per_token_matvec(qtype: T) -> None:
    """1-9 tokens: no group of 4, one or two groups and every remainder (a pair, a
    single, both). 19 blocks of 32 per row are two full groups of 8 and a tail of 3 (the
    K-quants: 3 super-blocks); rows 3..30 of 37 start and end inside the row tiles (of
    16 rows for the tiled types, whose rows 32..36 are grouped)."""
    rng = np.random.default_rng(3)
    rows, cols = 37, (3 * 256 if qtype >= T.Q2_K else 19 * 32)
    w = K.pack(qtype, make_weight(qtype, rows, cols, seed=4), rows, cols)
    for r0, r1 in ((3, 30), (0, rows)):
        for n in range(1, 10):
            X = rng.standard_normal((n, cols)).astype(np.float32)
            out = np.full((n, rows), np.nan, np.float32)
            K.matmul(qtype, w, rows, cols, X, out, r0, r1)
            expected = np.full((n, rows), np.nan, np.float32)
            for t in range(n):
                K.matvec(qtype, w, rows, cols, X[t], expected[t], r0, r1)
            np.testing.assert_array_equal(out, expected, err_msg=f"n={n} rows {r0}..{r1}")


@pytest.mark.parametrize("qtype", (T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS,
                                   T.MXFP4), ids=lambda t: t.name)
def test_tiled_types_give_the_same_bits_for_any_batch(qtype: T) -> None:
    """Batches of the GEMM's size and more (every token through the tile kernel, and
    every remainder after the passes of 8) give each token matvec's bits."""
    from numallm.kernels.jit import GEMM_MIN_TOKENS

    rng = np.random.default_rng(5)
    rows, cols = 37, 19 * 32 if GGML_QUANT_SIZES[qtype][0] == 32 else 3 * 256
    w = K.pack(qtype, make_weight(qtype, rows, cols, seed=6), rows, cols)
    for n in (15, GEMM_MIN_TOKENS + 7):
        X = rng.standard_normal((n, cols)).astype(np.float32)
        out = np.empty((n, rows), np.float32)
        K.matmul(qtype, w, rows, cols, X, out, 0, rows)
        expected = np.empty((n, rows), np.float32)
        for t in range(n):
            K.matvec(qtype, w, rows, cols, X[t], expected[t], 0, rows)
        np.testing.assert_array_equal(out, expected, err_msg=f"n={n}")
