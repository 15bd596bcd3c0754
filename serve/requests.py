"""OpenAI request bodies, checked field by field into a GenerationRequest.

Every wrong field becomes a 400 naming it (the `param` of the error). Fields we do not
implement are refused when they ask for something (logprobs, n > 1, penalties other
than the repeat penalty), never silently ignored; fields that change nothing (user,
metadata, the model name) are accepted. The fields that shape the answer (response
formats, grammars, tools) are checked in serve/structured.py.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, replace
from typing import Any

from numallm.engine.sampling import SamplingParams
from numallm.errors import BadInputError
from numallm.serve import structured
from numallm.serve.errors import bad_request
from numallm.serve.structured import OutputFormat, Tools

MAX_STOP = 16  # OpenAI allows 4 stop strings, llama.cpp any number; 16 is plenty and bounded
MAX_STOP_CHARS = 1000
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Defaults:
    """What a request gets for the fields it leaves out: the server's command line."""

    params: SamplingParams
    max_tokens: int  # -1: until end of generation or a full context
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """A checked /v1/chat/completions or /v1/completions request (n = 1)."""

    messages: list[dict[str, Any]] | None  # chat
    prompt: str | list[int] | None  # completion: text or token ids
    stream: bool
    include_usage: bool
    max_tokens: int
    params: SamplingParams
    stop: tuple[str, ...]
    ignore_eos: bool
    output: OutputFormat | None = None  # a schema or grammar the answer follows
    tools: Tools | None = None  # chat: functions the model may call


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got a {_json_type(body)}")
    return body


