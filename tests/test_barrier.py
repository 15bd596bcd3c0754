"""The workers' barrier (engine/barrier.py): every worker leaves a round only after all
arrived, also when some wait long enough to sleep on the futex, and with more workers
than CPUs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from numba import njit

from numallm.engine.barrier import barrier_wait, new_barrier


@njit(nogil=True)
def _rounds(state, n_workers, me, counts, rounds, seen_bad):  # type: ignore[no-untyped-def]
    """Each round: count myself in, meet the others, check every count reached the round,
    meet again (so nobody counts the next round before all checked)."""
    for r in range(rounds):
        counts[me] = r + 1
        barrier_wait(state, n_workers)
        for c in counts:
            if c != r + 1:
                seen_bad[me] += 1
        barrier_wait(state, n_workers)


def _run(n_workers: int, rounds: int, late: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Run _rounds on n_workers threads; worker 0 starts each of its calls `late` s late
    (calls of one round each, so the others wait that long at its barrier). Returns the
    bad counts seen per worker and the barrier state."""
    state, counts, bad = new_barrier(), np.zeros(n_workers, np.int64), np.zeros(n_workers, np.int64)
    errors: list[BaseException] = []

    def worker(me: int) -> None:
        try:
            for _ in range(rounds if late else 1):
                if late and me == 0:
                    time.sleep(late)
                _rounds(state, n_workers, me, counts, 1 if late else rounds, bad)
        except BaseException as e:  # noqa: BLE001  re-raised below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker never left the barrier"
    assert not errors, errors
    return bad, state


@pytest.mark.parametrize("n_workers", [2, 3, 5])
def test_many_rounds_keep_workers_in_step(n_workers: int) -> None:
    """5 workers on a 2-CPU machine: the waiters spin out and sleep most of the time."""
    bad, state = _run(n_workers, rounds=2000)
    assert bad.sum() == 0 and state[2] == 0


def test_sleeping_waiters_are_woken() -> None:
    """A late worker (20 ms per round, far past the spinning) keeps the others asleep on
    the futex; each round must still see every count, and nobody hangs."""
    bad, state = _run(3, rounds=20, late=0.02)
    assert bad.sum() == 0
    assert state[2] == 0  # every sleeper counted itself out


def test_sleepers_count_returns_to_zero() -> None:
    state, counts, bad = new_barrier(), np.zeros(2, np.int64), np.zeros(2, np.int64)
    t = threading.Thread(target=_rounds, args=(state, 2, 1, counts, 1, bad))
    t.start()
    deadline = time.monotonic() + 10  # the waiter spins well under a millisecond, then sleeps
    while state[2] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sleeping = int(state[2])
    _rounds(state, 2, 0, counts, 1, bad)
    t.join(timeout=10)
    assert not t.is_alive()
    assert sleeping == 1, "the waiter never went to sleep on the futex"
    assert state[2] == 0 and bad.sum() == 0
