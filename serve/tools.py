"""Tool calls: the formats of the model families numallm runs or will run, as llama-server's
`--jinja` mode handles them.

The chat template describes the tools (its `tools` variable) when it knows how; the
format of the calls is recognised from the template's text: Hermes/Qwen `<tool_call>`
JSON, Llama 3.x bare JSON, Mistral `[TOOL_CALLS]`, DeepSeek V3's `<｜tool▁call▁begin｜>`
and GLM 4.5's `<arg_key>`/`<arg_value>` pairs. A template that does not render tools
(SmolLM2's, or a built-in format) gets them as llama-server does for such templates:
described in the system prompt, here in the Hermes format, with earlier calls and tool
results written into the conversation in that format.

`tool_choice` "required" or a named function constrains the answer with a grammar in
the model's format, so the call always parses and its arguments follow the function's
parameter schema; "auto" lets the model write text, and constrains a call once its
marker is written (a lazy grammar), so a begun call parses too.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from numallm.engine.chat_template import ChatTemplate, ChatTemplateError
from numallm.engine.grammar import json_schema_lark, lark_grammar
from numallm.engine.sequence import split_safe
from numallm.engine.tokenizer import Tokenizer
from numallm.engine.tokenizer_vocab import Attr


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str

    def openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {"id": self.id, "type": "function",
                                "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


def _loads(text: str) -> Any:
    """The JSON value of text, or None if it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _call(name: Any, arguments: Any) -> ToolCall | None:
    if not isinstance(name, str) or not name:
        return None
    if isinstance(arguments, str):
        arguments = _loads(arguments)
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name, json.dumps(arguments, ensure_ascii=False), "call_" + secrets.token_hex(12))


class _Lit:
    """Grammar literals: a control token by id (its text cannot come from other tokens), else text."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._control = {tokenizer.piece_bytes(i, special=True).decode("utf-8", "replace"): i
                         for i in tokenizer.ids_with(Attr.CONTROL)}

    def __call__(self, text: str) -> str:
        i = self._control.get(text)
        return f"<[{i}]>" if i is not None else json.dumps(text, ensure_ascii=False)


def _params(tool: dict[str, Any]) -> dict[str, Any]:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def _json_call(tool: dict[str, Any], args_key: str) -> dict[str, Any]:
    """The schema of {"name": <this tool>, args_key: <its parameters>}."""
    return {"type": "object", "properties": {"name": {"const": tool["function"]["name"]}, args_key: _params(tool)},
            "required": ["name", args_key], "additionalProperties": False}


class ToolFormat:
    """How one family writes tool calls: where they start, how to parse and constrain them."""

    name = ""
    signatures: tuple[str, ...] = ()  # texts in a chat template that uses this format
    markers: tuple[str, ...] = ()  # texts that begin the calls
    at_start_only = False  # the calls are the whole answer, or not calls at all
    object_arguments = True  # the template reads arguments as an object, not JSON text

    @classmethod
    def detect(cls, template: str) -> bool:
        return any(s in template for s in cls.signatures)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """(the text that is not calls, the calls); a call that does not parse stays text."""
        raise NotImplementedError

    def after_trigger(self, tools: list[dict[str, Any]], parallel: bool, lit: _Lit) -> str:
        """Lark rules whose `calls` is what follows markers[0]: one call to one of `tools`
        (or several, if parallel) to the format's end."""
        raise NotImplementedError

    def lark(self, tools: list[dict[str, Any]], parallel: bool, lit: _Lit, lazy: bool = False) -> str | None:
        """A Lark grammar for an answer that is only calls to `tools`, or with `lazy`
        ("auto") any text in which a call, once its marker is written, must parse (as
        llama.cpp's lazy grammars; llguidance's lazy lexemes). None: no lazy form."""
        rules = self.after_trigger(tools, parallel, lit)
        trigger = lit(self.markers[0])
        if not lazy:
            return f"start: {trigger} calls\n{rules}"
        # A control-token trigger cannot occur inside TEXT; a text one is found by the lazy lexeme.
        head = (f"call_trigger[lazy]: TEXT {trigger}\ncall: call_trigger calls" if trigger.startswith('"')
                else f"call: TEXT {trigger} calls")
        return (f"%llguidance {{}}\nstart: call{'*' if parallel else '?'} TEXT\n{head}\n"
                f"TEXT: /(.|\\n)*/\n{rules}")


def _spans(text: str, pattern: re.Pattern[str],
           make: Any) -> tuple[str, list[ToolCall]]:
    """Cut the matches of `pattern` that `make(match)` turns into calls out of text."""
    calls, kept, at = [], [], 0
    for m in pattern.finditer(text):
        call = make(m)
        if call is not None:
            kept.append(text[at:m.start()])
            calls.append(call)
            at = m.end()
    kept.append(text[at:])
    return "".join(kept).strip(), calls


