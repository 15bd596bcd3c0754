"""numallm on the synthetic qwen2 and qwen3 files against llama.cpp's recorded outputs
(tests/synthetic_fixtures.py: the comparison the reference passes too)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from synthetic_fixtures import check_logits, load_fixture, run_ids

from numallm.engine.engine import Engine

DENSE = ("tiny-qwen2", "tiny-qwen3")


@pytest.fixture(scope="module", params=DENSE)
def engine(request: pytest.FixtureRequest, fixture_model: Callable[[str], Path]) -> Iterator[tuple[str, Engine]]:
    eng = Engine(fixture_model(request.param), ctx_size=256)
    yield request.param, eng
    eng.close()


def test_logits_and_greedy_match_llama_cpp(engine: tuple[str, Engine]) -> None:
    name, eng = engine
    check_logits(name, load_fixture(name), lambda rec: eng.logits(run_ids(rec)))


def test_prompt_batch_matches_token_by_token(engine: tuple[str, Engine]) -> None:
    """The batched prompt and one token per call agree (the KV cache and biases per token)."""
    name, eng = engine
    ids = run_ids(load_fixture(name)["prompts"][0])[:12]
    batched = eng.logits(ids)
    one_by_one = np.stack([eng.eval_batch(np.array([t]), np.array([0]), np.array([p]), np.array([0]))[0]
                           for p, t in enumerate(ids)])
    np.testing.assert_allclose(one_by_one, batched, atol=2e-2)
