"""The continuous-batching scheduler on its own (no HTTP), on the tiny synthetic model."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from numallm.engine import Engine
from numallm.engine.batching import MIN_SHARED, BatchScheduler, Job, Update
from numallm.engine.sampling import SamplingParams
from numallm.errors import BadInputError
from numallm.kernels.jit import GEMM_MIN_TOKENS
from synthetic import write_tiny_llama

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


def _count_prompt_tokens(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Tokens of every eval_batch call the scheduler makes, in order."""
    sizes: list[int] = []
    run = engine.eval_batch

    def counted(tokens, *rest):  # type: ignore[no-untyped-def]
        sizes.append(len(tokens))
        return run(tokens, *rest)
    monkeypatch.setattr(engine, "eval_batch", counted)
    return sizes


@pytest.mark.parametrize("weight_type", [Q.Q4_1, Q.Q5_0])
def test_prompts_that_begin_alike_share_their_cache_prefix(tmp_path: Path, weight_type: Q,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Q4_1 (tiled, batch-invariant): followers copy the leader's prefix and then the
    # finished prompts' from their free slots; Q5_0 (not batch-invariant): no sharing.
    model = write_tiny_llama(tmp_path / "m.gguf", weight_type=weight_type)
    system = "You are a helpful assistant. Answer briefly and truthfully, always. "
    prompts = [system + tail for tail in ("Hello", "Once upon a time", "def f(x):", "1, 2, 3,")]
    with Engine(model, threads=2, ctx_size=96, n_slots=4) as engine:
        ids = [engine.tokenize(p) for p in prompts]
        shared = [next(i for i, (a, b) in enumerate(zip(ids[0], x)) if a != b) for x in ids[1:]]
        assert min(shared) >= MIN_SHARED
        solo = [engine.generate(x, max_tokens=8, temperature=0, ignore_eos=True) for x in ids]
        assert engine.batch_invariant == (weight_type == Q.Q4_1)
        sizes = _count_prompt_tokens(engine, monkeypatch)
        s = BatchScheduler(engine)
        try:
            for _ in range(2):  # the second round finds every prompt in a free slot
                sizes.clear()
                queues = [queue.Queue() for _ in ids]
                for x, q in zip(ids, queues):
                    s.submit(Job(x, GREEDY, 8, (), q.put, ignore_eos=True))
                assert [_collect(q)[0] for q in queues] == solo
                run = sum(sizes) - 7 * len(ids)  # the 7 decode steps after each first token
                if engine.batch_invariant:
                    first = len(ids[0]) + sum(len(x) - n for x, n in zip(ids[1:], shared))
                    assert run == (first if sizes[0] > len(ids) else len(ids)), sizes
                else:
                    assert run == sum(map(len, ids)), sizes
        finally:
            s.close()
