"""Chat prompts: a GGUF's own Jinja chat template, or llama.cpp's built-in format.

`tokenizer.chat_template` is a Hugging Face chat template, i.e. Jinja code that came
with a downloaded file, so it is untrusted. It runs in jinja2's immutable sandbox set up
as `transformers.apply_chat_template` does (trim_blocks, lstrip_blocks, loopcontrols, the
`generation` tag, `raise_exception`, `strftime_now`, a non-ASCII-escaping `tojson`), with
extra limits on time, output size and the operators and filters that can allocate
without bound. Anything that goes wrong becomes a ChatTemplateError.

Without a usable template we fall back as llama.cpp does: Gemma's turn format for the
Gemma family, ChatML for everything else.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension, loopcontrols
from jinja2.filters import sync_do_slice
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from numallm.errors import BadInputError

# Real templates render in milliseconds and a prompt longer than any context is a few
# MB, so these only ever stop templates that loop or grow without bound.
MAX_RENDER_SECONDS = 2.0
MAX_OUTPUT_CHARS = 1 << 22
MAX_FILTER_WIDTH = 100_000
MAX_EXPONENT = 1024

Message = Mapping[str, Any]  # role, content; tool_calls, tool_call_id, name where the API has them
_Renderer = Callable[[list[dict[str, Any]], bool, "list[dict[str, Any]] | None"], str]
_DEADLINE: ContextVar[float | None] = ContextVar("chat_template_deadline", default=None)


class ChatTemplateError(BadInputError):
    """A chat template does not parse, breaks a sandbox rule or fails while rendering."""


class _TemplateRaised(Exception):
    """The template called raise_exception(): it refuses this conversation."""


class ChatTemplate:
    """Renders a conversation into the prompt text the model was trained on."""

    def __init__(self, renderer: _Renderer, source: str, fallback_reason: str | None = None,
                 text: str = "") -> None:
        self._renderer = renderer
        self.source = source  # "gguf" or "builtin:<name>"
        self.fallback_reason = fallback_reason  # why the GGUF's own template is not used
        self.text = text  # the Jinja source ("" for a built-in format)

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], architecture: str, bos_token: str,
                      eos_token: str) -> ChatTemplate:
        """The file's template, or the architecture's built-in one if it has none or it is unusable."""
        text = md.get("tokenizer.chat_template")
        if text is None or (isinstance(text, str) and not text.strip()):
            return cls.builtin(architecture)
        if not isinstance(text, str):
            return cls.builtin(architecture, f"tokenizer.chat_template is a {type(text).__name__}, not a string")
        try:
            tmpl = cls.from_jinja(text, bos_token, eos_token)
            # A one-message probe catches templates that cannot render the simplest chat
            # (or attack the sandbox) now, while falling back is still silent and safe.
            tmpl.render([{"role": "user", "content": "Hello"}])
        except ChatTemplateError as e:
            return cls.builtin(architecture, f"the GGUF's chat template is unusable: {e}")
        return tmpl

    @classmethod
    def from_jinja(cls, text: str, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        """Compile a Hugging Face Jinja chat template; raises ChatTemplateError if it does not parse."""
        try:
            template = _sandbox().from_string(text)
        except TemplateError as e:
            lineno = getattr(e, "lineno", None)  # set on syntax errors only
            where = f" at line {lineno}" if lineno else ""
            raise ChatTemplateError(f"chat template does not parse{where}: {e.message}") from None
        except (RecursionError, MemoryError) as e:  # absurdly nested source
            raise ChatTemplateError(f"chat template does not parse: {type(e).__name__}") from None

        def render(messages: list[dict[str, Any]], add_generation_prompt: bool,
                   tools: list[dict[str, Any]] | None) -> str:
            # The variables transformers passes; tools/documents are None, not undefined,
            # because templates test them with `is not none`.
            return _run(template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                          bos_token=bos_token, eos_token=eos_token,
                                          tools=tools, documents=None))

        return cls(render, "gguf", text=text)

    @classmethod
    def builtin(cls, architecture: str, fallback_reason: str | None = None) -> ChatTemplate:
        """llama.cpp's format for the architecture when a file has no template."""
        name = "gemma" if architecture.startswith("gemma") else "chatml"
        return cls(_BUILTINS[name], f"builtin:{name}", fallback_reason)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]) and the
        OpenAI `tools` the template may describe (the built-in formats ignore them)."""
        return self._renderer(_checked_messages(messages), add_generation_prompt, tools or None)


def _checked_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    # Plain copies: the template sees our dicts, never the caller's objects.
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise BadInputError("chat messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadInputError(f"chat message {i} must be a dict with string 'role' and 'content', got {m!r:.80}")
        out.append(dict(m))
    return out


# -- built-in formats (llama.cpp src/llama-chat.cpp) ---------------------------------

def _c_trim(s: str) -> str:
    """llama.cpp's trim(): C isspace() characters only, unlike str.strip()."""
    return s.strip(" \t\n\v\f\r")


