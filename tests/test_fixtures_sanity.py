"""The recorded llama.cpp fixtures are well-formed and agree with themselves.

The acceptance tests compare numallm against these files, so a wrong or truncated
fixture would make them pass or fail for the wrong reason. No model or llama.cpp needed.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from numallm.engine.model_store import KNOWN_MODELS

FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp"
MODELS = ("smollm2", "gemma3")
N_STEPS = 32
TOP_K = 20
REQUIRED_PROMPTS = {"plain", "code", "chat", "long", "unicode", "single", "numbers", "whitespace"}
MODES = {(True, True), (False, True), (False, False)}


@functools.cache
def load(model: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{model}.json").read_text(encoding="utf-8"))


def tokenized(fixture: dict[str, Any], text: str, add_special: bool,
              parse_special: bool) -> list[int]:
    matches = [c["ids"] for c in fixture["tokenize_cases"] if c["text"] == text
               and c["add_special"] == add_special and c["parse_special"] == parse_special]
    assert len(matches) == 1, f"{text!r} {add_special=} {parse_special=}: {len(matches)} cases"
    return matches[0]


@pytest.mark.parametrize("model", MODELS)
def test_header_names_the_known_model(model: str) -> None:
    fixture = load(model)
    known = KNOWN_MODELS[model]
    assert fixture["model"] == known.filename
    assert fixture["model_sha256"] == known.sha256
    assert fixture["n_ctx"] == 2048 and fixture["n_threads"] == 2 and fixture["kv_cache"] == "f16"
    assert tuple(int(x) for x in fixture["llama_cpp_python"].split(".")[:3]) >= (0, 3, 16)
    assert fixture["command"].startswith("python3 scripts/record_llama_cpp_fixtures.py")
    assert (FIXTURES / f"{model}.json").stat().st_size < 2_000_000


@pytest.mark.parametrize("model", MODELS)
def test_greedy_steps_are_argmax_of_their_top_k(model: str) -> None:
    fixture = load(model)
    n_vocab = fixture["n_vocab"]
    prompts = fixture["prompts"]
    assert REQUIRED_PROMPTS <= {p["name"] for p in prompts}
    for p in prompts:
        assert len(p["greedy"]) == len(p["steps"]) == N_STEPS, p["name"]
        assert isinstance(p["greedy_text"], str) and p["greedy_text"], p["name"]
        assert 0 < len(p["tokens"]) <= fixture["n_ctx"] - N_STEPS
        for greedy, step in zip(p["greedy"], p["steps"], strict=True):
            ids, values = step["ids"], step["values"]
            assert len(ids) == len(set(ids)) == len(values) == TOP_K
            assert all(0 <= i < n_vocab for i in ids)
            assert all(math.isfinite(v) and round(v, 4) == v for v in values)
            assert values == sorted(values, reverse=True)
            assert greedy == ids[0], f"{p['name']}: greedy {greedy} is not the top logit"


@pytest.mark.parametrize("model", MODELS)
def test_prompt_tokens_match_the_tokenize_cases(model: str) -> None:
    fixture = load(model)
    prompts = {p["name"]: p for p in fixture["prompts"]}
    bos = tokenized(fixture, "", True, True)  # what add_special puts in front, if anything
    for p in prompts.values():
        assert p["tokens"] == tokenized(fixture, p["text"], True, True), p["name"]
        assert p["tokens"][:len(bos)] == bos
    assert len(prompts["single"]["tokens"]) == len(bos) + 1
    assert len(prompts["long"]["tokens"]) >= 250
    # The chat prompt's markers must be parsed as special tokens, not spelled out.
    chat = prompts["chat"]["text"]
    assert len(tokenized(fixture, chat, False, True)) < len(tokenized(fixture, chat, False, False))


@pytest.mark.parametrize("model", MODELS)
def test_tokenize_cases_cover_every_mode_and_kind(model: str) -> None:
    fixture = load(model)
    cases = fixture["tokenize_cases"]
    modes: dict[str, set[tuple[bool, bool]]] = {}
    for c in cases:
        modes.setdefault(c["text"], set()).add((c["add_special"], c["parse_special"]))
        assert all(0 <= i < fixture["n_vocab"] for i in c["ids"])
    assert len(modes) >= 300 and all(m == MODES for m in modes.values())
    bos = tokenized(fixture, "", True, True)
    for text in modes:
        # add_special only adds the model's prefix (BOS or nothing) in front.
        assert tokenized(fixture, text, True, True) == bos + tokenized(fixture, text, False, True)
    texts = list(modes)
    for kind in ("\t", "\n", "  ", "😀", "你", "ü", "<|im_start|>", "<start_of_turn>", "2024"):
        assert any(kind in t for t in texts), kind
    assert any(t.startswith(" ") for t in texts) and any(t.endswith(" ") for t in texts)


@pytest.mark.parametrize("model", MODELS)
def test_self_consistency_summarises_its_cases(model: str) -> None:
    sc = load(model)["self_consistency"]
    cases = sc["cases"]
    assert len({c["prompt"] for c in cases}) >= 2 and sc["how"]
    for c in cases:
        assert 0 <= c["last_rms"] <= c["last_max_abs"] <= c["steps_max_abs"]
        assert 0 <= c["steps_rms"] <= c["steps_max_abs"]
    assert sc["max_abs"] == max(c["steps_max_abs"] for c in cases)
    assert sc["rms"] == max(c["steps_rms"] for c in cases)
    assert math.isfinite(sc["max_abs"])


@pytest.mark.parametrize("model", MODELS)
def test_embedding_fixtures_are_unit_vectors_of_the_known_model(model: str) -> None:
    fixture = json.loads((FIXTURES / f"embeddings_{model}.json").read_text(encoding="utf-8"))
    assert fixture["model_sha256"] == KNOWN_MODELS[model].sha256
    assert fixture["command"].startswith("python3 scripts/record_llama_cpp_embeddings.py")
    assert max(len(t["tokens"]) for t in fixture["texts"]) > 512  # one text takes two of numallm's chunks
    for t in fixture["texts"]:
        vectors = t["embeddings"]
        assert set(vectors) == {"mean", "cls", "last"}
        for v in vectors.values():
            assert len(v) == len(vectors["mean"]) and abs(sum(x * x for x in v) - 1) < 1e-4
        if len(t["tokens"]) == 1:  # one token: every pooling is that token's state
            assert vectors["mean"] == vectors["cls"] == vectors["last"]
