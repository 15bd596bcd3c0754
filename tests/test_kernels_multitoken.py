"""fast.matmul's multi-token row kernels (fastdot_grouped.rows_q45_x4, rows_q8_0_x4)
give every token exactly the single-token matvec's output: the server promises a
request's greedy output is the same alone or beside others."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from numallm import kernels as K
from test_kernels import make_weight


@pytest.mark.parametrize("qtype", (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0), ids=lambda t: t.name)
def test_matmul_is_bit_identical_to_per_token_matvec(qtype: T) -> None:
    """1-9 tokens: no group of 4, one or two groups and every remainder. 19 blocks per
    row are two full groups of 8 and a tail of 3; rows 3..30 of 37 start and end inside
    the tiles of 16."""
    rng = np.random.default_rng(3)
    rows, cols = 37, 19 * 32
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
