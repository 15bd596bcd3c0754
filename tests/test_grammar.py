"""Constrained decoding (engine/grammar.py) in the batching loop, on the tiny synthetic models:
whatever the random weights prefer, the answer follows the schema or grammar."""

from __future__ import annotations

import json
import queue
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from numallm.engine import Engine
from numallm.engine.batching import BatchScheduler, Job, Update
from numallm.engine.grammar import Constraint, GrammarError, closed_objects, gbnf_grammar, json_schema_grammar
from numallm.engine.sampling import Sampler, SamplingParams, TokenMask
from numallm.errors import NumallmError
from synthetic import write_tiny_gemma3
from test_serve_batching import _collect

# The random weights loop on one token when greedy: a repeat penalty lets a string end.
GREEDY = SamplingParams(temperature=0, repeat_penalty=1.5)
SAMPLED = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11)
MAX_TOKENS = 400  # they like whitespace too: room for a schema's worth of it

# Every string bounded: the random weights rarely close one of their own accord (the real
# model's server tests take unbounded ones, and json_object).
SCHEMAS = [
    {"enum": ["yes", "no", 3, None]},
    {"type": "object", "properties": {  # nested objects, required and optional keys
        "user": {"type": "object",
                 "properties": {"id": {"type": "integer"}, "nick": {"type": "string", "maxLength": 8}},
                 "required": ["id"], "additionalProperties": False},
        "active": {"type": "boolean"}}, "required": ["user", "active"], "additionalProperties": False},
    {"type": "object", "properties": {  # enums, arrays with bounds
        "colour": {"enum": ["red", "green", "blue"]},
        "sizes": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9},
                  "minItems": 2, "maxItems": 4}},
        "required": ["colour", "sizes"], "additionalProperties": False},
    {"type": "object", "properties": {  # numbers with ranges, strings with patterns and lengths
        "score": {"type": "number", "minimum": -1.5, "maximum": 2.5},
        "count": {"type": "integer", "exclusiveMinimum": 10, "maximum": 20},
        "code": {"type": "string", "pattern": "^[A-F]{2}-[0-9]{3}$"},
        "label": {"type": "string", "minLength": 2, "maxLength": 6}},
        "required": ["score", "count", "code", "label"], "additionalProperties": False},
    {"type": "array", "items": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 4},  # unions, $defs
                                          {"$ref": "#/$defs/point"}]}, "minItems": 1, "maxItems": 3,
     "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                         "required": ["x", "y"], "additionalProperties": False}}},
]


@pytest.fixture(scope="module")
def engine(tiny_llama_512: Path) -> Engine:
    with Engine(tiny_llama_512, threads=2, ctx_size=512, n_slots=4) as e:
        yield e


def _run(engine: Engine, jobs: list[tuple[str, str, SamplingParams]], **kw: object) -> list[tuple[str, Update]]:
    """Run (prompt, grammar, sampling) jobs together; their texts and last updates."""
    s = BatchScheduler(engine, **kw)
    try:
        queues = [queue.Queue() for _ in jobs]
        for (prompt, grammar, params), q in zip(jobs, queues):
            c = Constraint(engine.tokenizer, grammar)
            s.submit(Job(engine.tokenize(prompt), params, MAX_TOKENS, (), q.put, constraint=c))
        return [_collect(q) for q in queues]
    finally:
        s.close()


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_every_answer_parses_and_validates_against_its_schema(engine: Engine, params: SamplingParams) -> None:
    jobs = [(f"Answer {i}:", json_schema_grammar(schema), params) for i, schema in enumerate(SCHEMAS)]
    for schema, (text, last) in zip(SCHEMAS, _run(engine, jobs)):
        assert last.finish_reason == "stop", (last, text)
        jsonschema.validate(json.loads(text), schema)


def test_constrained_sequences_together_equal_their_solo_output_and_the_mask_is_timed(engine: Engine) -> None:
    jobs = [(f"Q{i}", json_schema_grammar(SCHEMAS[i % len(SCHEMAS)]), GREEDY) for i in range(6)]
    solo = [_run(engine, [job])[0][0] for job in jobs]
    steps: list[tuple[float, float]] = []
    together = _run(engine, jobs, on_mask=lambda compute, wait: steps.append((compute, wait)))
    assert [text for text, _ in together] == solo
    assert steps and all(compute > 0 and wait >= 0 for compute, wait in steps)


def test_unconstrained_neighbours_are_unchanged(engine: Engine) -> None:
    plain = engine.generate("Hello", max_tokens=12, temperature=0, repeat_penalty=1.5, ignore_eos=True)
    s = BatchScheduler(engine)
    try:
        q, qc = queue.Queue(), queue.Queue()
        c = Constraint(engine.tokenizer, json_schema_grammar(SCHEMAS[2]))
        s.submit(Job(engine.tokenize("Hello"), GREEDY, 12, (), q.put, ignore_eos=True))
        s.submit(Job(engine.tokenize("Hello"), GREEDY, MAX_TOKENS, (), qc.put, constraint=c))
        assert _collect(q)[0] == plain
        jsonschema.validate(json.loads(_collect(qc)[0]), SCHEMAS[2])
    finally:
        s.close()