class Hermes(ToolFormat):
    """Hermes 2 Pro / Qwen 2.5-3: <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>."""

    name = "hermes"
    signatures = ("<tool_call>",)
    markers = ("<tool_call>",)
    _pattern = re.compile(r"<tool_call>\s*(\{.*?\})\s*(?:</tool_call>|$)", re.S)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        return _spans(text, self._pattern, lambda m: _json_object_call(m.group(1), "arguments"))

    def after_trigger(self, tools: list[dict[str, Any]], parallel: bool, lit: _Lit) -> str:
        schema = {"anyOf": [_json_call(t, "arguments") for t in tools]}
        more = f' ("\\n" {lit("<tool_call>")} one)*' if parallel else ""
        return (f"calls: one{more}\n"
                f'one: "\\n" {json_schema_lark(schema)} "\\n" {lit("</tool_call>")}\n')


def _json_object_call(text: str, args_key: str) -> ToolCall | None:
    obj = _loads(text)
    if not isinstance(obj, dict):
        return None
    return _call(obj.get("name"), obj.get(args_key, obj.get("parameters", obj.get("arguments"))))


class Llama3(ToolFormat):
    """Llama 3.1-3.3: the whole answer is {"name": ..., "parameters": {...}} (maybe after <|python_tag|>)."""

    name = "llama3"
    signatures = ("<|python_tag|>", "ipython")
    markers = ("{", "<|python_tag|>")
    at_start_only = True

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        body = text.strip().removeprefix("<|python_tag|>").strip()
        calls, decoder, at = [], json.JSONDecoder(), 0
        while at < len(body):
            try:
                obj, end = decoder.raw_decode(body, at)
            except json.JSONDecodeError:
                return text, []
            call = _json_object_call(json.dumps(obj), "parameters")
            if call is None:
                return text, []
            calls.append(call)
            at = end
            while at < len(body) and body[at] in " \t\n;":  # several calls: one per line or ';'
                at += 1
        return ("", calls) if calls else (text, [])

    def lark(self, tools: list[dict[str, Any]], parallel: bool, lit: _Lit, lazy: bool = False) -> str | None:
        if lazy:  # its calls are the whole answer: there is no marker to wait for
            return None
        schema = {"anyOf": [_json_call(t, "parameters") for t in tools]}
        more = ' (";" call)*' if parallel else ""
        return f"start: call{more}\ncall: {json_schema_lark(schema)}\n"


class Mistral(ToolFormat):
    """Mistral Nemo and later: [TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}], or
    (Mistral Small 3.2, Magistral) [TOOL_CALLS]name[ARGS]{...} per call."""

    name = "mistral"
    signatures = ("[TOOL_CALLS]",)
    markers = ("[TOOL_CALLS]",)
    _named = re.compile(r"\[TOOL_CALLS\]\s*([^\[\s]+?)\s*\[ARGS\]\s*(\{.*?\})(?=\s*\[TOOL_CALLS\]|\s*$)", re.S)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        at = text.find("[TOOL_CALLS]")
        if at < 0:
            return text, []
        rest = text[at + len("[TOOL_CALLS]"):].lstrip()
        if rest.startswith("["):
            try:
                items, end = json.JSONDecoder().raw_decode(rest)
            except json.JSONDecodeError:
                return text, []
            calls = [c for c in (_json_object_call(json.dumps(i), "arguments") for i in items
                                 if isinstance(i, dict)) if c] if isinstance(items, list) else []
            return ((text[:at] + rest[end:]).strip(), calls) if calls else (text, [])
        return _spans(text, self._named, lambda m: _call(m.group(1), m.group(2)))

    def after_trigger(self, tools: list[dict[str, Any]], parallel: bool, lit: _Lit) -> str:
        item = {"anyOf": [{**_json_call(t, "arguments"),
                           "properties": {**_json_call(t, "arguments")["properties"],
                                          "id": {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}}}
                          for t in tools]}
        schema = {"type": "array", "items": item, "minItems": 1, **({} if parallel else {"maxItems": 1})}
        return f"calls: {json_schema_lark(schema)}\n"


