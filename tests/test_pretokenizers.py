"""Every supported tokenizer.ggml.pre splits text as llama.cpp does.

tests/fixtures/llama_cpp/pretokenizers.json holds llama.cpp's ids for a text set (digit
runs, CJK, contractions, whitespace runs, emoji, code, seeded mixes) under each name,
on SmolLM2's vocabulary (plus 2- and 3-digit tokens, so digit-run splits show) with
tokenizer.ggml.pre replaced (scripts/record_llama_cpp_fixtures.py --pretokenizers).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from numallm.engine.gguf_file import read_gguf
from numallm.engine.model_store import fetch_known_model
from numallm.engine.tokenizer import Tokenizer
from numallm.engine.tokenizer_pre import PRE_TOKENIZERS
from numallm.errors import UnsupportedError
from synthetic_vocab import with_digit_merges

FIXTURE = Path(__file__).parent / "fixtures" / "llama_cpp" / "pretokenizers.json"


@functools.cache
def recorded() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@functools.cache
def smollm2_metadata() -> dict[str, Any]:
    md = dict(read_gguf(fetch_known_model("smollm2", quiet=True)).metadata)
    del md["tokenizer.ggml.add_bos_token"]  # as recorded: each pre-tokenizer's own default
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    md.update(zip(keys, with_digit_merges(*(list(md[k]) for k in keys)), strict=True))
    return md


def test_every_supported_name_was_recorded() -> None:
    names = [n for group in recorded()["groups"] for n in group["names"]]
    assert len(names) == len(set(names))
    assert set(names) == set(PRE_TOKENIZERS)


_BUILT: dict[Any, Tokenizer] = {}


def tokenizer(pre: str) -> Tokenizer:
    """One Tokenizer per distinct PRE_TOKENIZERS entry (building one costs ~0.3 s): names
    sharing an entry tokenize alike by construction, and llama.cpp must agree they do."""
    key = PRE_TOKENIZERS[pre]
    if key not in _BUILT:
        _BUILT[key] = Tokenizer.from_metadata({**smollm2_metadata(), "tokenizer.ggml.pre": pre})
    return _BUILT[key]


@pytest.mark.model
@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_tokenizes_as_llama_cpp(pre: str) -> None:
    fixture = recorded()
    group = next(g for g in fixture["groups"] if pre in g["names"])
    tok = tokenizer(pre)
    wrong = [(text, ids) for text, ids in zip(fixture["texts"], group["ids"], strict=True)
             if tok.tokenize(text, add_special=False, parse_special=False) != ids]
    assert not wrong, f"{pre}: {len(wrong)} of {len(fixture['texts'])} texts differ, first {wrong[0][0]!r}"
    assert tok.tokenize("Hello", add_special=True, parse_special=False) == group["hello_add_special"]


@pytest.mark.model
def test_unknown_names_are_still_refused() -> None:
    with pytest.raises(UnsupportedError, match="'no-such-pre'"):
        Tokenizer.from_metadata({**smollm2_metadata(), "tokenizer.ggml.pre": "no-such-pre"})