def test_gbnf_and_lark_grammars(engine: Engine) -> None:
    gbnf = r'''root ::= "yes" | "no" | num
num ::= [1-9] [0-9]{0,2}'''
    lark = r'''start: "(" WORD ("," WORD)* ")"
WORD: /[a-z]{1,5}/'''
    (yes_no, a), (words, b) = _run(engine, [("Is it?", gbnf_grammar(gbnf), SAMPLED),
                                            ("List:", gbnf_grammar(lark), SAMPLED)])
    assert re.fullmatch(r"yes|no|[1-9][0-9]{0,2}", yes_no) and a.finish_reason == "stop"
    assert re.fullmatch(r"\([a-z]{1,5}(,[a-z]{1,5})*\)", words) and b.finish_reason == "stop"


def test_sentencepiece_vocabulary(tmp_path: Path) -> None:
    with Engine(write_tiny_gemma3(tmp_path / "g.gguf", n_ctx=512), threads=2, ctx_size=512, n_slots=2) as e:
        [(text, last)] = _run(e, [("Hi", json_schema_grammar(SCHEMAS[2]), SAMPLED)])
    assert last.finish_reason == "stop"
    jsonschema.validate(json.loads(text), SCHEMAS[2])


@pytest.mark.parametrize(("schema", "named"), [
    ({"type": "object", "not": {"required": ["a"]}}, "not"),
    ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
    ({"$ref": "#/$defs/missing"}, "/$defs/missing"),
    ({"type": "integer", "minimum": "zero"}, "minimum"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"if": {"type": "string"}, "then": {"maxLength": 3}}, '["if", "then"]'),
    ({"type": "string", "format": "colour"}, "colour"),
])
def test_unsupported_or_bad_schemas_are_refused_naming_the_feature(engine: Engine, schema: dict,
                                                                   named: str) -> None:
    with pytest.raises(GrammarError, match=re.escape(named)):
        Constraint(engine.tokenizer, json_schema_grammar(schema))


def test_a_bad_gbnf_grammar_is_refused(engine: Engine) -> None:
    with pytest.raises(GrammarError):
        Constraint(engine.tokenizer, gbnf_grammar('root ::= "a" missing'))


def test_the_mask_allows_only_what_the_grammar_can_take(engine: Engine) -> None:
    c = Constraint(engine.tokenizer, gbnf_grammar('root ::= "ab" | "ac"'))
    allowed = c.allowed()
    pieces = {engine.tokenizer.piece_bytes(t) for t in range(engine.tokenizer.n_vocab) if allowed.allows(t)}
    assert pieces and all(b"ab".startswith(p) or b"ac".startswith(p) for p in pieces)


@pytest.mark.parametrize("params", [GREEDY, SAMPLED, SamplingParams(top_k=2, seed=1)],
                         ids=["greedy", "sampled", "top-k"])
def test_the_sampler_draws_only_allowed_tokens(params: SamplingParams) -> None:
    rng = np.random.default_rng(0)
    sampler = Sampler(params, 330)  # more logits than the 320 tokens the masks cover
    for ids in ([3, 17, 250], [i for i in range(320) if i not in (5, 6)]):  # sparse and dense masks
        allowed = np.zeros(320, bool)
        allowed[ids] = True
        for _ in range(30):
            logits = rng.standard_normal(330).astype(np.float32)
            logits[ids] -= 5  # the best tokens are elsewhere
            mask = TokenMask.from_bools(allowed)
            assert mask.forbidden == (len(ids) > 160)
            assert [t for t in range(330) if mask.allows(t)] == ids
            assert sampler.sample(logits, [], mask) in ids
    with pytest.raises(NumallmError, match="allows no next token"):
        sampler.sample(logits, [], TokenMask.from_bools(np.zeros(320, bool)))


def test_objects_that_list_their_properties_take_only_those() -> None:
    schema = {"type": "object", "properties": {"properties": {"type": "object", "properties": {"a": {}}},
                                               "open": {"type": "object", "additionalProperties": True,
                                                        "properties": {"b": {}}}},
              "$defs": {"p": {"properties": {"x": {}}}},
              "anyOf": [{"properties": {"y": {}}}], "allOf": [{"properties": {"z": {}}}]}
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert set(closed["properties"]) == {"properties", "open"}  # a property named "properties" stays one
    assert closed["properties"]["properties"]["additionalProperties"] is False
    assert closed["properties"]["open"]["additionalProperties"] is True
    assert closed["$defs"]["p"]["additionalProperties"] is closed["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in closed["allOf"][0]  # allOf's branches add their keys up
    assert schema["$defs"]["p"] == {"properties": {"x": {}}}  # the caller's schema is left as it was