class DeepSeekV3(ToolFormat):
    """DeepSeek V3/R1: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
    ```json ARGS```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜> (V3.1: NAME<｜tool▁sep｜>ARGS)."""

    name = "deepseek-v3"
    signatures = ("<｜tool▁calls▁begin｜>",)
    markers = ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>")
    object_arguments = False  # its template writes the arguments text as it is
    _pattern = re.compile(
        r"<｜tool▁call▁begin｜>\s*(?:function\s*<｜tool▁sep｜>\s*([^\n]+?)\s*\n```(?:json)?\s*(\{.*?\})\s*```"
        r"|([^<\n]+?)\s*<｜tool▁sep｜>\s*(\{.*?\}))\s*<｜tool▁call▁end｜>", re.S)
    _wrapper = re.compile(r"<｜tool▁calls▁(?:begin|end)｜>")

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        content, calls = _spans(text, self._pattern,
                                lambda m: _call(m.group(1) or m.group(3), m.group(2) or m.group(4)))
        return (self._wrapper.sub("", content).strip(), calls) if calls else (text, [])

    def after_trigger(self, tools: list[dict[str, Any]], parallel: bool, lit: _Lit) -> str:
        rules = [f'call_{i}: {lit("<｜tool▁call▁begin｜>")} "function" {lit("<｜tool▁sep｜>")} '
                 f'{json.dumps(t["function"]["name"])} "\\n```json\\n" {json_schema_lark(_params(t))} '
                 f'"\\n```" {lit("<｜tool▁call▁end｜>")}' for i, t in enumerate(tools)]
        one = " | ".join(f"call_{i}" for i in range(len(tools)))
        return (f'calls: one{"+" if parallel else ""} {lit("<｜tool▁calls▁end｜>")}\none: {one}\n'
                + "\n".join(rules) + "\n")


class Glm45(ToolFormat):
    """GLM 4.5: <tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>\\n...</tool_call>,
    string values as they are, others as JSON."""

    name = "glm-4.5"
    signatures = ("<arg_key>",)
    markers = ("<tool_call>",)
    _pattern = re.compile(r"<tool_call>\s*([^\n<]+?)\s*(?:\n(.*?))?</tool_call>", re.S)
    _arg = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        def make(m: re.Match[str]) -> ToolCall | None:
            args: dict[str, Any] = {}
            for k, v in self._arg.findall(m.group(2) or ""):
                try:
                    args[k.strip()] = json.loads(v)
                except json.JSONDecodeError:
                    args[k.strip()] = v
            return _call(m.group(1), args)
        return _spans(text, self._pattern, make)

    def after_trigger(self, tools: list[dict[str, Any]], parallel: bool, lit: _Lit) -> str:
        rules = []
        for i, t in enumerate(tools):
            params = _params(t)
            required = params.get("required") or []
            args = []  # each key once, in the schema's order: the required ones, then each optional one or not
            for k, schema in (params.get("properties") or {}).items():
                value = _raw_string(schema) if schema.get("type") == "string" else json_schema_lark(schema)
                arg = (f'{lit("<arg_key>")} {json.dumps(k)} {lit("</arg_key>")} "\\n" '
                       f'{lit("<arg_value>")} {value} {lit("</arg_value>")} "\\n"')
                args.append(arg if k in required else f"({arg})?")
            name = json.dumps(t["function"]["name"])
            rules.append(f'call_{i}: {name} "\\n" {" ".join(args)} {lit("</tool_call>")}')
        one = " | ".join(f"call_{i}" for i in range(len(tools)))
        more = f' ("\\n" {lit("<tool_call>")} one)*' if parallel else ""
        return f"calls: one{more}\none: {one}\n" + "\n".join(rules) + "\n"


def _raw_string(schema: dict[str, Any]) -> str:
    """A GLM string value: any text without '<' (which would start the closing tag), within maxLength."""
    n = schema.get("maxLength")
    return f"/[^<]{{0,{n}}}/" if isinstance(n, int) and n >= 0 else "/[^<]*/"


FORMATS: tuple[type[ToolFormat], ...] = (Glm45, Hermes, Mistral, DeepSeekV3, Llama3)  # GLM before Hermes

_PROBE_TOOL = "numallm_probe_tool"
FALLBACK_SYSTEM = (
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}}\n</tool_call>")


def renders_tools(template: ChatTemplate) -> bool:
    """Does the template describe the tools it is given (as llama.cpp's capability probe)?"""
    probe = [{"type": "function", "function": {"name": _PROBE_TOOL, "description": "probe",
                                               "parameters": {"type": "object", "properties": {}}}}]
    try:
        return _PROBE_TOOL in template.render([{"role": "user", "content": "Hi"}], tools=probe)
    except ChatTemplateError:
        return False


@functools.lru_cache(maxsize=4)
def renders_parallel_calls(template: ChatTemplate) -> bool:
    """Does the template write out both calls of an assistant turn that made two (llama.cpp's
    supports_parallel_tool_calls, the default of parallel_tool_calls)?"""
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": f"{_PROBE_TOOL}_{i}", "arguments": {}}}
             for i in range(2)]
    try:
        out = template.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "",
                                                                  "tool_calls": calls}], add_generation_prompt=False)
    except ChatTemplateError:
        return False
    return f"{_PROBE_TOOL}_0" in out and f"{_PROBE_TOOL}_1" in out


