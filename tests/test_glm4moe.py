"""numallm on the synthetic GLM-4.5-like file (glm4moe: NeoX RoPE on half of each head,
Q/K norms and Q/K/V biases, a leading dense layer, sigmoid routing biased by
exp_probs_b with renormalised, scaled weights and a shared expert, a NextN layer that is
not run) against llama.cpp's recorded outputs (tests/synthetic_fixtures.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from reference_forward import reference_logits
from synthetic_deepseek import write_tiny_glm4moe
from synthetic_fixtures import TOLERANCE_FLOOR, check_logits, load_fixture, logits_on, run_ids

from numallm.engine.engine import Engine

NAME = "tiny-glm4moe"


@pytest.fixture(scope="module")
def engine(fixture_model: Callable[[str], Path]) -> Iterator[Engine]:
    eng = Engine(fixture_model(NAME), ctx_size=256)
    yield eng
    eng.close()


def test_hyperparameters_are_llama_cpps(engine: Engine) -> None:
    hp = engine.hparams
    assert (hp.n_layer, hp.n_layer_nextn, hp.n_layer_dense_lead, hp.n_rot, hp.head_dim) == (3, 1, 1, 16, 32)
    assert (hp.expert_gating, hp.expert_weights_norm, hp.expert_weights_scale, hp.n_expert_shared) == (2, True, 2.5, 1)
    assert hp.rope_neox


def test_logits_and_greedy_match_llama_cpp_on_its_routing(engine: Engine) -> None:
    fixture = load_fixture(NAME)
    check_logits(NAME, fixture, lambda rec: logits_on(engine, run_ids(rec), rec["experts"]))


# llama.cpp's router logits carry its 8-bit rounding, which decides near ties: on `plain`
# and `unicode` one position each (sigmoid scores ~0.004 apart) goes otherwise here.
NO_NEAR_TIE = ("code", "chat", "numbers", "story")


@pytest.mark.parametrize("prompt", NO_NEAR_TIE)
def test_own_routing_is_llama_cpps(engine: Engine, prompt: str) -> None:
    """The router's own choice (sigmoid + exp_probs_b, weights renormalised and scaled)
    is llama.cpp's, in its order, at every position: the logits are those of llama.cpp's
    routing, bit for bit."""
    rec = next(rec for rec in load_fixture(NAME)["prompts"] if rec["name"] == prompt)
    ids = run_ids(rec)
    np.testing.assert_array_equal(engine.logits(ids), logits_on(engine, ids, rec["experts"]))


def test_prompt_batch_matches_token_by_token(engine: Engine) -> None:
    """A decode step (one token, the KV cache, routed and shared experts) agrees with the batch."""
    ids = run_ids(load_fixture(NAME)["prompts"][1])[:12]
    batched = engine.logits(ids)
    one_by_one = np.stack([engine.eval_batch(np.array([t]), np.array([0]), np.array([p]), np.array([0]))[0]
                           for p, t in enumerate(ids)])
    np.testing.assert_allclose(one_by_one, batched, atol=2e-2)


def test_air_shape_matches_the_reference(tmp_path: Path) -> None:
    """GLM-4.5-Air's shape: no Q/K norms, no NextN layer, two leading dense layers; against
    the float64 reference, both on one routing that uses every expert (own routing could
    part at a near tie of float32 and float64 scores), batched and token by token."""
    path = write_tiny_glm4moe(tmp_path / "air.gguf", qk_norm=False, n_nextn=0, n_layer=4, n_leading_dense=2, seed=3)
    ids = run_ids(load_fixture(NAME)["prompts"][5])[:16]
    experts = [[None, None, [t % 8, (t + 3) % 8], [(t + 5) % 8, t % 8]] for t in range(len(ids))]
    eng = Engine(path, ctx_size=64)
    try:
        assert (eng.hparams.n_layer, eng.hparams.n_layer_nextn, eng.hparams.n_layer_dense_lead) == (4, 0, 2)
        ref = reference_logits(path, ids, experts=experts)
        assert np.abs(logits_on(eng, ids, experts) - ref).max() <= TOLERANCE_FLOOR  # measured 0.22
        routing = np.array([[[-1, -1]] * 2 + layers[2:] for layers in experts], np.int32)
        one = np.stack([eng.eval_batch(np.array([t]), np.array([0]), np.array([p]), np.array([0]), routing[p:p + 1])[0]
                        for p, t in enumerate(ids)])
        assert np.abs(one - ref).max() <= TOLERANCE_FLOOR
    finally:
        eng.close()
