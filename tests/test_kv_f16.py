"""The F16 KV cache stores float16 bits converted inside compiled code (Numba has no
float16 type): the conversion must round exactly as numpy (and ggml) do."""

from __future__ import annotations

import numpy as np

from numallm.engine.forward import f16_table, f32_to_f16_bits


def test_f32_to_f16_matches_numpy_on_edge_cases_and_random_values() -> None:
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1.0, -1.0, 65504.0, 65520.0, 1e9, -1e9, np.inf, -np.inf,
                        6.1e-5, 5.96e-8, 2.98e-8, 1e-10, 0.1, 1 / 3, 2049.0, 2051.0], np.float32)
    # Values exactly halfway between two float16 numbers test round-half-to-even.
    halves = (np.arange(1024, 1100, dtype=np.float32) + 0.5) / 1024
    values = np.concatenate([special, halves, rng.standard_normal(100_000).astype(np.float32) * 100,
                             rng.standard_normal(10_000).astype(np.float32) * 1e-6])
    out = np.empty(values.shape, np.uint16)
    f32_to_f16_bits(values, out)
    with np.errstate(over="ignore"):  # 1e9 overflows to inf, as it must
        expected = values.astype(np.float16)
    np.testing.assert_array_equal(out, expected.view(np.uint16))
    np.testing.assert_array_equal(f16_table()[out], expected.astype(np.float32))


def test_nan_stays_nan() -> None:
    out = np.empty(1, np.uint16)
    f32_to_f16_bits(np.array([np.nan], np.float32), out)
    assert np.isnan(f16_table()[out][0])
