"""Continuous batching: one thread decodes every running sequence together.

Each decode step is one `Engine.eval_batch` call holding the next token of every
sequence that is generating, so a new request joins at the next step and a finished one
leaves. New prompts are prefilled in calls of their own (chunks of N_BATCH tokens, one
call between two decode steps, so a long prompt stalls the others for one chunk at a
time), several prompts' chunks in one call where each gets the kernels it gets alone: a
decode batch under the GEMM threshold (kernels.same_path) gives each row the
same bits as that token run alone, the GEMM computes each token on its own, and a prompt
is chunked the same way whatever else runs, so a request's greedy output does not depend
on its neighbours. (Q4_0, Q4_1 and Q8_0 matrices give each token the same bits in any
batch, kernels/tiled.py; the rule is for the other types, which with --parallel 32 or
more take the GEMM path in decode steps and agree to ~1e-6 only.)

Prompts that begin alike share their cache prefix (as vLLM's prefix caching and
llama-server's prompt cache do: a chat's system prompt and template are the same for
every request): a new sequence copies the longest prefix any slot holds (a finished
sequence's prompt, or a running one's, waiting one call if that one is still being
prefilled) and computes only the rest. Only for models whose kernels give each token
the same bits in any batch (Engine.batch_invariant), so a copied prefix is exactly what
the sequence would have computed.

Embedding inputs (EmbedJob) wait in the same queue and run, one per loop between
decode steps, in a free slot: the final hidden state of each token, pooled
(Engine.embed). That slot's cache then holds no prompt to share.

With a pipeline of stages (cluster/, Engine.depth > 1) the running sequences are split
among depth calls in flight at once: while the last stage computes one group's step,
the first computes the next group's, and a group's next step begins as soon as its
logits are back. Copying a prefix and embedding wait for every call in flight first.

Each logits row goes to its sequence's `SequenceState.accept` (sampler, detokenizer,
stop strings, limits), the text to the request's `emit` callback, and a finished or
cancelled sequence frees its slot. A sequence under a grammar (Job.constraint) has its
next token mask computed on a worker thread while the forward pass runs (engine/grammar.py);
the others never wait for it. `emit` runs on the scheduler thread; a server hands
the update to its event loop with `loop.call_soon_threadsafe`, so emit must be quick and
must not raise.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from numallm.engine.engine import N_BATCH
from numallm.engine.grammar import Constraint
from numallm.engine.sampling import SamplingParams
from numallm.engine.sequence import SequenceState
from numallm.kernels import same_path
from numallm.errors import BadInputError, NumallmError, UnavailableError

if TYPE_CHECKING:
    from numallm.engine.engine import Engine

log = logging.getLogger("numallm.batching")


@dataclass(frozen=True)
class Update:
    """What one step did for one request: new text, and the outcome once it is over."""

    text: str
    # "stop", "length", "cancelled", "error", or "unavailable": a part of the engine is down
    # for now (a pipeline stage restarting, errors.UnavailableError); a retry later may succeed
    finish_reason: str | None = None
    n_prompt: int = 0
    n_generated: int = 0
    error: str | None = None  # with finish_reason "error" or "unavailable": one line saying what failed

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass(eq=False)
class Job:
    """One generation request. Build it, `submit` it, `cancel` it when nobody listens."""

    ids: list[int]
    params: SamplingParams
    max_tokens: int
    stop: tuple[str, ...]
    emit: Callable[[Update], None]
    ignore_eos: bool = False
    constraint: Constraint | None = None  # a grammar the answer must follow
    special: bool = False  # emit control tokens' text (a tool-call format's markers)
    cancelled: bool = field(default=False, init=False)  # set by any thread, read by the scheduler


@dataclass(eq=False)
class EmbedJob:
    """One input to embed; `done(vector, None)` or `done(None, error)` runs on the scheduler thread."""

    ids: list[int]
    pooling: str
    done: Callable[[np.ndarray | None, str | None], None]
    cancelled: bool = field(default=False, init=False)


class QueueFullError(NumallmError):
    """Too many requests are waiting for a slot; the caller should retry later."""


# A shared prefix shorter than this is computed rather than waited for.
MIN_SHARED = 8


@dataclass(eq=False)
class _Running:
    job: Job
    seq: SequenceState
    slot: int
    fed: int = 0  # prompt tokens in the slot's cache so far
    wait: tuple[_Running, int] | None = None  # (leader, n): copy its first n once it has them
    busy: bool = False  # a forward call whose logits give its next token is in flight

    @property
    def prefilled(self) -> bool:
        return self.fed == len(self.job.ids)


class BatchScheduler:
    """Owns `engine`'s decode loop on one thread, with `engine.n_slots` sequences at once."""

    def __init__(self, engine: Engine, max_waiting: int = 256,
                 on_step: Callable[[int, float], None] | None = None,
                 on_mask: Callable[[float, float], None] | None = None) -> None:
        self.engine = engine
        self.n_slots = engine.n_slots
        self.max_waiting = max_waiting
        self._on_step = on_step  # (tokens generated, seconds) after every step, for metrics
        # (seconds computing grammar masks, seconds the step waited for them) after every
        # step that sampled under a grammar
        self._on_mask = on_mask
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._embeds: collections.deque[EmbedJob] = collections.deque()
        self._running: list[_Running] = []
        self._free = list(range(self.n_slots - 1, -1, -1))  # pop() hands out slot 0 first
        # Per free slot: the prompt tokens its cache holds from the sequence that ran there.
        self._cached: list[list[int]] = [[] for _ in range(self.n_slots)]
        self._invariant = engine.batch_invariant  # prefix sharing; any chunks in one call
        # Forward calls begun and not ended, oldest first: (owners, slots, its logits, when
        # begun). Up to engine.depth (a pipeline's stages) at once, each of other sequences.
        self._inflight: collections.deque[tuple[list[_Running], list[int], Callable[[], np.ndarray], float]] = \
            collections.deque()
        self._stopping = False
        self.failure: str | None = None  # set if the thread died of a bug: nothing more is served
        self._thread = threading.Thread(target=self._loop, name="numallm-batching", daemon=True)
        self._thread.start()

    # -- any thread -------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue `job`; it starts at the next step with a free slot."""
        if len(job.ids) >= self.engine.n_ctx:
            raise BadInputError(f"the prompt has {len(job.ids)} tokens, the context per sequence is "
                                f"{self.engine.n_ctx}; shorten it or raise -c/--ctx-size")
        self._queue(self._waiting, job)

    def submit_embedding(self, job: EmbedJob) -> None:
        """Queue `job`; it runs at the next step with a slot free after the waiting generations."""
        if len(job.ids) > self.engine.n_ctx:
            raise BadInputError(f"the input has {len(job.ids)} tokens, the context per sequence is "
                                f"{self.engine.n_ctx}; shorten it or raise -c/--ctx-size")
        self._queue(self._embeds, job)

    def _queue(self, queue: collections.deque[Job] | collections.deque[EmbedJob], job: Job | EmbedJob) -> None:
        if not job.ids:
            raise BadInputError("the prompt is empty after tokenization")
        with self._cond:
            if self._stopping:
                raise NumallmError(f"the batching thread failed ({self.failure})" if self.failure
                                   else "the scheduler is shut down")
            if self.waiting >= self.max_waiting:
                raise QueueFullError(f"{self.waiting} requests are already waiting for a slot")
            queue.append(job)  # type: ignore[arg-type]
            self._cond.notify()

    def cancel(self, job: Job | EmbedJob) -> None:
        """Stop `job` (its slot is freed at the next step); harmless if it already ended."""
        job.cancelled = True
        with self._cond:
            self._cond.notify()

    @property
    def waiting(self) -> int:
        return len(self._waiting) + len(self._embeds)

    @property
    def active(self) -> int:
        return len(self._running)

    def close(self) -> None:
        """Cancel everything, end the thread and wait for it; safe to call twice."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    # -- the scheduler thread -----------------------------------------------------------

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # a bug here must fail the requests, not hang them
            log.exception("the batching thread failed")
            self.failure = f"{type(e).__name__}: {e}"
        with self._cond:
            self._stopping = True
        outcome = ("error", self.failure) if self.failure else ("cancelled", None)
        for r in list(self._running):
            self._end(r, Update("", outcome[0], r.seq.n_prompt, r.seq.n_generated, outcome[1]))
        for job in self._waiting:
            job.emit(Update("", outcome[0], len(job.ids), 0, outcome[1]))
        self._waiting.clear()
        for embed in self._embeds:
            embed.done(None, self.failure or "the server is shutting down")
        self._embeds.clear()

    def _serve(self) -> None:
        while True:
            with self._cond:
                self._drop_cancelled()
                while not self._stopping and not self._running and not self.waiting and not self._inflight:
                    self._cond.wait()
                    self._drop_cancelled()
                if self._stopping:
                    return
                admitted = self._admit()
                embed = self._embeds.popleft() if self._embeds and len(self._free) > len(admitted) else None
            if admitted or embed is not None or any(r.wait is not None for r in self._running):
                self._drain()  # copying a prefix or embedding works on slots the calls in flight write
            for job in admitted:
                self._start(job)
            if embed is not None:
                self._embed(embed)
            begun = self._prefill_chunk()
            begun |= self._decode_step()
            if not begun and self._inflight:
                self._end_call()

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting if j.cancelled]:
            self._waiting.remove(job)
        for embed in [j for j in self._embeds if j.cancelled]:
            self._embeds.remove(embed)
        for r in [r for r in self._running if r.job.cancelled]:
            self._end(r, Update("", "cancelled", r.seq.n_prompt, r.seq.n_generated))

    def _admit(self) -> list[Job]:
        n = min(len(self._free), len(self._waiting))  # every job admitted before has its slot by now
        return [self._waiting.popleft() for _ in range(n)]

    def _start(self, job: Job) -> None:
        try:
            seq = SequenceState(self.engine.tokenizer, self.engine.hparams.n_vocab, self.engine.n_ctx, job.ids,
                                job.params, job.max_tokens, job.stop, job.ignore_eos, job.constraint,
                                job.special)
        except NumallmError as e:
            job.emit(Update("", "error", len(job.ids), 0, str(e)))
            return
        if not self._invariant:
            self._running.append(_Running(job, seq, self._free.pop()))
            return
        # the free slot whose cache already starts like this prompt, else the usual one
        slot = max(reversed(self._free), key=lambda f: _common(self._cached[f], job.ids))
        self._free.remove(slot)
        r = _Running(job, seq, slot, fed=_common(self._cached[slot], job.ids))
        self._cached[slot] = []
        self._share_prefix(r)
        self._running.append(r)

    def _share_prefix(self, r: _Running) -> None:
        """Start r from the longest prefix of its prompt that another slot holds (or will
        hold once its own prefill gets there), if that beats what r's slot has."""
        best, source = max(r.fed, MIN_SHARED - 1), None
        for f in self._free:
            n = _common(self._cached[f], r.job.ids)
            if n > best:
                best, source = n, f
        for other in self._running:
            n = _common(other.job.ids, r.job.ids)
            if other.wait is not None:  # only what it copies: do not wait behind its prefill
                n = min(n, other.wait[1])
            if n > best:
                best, source = n, other
        if isinstance(source, int):
            self.engine.copy_prefix(source, r.slot, best)
            r.fed = best
        elif source is not None:
            r.wait = (source, best)
            self._take_prefix(r)

    def _take_prefix(self, r: _Running) -> bool:
        """Resolve r's wait if its leader has the prefix (or is gone); False: still waiting."""
        assert r.wait is not None
        leader, n = r.wait
        if leader in self._running:
            if leader.fed < n:
                return False
            self.engine.copy_prefix(leader.slot, r.slot, n)
            r.fed = n
        r.wait = None
        return True

    def _embed(self, job: EmbedJob) -> None:
        """Run one embedding input in a free slot (which stays free)."""
        slot = self._free[-1]
        self._cached[slot] = []  # its cache is about to hold this input, not a prompt
        try:
            vector = self.engine.embed(job.ids, job.pooling, slot=slot)
        except Exception as e:
            log.error("an embedding failed: %s: %s", type(e).__name__, e)
            job.done(None, f"{type(e).__name__}: {e}")
            return
        job.done(vector, None)

    def _end(self, r: _Running, update: Update) -> None:
        self._running.remove(r)
        self._free.append(r.slot)
        self._cached[r.slot] = r.job.ids[:r.fed]
        r.job.emit(update)

    def _prefill_chunk(self) -> bool:
        """The next chunk (up to N_BATCH tokens) of prompts still being prefilled, oldest
        first, as many as fit in one call of N_BATCH tokens. Chunks share a call only
        where each takes the kernels it would take alone (see _share_kernels), so a
        prompt's numbers do not depend on the others; sharing reads the weights once for
        all (8 chat prompts of about 40 tokens: 0.21 s together, 0.30 s one by one)."""
        group: list[tuple[_Running, int]] = []  # (sequence, chunk length)
        total = 0
        for r in self._running:
            if r.wait is not None and not self._take_prefix(r):
                continue
            n = min(N_BATCH, len(r.job.ids) - r.fed)
            if n and (not group or (total + n <= N_BATCH and self._may_share(group[0][1], n, total + n))):
                group.append((r, n))
                total += n
        if not group:
            return False
        owners, tokens, slots, positions, rows = [], [], [], [], []
        for r, n in group:
            tokens += r.job.ids[r.fed:r.fed + n]
            slots += [r.slot] * n
            positions += range(r.fed, r.fed + n)
            r.fed += n
            if r.prefilled:  # its last prompt token's logits give the first generated token
                owners.append(r)
                rows.append(len(tokens) - 1)
        self._run(owners, tokens, slots, positions, rows)
        return True

    def _may_share(self, first: int, n: int, total: int) -> bool:
        """May a chunk join the call (see _share_kernels)? Always, with batch-invariant kernels."""
        return self._invariant or _share_kernels(first, n, total)

    def _decode_step(self) -> bool:
        """One token of every sequence past its prompt, in one pass; with a pipeline of
        depth d, of a d-th of them (those not in a call in flight), so that d calls overlap."""
        prefilled = [r for r in self._running if r.prefilled]
        live = [r for r in prefilled if not r.busy][:-(-len(prefilled) // self.engine.depth)]
        if live:
            self._run(live, [r.seq.next_token for r in live], [r.slot for r in live],
                      [r.seq.position for r in live], list(range(len(live))))
        return bool(live)

    def _run(self, owners: list[_Running], tokens: list[int], slots: list[int], positions: list[int],
             rows: list[int]) -> None:
        """Begin one forward call (Engine.submit_batch), whose row i of the logits goes to
        owners[i]; end the oldest while engine.depth calls are in flight."""
        t0 = time.perf_counter()
        try:
            logits = self.engine.submit_batch(np.array(tokens, np.int32), np.array(slots, np.int32),
                                              np.array(positions, np.int32), np.array(rows, np.int32))
        except Exception as e:
            logits = functools.partial(_raise, e)
        for r in owners:
            r.busy = True
        self._inflight.append((owners, slots, logits, t0))
        while len(self._inflight) >= self.engine.depth:
            self._end_call()

    def _drain(self) -> None:
        while self._inflight:
            self._end_call()

    def _end_call(self) -> None:
        """End the oldest call in flight: its logits to its owners that still run."""
        owners, slots, get_logits, t0 = self._inflight.popleft()
        for r in owners:
            r.busy = False
        try:
            logits = get_logits()
        except Exception as e:
            log.error("a batch step failed: %s: %s", type(e).__name__, e)
            if isinstance(e, UnavailableError):
                # A pipeline stage restarts with an empty KV cache: no running sequence and no
                # cached prefix survives it.
                for r in list(self._running):
                    self._end(r, Update("", "unavailable", r.seq.n_prompt, r.seq.n_generated, str(e)))
                self._cached = [[] for _ in range(self.n_slots)]
                return
            for r in {id(r): r for r in [*owners, *self._running_in(slots)] if r in self._running}.values():
                self._end(r, Update("", "error", r.seq.n_prompt, r.seq.n_generated, f"{type(e).__name__}: {e}"))
            return
        generated = 0
        live = [(r, row) for r, row in zip(owners, logits) if r in self._running]  # not cancelled meanwhile
        constrained = [c for c in (r.seq.constraint for r, _ in live) if c is not None]
        for r, row in live:
            before = r.seq.n_generated
            try:
                text, finished = r.seq.accept(row)
            except Exception as e:
                self._end(r, Update("", "error", r.seq.n_prompt, r.seq.n_generated, f"{type(e).__name__}: {e}"))
                continue
            generated += r.seq.n_generated - before
            if finished:
                tail = text + r.seq.finish()
                self._end(r, Update(tail, r.seq.finish_reason, r.seq.n_prompt, r.seq.n_generated))
            elif text:
                r.job.emit(Update(text, None, r.seq.n_prompt, r.seq.n_generated))
        if self._on_step is not None and live:
            self._on_step(generated, time.perf_counter() - t0)
        if self._on_mask is not None and constrained:
            self._on_mask(sum(c.compute_s for c in constrained), sum(c.wait_s for c in constrained))

    def _running_in(self, slots: list[int]) -> list[_Running]:
        taken = set(slots)
        return [r for r in self._running if r.slot in taken]


def _raise(e: Exception) -> np.ndarray:
    raise e


def _common(cached: list[int], ids: list[int]) -> int:
    """Tokens of the prompt `ids` a cache holding `cached` can give: their common prefix,
    short of the prompt's last token (run in any case: its logits give the first token)."""
    n = min(len(cached), len(ids) - 1)
    for i in range(n):
        if cached[i] != ids[i]:
            return i
    return max(n, 0)


def _share_kernels(first: int, n: int, total: int) -> bool:
    """May a prompt chunk of n tokens join a call whose first chunk has `first` tokens
    and which would then hold `total`? Yes when every chunk gets the kernels it gets
    alone (kernels.same_path). Testing the first chunk and this one suffices: the
    chunks between joined by the same test."""
    return same_path(first, total) and same_path(n, total)
