"""The continuous-batching scheduler on its own (no HTTP), on the tiny synthetic model."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest

from numallm.engine import Engine
from numallm.engine.batching import BatchScheduler, Job, Update
from numallm.engine.sampling import SamplingParams
from numallm.errors import BadInputError
from numallm.kernels.jit import GEMM_MIN_TOKENS

GREEDY = SamplingParams(temperature=0)
PROMPTS = ["Hello", "Once upon a time", "def f(x):", "1, 2, 3,", "The end", "Grüße 👍"]


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> Engine:
    with Engine(tiny_llama, threads=2, ctx_size=64, n_slots=2) as e:
        yield e


def _job(engine: Engine, prompt: str, max_tokens: int, updates: queue.Queue[Update], **kw: object) -> Job:
    return Job(engine.tokenize(prompt), GREEDY, max_tokens, (), updates.put, **kw)


def _collect(updates: queue.Queue[Update]) -> tuple[str, Update]:
    parts = []
    while True:
        u = updates.get(timeout=60)
        parts.append(u.text)
        if u.done:
            return "".join(parts), u


def test_more_jobs_than_slots_all_finish_with_their_solo_output(engine: Engine) -> None:
    solo = [engine.generate(p, max_tokens=12, temperature=0, ignore_eos=True) for p in PROMPTS]
    s = BatchScheduler(engine)
    try:
        queues = [queue.Queue() for _ in PROMPTS]
        for p, q in zip(PROMPTS, queues):
            s.submit(_job(engine, p, 12, q, ignore_eos=True))
        results = [_collect(q) for q in queues]
    finally:
        s.close()
    assert [text for text, _ in results] == solo
    assert all(u.finish_reason == "length" and u.n_generated == 12 for _, u in results)
    assert [u.n_prompt for _, u in results] == [len(engine.tokenize(p)) for p in PROMPTS]


def test_long_prompts_prefilled_together_keep_their_solo_output(engine: Engine) -> None:
    # Prompts of GEMM_MIN_TOKENS tokens or more share prefill calls (see _share_kernels).
    prompts = [" ".join([p] * k) for p, k in (("Once upon a time", 3), ("def f(x):", 4), ("1, 2, 3,", 4))]
    prompts.append("Hello")
    assert [len(engine.tokenize(p)) >= GEMM_MIN_TOKENS for p in prompts] == [True, True, True, False]
    assert all(len(engine.tokenize(p)) + 8 < engine.n_ctx for p in prompts)
    solo = [engine.generate(p, max_tokens=8, temperature=0, ignore_eos=True) for p in prompts]
    calls: list[int] = []  # distinct slots of each call of more than one token
    eval_batch = engine.eval_batch

    def recording(tokens, slots, positions, rows):  # type: ignore[no-untyped-def]
        if len(tokens) > 1:
            calls.append(len(set(slots)))
        return eval_batch(tokens, slots, positions, rows)

    engine.eval_batch = recording  # type: ignore[method-assign]
    s = BatchScheduler(engine)
    try:
        queues = [queue.Queue() for _ in prompts]
        jobs = [_job(engine, p, 8, q, ignore_eos=True) for p, q in zip(prompts, queues)]
        with s._cond:  # all queued before the scheduler admits any: the first two prefill together
            for job in jobs:
                s.submit(job)
        results = [_collect(q) for q in queues]
    finally:
        s.close()
        del engine.eval_batch
    assert [text for text, _ in results] == solo
    assert 2 in calls, f"no prefill call held two prompts: {calls}"


def test_cancel_frees_the_slot_for_a_waiting_job(engine: Engine) -> None:
    s = BatchScheduler(engine)
    try:
        long = [queue.Queue(), queue.Queue()]
        jobs = [_job(engine, "Hello", 60, q, ignore_eos=True) for q in long]
        for j in jobs:
            s.submit(j)
        waiting: queue.Queue[Update] = queue.Queue()
        s.submit(_job(engine, "The end", 3, waiting, ignore_eos=True))  # no slot free yet
        long[0].get(timeout=60)
        s.cancel(jobs[0])
        s.cancel(jobs[1])
        text, last = _collect(waiting)  # it ran in a freed slot
        assert last.finish_reason == "length" and last.n_generated == 3
        for q in long:
            assert _collect(q)[1].finish_reason == "cancelled"
        assert s.active == 0 and s.waiting == 0
    finally:
        s.close()


def test_close_cancels_running_and_waiting_jobs_and_ends_the_thread(engine: Engine) -> None:
    threads = threading.active_count()
    s = BatchScheduler(engine)
    queues = [queue.Queue() for _ in range(4)]
    for q in queues:
        s.submit(_job(engine, "Hello", 60, q, ignore_eos=True))
    queues[0].get(timeout=60)
    s.close()
    assert [_collect(q)[1].finish_reason for q in queues] == ["cancelled"] * 4
    assert threading.active_count() == threads
    with pytest.raises(Exception, match="shut down"):
        s.submit(_job(engine, "Hello", 1, queue.Queue()))


def test_prompts_that_cannot_run_are_refused_at_submit(engine: Engine) -> None:
    s = BatchScheduler(engine)
    try:
        with pytest.raises(BadInputError, match="context"):
            s.submit(Job([1] * engine.n_ctx, GREEDY, 4, (), print))
        with pytest.raises(BadInputError, match="empty"):
            s.submit(Job([], GREEDY, 4, (), print))
    finally:
        s.close()
