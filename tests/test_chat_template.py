"""Chat templates render as Hugging Face renders them, fall back as llama.cpp does, and
untrusted template code cannot leave the sandbox or run without bound."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from numallm.engine import chat_template
from numallm.engine.chat_template import ChatTemplate, ChatTemplateError
from numallm.engine.gguf_file import read_gguf
from numallm.engine.model_store import fetch_known_model
from numallm.errors import BadInputError

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a colour."},
]


def metadata(model: str) -> dict[str, Any]:
    return read_gguf(fetch_known_model(model, quiet=True)).metadata


@pytest.mark.model
def test_smollm2_template_renders_as_hugging_face_does() -> None:
    tmpl = ChatTemplate.from_metadata(metadata("smollm2"), "llama", "<|im_start|>", "<|im_end|>")
    assert (tmpl.source, tmpl.fallback_reason) == ("gguf", None)
    # Written out by hand from the template text in the GGUF.
    assert tmpl.render(CONVERSATION[:3], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert tmpl.render(CONVERSATION[1:2]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.model
def test_gemma3_without_template_uses_llama_cpp_gemma_format() -> None:
    md = metadata("gemma3")
    assert "tokenizer.chat_template" not in md
    tmpl = ChatTemplate.from_metadata(md, "gemma3", "<bos>", "<eos>")
    assert (tmpl.source, tmpl.fallback_reason) == ("builtin:gemma", None)
    # The system text is merged into the first user turn; contents are trimmed.
    assert tmpl.render([{**m, "content": f"  {m['content']}\n"} for m in CONVERSATION]) == (
        "<start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert tmpl.render(CONVERSATION[1:3], add_generation_prompt=False) == (
        "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    )


def test_llama_arch_without_template_uses_chatml() -> None:
    tmpl = ChatTemplate.from_metadata({"general.architecture": "llama"}, "llama", "<s>", "</s>")
    assert (tmpl.source, tmpl.fallback_reason) == ("builtin:chatml", None)
    assert tmpl.render(CONVERSATION[:2]) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )


# Gemma 3's Hugging Face template (text parts only): the builtin must produce the same turns.
GEMMA3_HF_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def test_gemma_builtin_matches_gemma3_hugging_face_template() -> None:
    hf = ChatTemplate.from_jinja(GEMMA3_HF_TEMPLATE, "<bos>", "<eos>").render(CONVERSATION)
    assert hf == "<bos>" + ChatTemplate.builtin("gemma3").render(CONVERSATION)
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        ChatTemplate.from_jinja(GEMMA3_HF_TEMPLATE).render(CONVERSATION[1:2] * 2)


def test_llama3_template_renders_as_hugging_face_does() -> None:
    tmpl = ChatTemplate.from_jinja(LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>")
    assert tmpl.render(CONVERSATION[:2]) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_trim_and_lstrip_blocks_as_hugging_face_sets_them() -> None:
    source = (
        "{% for m in messages %}\n"
        "    {% if m.role == 'user' %}\n"
        "U: {{ m.content }}\n"
        "    {% else %}\n"
        "{{ m.role[0] | upper }}: {{ m.content }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}A:{% endif %}\n"
    )
    assert ChatTemplate.from_jinja(source).render(CONVERSATION) == (
        "S: You are terse.\nU: Hi there\nA: Hello!\nU: Name a colour.\nA:"
    )


def test_globals_and_filters_transformers_provides() -> None:
    source = (
        "{{ bos_token }}{{ messages[0].content | tojson }}|{{ {'b': 'é<'} | tojson(indent=1) }}|"
        "{{ strftime_now('%Y') }}|{% if tools is not none or documents is not none %}T{% endif %}"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}[{{ m.role }}]{% endgeneration %}{% endfor %}{{ eos_token }}"
    )
    tmpl = ChatTemplate.from_jinja(source, "<s>", "</s>")
    out = tmpl.render([{"role": "user", "content": 'Grüß "dich" <b>'}, {"role": "assistant", "content": "x"}])
    year = datetime.datetime.now().strftime("%Y")
    assert out == f'<s>"Grüß \\"dich\\" <b>"|{{\n "b": "é<"\n}}|{year}|[user]</s>'


def test_sandbox_still_allows_what_real_templates_use() -> None:
    # namespace assignment, slicing, selectattr, str methods, str.format, dict.items.
    source = (
        "{%- set ns = namespace(last_user=-1) -%}"
        "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
        "{%- endif -%}{%- endfor -%}"
        "{%- for m in messages[::-1] | selectattr('role', 'equalto', 'user') | list -%}"
        "{{ m.content.split(' ')[0] | lower }}{{ ',' if not loop.last }}{%- endfor -%}"
        "|{{ ns.last_user }}|{{ '{}-{}'.format(messages | length, messages[0]['role']) }}"
        "|{{ messages[0].items() | list | length }}"
    )
    assert ChatTemplate.from_jinja(source).render(CONVERSATION) == "name,hi|3|4-system|2"


def test_raise_exception_becomes_a_chat_template_error_with_the_templates_message() -> None:
    tmpl = ChatTemplate.from_jinja(
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok")
    assert tmpl.render(CONVERSATION[1:2]) == "ok"
    with pytest.raises(ChatTemplateError, match="rejects this conversation: System role not supported$"):
        tmpl.render(CONVERSATION)


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ ''['__class__'] }}",
    "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "{{ lipsum.__globals__['os'].system('touch {marker}') }}",
    "{{ self.__init__.__globals__ }}",
    "{{ messages.append(1) }}{{ messages.clear() }}",
    "{{ messages[0].update({'role': 'x'}) }}",
])
def test_sandbox_escapes_raise_and_run_nothing(source: str, tmp_path: Path) -> None:
    marker = tmp_path / "escaped"
    tmpl = ChatTemplate.from_jinja(source.replace("{marker}", str(marker)))
    with pytest.raises(ChatTemplateError, match="sandbox rule") as exc:
        tmpl.render(CONVERSATION)
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, BadInputError)
    assert not marker.exists()


@pytest.mark.parametrize("source, why", [
    ("{{ 'a' * 1000000000 }}", "repeating a sequence"),
    ("{{ [1, 2] * 10**8 }}", "repeating a sequence"),
    ("{{ 7 ** 100000000 }}", "exponent"),
    ("{{ 'a' | center(1000000000) }}", "filter center"),
    ("{{ 'a' | indent(1000000000, true) }}", "filter indent"),
    ("{% for x in 'ab' | slice(10**12) %}{% endfor %}", "filter slice"),
    ("{% for i in range(100000) %}{% for j in range(1000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}",
     "output is longer"),
])
def test_resource_limits(source: str, why: str) -> None:
    with pytest.raises(ChatTemplateError, match=why):
        ChatTemplate.from_jinja(source).render(CONVERSATION)


def test_render_deadline_stops_busy_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat_template, "MAX_RENDER_SECONDS", 0.2)
    busy = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="longer than 0.2 s"):
        ChatTemplate.from_jinja(busy).render(CONVERSATION)


@pytest.mark.parametrize("source", ["{% for m in messages %}", "{{ 'a' }", "{% if %}x{% endif %}",
                                    "{% endgeneration %}"])
def test_syntax_error_fails_at_load_and_metadata_falls_back(source: str) -> None:
    with pytest.raises(ChatTemplateError, match="^chat template does not parse at line 1: "):
        ChatTemplate.from_jinja(source)
    tmpl = ChatTemplate.from_metadata({"tokenizer.chat_template": source}, "gemma3", "<bos>", "<eos>")
    assert tmpl.source == "builtin:gemma"
    assert tmpl.fallback_reason is not None and "does not parse" in tmpl.fallback_reason
    assert tmpl.render(CONVERSATION[1:2]) == "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize("source, why", [
    ("{{ cycler.__init__ }}", "sandbox rule"),
    ("{{ messages[0].content + 1 }}", "TypeError"),
    ("{{ raise_exception('nope') }}", "rejects this conversation: nope"),
])
def test_template_failing_the_probe_render_falls_back_at_load(source: str, why: str) -> None:
    tmpl = ChatTemplate.from_metadata({"tokenizer.chat_template": source}, "llama", "", "")
    assert tmpl.source == "builtin:chatml"
    assert tmpl.fallback_reason is not None and why in tmpl.fallback_reason


def test_runtime_errors_name_the_problem() -> None:
    tmpl = ChatTemplate.from_jinja("{{ messages[0].content.missing.deeper }}")
    with pytest.raises(ChatTemplateError, match="^the chat template failed: UndefinedError: "):
        tmpl.render(CONVERSATION)


@pytest.mark.parametrize("messages", [
    "hello", [{"role": "user"}], [{"role": "user", "content": 3}], [("user", "hi")],
])
def test_malformed_messages_are_bad_input_not_template_errors(messages: Any) -> None:
    for tmpl in (ChatTemplate.builtin("llama"), ChatTemplate.from_jinja("{{ messages }}")):
        with pytest.raises(BadInputError) as exc:
            tmpl.render(messages)
        assert not isinstance(exc.value, ChatTemplateError)


@pytest.mark.parametrize("value, reason", [
    ("", None),
    ("  \n", None),
    (["{{ messages }}"], "is a list, not a string"),
    ("{{" + "(" * 50000 + ")" * 50000 + "}}", "does not parse: RecursionError"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "failed: RecursionError"),
])
def test_blank_odd_or_pathological_metadata_falls_back(value: Any, reason: str | None) -> None:
    tmpl = ChatTemplate.from_metadata({"tokenizer.chat_template": value}, "gemma3", "", "")
    assert tmpl.source == "builtin:gemma"
    if reason is None:
        assert tmpl.fallback_reason is None
    else:
        assert tmpl.fallback_reason is not None and reason in tmpl.fallback_reason
