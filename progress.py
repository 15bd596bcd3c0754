"""The one progress display every long step uses (fetching, loading, compiling).

A tqdm bar on stderr when stderr is a terminal; silent otherwise, so logs and pipes
stay clean. NUMALLM_PROGRESS=1 forces it on, =0 off.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Progress(Protocol):
    def update(self, n: float = 1) -> object: ...
    def close(self) -> None: ...


class _Silent:
    """What a bar is when off. Not tqdm(disable=True): its first bar of a process
    imports multiprocessing for a lock, 3 ms of a 20 ms load."""

    def update(self, n: float = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _enabled() -> bool:
    forced = os.environ.get("NUMALLM_PROGRESS")
    if forced is not None:
        return forced not in ("", "0")
    return sys.stderr.isatty()


def progress_bar(total: int, desc: str, unit: str = "B") -> Progress:
    """A progress bar over `total` units; bytes are shown scaled (MB, GB) with a rate."""
    if not _enabled():
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1000,
                file=sys.stderr, leave=False, dynamic_ncols=True)


@contextmanager
def working(desc: str, after_s: float = 1.0) -> Iterator[None]:
    """For a step of unknown length (a Numba compile): from `after_s` seconds on, one
    line that says what is being done and counts the seconds, gone when it ends. A
    step shorter than after_s (a cache hit) shows nothing."""
    if not _enabled():
        yield
        return
    done = threading.Event()

    def show() -> None:
        if done.wait(after_s):
            return
        from tqdm import tqdm

        line = tqdm(desc=desc, bar_format="{desc}: {elapsed}", file=sys.stderr, leave=False, dynamic_ncols=True)
        while not done.wait(1.0):  # tqdm redraws only when told: the elapsed seconds need a tick
            line.refresh()
        line.close()

    shower = threading.Thread(target=show, name="numallm-progress", daemon=True)
    shower.start()
    try:
        yield
    finally:
        done.set()
        shower.join()
