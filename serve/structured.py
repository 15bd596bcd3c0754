"""The request fields that shape an answer, checked: `response_format` (and llama-server's
`json_schema` and `grammar`), `tools`, `tool_choice`, `parallel_tool_calls`, and the tool
parts of chat messages (an assistant's `tool_calls`, a `tool` message's `tool_call_id`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from numallm.serve.errors import bad_request

MAX_TOOLS = 128
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI's rule for function names


@dataclass(frozen=True)
class OutputFormat:
    """A constraint on the whole answer: a JSON schema, or a GBNF/Lark grammar."""

    kind: str  # "json_schema" or "grammar"
    spec: Any  # the schema (a dict), or the grammar's text
    param: str  # the field it came from, for errors


@dataclass(frozen=True)
class Tools:
    tools: list[dict[str, Any]]
    choice: str  # "auto", "required", or a function's name
    parallel: bool | None  # None: the template's own default


def output_format(body: dict[str, Any]) -> OutputFormat | None:
    found = []
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise bad_request("'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                              "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}",
                              "response_format")
        if rf["type"] == "json_object":  # llama-server takes a "schema" here too
            found.append(OutputFormat("json_schema", _schema(rf.get("schema", {"type": "object"}),
                                                             "response_format"), "response_format"))
        elif rf["type"] == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict):
                raise bad_request("'response_format.json_schema' must be an object with a 'schema'", "response_format")
            found.append(OutputFormat("json_schema", _schema(js.get("schema", {"type": "object"}),
                                                             "response_format"), "response_format"))
    if body.get("json_schema") is not None:
        found.append(OutputFormat("json_schema", _schema(body["json_schema"], "json_schema"), "json_schema"))
    if body.get("grammar") is not None:
        if not isinstance(body["grammar"], str) or not body["grammar"].strip():
            raise bad_request("'grammar' must be a GBNF (or Lark) grammar as a non-empty string", "grammar")
        found.append(OutputFormat("grammar", body["grammar"], "grammar"))
    if len(found) > 1:
        raise bad_request(f"give one of 'response_format', 'json_schema' and 'grammar', not "
                          f"{' and '.join(repr(f.param) for f in found)}", found[1].param)
    return found[0] if found else None


def _schema(v: Any, param: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise bad_request(f"'{param}': the JSON schema must be an object", param)
    return v


def tools(body: dict[str, Any]) -> Tools | None:
    """The tools the model may call; None when there are none or tool_choice is "none"."""
    given = body.get("tools")
    choice = body.get("tool_choice")
    if given is None or given == []:
        if choice not in (None, "none", "auto"):
            raise bad_request("'tool_choice' needs 'tools'", "tool_choice")
        return None
    if not isinstance(given, list) or len(given) > MAX_TOOLS:
        raise bad_request(f"'tools' must be an array of at most {MAX_TOOLS} function tools", "tools")
    checked = [_tool(i, t) for i, t in enumerate(given)]
    names = [t["function"]["name"] for t in checked]
    if len(set(names)) < len(names):
        raise bad_request("'tools': two functions have the same name", "tools")
    if choice is None or choice == "auto":
        choice = "auto"
    elif choice == "none":
        return None
    elif choice == "required":
        pass
    elif (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict)
          and isinstance(choice["function"].get("name"), str)):
        choice = choice["function"]["name"]
        if choice not in names:
            raise bad_request(f"'tool_choice' names {choice!r:.80}, which is not in 'tools'", "tool_choice")
    else:
        raise bad_request("'tool_choice' must be \"none\", \"auto\", \"required\" or "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_request("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    return Tools(checked, choice, parallel)


def _tool(i: int, t: Any) -> dict[str, Any]:
    f = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
    if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not _NAME.match(f["name"]):
        raise bad_request(f"'tools[{i}]' must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                          f"\"parameters\": {{...}}}}}} with a name of letters, digits, _ . - (at most 64)", "tools")
    if not isinstance(f.get("parameters", {}), dict):
        raise bad_request(f"'tools[{i}].function.parameters' must be a JSON schema object", "tools")
    if not isinstance(f.get("description", ""), str):
        raise bad_request(f"'tools[{i}].function.description' must be a string", "tools")
    return {"type": "function", "function": {k: f[k] for k in ("name", "description", "parameters") if k in f}}


def tool_calls(where: str, v: Any) -> list[dict[str, Any]]:
    """An assistant message's tool_calls: [{id, type, function: {name, arguments (JSON text)}}]."""
    if not isinstance(v, list):
        raise bad_request(f"'{where}.tool_calls' must be an array", "messages")
    out = []
    for k, c in enumerate(v):
        f = c.get("function") if isinstance(c, dict) else None
        args = f.get("arguments") if isinstance(f, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(args, (str, dict)):
            raise bad_request(f"'{where}.tool_calls[{k}]' must be {{\"type\": \"function\", \"function\": "
                              f"{{\"name\": ..., \"arguments\": \"{{...}}\"}}}}", "messages")
        text = json.dumps(args) if isinstance(args, dict) else args
        try:
            if not isinstance(json.loads(text), dict):
                raise ValueError
        except ValueError:
            raise bad_request(f"'{where}.tool_calls[{k}].function.arguments' must be a JSON object's text",
                              "messages") from None
        out.append({"id": str(c.get("id", f"call_{k}")), "type": "function",
                    "function": {"name": f["name"], "arguments": text}})
    return out
