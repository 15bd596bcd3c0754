"""Tool-call formats (serve/tools.py): parsing each family's calls whole and streamed, the
grammars that force a call (on the tiny synthetic model, whose random choices they must
still turn into calls that parse), and how tools reach a chat template."""

from __future__ import annotations

import json
import queue
from pathlib import Path

import jsonschema
import pytest

from numallm.engine import Engine
from numallm.engine.batching import BatchScheduler, Job
from numallm.engine.chat_template import ChatTemplate
from numallm.engine.gguf_file import read_gguf
from numallm.engine.grammar import Constraint
from numallm.engine.sampling import SamplingParams
from numallm.engine.tokenizer import Tokenizer
from numallm.serve.tools import FORMATS, DeepSeekV3, Glm45, Hermes, Llama3, Mistral, ToolPlan, ToolStream, \
    renders_tools, template_format
from synthetic import CHATML_TEMPLATE, write_tiny_llama
from test_serve_batching import _collect

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}
TOOLS = [WEATHER, CLOCK]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

# What each family writes for get_weather(city="Paris", days=3), after a little text where
# the format allows it.
ANSWERS = {
    Hermes: ("Let me look.", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}'
                             '\n</tool_call>'),
    Llama3: ("", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}'),
    Mistral: ("", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}, '
                  '"id": "a1b2c3d4e"}]'),
    DeepSeekV3: ("Let me look.", '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n'
                                 '```json\n{"city": "Paris", "days": 3}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'),
    Glm45: ("Let me look.", '<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n'
                            '<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>'),
}


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_each_format_parses_whole_and_streamed(fmt: type) -> None:
    text, calls = ANSWERS[fmt]
    answer = (text + "\n" if text else "") + calls
    content, found = fmt().parse(answer)
    assert content == text
    assert [(c.name, json.loads(c.arguments)) for c in found] == [("get_weather", {"city": "Paris", "days": 3})]
    stream = ToolStream(fmt())
    streamed = "".join(stream.feed(answer[i:i + 3]) for i in range(0, len(answer), 3))
    tail, streamed_calls = stream.finish()
    assert (streamed + tail).strip() == text  # no piece of a marker leaked into the text
    assert [(c.name, c.arguments) for c in streamed_calls] == [(c.name, c.arguments) for c in found]


def test_other_mistral_and_deepseek_spellings_and_several_calls() -> None:
    _, [a] = Mistral().parse('[TOOL_CALLS]clock[ARGS]{"zone": "UTC"}')
    _, [b] = DeepSeekV3().parse('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>clock<｜tool▁sep｜>{"zone": "UTC"}'
                                '<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
    _, two = Hermes().parse('<tool_call>\n{"name": "clock", "arguments": {"zone": "UTC"}}\n</tool_call>\n'
                            '<tool_call>\n{"name": "clock", "arguments": {"zone": "CET"}}\n</tool_call>')
    _, three = Llama3().parse('{"name": "clock", "parameters": {}}; {"name": "clock", "parameters": {}}')
    assert (a.name, a.arguments) == (b.name, b.arguments) == ("clock", '{"zone": "UTC"}')
    assert [json.loads(c.arguments)["zone"] for c in two] == ["UTC", "CET"] and len(three) == 2
    assert len({c.id for c in two}) == 2


def test_text_that_only_looks_like_a_call_stays_text() -> None:
    for fmt, text in [(Hermes, "I would use <tool_call> here"), (Llama3, "{not json"),
                      (Mistral, "[TOOL_CALLS] nothing"), (Hermes, "a < b")]:
        stream = ToolStream(fmt())
        out = "".join(stream.feed(c) for c in text)
        tail, calls = stream.finish()
        assert calls == [] and out + tail == text
        assert fmt().parse(text) == (text, [])


@pytest.fixture(scope="module")
def engine(tiny_llama_512: Path) -> Engine:
    with Engine(tiny_llama_512, threads=2, ctx_size=512, n_slots=4) as e:
        yield e


@pytest.mark.parametrize("parallel", [False, True], ids=["one", "parallel"])
def test_required_and_named_choices_always_give_calls_that_parse_and_validate(engine: Engine,
                                                                            parallel: bool) -> None:
    sampled = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5)
    jobs = [(fmt, choice) for fmt in FORMATS for choice in ("required", "clock")]
    s = BatchScheduler(engine)
    try:
        queues = []
        for fmt, choice in jobs:
            grammar = ToolPlan(TOOLS, choice, parallel, fmt(), True).grammar(engine.tokenizer)
            q: queue.Queue = queue.Queue()
            s.submit(Job(engine.tokenize("Call:"), sampled, 480, (), q.put, special=True,
                         constraint=Constraint(engine.tokenizer, grammar)))
            queues.append(q)
        for (fmt, choice), q in zip(jobs, queues):
            text, u = _collect(q)
            content, calls = fmt().parse(text)
            assert calls, (fmt.name, text)
            if parallel:  # random weights may go on calling until max_tokens cuts the last call
                assert u.finish_reason == "stop" or len(calls) > 1, (fmt.name, text)
            else:
                assert u.finish_reason == "stop" and content == "" and len(calls) == 1, (fmt.name, text)
            for c in calls:
                assert c.name == "clock" or (choice == "required" and c.name in PARAMS)
                jsonschema.validate(json.loads(c.arguments), PARAMS[c.name])
    finally:
        s.close()