def parse_chat(body: dict[str, Any], defaults: Defaults) -> GenerationRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array of {role, content} objects", "messages")
    checked = [_message(i, m) for i, m in enumerate(messages)]
    max_tokens = _max_tokens(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _max_tokens(body, "max_tokens")
    _refuse(body, "logprobs", lambda v: v is None or v is False, "logprobs are not supported")
    _refuse(body, "top_logprobs", lambda v: v is None, "logprobs are not supported")
    _refuse(body, "functions", lambda v: v is None or v == [],
            "the deprecated 'functions' field is not supported: use 'tools'")
    req = _common(body, defaults, max_tokens, messages=checked, prompt=None)
    tools = structured.tools(body)
    if tools is not None and req.output is not None:
        raise bad_request(f"'{req.output.param}' cannot be combined with 'tools' (unless tool_choice is "
                          "\"none\"): the tool-call format is the answer's grammar", req.output.param)
    return replace(req, tools=tools)


def parse_completion(body: dict[str, Any], defaults: Defaults) -> GenerationRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise bad_request("'prompt' must be a string or an array of token ids (one prompt per request)",
                              "prompt")
    elif not isinstance(prompt, str):
        raise bad_request(f"'prompt' must be a string, got {_json_type(prompt)}", "prompt")
    _refuse(body, "logprobs", lambda v: v is None or v == 0, "logprobs are not supported")
    _refuse(body, "echo", lambda v: v is None or v is False, "echo is not supported")
    _refuse(body, "best_of", lambda v: v is None or v == 1, "best_of other than 1 is not supported")
    _refuse(body, "suffix", lambda v: v is None or v == "", "suffix is not supported")
    return _common(body, defaults, _max_tokens(body, "max_tokens"), messages=None, prompt=prompt)


def _common(body: dict[str, Any], defaults: Defaults, max_tokens: int | None,
            messages: list[dict[str, str]] | None, prompt: str | list[int] | None) -> GenerationRequest:
    stream = _typed(body, "stream", bool, "a boolean")
    options = _typed(body, "stream_options", dict, "an object") or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("'stream_options.include_usage' must be a boolean", "stream_options")
    _typed(body, "model", str, "a string")
    _refuse(body, "n", lambda v: v is None or v == 1, "only n = 1 is supported")
    _refuse(body, "logit_bias", lambda v: v is None or v == {}, "logit_bias is not supported")
    for name in ("presence_penalty", "frequency_penalty"):
        _refuse(body, name, lambda v: v is None or v == 0,
                f"{name} is not supported (repeat_penalty is, as in llama.cpp)")
    ignore_eos = _typed(body, "ignore_eos", bool, "a boolean")
    return GenerationRequest(
        messages=messages, prompt=prompt, stream=bool(stream), include_usage=include_usage,
        max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
        params=_sampling(body, defaults.params), stop=_stop(body),
        ignore_eos=defaults.ignore_eos if ignore_eos is None else ignore_eos, output=structured.output_format(body))


# The ranges are OpenAI's where it has the field, llama.cpp's server extensions otherwise;
# upper bounds reject the absurd, not the unusual.
_REAL_FIELDS = {
    "temperature": (lambda v: 0 <= v <= 2, "a number in [0, 2] (0 = greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "min_p": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "repeat_penalty": (lambda v: 0 < v <= 10, "a number in (0, 10] (1 = off)"),
}
_INT_FIELDS = {
    "top_k": (lambda v: 0 <= v <= 1 << 20, "an integer >= 0 (0 = off)"),
    "repeat_last_n": (lambda v: -1 <= v <= 1 << 20, "an integer >= -1"),
    "seed": (lambda v: -1 <= v < 1 << 63, "an integer in [0, 2^63), or -1 for random"),
}


def _sampling(body: dict[str, Any], base: SamplingParams) -> SamplingParams:
    given: dict[str, Any] = {}
    for name, (ok, wanted) in _REAL_FIELDS.items():
        v = body.get(name)
        if v is not None:
            if not (_is_real(v) and math.isfinite(v) and ok(v)):
                raise bad_request(f"'{name}' must be {wanted}, got {v!r:.40}", name)
            given[name] = float(v)
    for name, (ok, wanted) in _INT_FIELDS.items():
        v = body.get(name)
        if v is not None:
            if not (isinstance(v, int) and not isinstance(v, bool) and ok(v)):
                raise bad_request(f"'{name}' must be {wanted}, got {v!r:.40}", name)
            given[name] = v
    try:
        return replace(base, **given).validate()
    except BadInputError as e:  # the server's own defaults are checked at start-up; this is a backstop
        raise bad_request(str(e)) from None


def _max_tokens(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        raise bad_request(f"'{name}' must be an integer >= 1, got {v!r:.40}", name)
    return v


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("'stop' must be a string or an array of strings", "stop")
    if len(stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad_request(f"'stop' takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters", "stop")
    return tuple(s for s in stops if s)


def _message(i: int, m: Any) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad_request(f"'{where}' must be an object with 'role' and 'content'", "messages")
    role = m.get("role")
    role = "system" if role == "developer" else role  # OpenAI's newer name for it
    if role not in ROLES:
        raise bad_request(f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r:.40}", "messages")
    content = m.get("content")
    if content is None and role == "assistant":
        content = ""
    elif isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise bad_request(f"'{where}.content': only text parts are supported", "messages")
        content = "".join(p["text"] for p in content)
    elif not isinstance(content, str):
        raise bad_request(f"'{where}.content' must be a string or an array of text parts", "messages")
    out: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant" and m.get("tool_calls"):
        out["tool_calls"] = structured.tool_calls(where, m["tool_calls"])
    for key in ("tool_call_id", "name"):  # a tool result's call, a participant's name
        if isinstance(m.get(key), str):
            out[key] = m[key]
    return out


def _typed(body: dict[str, Any], name: str, kind: type, wanted: str) -> Any:
    v = body.get(name)
    if v is not None and not isinstance(v, kind):
        raise bad_request(f"'{name}' must be {wanted}, got {_json_type(v)}", name)
    return v


def _refuse(body: dict[str, Any], name: str, fine: Any, message: str) -> None:
    if not fine(body.get(name)):
        raise bad_request(message, name)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _json_type(v: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(v), type(v).__name__)
