"""The sampler follows llama.cpp's chain: each stage keeps what llama.cpp keeps, in order.

Stages are checked on hand-made logits, then the fast implementation is compared with a
literal full-sort port of llama.cpp's samplers on random (and tied) logits.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from numallm.engine.sampling import Sampler, SamplingParams
from numallm.errors import BadInputError, NumallmError

# Every stage off: the distribution is the plain softmax of the (penalised) logits.
PLAIN = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


def kept(logits: list[float], history: tuple[int, ...] = (), **params: object) -> dict[int, float]:
    """{token id: probability} of the candidates the chain keeps."""
    x = np.array(logits, dtype=np.float32)
    ids, probs = Sampler(SamplingParams(**{**PLAIN, **params}), x.size).distribution(x, history)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-9)
    return {int(i): float(p) for i, p in zip(ids, probs)}


def softmax(x: list[float]) -> np.ndarray:
    e = np.exp(np.array(x, dtype=np.float64) - max(x))
    return e / e.sum()


def log_probs(*probs: float) -> list[float]:
    return [math.log(p) for p in probs]


def test_defaults_are_llama_cpp_defaults() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.repeat_last_n, p.seed) == (
        0.8, 40, 0.95, 0.05, 1.0, 64, -1)


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf), ("temperature", "1"),
    ("top_k", -1), ("top_k", 40.0), ("top_k", True),
    ("top_p", 0.0), ("top_p", 1.01), ("top_p", -0.5),
    ("min_p", -0.01), ("min_p", 1.5),
    ("repeat_penalty", 0.0), ("repeat_penalty", -1.1), ("repeat_penalty", math.inf),
    ("repeat_last_n", -2), ("seed", -2), ("seed", 1.5),
])
def test_validate_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    params = SamplingParams(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match=f"^sampling: {field} must be") as exc:
        params.validate()
    assert "\n" not in str(exc.value)
    with pytest.raises(BadInputError):
        Sampler(params, 10)


def test_validate_accepts_the_edges_that_switch_stages_off() -> None:
    p = SamplingParams(temperature=0, top_k=0, top_p=1, min_p=0, repeat_penalty=1, repeat_last_n=-1, seed=0)
    assert p.validate() is p
    SamplingParams(min_p=1.0, top_p=1e-6, repeat_last_n=0, seed=2**40).validate()


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits_once_per_token() -> None:
    logits = [2.0, -1.0, 0.5, 3.0]
    got = kept(logits, history=(0, 1, 1, 1), repeat_penalty=2.0)
    # Token 1 occurred three times but is penalised once, as in llama.cpp.
    assert np.allclose([got[i] for i in range(4)], softmax([1.0, -2.0, 0.5, 3.0]))


def test_repeat_last_n_limits_the_window() -> None:
    logits = [2.0, 2.0, 0.0]
    assert np.allclose(list(kept(logits, (0, 1), repeat_penalty=2.0, repeat_last_n=1).values()),
                       softmax([2.0, 1.0, 0.0]))
    assert np.allclose(list(kept(logits, (0, 1), repeat_penalty=2.0, repeat_last_n=-1).values()),
                       softmax([1.0, 1.0, 0.0]))
    assert np.allclose(list(kept(logits, (0, 1), repeat_penalty=2.0, repeat_last_n=0).values()),
                       softmax(logits))


def test_penalty_ignores_out_of_range_history_and_leaves_the_callers_logits_alone() -> None:
    x = np.array([3.0, 2.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0, repeat_penalty=2.0), 2)
    assert sampler.sample(x, [0, -1, 7]) == 1  # 3/2 < 2: the penalty flips greedy
    assert x.tolist() == [3.0, 2.0]
    assert sampler.sample(x, []) == 0


def test_top_k_keeps_the_k_largest_and_breaks_ties_by_lowest_id() -> None:
    assert set(kept([1, 5, 3, 5, 2], top_k=2)) == {1, 3}
    assert set(kept([1, 5, 3, 5, 2], top_k=3)) == {1, 2, 3}
    assert set(kept([4, 1, 4, 4, 4], top_k=2)) == {0, 2}
    assert set(kept([1, 2, 3], top_k=10)) == {0, 1, 2}  # k above the vocabulary: all


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = log_probs(0.15, 0.5, 0.05, 0.3)  # unsorted on purpose
    assert set(kept(logits, top_p=0.45)) == {1}
    assert set(kept(logits, top_p=0.75)) == {1, 3}
    assert set(kept(logits, top_p=0.85)) == {1, 3, 0}
    assert set(kept(logits, top_p=0.99)) == {0, 1, 2, 3}
    assert np.allclose(sorted(kept(logits, top_p=0.75).values()), [0.3 / 0.8, 0.5 / 0.8])


def test_top_p_runs_on_the_top_k_survivors_renormalised() -> None:
    logits = log_probs(0.4, 0.3, 0.2, 0.1)
    assert set(kept(logits, top_p=0.5)) == {0, 1}
    # After top-k 2 the first token holds 0.4/0.7 = 0.57 >= 0.5 on its own.
    assert set(kept(logits, top_k=2, top_p=0.5)) == {0}


def test_min_p_keeps_tokens_at_least_p_times_as_likely_as_the_best() -> None:
    logits = log_probs(0.5, 0.2, 0.024, 0.026, 0.25)
    assert set(kept(logits, min_p=0.05)) == {0, 1, 3, 4}
    assert set(kept(logits, min_p=0.45)) == {0, 4}
    assert set(kept(logits, min_p=1.0)) == {0}


def test_temperature_comes_last_and_only_reshapes_the_survivors() -> None:
    logits = log_probs(0.5, 0.2, 0.024, 0.026, 0.25)
    hot = kept(logits, min_p=0.05, temperature=5.0)
    # min-p filtered on the raw logits: a high temperature does not bring token 2 back.
    assert set(hot) == {0, 1, 3, 4}
    assert np.allclose([hot[i] for i in (0, 1, 3, 4)], softmax([logits[i] / 5.0 for i in (0, 1, 3, 4)]))


def test_temperature_zero_is_greedy_with_lowest_id_on_ties() -> None:
    x = np.array([1.0, 3.0, 3.0, 2.0], dtype=np.float32)
    for seed in (0, 1, 2):
        sampler = Sampler(SamplingParams(temperature=0, seed=seed), 4)
        assert [sampler.sample(x) for _ in range(5)] == [1] * 5
    assert kept(x.tolist(), temperature=0) == {1: 1.0}


def test_same_seed_same_tokens_and_random_seed_is_recorded() -> None:
    x = np.random.default_rng(5).normal(size=1000).astype(np.float32)
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)

    def run(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(**{**params.__dict__, "seed": seed}), 1000)
        return [sampler.sample(x) for _ in range(40)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    unseeded = Sampler(params, 1000)
    assert 0 <= unseeded.seed < 2**32
    first = [unseeded.sample(x) for _ in range(40)]
    assert run(unseeded.seed) == first


def test_draw_frequencies_follow_the_distribution() -> None:
    probs = (0.5, 0.3, 0.15, 0.05)
    sampler = Sampler(SamplingParams(seed=1234, **PLAIN), 4)
    x = np.array(log_probs(*probs), dtype=np.float32)
    n = 20000
    counts = Counter(sampler.sample(x) for _ in range(n))
    for tok, p in enumerate(probs):
        # 5 standard deviations of a binomial: fails only if the draw is biased.
        assert abs(counts[tok] / n - p) < 5 * math.sqrt(p * (1 - p) / n), (tok, counts)


def test_draw_never_picks_a_dropped_or_zero_probability_token() -> None:
    x = np.array([0.0, -np.inf, 0.0, 5.0, -np.inf], dtype=np.float32)
    sampler = Sampler(SamplingParams(seed=3, **{**PLAIN, "temperature": 3.0}), 5)
    assert {sampler.sample(x) for _ in range(500)} == {0, 2, 3}
    # Top-k 2 keeps token 3 and, of the tied 0 and 2, the lower id only.
    sampler = Sampler(SamplingParams(seed=3, temperature=3.0, top_k=2, top_p=1.0, min_p=0.0), 5)
    assert {sampler.sample(x) for _ in range(500)} == {0, 3}


def test_bad_logits_are_reported() -> None:
    sampler = Sampler(SamplingParams(), 3)
    with pytest.raises(NumallmError, match="NaN or infinity"):
        sampler.sample(np.array([0.0, np.nan, 1.0], dtype=np.float32))
    with pytest.raises(NumallmError, match="NaN or infinity"):
        sampler.sample(np.full(3, -np.inf, dtype=np.float32))
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        sampler.sample(np.zeros(4, dtype=np.float32))


# -- against a literal port of llama.cpp's samplers (src/llama-sampling.cpp) ----------

def llama_cpp_reference(logits: np.ndarray, history: list[int], p: SamplingParams) -> dict[int, float]:
    x = logits.astype(np.float32).copy()
    recent = history if p.repeat_last_n == -1 else history[-p.repeat_last_n:] if p.repeat_last_n else []
    for tok in set(recent):
        if 0 <= tok < x.size and p.repeat_penalty != 1:
            x[tok] = x[tok] * np.float32(p.repeat_penalty) if x[tok] <= 0 else x[tok] / np.float32(p.repeat_penalty)
    if p.temperature == 0:
        return {int(np.argmax(x)): 1.0}
    ids = np.lexsort((np.arange(x.size), -x)).tolist()  # full sort by logit, ties by id
    if p.top_k > 0:
        ids = ids[:p.top_k]
    if p.top_p < 1:
        cum = np.cumsum(softmax([float(x[i]) for i in ids]))
        ids = ids[:next((i + 1 for i, c in enumerate(cum) if c >= p.top_p), len(ids))]
    if p.min_p > 0:
        floor = x[ids[0]] + np.float32(math.log(p.min_p))
        ids = [i for i in ids if x[i] >= floor]
    return dict(zip(ids, softmax([float(x[i]) / p.temperature for i in ids]).tolist()))


@pytest.mark.parametrize("case", range(24))
def test_matches_llama_cpp_reference_on_random_logits(case: int) -> None:
    rng = np.random.default_rng(case)
    n = int(rng.choice([5, 60, 3000]))
    x = rng.normal(scale=rng.choice([0.5, 3.0]), size=n)
    if case % 3 == 0:
        x = np.round(x)  # many ties
    x = x.astype(np.float32)
    params = SamplingParams(
        temperature=float(rng.choice([0.0, 0.3, 0.8, 2.0])),
        top_k=int(rng.choice([0, 1, 3, 40, n + 5])),
        top_p=float(rng.choice([1.0, 0.95, 0.5, 0.1])),
        min_p=float(rng.choice([0.0, 0.05, 0.3])),
        repeat_penalty=float(rng.choice([1.0, 1.3, 0.7])),
        repeat_last_n=int(rng.choice([-1, 0, 4, 64])),
        seed=case,
    )
    history = rng.integers(0, n, size=int(rng.integers(0, 30))).tolist()
    ids, probs = Sampler(params, n).distribution(x, history)
    got = dict(zip(ids.tolist(), probs.tolist()))
    want = llama_cpp_reference(x, history, params)
    assert set(got) == set(want), params
    assert np.allclose([got[i] for i in want], list(want.values()), rtol=1e-6, atol=1e-12)


def test_default_chain_on_a_gemma_sized_vocabulary_matches_the_reference() -> None:
    rng = np.random.default_rng(11)
    n = 262144
    x = rng.normal(scale=2.0, size=n).astype(np.float32)
    x[rng.integers(0, n, size=30)] += 9.0  # a peaked head, as real logits have
    history = rng.integers(0, n, size=64).tolist()
    params = SamplingParams(repeat_penalty=1.1, seed=1)
    ids, probs = Sampler(params, n).distribution(x, history)
    want = llama_cpp_reference(x, history, params)
    got = dict(zip(ids.tolist(), probs.tolist()))
    assert got.keys() == want.keys() and len(got) > 1
    assert np.allclose([got[i] for i in want], list(want.values()), rtol=1e-6)
