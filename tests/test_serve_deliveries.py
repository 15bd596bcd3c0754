"""serve/app.py's _Deliveries: the scheduler thread's updates reach the requests' queues
on the event loop in order, with one wake-up of the loop for all that arrive before it
runs (a decode step posts one per sequence)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from numallm.engine.batching import Update
from numallm.serve.app import _Deliveries


def test_updates_posted_together_wake_the_loop_once() -> None:
    loop = asyncio.new_event_loop()
    wakeups: list[Any] = []
    schedule = loop.call_soon_threadsafe

    def counted(*args: Any) -> Any:
        wakeups.append(args)
        return schedule(*args)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    try:
        deliveries = _Deliveries(loop)
        queues: list[asyncio.Queue[Update]] = [asyncio.Queue() for _ in range(3)]

        def step(tag: str) -> None:  # one decode step: an update for every sequence
            for i, q in enumerate(queues):
                deliveries.post(q, Update(f"{tag}{i}"))

        for tag in ("a", "b"):  # the loop runs between the two steps
            t = threading.Thread(target=step, args=(tag,))
            t.start()
            t.join()
            loop.run_until_complete(asyncio.sleep(0))
        assert len(wakeups) == 2
        assert [[q.get_nowait().text for _ in range(2)] for q in queues] == [["a0", "b0"], ["a1", "b1"], ["a2", "b2"]]
    finally:
        loop.close()
