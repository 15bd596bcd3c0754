"""The JSON objects the OpenAI API answers with, for chat and plain completions."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any


def usage(n_prompt: int, n_generated: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_generated, "total_tokens": n_prompt + n_generated}


def sse(obj: Any) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class Completion:
    """The shapes of one response: an object, or the chunks of a stream."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def _envelope(self, obj: str, choice: dict[str, Any], n_usage: dict[str, int] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                               "choices": [{"index": 0, **choice}]}
        if n_usage is not None:
            out["usage"] = n_usage
        return out

    def whole(self, text: str, finish_reason: str, n_usage: dict[str, int],
              tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The non-streamed response; a chat answer's calls come as its message's tool_calls."""
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else "")}
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice = {"message": message, "logprobs": None, "finish_reason": finish_reason}
            return self._envelope("chat.completion", choice, n_usage)
        return self._envelope("text_completion", {"text": text, "logprobs": None, "finish_reason": finish_reason},
                              n_usage)

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict[str, Any]:
        """One streamed chunk: new text, or (text None) the closing chunk with the finish reason."""
        if self.chat:
            delta: dict[str, str] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", choice, None)
        return self._envelope("text_completion", {"text": text or "", "logprobs": None,
                                                  "finish_reason": finish_reason}, None)

    def tool_calls_chunk(self, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
        """A streamed chunk with the answer's calls (each whole, with its index)."""
        return self._envelope("chat.completion.chunk", {"delta": {"tool_calls": tool_calls}, "logprobs": None,
                                                        "finish_reason": None}, None)

    def usage_chunk(self, n_usage: dict[str, int]) -> dict[str, Any]:
        """The last chunk when the client asked for stream_options.include_usage."""
        out = self._envelope("chat.completion.chunk" if self.chat else "text_completion", {}, n_usage)
        out["choices"] = []
        return out
