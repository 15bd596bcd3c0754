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
    ms of SmolLM2's 300 ms start. Nested uses are fine; the outermost re-enables."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
