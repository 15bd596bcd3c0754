"""The F16 KV cache stores float16 bits converted inside compiled code (Numba has no
float16 type): the conversion must round exactly as numpy (and ggml) do, and reading
the bits back (kernels/dense/kvrow.py) must give numpy's float32 of every bit pattern."""

from __future__ import annotations

import numpy as np
import pytest

from numallm.kernels.dense.kvrow import f32_to_f16_bits, rows_axpy, rows_dot


def _read(bits: np.ndarray) -> np.ndarray:
    out = np.zeros(bits.shape, np.float32)
    rows_axpy(out, np.ones(1, np.float32), np.float32(1.0), bits, 0, 0, 1)  # one row of len(bits)
    return out


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
    np.testing.assert_array_equal(_read(out), expected.astype(np.float32))


def test_nan_stays_nan() -> None:
    # 17: a 16-lane vector and the scalar tail
    out = np.empty(17, np.uint16)
    f32_to_f16_bits(np.full(17, np.nan, np.float32), out)
    assert np.isnan(_read(out)).all()


def test_every_f16_bit_pattern_reads_back_as_numpy_does() -> None:
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    np.testing.assert_array_equal(_read(bits), bits.view(np.float16).astype(np.float32))


# 64-column blocks (one, two), 16-lane vectors alone, and the plain loops
@pytest.mark.parametrize("d", [64, 128, 80, 40])
def test_rows_dot_and_axpy_of_f16_and_f32_rows(d: int) -> None:
    rng = np.random.default_rng(1)
    q = rng.standard_normal(d).astype(np.float32)
    rows = rng.standard_normal((9, d)).astype(np.float16)
    w = rng.random(9).astype(np.float32)
    exact = rows.astype(np.float64) @ q.astype(np.float64)
    for block in (rows.view(np.uint16), rows.astype(np.float32)):
        # the rows sit at element 3 * d of a flat cache, as a slot's rows do in the whole cache
        flat = np.concatenate([np.full(3 * d, 7, block.dtype), block.reshape(-1), np.full(d, 7, block.dtype)])
        out = np.full(9, np.nan, np.float32)
        rows_dot(q, flat, 3 * d, 2, 7, np.float32(0.5), out)  # only positions 2..6
        assert np.isnan(out[:2]).all() and np.isnan(out[7:]).all()
        # float32 sums in a vectorised order: about 1e-6 relative
        np.testing.assert_allclose(out[2:7], 0.5 * exact[2:7], atol=1e-4 * np.abs(q).sum())
        acc = np.ones(d, np.float32)  # added to
        rows_axpy(acc, w, np.float32(2.0), flat, 3 * d, 2, 7)
        want = 1.0 + (2.0 * w[2:7, None].astype(np.float64) * rows[2:7].astype(np.float64)).sum(0)
        np.testing.assert_allclose(acc, want, rtol=1e-5, atol=1e-5)
