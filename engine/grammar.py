"""Constrained decoding: a per-step token mask from llguidance (JSON schemas, Lark, GBNF).

llguidance is the grammar engine llama.cpp links for `--llguidance`: it reads JSON
schemas, Lark and (through its converter) llama.cpp's GBNF, and computes the set of
tokens that keep the output inside the grammar in tens of microseconds, without torch
or transformers. Its tokenizer view is built from the GGUF vocabulary (every token's
bytes, control tokens marked special, the end-of-generation ids), so it works for the
byte-level BPE and SentencePiece vocabularies alike.

A `Constraint` follows one sequence. After each sampled token it starts the mask of
the next step on a background thread (llguidance drops the GIL while it computes), so
the mask is ready, or nearly, by the time the next forward pass returns: the batch
waits only for whatever of it is left. A sequence without a constraint pays nothing.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import llguidance
import numpy as np

from numallm.engine.sampling import TokenMask
from numallm.engine.tokenizer import Tokenizer
from numallm.engine.tokenizer_vocab import Attr
from numallm.errors import BadInputError, NumallmError

# llama.cpp's json-schema-to-grammar whitespace (`space ::= | " " | "\n"{1,2} [ \t]{0,20}`):
# a bounded run, so a small model cannot fill its answer with whitespace.
JSON_WHITESPACE = r"( |\n{1,2}[ \t]{0,20})?"
_JSON_OPTIONS = {"whitespace_pattern": JSON_WHITESPACE}

_lock = threading.Lock()
_tokenizers: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()
_worker: ThreadPoolExecutor | None = None


class GrammarError(BadInputError):
    """A schema or grammar that does not compile, or uses a feature the engine lacks."""


def grammar_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of `tokenizer`, built once per tokenizer (about 0.7 s for 49152 tokens)."""
    with _lock:
        built = _tokenizers.get(tokenizer)
        if built is None:
            built = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_VocabView(tokenizer)),
                                           eos_token=sorted(tokenizer.stop_ids))
            _tokenizers[tokenizer] = built
        return built


class _VocabView:
    """What llguidance.TokenizerWrapper reads: token bytes, special ids, and an encoder."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        # weakly: llguidance keeps this object, and the cache above must not keep the tokenizer
        self._tokenizer = weakref.ref(tokenizer)
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.stop_ids)
        self.bos_token_id = tokenizer.bos_id
        self.tokens = [tokenizer.piece_bytes(i, special=True) for i in range(tokenizer.n_vocab)]
        # control tokens, which llguidance keeps out of text and grammars name as <...>
        self.special_token_ids = tokenizer.ids_with(Attr.CONTROL)

    def __call__(self, data: bytes) -> list[int]:
        tokenizer = self._tokenizer()
        if tokenizer is None:
            raise NumallmError("the tokenizer behind this grammar is gone")
        return tokenizer.tokenize(data.decode("utf-8", "replace"), add_special=False, parse_special=False)


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """A grammar for JSON text valid against `schema` (compiled and checked by `Constraint`)."""
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(closed_objects(schema), defaults=_JSON_OPTIONS)
    except (ValueError, TypeError) as e:
        raise GrammarError(f"the JSON schema is not valid: {e}") from None


def gbnf_grammar(text: str) -> str:
    """A grammar from llama.cpp's GBNF (or llguidance's Lark, which it passes through)."""
    try:
        return llguidance.grammar_from("gbnf", text)
    except (ValueError, TypeError) as e:
        raise GrammarError(f"the grammar does not parse: {e}") from None


def lark_grammar(text: str) -> str:
    return llguidance.LLMatcher.grammar_from_lark(text)


def json_schema_lark(schema: dict[str, Any]) -> str:
    """A JSON schema as an inline Lark rule body (for grammars that wrap JSON in text)."""
    x_guidance = {"x-guidance": _JSON_OPTIONS}
    return "%json " + json.dumps({**closed_objects(schema), **x_guidance}, ensure_ascii=False)


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")  # not allOf: its branches' keys add up
_SCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")


def closed_objects(schema: Any) -> Any:
    """`schema` with every object that lists properties and says nothing of others taking
    only those, as llama.cpp's schema grammars do: every answer still validates against the
    original, and a small model does not pad its answer with keys of its own invention."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: closed_objects(v) for k, v in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(v) for v in out[key]]
    for key in _SCHEMAS:
        if key in out:
            out[key] = closed_objects(out[key])
    return out


class Constraint:
    """One sequence's grammar state: the mask of allowed next tokens, and the tokens taken."""

    def __init__(self, tokenizer: Tokenizer, grammar: str) -> None:
        self._n_vocab = tokenizer.n_vocab
        self._matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer), grammar, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"cannot constrain the answer to it: {_first_line(self._matcher.get_error())}")
        self._bits = np.zeros((self._n_vocab + 31) // 32, dtype=np.int32)
        self._pending: Future[tuple[TokenMask, float]] | None = None
        self.compute_s = 0.0  # CPU time computing the mask last taken, on the worker
        self.wait_s = 0.0  # time the caller waited for it
        self.start()

    def start(self) -> None:
        """Compute the next mask on the worker thread (after the token just consumed)."""
        self._pending = _pool().submit(self._compute)

    def _compute(self) -> tuple[TokenMask, float]:
        # CPU time, not wall time: on a busy machine the worker waits for a core, and that
        # wait is no cost of the mask (what it costs the batch is wait_s).
        t0 = time.thread_time()
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        # the ids too, here beside the forward pass rather than in the sampler after it
        mask = TokenMask.from_bools(np.unpackbits(self._bits.view(np.uint8), count=self._n_vocab,
                                                  bitorder="little").view(bool))
        return mask, time.thread_time() - t0

    def allowed(self) -> TokenMask:
        """The tokens that may come next. Waits for the mask `start` began."""
        t0 = time.perf_counter()
        if self._pending is None:
            self.start()
        assert self._pending is not None
        mask, self.compute_s = self._pending.result()
        self._pending = None
        self.wait_s = time.perf_counter() - t0
        if self._matcher.is_error():
            raise NumallmError(f"the grammar failed: {_first_line(self._matcher.get_error())}")
        return mask

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise NumallmError(f"the grammar refused token {token}: {_first_line(self._matcher.get_error())}")

    @property
    def finished(self) -> bool:
        """The grammar is complete: nothing may follow but the end."""
        return self._matcher.is_stopped()


def _pool() -> ThreadPoolExecutor:
    global _worker
    with _lock:
        if _worker is None:
            _worker = ThreadPoolExecutor(1, thread_name_prefix="numallm-grammar")
        return _worker


def _first_line(message: str) -> str:
    return " ".join(message.split())[:500]