@functools.lru_cache(maxsize=4)
def template_format(template: ChatTemplate) -> ToolFormat | None:
    """The tool-call format of a template that renders tools natively, else None (fallback)."""
    fmt = next((f for f in FORMATS if f.detect(template.text)), None)
    return fmt() if fmt is not None and renders_tools(template) else None


@dataclass(frozen=True)
class ToolPlan:
    """How one request's tools reach the prompt and come back out of the answer."""

    tools: list[dict[str, Any]]
    choice: str | None  # "auto", "required", or the name of the function the answer must call
    parallel: bool
    format: ToolFormat
    native: bool  # the template renders the tools; else they are described in the system prompt

    @classmethod
    def make(cls, template: ChatTemplate, tools: list[dict[str, Any]], choice: str,
             parallel: bool | None) -> ToolPlan:
        """parallel None: as llama-server, several calls where the template can write them back."""
        fmt = template_format(template)
        if parallel is None:
            parallel = fmt is not None and renders_parallel_calls(template)
        return cls(tools, choice, parallel, fmt or Hermes(), fmt is not None)

    def messages(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The conversation as the template should see it."""
        if self.native:
            return [self._native(m) for m in messages]
        out = [self._polyfill(m) for m in messages]
        if not self.tools:  # only earlier calls and their results to write out
            return out
        described = FALLBACK_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in self.tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + described}
        else:
            out.insert(0, {"role": "system", "content": described})
        return out

    def _native(self, m: dict[str, Any]) -> dict[str, Any]:
        if "tool_calls" not in m or not self.format.object_arguments:
            return m
        calls = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                 for c in m["tool_calls"]]
        return {**m, "tool_calls": calls}

    @staticmethod
    def _polyfill(m: dict[str, Any]) -> dict[str, Any]:
        if m["role"] == "tool":
            return {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
        if "tool_calls" in m:
            calls = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                           "arguments": json.loads(c["function"]["arguments"])},
                                                          ensure_ascii=False) + "\n</tool_call>"
                              for c in m["tool_calls"])
            return {"role": m["role"], "content": (m["content"] + "\n" if m["content"] else "") + calls}
        return {k: v for k, v in m.items() if k in ("role", "content")}

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        return self.tools if self.native else None

    def grammar(self, tokenizer: Tokenizer) -> str | None:
        """The grammar on the answer: only calls for "required" and a named choice; for
        "auto", any text in which a call must parse once begun (None: the format has no
        such form, the call is only parsed)."""
        tools = self.tools if self.choice in ("auto", "required") else [
            t for t in self.tools if t["function"]["name"] == self.choice]
        lark = self.format.lark(tools, self.parallel, _Lit(tokenizer), lazy=self.choice == "auto")
        return None if lark is None else lark_grammar(lark)

    def stream(self) -> ToolStream:
        return ToolStream(self.format)


class ToolStream:
    """Splits an answer arriving piece by piece into text to stream now and, at the end,
    the calls: text goes out until a format's marker starts the calls (text that could be
    a marker's beginning is held back), everything after the marker waits for the end."""

    def __init__(self, fmt: ToolFormat) -> None:
        self._fmt = fmt
        self._held = ""
        self._calls_from: int | None = None  # where the calls start in _all
        self._all = ""
        self._looking = True  # at_start_only formats stop looking once text has started

    def feed(self, text: str) -> str:
        self._all += text
        if self._calls_from is not None:
            return ""
        pending = self._held + text
        if not self._looking:
            self._held = ""
            return pending
        if self._fmt.at_start_only:
            head = pending.lstrip()
            if any(head.startswith(m) for m in self._fmt.markers):
                self._calls_from = len(self._all) - len(pending)
                return ""
            if not head or any(m.startswith(head) for m in self._fmt.markers):
                self._held = pending
                return ""
            self._looking, self._held = False, ""
            return pending
        hits = [i for i in (pending.find(m) for m in self._fmt.markers) if i >= 0]
        if hits:
            self._calls_from = len(self._all) - len(pending) + min(hits)
            self._held = ""
            return pending[:min(hits)]
        emit, self._held = split_safe(pending, self._fmt.markers)
        return emit

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The rest of the text (held back, or calls that did not parse) and the calls."""
        if self._calls_from is None:
            held, self._held = self._held, ""
            return held, []
        content, calls = self._fmt.parse(self._all[self._calls_from:])
        return content, calls

    def whole(self, text: str) -> tuple[str, list[ToolCall]]:
        """A whole (not streamed) answer's text without its calls, and the calls."""
        return self._fmt.parse(text)
