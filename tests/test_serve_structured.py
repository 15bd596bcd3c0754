"""Structured output and tool calls through the official openai client, on the real SmolLM2
(whose chat template does not render tools: they reach it in the system prompt)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import openai
import pytest

from test_serve import KEY, Server

pytestmark = pytest.mark.model
PARALLEL = 8

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3}},
    "required": ["name", "age", "hobbies"], "additionalProperties": False}
# (question, schema): nested objects, enums, arrays with bounds, required and optional
# keys, numbers with ranges, strings with patterns
CASES = [
    ("Describe Anna, who is 31 and likes chess.", PERSON),
    ("Where is the Eiffel Tower?", {"type": "object", "properties": {
        "place": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30},
            "coordinates": {"type": "object", "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                                             "lon": {"type": "number", "minimum": -180,
                                                                     "maximum": 180}},
                            "required": ["lat", "lon"], "additionalProperties": False}},
            "required": ["city", "country"], "additionalProperties": False}},
        "required": ["place"], "additionalProperties": False}),
    ("Is the sky blue? Give your answer and your confidence.", {"type": "object", "properties": {
        "answer": {"enum": ["yes", "no", "unsure"]}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["answer", "confidence"], "additionalProperties": False}),
    ("List three primary colours.", {"type": "object", "properties": {
        "colours": {"type": "array", "items": {"enum": ["red", "yellow", "blue", "green"]},
                    "minItems": 3, "maxItems": 3}}, "required": ["colours"], "additionalProperties": False}),
    ("Give a product code for a blue shirt.", {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}, "size": {"enum": ["S", "M", "L"]},
        "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000}},
        "required": ["code", "price"], "additionalProperties": False}),
    ("When did the first humans land on the Moon?", {"type": "object", "properties": {
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "crew": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3}},
        "required": ["year"], "additionalProperties": False}),
]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                   "required": ["zone"], "additionalProperties": False}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris?"}]


@pytest.fixture(scope="module")
def server(smollm2: Path) -> Iterator[Server]:
    s = Server(smollm2, "--parallel", str(PARALLEL), "-c", "640", "--api-key", KEY, "--temp", "0")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=300)


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def _chat(client: openai.OpenAI, question: str, stream: bool = False, **kw: object) -> tuple[str, str]:
    """(content, finish_reason) of a greedy chat answer, whole or streamed."""
    messages = [{"role": "user", "content": question}]
    if not stream:
        r = client.chat.completions.create(model="any", messages=messages, max_tokens=200, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    chunks = [c for c in client.chat.completions.create(model="any", messages=messages, max_tokens=200,
                                                        stream=True, **kw) if c.choices]
    return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason


def test_json_schema_answers_validate_whole_and_streamed(client: openai.OpenAI) -> None:
    for question, schema in CASES:
        whole = _chat(client, question, response_format=_schema_format(schema))
        assert whole[1] == "stop", whole
        jsonschema.validate(json.loads(whole[0]), schema)
        assert _chat(client, question, stream=True, response_format=_schema_format(schema)) == whole


def test_json_object_and_the_completions_endpoint(client: openai.OpenAI) -> None:
    text, finish = _chat(client, "Return a JSON object with the keys 'city' and 'country' for Paris.",
                         response_format={"type": "json_object"})
    assert finish == "stop" and isinstance(json.loads(text), dict)
    r = client.completions.create(model="any", prompt="A person as JSON:", max_tokens=120,
                                  extra_body={"response_format": _schema_format(PERSON)})
    jsonschema.validate(json.loads(r.choices[0].text), PERSON)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="any", prompt="A person as JSON:", max_tokens=120, stream=True,
        extra_body={"response_format": _schema_format(PERSON)}))
    assert streamed == r.choices[0].text


def test_llama_server_json_schema_field(client: openai.OpenAI) -> None:
    schema = CASES[2][1]
    text, finish = _chat(client, CASES[2][0], extra_body={"json_schema": schema})
    assert finish == "stop" and text == _chat(client, CASES[2][0], response_format=_schema_format(schema))[0]
    jsonschema.validate(json.loads(text), schema)


def test_gbnf_grammar_field(client: openai.OpenAI) -> None:
    gbnf = 'root ::= "The answer is " ("yes" | "no") "."'
    r = client.completions.create(model="any", prompt="Is water wet?", max_tokens=20, extra_body={"grammar": gbnf})
    assert r.choices[0].text in ("The answer is yes.", "The answer is no.")
    assert r.choices[0].finish_reason == "stop"


def test_eight_streams_with_mixed_schemas_are_valid_and_equal_their_solo_output(server: Server,
                                                                              client: openai.OpenAI) -> None:
    jobs = [CASES[i % len(CASES)] for i in range(PARALLEL - 1)] + [("Name a fruit.", None)]

    def run(job: tuple[str, dict | None]) -> tuple[str, str]:
        question, schema = job
        return _chat(client, question, stream=True, **({"response_format": _schema_format(schema)} if schema else {}))

    solo = [run(job) for job in jobs]
    masks = server.metric("numallm_grammar_mask_seconds_count")
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(run, jobs))
    assert together == solo
    for (_, schema), (text, finish) in zip(jobs, together):
        if schema is not None:
            assert finish == "stop"
            jsonschema.validate(json.loads(text), schema)
    assert server.metric("numallm_grammar_mask_seconds_count") > masks
    assert server.metric("numallm_grammar_wait_seconds_count") > masks


BAD = [
    ({"response_format": _schema_format({"type": "object", "not": {"required": ["a"]}})}, "response_format", "not"),
    ({"response_format": _schema_format({"type": "string", "pattern": "a(?=b)"})}, "response_format",
     "look-around"),
    ({"response_format": _schema_format({"$ref": "#/$defs/nowhere"})}, "response_format", "nowhere"),
    ({"response_format": {"type": "xml"}}, "response_format", "response_format"),
    ({"grammar": 'root ::= "a" undefined-rule'}, "grammar", "undefined"),
    ({"grammar": 'root ::= "a"', "json_schema": {"type": "object"}}, "grammar", "not 'json_schema' and 'grammar'"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format", "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "nope"),
    ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "tools[0]"),
]


@pytest.mark.parametrize(("fields", "param", "named"), BAD, ids=[b[2] for b in BAD])
def test_bad_formats_and_tools_get_a_400_naming_the_problem(server: Server, fields: dict, param: str,
                                                            named: str) -> None:
    body = {"messages": ASK_WEATHER, "max_tokens": 8, **fields}
    status, reply = server.post("/v1/chat/completions", json.dumps(body).encode())
    assert status == 400, reply
    assert reply["error"]["param"] == param and named in reply["error"]["message"], reply


def test_required_and_named_tool_calls_whole_and_streamed(client: openai.OpenAI) -> None:
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = client.chat.completions.create(model="any", messages=ASK_WEATHER, tools=[TIME, WEATHER],
                                           tool_choice=choice, max_tokens=100)
        assert r.choices[0].finish_reason == "tool_calls"
        [call] = r.choices[0].message.tool_calls
        assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        chunks = [c for c in client.chat.completions.create(
            model="any", messages=ASK_WEATHER, tools=[TIME, WEATHER], tool_choice=choice, max_tokens=100,
            stream=True) if c.choices]
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
        assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == [
            (0, "get_weather", call.function.arguments)]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""


def test_parallel_tool_calls(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="any", messages=[
        {"role": "user", "content": "What is the weather in Paris and in Rome?"}], tools=[WEATHER],
        tool_choice="required", parallel_tool_calls=True, max_tokens=120)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 2 and len({c.id for c in calls}) == 2
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]


def test_a_tool_call_round_trips_through_a_tool_message(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="any", messages=ASK_WEATHER, tools=[WEATHER],
                                           tool_choice="required", max_tokens=100)
    call = first.choices[0].message.tool_calls[0]
    conversation = [*ASK_WEATHER, first.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 22})}]
    second = client.chat.completions.create(model="any", messages=conversation, tools=[WEATHER], max_tokens=60)
    answer = second.choices[0].message
    assert second.choices[0].finish_reason == "stop" and not answer.tool_calls
    assert "22" in answer.content  # the tool's result reached the model
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_auto_and_none_let_the_model_answer_in_text(client: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "Say hello."}]
    for choice in ("auto", "none"):
        r = client.chat.completions.create(model="any", messages=question, tools=[WEATHER], tool_choice=choice,
                                           max_tokens=20)
        assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    plain = client.chat.completions.create(model="any", messages=question, max_tokens=20)
    none = client.chat.completions.create(model="any", messages=question, tools=[WEATHER], tool_choice="none",
                                          max_tokens=20)
    assert none.choices[0].message.content == plain.choices[0].message.content  # no tools in the prompt
