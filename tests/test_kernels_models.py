"""The kernels on real tensors of the two models: every type they use (Q4_1, Q8_0 from
SmolLM2; Q5_0, Q4_K, Q6_K, Q8_0 from Gemma 3), against gguf.quants.dequantize.

Same bound as tests/test_kernels.py: the int8 quantization of x (at most d_b / 2 per
element) times sum|w| per block, plus float32 rounding, for matvec and for a matmul
batch large enough for the int8 tile GEMM (jit.GEMM_MIN_TOKENS + 1 tokens).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants
from numallm import kernels as K
from numallm.engine.gguf_file import read_gguf
from numallm.engine.model_store import fetch_known_model
from numallm.kernels import jit
from test_kernels import error_bound

ROWS = 96  # enough rows for every kind of block, few enough to stay fast


def first_tensors(model: str) -> dict[T, tuple[str, np.ndarray, int]]:
    """{type: (name, file bytes of the first ROWS rows, cols)} of each matrix type."""
    path = fetch_known_model(model, quiet=True)
    found: dict[T, tuple[str, np.ndarray, int]] = {}
    for t in read_gguf(path).tensors.values():
        if len(t.shape) == 2 and t.qtype not in found and t.qtype != T.F32:
            raw = np.fromfile(path, np.uint8, count=ROWS * t.row_bytes, offset=t.offset)
            found[t.qtype] = (t.name, raw.reshape(ROWS, t.row_bytes), t.cols)
    return found


@pytest.mark.model
@pytest.mark.parametrize(("model", "expected"), [("smollm2", {T.Q4_1, T.Q8_0}),
                                                 ("gemma3", {T.Q5_0, T.Q4_K, T.Q6_K, T.Q8_0})])
def test_real_tensors(model: str, expected: set[T]) -> None:
    tensors = first_tensors(model)
    assert expected <= set(tensors)
    rng = np.random.default_rng(0)
    for qtype, (name, raw, cols) in tensors.items():
        K.check_type(qtype, name, cols)
        W = quants.dequantize(raw, qtype).reshape(ROWS, cols).astype(np.float64)
        w = K.pack(qtype, raw, ROWS, cols)
        x = rng.standard_normal(cols).astype(np.float32)
        out = np.empty(ROWS, np.float32)
        K.matvec(qtype, w, ROWS, cols, x, out, 0, ROWS)
        assert np.all(np.abs(out - W @ x) <= error_bound(qtype, W, x)), name
        n = jit.GEMM_MIN_TOKENS + 1
        X = rng.standard_normal((n, cols)).astype(np.float32)
        outs = np.empty((n, ROWS), np.float32)
        K.matmul(qtype, w, ROWS, cols, X, outs, 0, ROWS)
        for t in range(n):
            assert np.all(np.abs(outs[t] - W @ X[t]) <= error_bound(qtype, W, X[t])), name