def _chatml(messages: list[dict[str, Any]], add_generation_prompt: bool, tools: object = None) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _gemma(messages: list[dict[str, Any]], add_generation_prompt: bool, tools: object = None) -> str:
    # Gemma has no system role: system text is merged into the next user turn.
    parts: list[str] = []
    system = ""
    for m in messages:
        if m["role"] == "system":
            system += _c_trim(m["content"])
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        parts.append(f"<start_of_turn>{role}\n")
        if system and role != "model":
            parts.append(system + "\n\n")
            system = ""
        parts.append(_c_trim(m["content"]) + "<end_of_turn>\n")
    if add_generation_prompt:
        parts.append("<start_of_turn>model\n")
    return "".join(parts)


_BUILTINS: dict[str, _Renderer] = {"chatml": _chatml, "gemma": _gemma}


# -- the sandbox ---------------------------------------------------------------------

def _tick() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise SecurityError(f"rendering took longer than {MAX_RENDER_SECONDS} s")


class _LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, stricter: unsafe attributes fail at once, and every call,
    lookup and `*`/`**` checks the render deadline and the size of what it would build."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # jinja2 returns an Undefined that only fails when used; `{{ x.__class__ }}` would
        # then print nothing, hiding the attempt.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        return super().call(context, obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT_CHARS:
                raise SecurityError(f"repeating a sequence {n} times would exceed {MAX_OUTPUT_CHARS} items")
        elif isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > MAX_EXPONENT:
            raise SecurityError(f"integer power with exponent {right} is above the limit {MAX_EXPONENT}")
        return super().call_binop(context, operator, left, right)


def _width_limited(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that refuses integer arguments (widths, counts) above MAX_FILTER_WIDTH."""

    @functools.wraps(f)
    def limited(value: Any, *args: Any, **kwargs: Any) -> Any:
        for a in (*args, *kwargs.values()):
            if isinstance(a, int) and a > MAX_FILTER_WIDTH:
                raise SecurityError(f"filter {name} argument {a} is above the limit {MAX_FILTER_WIDTH}")
        return f(value, *args, **kwargs)

    return limited


class _GenerationTag(Extension):
    """transformers' `{% generation %}...{% endgeneration %}` marks assistant text for
    training masks; for rendering it is just its body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers' tojson: jinja2's own escapes HTML and sorts keys, changing prompts.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _sandbox() -> _LimitedSandbox:
    # optimized=False: jinja2 otherwise folds constant expressions (filters included) at
    # compile time, outside the render deadline and limits.
    env = _LimitedSandbox(trim_blocks=True, lstrip_blocks=True, optimized=False,
                          extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    for name, f in (("center", env.filters["center"]), ("indent", env.filters["indent"]),
                    ("slice", sync_do_slice)):
        env.filters[name] = _width_limited(name, f)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _run(chunks: Any) -> str:
    """Drain a template's output under the deadline and size limit, mapping every failure
    to one ChatTemplateError line."""
    token = _DEADLINE.set(time.monotonic() + MAX_RENDER_SECONDS)
    try:
        out: list[str] = []
        size = 0
        for chunk in chunks:
            _tick()
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise SecurityError(f"output is longer than {MAX_OUTPUT_CHARS} characters")
            out.append(chunk)
        return "".join(out)
    except _TemplateRaised as e:
        raise ChatTemplateError(f"the chat template rejects this conversation: {e}") from None
    except SecurityError as e:
        raise ChatTemplateError(f"the chat template broke a sandbox rule: {e}") from None
    except Exception as e:  # noqa: BLE001 - any runtime error of untrusted code: TypeError, UndefinedError, ...
        raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None
    finally:
        _DEADLINE.reset(token)
