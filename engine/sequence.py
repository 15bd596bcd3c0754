"""One sequence being generated: sampling, streaming text, stop strings and limits.

Shared by Engine.generate (one sequence) and the server's batching (many sequences,
one forward pass per step): the caller runs the forward pass and hands each sequence
its row of logits; the sequence says what text to emit and whether it has finished.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from numallm.engine.grammar import Constraint
from numallm.engine.sampling import Sampler, SamplingParams
from numallm.engine.tokenizer import Tokenizer


class SequenceState:
    """A prompt's continuation: feed it logits with accept() until it says done, then
    take the held-back tail with finish()."""

    def __init__(self, tokenizer: Tokenizer, n_vocab: int, n_ctx: int, ids: Sequence[int],
                 params: SamplingParams, max_tokens: int, stop: Sequence[str] = (),
                 ignore_eos: bool = False, constraint: Constraint | None = None, special: bool = False) -> None:
        self._tokenizer = tokenizer
        # A grammar decides where the answer may end, so ignore_eos does not apply to it.
        self.constraint = constraint
        self._sampler = Sampler(params, n_vocab)
        self._decoder = tokenizer.stream(special)  # special: control tokens' text too (tool-call markers)
        self._stop = tuple(s for s in stop if s)
        self._ignore_eos = ignore_eos
        self._n_ctx = n_ctx
        self.history = list(ids)
        self.n_prompt = len(self.history)
        # max_tokens < 0: until an end-of-generation token or a full context
        self._limit = max_tokens if max_tokens >= 0 else n_ctx
        self._pending = ""  # text held back while it could be the start of a stop string
        self.next_token: int | None = None
        self.finish_reason: str | None = None  # "stop" (eos or a stop string) or "length"

    @property
    def n_generated(self) -> int:
        return len(self.history) - self.n_prompt

    @property
    def position(self) -> int:
        """The cache position next_token is run at."""
        return len(self.history) - 1

    def accept(self, logits: np.ndarray) -> tuple[str, bool]:
        """Sample the next token from the logits of the last one run: (text to emit now,
        finished). When not finished, run next_token at position next."""
        if self.n_generated >= self._limit:
            return self._done("length")
        c = self.constraint
        tok = self._sampler.sample(logits, self.history, None if c is None else c.allowed())
        if tok in self._tokenizer.stop_ids and (not self._ignore_eos or c is not None):
            return self._done("stop")
        if c is not None:
            c.consume(tok)
        self.history.append(tok)
        self.next_token = tok
        self._pending += self._decoder.feed(tok)
        cut = _find_stop(self._pending, self._stop)
        if cut is not None:
            self._pending = self._pending[:cut]
            return self._done("stop")
        emit, self._pending = split_safe(self._pending, self._stop)
        if c is not None and c.finished:  # the grammar is complete: no need to sample its end
            self.finish_reason = "stop"
            return emit, True
        if self.n_generated >= self._limit or len(self.history) >= self._n_ctx:
            # the limit, or a full context (no context shift, as llama.cpp without it)
            self.finish_reason = "length"
            return emit, True
        if c is not None:
            c.start()  # the next mask, computed while the next forward pass runs
        return emit, False

    def _done(self, reason: str) -> tuple[str, bool]:
        self.finish_reason = reason
        return "", True

    def finish(self) -> str:
        """The text still held back (an unfinished character or a stop string's prefix)."""
        tail = self._pending + self._decoder.flush()
        self._pending = ""
        cut = _find_stop(tail, self._stop)
        return tail[:cut] if cut is not None else tail


def _find_stop(text: str, stop: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def split_safe(text: str, stop: tuple[str, ...]) -> tuple[str, str]:
    """Split into (emit now, hold back): hold the longest suffix that starts a stop string."""
    hold = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return (text[:len(text) - hold], text[len(text) - hold:]) if hold else (text, "")
