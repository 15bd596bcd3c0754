"""engine/ggml_sort.py (compiled) against tests/reference_argsort.py (libstdc++'s
std::sort replayed in Python, which the MoE fixtures confirm as llama.cpp's order)."""

from __future__ import annotations

import numpy as np
import pytest
import reference_argsort
from reference_argsort import argsort_desc as reference

from numallm.engine.ggml_sort import argsort_desc


@pytest.mark.parametrize("n", [1, 2, 3, 8, 16, 17, 31, 60, 64, 128, 129, 256, 1000])
def test_same_order_as_std_sort_with_many_ties(n: int) -> None:
    rng = np.random.default_rng(n)
    rows = [rng.integers(0, 4, n), rng.integers(0, n, n), np.zeros(n), np.arange(n), np.arange(n)[::-1],
            rng.standard_normal(n), np.tile([1.0, 0.0, 1.0, 2.0], n)[:n], np.where(np.arange(n) % 7, 0.5, 0.25)]
    for row in rows:
        values = np.asarray(row, np.float32)
        assert argsort_desc(values).tolist() == reference(values.tolist())


def _quicksort_killer(n: int) -> list[float]:
    """Values on which std::sort's quicksort goes past its depth limit: McIlroy's adversary
    ("A killer adversary for quicksort") run against the reference's introsort, each
    value fixed only when a comparison needs it, always so as to make the pivot bad."""
    gas = float(n)
    val = [gas] * n
    solid = 0
    candidate = 0

    def before(x: int, y: int) -> bool:  # comp(x, y) of a descending sort: -val ascending
        nonlocal solid, candidate
        if val[x] == gas and val[y] == gas:
            val[x if x == candidate else y] = solid
            solid += 1
        if val[x] == gas:
            candidate = x
        elif val[y] == gas:
            candidate = y
        return val[x] < val[y]

    a = list(range(n))
    reference_argsort._introsort_loop(a, 0, n, 2 * (n.bit_length() - 1), before)
    return [-v for v in val]


def test_heapsort_fallback_past_the_depth_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an input that drives introsort into its heapsort: still std::sort's order."""
    heap_sorts = []
    heap_sort = reference_argsort._heap_sort
    monkeypatch.setattr(reference_argsort, "_heap_sort", lambda *args: heap_sorts.append(heap_sort(*args)))
    for n in (64, 300):
        values = np.asarray(_quicksort_killer(n), np.float32)
        count = len(heap_sorts)
        assert argsort_desc(values).tolist() == reference(values.tolist())
        assert len(heap_sorts) > count  # the reference did take the heapsort path
