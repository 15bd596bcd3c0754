"""The F16 KV cache stores float16 bits converted inside compiled code (Numba has no
float16 type): the conversion must round exactly as numpy (and ggml) do, and reading
the bits back (kernels/dense/kvrow.py) must give numpy's float32 of every bit pattern."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from numallm.engine import forward
from numallm.kernels.dense import kvrow
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


@pytest.mark.parametrize("cache_type", [np.uint16, np.float32])
def test_four_queries_at_a_time_give_each_query_its_own_bits(cache_type: type) -> None:
    """rows_dot_x4 and rows_axpy_x4 (a prompt's tokens four at a time) against rows_dot
    and rows_axpy of each query: equal bits, also where the four end at different rows."""
    rng = np.random.default_rng(2)
    d, n_rows, stride = 128, 23, 25
    rows = rng.standard_normal((n_rows, d)).astype(np.float16)
    block = rows.view(np.uint16) if cache_type == np.uint16 else rows.astype(np.float32)
    flat = np.concatenate([np.zeros(2 * d, block.dtype), block.reshape(-1)])  # rows from element 2 * d
    q4 = rng.standard_normal(4 * d).astype(np.float32)
    start, ends = 3, np.array([20, 23, 17, 22], np.int64)
    out4 = np.zeros(4 * stride, np.float32)
    kvrow.rows_dot_x4(q4, flat, 2 * d, start, int(ends.min()), np.float32(0.25), out4, stride)
    w = rng.random(4 * stride).astype(np.float32)
    acc4 = np.zeros(4 * d, np.float32)
    kvrow.rows_axpy_x4(acc4, w, stride, flat, 2 * d, start, ends)
    for k in range(4):
        one = np.zeros(stride, np.float32)
        rows_dot(q4[k * d:(k + 1) * d], flat, 2 * d, start, int(ends.min()), np.float32(0.25), one)
        np.testing.assert_array_equal(out4[k * stride:(k + 1) * stride], one)
        acc = np.zeros(d, np.float32)
        rows_axpy(acc, w[k * stride:(k + 1) * stride], np.float32(1.0), flat, 2 * d, start, int(ends[k]))
        np.testing.assert_array_equal(acc4[k * d:(k + 1) * d], acc)


class _Heads(NamedTuple):
    """The fields of HParams that attention reads."""

    head_dim: int
    n_head: int
    n_head_kv: int
    attn_scale: float


@pytest.mark.parametrize(("head_dim", "n_head_kv", "window"), [(128, 4, 0), (64, 2, 5), (80, 1, 0)])
def test_attention_of_a_batch_is_each_token_alone(head_dim: int, n_head_kv: int, window: int) -> None:
    """The forward pass's attention of tokens of two slots, out of order, some in fours:
    every token's output has the bits it gets alone (a decode step)."""
    hp = _Heads(head_dim, 4, n_head_kv, 0.088)
    rng = np.random.default_rng(3)
    shape = (2, 2, n_head_kv, 48, head_dim)
    kc, vc = (rng.standard_normal(shape).astype(np.float16).view(np.uint16) for _ in range(2))
    n = 23
    q = rng.standard_normal((n, hp.n_head * head_dim)).astype(np.float32)
    slots = np.array([0] * 9 + [1] * 6 + [0] * 8, np.int32)
    positions = np.concatenate([np.arange(9), np.arange(10, 16), np.arange(20, 28)]).astype(np.int32)
    positions[[3, 4]] = positions[[4, 3]]
    out = np.zeros_like(q)
    forward._attention(q, kc, vc, slots, positions, 1, hp, window, out, 0, hp.n_head)
    one = np.zeros((1, q.shape[1]), np.float32)
    for t in range(n):
        forward._attention(q[t:t + 1].copy(), kc, vc, slots[t:t + 1].copy(), positions[t:t + 1].copy(), 1, hp,
                           window, one, 0, hp.n_head)
        np.testing.assert_array_equal(out[t], one[0])
