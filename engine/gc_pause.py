"""Loading without Python's cyclic garbage collector running."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold the cyclic GC while a model loads. A load allocates a few hundred thousand
    long-lived objects (a vocabulary, Numba's type registries) and no garbage cycles to
    speak of, yet they set off collections that each walk every tracked object: 45-60
    ms of SmolLM2's 300 ms start. Nested uses are fine; the outermost re-enables.

    Re-enabled as it was, the youngest generation would hold every object of the load,
    and the first allocation after it would walk them all (7-10 ms). Instead they move
    to the oldest generation first (freeze then unfreeze: two list splices), where a
    collection walks them only when the old generation has grown by a quarter, as it
    would have after the load's own collections."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()
