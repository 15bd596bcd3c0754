"""The vector helpers between the matrix products: the int8 quantization of activations
(kernels/drivers/actq.py) against llama.cpp's q8 rule written out in numpy, and ggml's expf
approximation with the SiLU and softmax loops built on it (kernels/dense/expf.py)."""

from __future__ import annotations

import numpy as np
from numba import njit

from numallm.kernels.drivers.actq import quantize_rows
from numallm.kernels.dense.expf import exp_shifted, expf_approx, silu_mul


def _q8_reference(X: np.ndarray) -> tuple[np.ndarray, ...]:
    """quantize_row_q8_1's rule per block of 32: d = max|x| / 127, q = rint(x / d)."""
    n, cols = X.shape
    blocks = X.reshape(n, cols // 32, 32)
    amax = np.abs(blocks).max(axis=2)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inv[..., None]).astype(np.int32)
    s16 = q.reshape(n, cols // 16, 16).sum(axis=2).astype(np.float32)
    return (q.reshape(n, cols).astype(np.int8), d, d * q.sum(axis=2).astype(np.float32),
            np.repeat(d, 2, axis=1) * s16)


def test_activation_quantization_matches_the_q8_rule_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((5, 1536)) * rng.uniform(1e-3, 80, (5, 1))).astype(np.float32)
    X[0, :32] = 0.0                       # an all-zero block: d = 0, q = 0
    X[1, 40] = -3e4                       # one large value dominates its block
    X[2, 64:96] = np.float32(63.5) / 127  # ties of rint, to even
    for got, want in zip(quantize_rows(X), _q8_reference(X)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@njit
def _scalar_exp(x):  # type: ignore[no-untyped-def]
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = expf_approx(x[i])
    return out


def test_expf_is_within_2_ulp_and_the_same_in_vectors_and_tails() -> None:
    x = np.linspace(-87, 88, 100_003, dtype=np.float32)
    exact = np.exp(x.astype(np.float64))
    scalar = _scalar_exp(x)
    np.testing.assert_allclose(scalar, exact, rtol=2 * 2.0**-23)
    shifted = x.copy()
    exp_shifted(shifted, 0, x.size, np.float32(0.0))
    np.testing.assert_array_equal(shifted.view(np.uint32), scalar.view(np.uint32))  # lanes = tail loop
    scores = x[x < 10].copy()  # softmax's case: shifted by the maximum, every value <= 0
    total = exp_shifted(scores, 0, scores.size, np.float32(10.0))
    want = np.exp(x[x < 10].astype(np.float64) - 10.0).sum()
    assert abs(total - want) < 1e-6 * want
    assert _scalar_exp(np.array([89.0, -120.0], np.float32)).tolist() == [np.inf, 0.0]


def test_softmax_exp_leaves_the_rest_of_the_row_alone() -> None:
    s = np.arange(40, dtype=np.float32)
    exp_shifted(s, 5, 29, np.float32(28.0))
    assert s[:5].tolist() == list(range(5)) and s[29:].tolist() == list(range(29, 40))
    np.testing.assert_allclose(s[5:29], np.exp(np.arange(5, 29) - 28.0), rtol=3e-7)


def test_silu_mul_is_accurate_and_independent_of_how_the_row_is_split() -> None:
    rng = np.random.default_rng(1)
    g = (rng.standard_normal(1000) * 12).astype(np.float32)
    u = rng.standard_normal(1000).astype(np.float32)
    whole = g.copy()
    silu_mul(whole, u, 3, 997)
    g64 = g.astype(np.float64)
    want = g64 / (1 + np.exp(-g64)) * u
    np.testing.assert_allclose(whole[3:997], want[3:997], rtol=1e-6, atol=1e-30)
    assert np.array_equal(whole[:3], g[:3]) and np.array_equal(whole[997:], g[997:])
    split = g.copy()  # as two workers' row ranges would cut it
    silu_mul(split, u, 3, 501)
    silu_mul(split, u, 501, 997)
    np.testing.assert_array_equal(split, whole)