def _walk(engine: Engine, grammar: str, text: str) -> int | None:
    """Feed text's tokens to a constraint: the offset in text of the first one it refuses, or None."""
    c = Constraint(engine.tokenizer, grammar)
    at = 0
    for t in engine.tokenize(text, add_special=False):
        if not c.allowed().allows(t):
            return at
        c.consume(t)
        c.start()
        at += len(engine.tokenizer.piece_bytes(t).decode("utf-8", "replace"))
    return None


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_the_grammars_take_the_formats_own_calls_and_refuse_a_wrong_one(engine: Engine, fmt: type) -> None:
    calls = ANSWERS[fmt][1].removeprefix("<|python_tag|>")  # the grammar writes Llama 3's bare JSON
    wrong = calls.replace("get_weather", "get_wether")
    required = ToolPlan(TOOLS, "required", False, fmt(), True).grammar(engine.tokenizer)
    assert _walk(engine, required, calls) is None
    assert _walk(engine, required, wrong) is not None
    auto = ToolPlan(TOOLS, "auto", False, fmt(), True).grammar(engine.tokenizer)
    if fmt is Llama3:  # no marker to wait for: "auto" only parses
        assert auto is None
        return
    prose = "Let me see, <tool> or {json}: [ok]\n"
    assert _walk(engine, auto, prose + calls + " Done.") is None
    refused = _walk(engine, auto, prose + wrong)
    assert refused is not None and refused >= len(prose)  # free text, then a call that must parse


HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{{ {'name': c.function.name, "
    "'arguments': c.function.arguments} | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 22}'},
]


def test_a_template_that_renders_tools_gets_them_natively() -> None:
    tmpl = ChatTemplate.from_jinja(HERMES_TEMPLATE)
    assert renders_tools(tmpl) and isinstance(template_format(tmpl), Hermes)
    plan = ToolPlan.make(tmpl, TOOLS, "auto", None)
    assert plan.native and plan.template_tools == TOOLS and plan.parallel  # it writes both calls of a turn
    prompt = tmpl.render(plan.messages(CONVERSATION), tools=plan.template_tools)
    assert '"name": "clock"' in prompt  # described by the template
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert '<|im_start|>tool\n{"temperature": 22}' in prompt


def test_a_template_without_tools_gets_them_in_the_system_prompt() -> None:
    for tmpl in (ChatTemplate.from_jinja(CHATML_TEMPLATE), ChatTemplate.builtin("gemma3")):
        assert template_format(tmpl) is None
        plan = ToolPlan.make(tmpl, TOOLS, "required", None)
        assert not plan.native and plan.template_tools is None and isinstance(plan.format, Hermes)
        assert not plan.parallel
        messages = plan.messages([{"role": "system", "content": "Be brief."}, *CONVERSATION])
        assert messages[0]["role"] == "system" and messages[0]["content"].startswith("Be brief.\n\n")
        assert json.dumps(CLOCK) in messages[0]["content"]
        assert messages[2]["content"] == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
                                          '\n</tool_call>')
        assert messages[3] == {"role": "user", "content": '<tool_response>\n{"temperature": 22}\n</tool_response>'}
        tmpl.render(messages)  # every role is one the template takes


def test_native_tools_through_the_server_and_the_openai_client(tmp_path: Path) -> None:
    """A model whose template renders tools (Hermes-style): they reach it through the
    template, not the system prompt, and a forced call from random weights still parses."""
    import openai

    from test_serve import Server

    model = write_tiny_llama(tmp_path / "hermes.gguf", n_ctx=1024, chat_template=HERMES_TEMPLATE)
    server = Server(model, "--parallel", "2", "-c", "1024")  # the tiny vocabulary spells JSON long
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
        ask = [{"role": "user", "content": "Time?"}]
        chunks = [c for c in client.chat.completions.create(
            model="any", messages=ask, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "clock"}},
            parallel_tool_calls=False, max_tokens=200, temperature=1.0, seed=3, stream=True) if c.choices]
        [call] = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
        assert chunks[-1].choices[0].finish_reason == "tool_calls" and call.function.name == "clock"
        jsonschema.validate(json.loads(call.function.arguments), PARAMS["clock"])
        again = [*ask, {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "clock", "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "12:00"}]
        used = client.chat.completions.create(model="any", messages=again, tools=TOOLS, max_tokens=1).usage
        tokenizer = Tokenizer.from_metadata(read_gguf(model).metadata)
        tmpl = ChatTemplate.from_jinja(HERMES_TEMPLATE)
        plan = ToolPlan.make(tmpl, TOOLS, "auto", False)
        native = tmpl.render(plan.messages(again), tools=plan.template_tools)
        assert plan.native and '<|im_start|>tool\n12:00' in native and '"name": "clock"' in native
        assert used.prompt_tokens == len(tokenizer.tokenize(native))
    finally:
        server.stop()
