"""The one progress display every long step uses (fetching, loading, compiling).

A tqdm bar on stderr when stderr is a terminal; silent otherwise, so logs and pipes
stay clean. NUMALLM_PROGRESS=1 forces it on, =0 off.
"""

from __future__ import annotations

import os
import sys
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
