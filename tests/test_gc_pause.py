"""engine/gc_pause.py: the cyclic GC held during a load, and the load's objects out of the
youngest generation afterwards (so the first allocation does not walk them all)."""

from __future__ import annotations

import gc

from numallm.engine.gc_pause import gc_paused


def test_paused_then_enabled_with_the_load_in_the_old_generation() -> None:
    gc.collect()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # nested: still paused after the inner one ends
            pass
        assert not gc.isenabled()
        load = [[i] for i in range(20000)]  # tracked objects, as a vocabulary's
        assert gc.get_count()[0] >= 20000
    assert gc.isenabled()
    # Straight in the oldest generation (a collection of the youngest would have moved
    # them one generation up only, after walking them), and not left frozen.
    assert any(o is load for o in gc.get_objects(generation=2))
    assert gc.get_freeze_count() == 0
    del load


def test_a_caller_that_disabled_the_gc_keeps_it_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
