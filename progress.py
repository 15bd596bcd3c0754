"""The one progress display every long step uses (fetching, loading, compiling).

A tqdm bar on stderr when stderr is a terminal; silent otherwise, so logs and pipes
stay clean. NUMALLM_PROGRESS=1 forces it on, =0 off.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def _enabled() -> bool:
    forced = os.environ.get("NUMALLM_PROGRESS")
    if forced is not None:
        return forced not in ("", "0")
    return sys.stderr.isatty()


def progress_bar(total: int, desc: str, unit: str = "B") -> tqdm:
    """A progress bar over `total` units; bytes are shown scaled (MB, GB) with a rate."""
    scale = unit == "B"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1000,
                disable=not _enabled(), file=sys.stderr, leave=False, dynamic_ncols=True)
