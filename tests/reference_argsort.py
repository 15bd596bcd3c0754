"""ggml_argsort's order, ties included, for the reference's expert routing.

ggml-cpu sorts each row's indices with std::sort and `data[a] > data[b]` (descending),
and std::sort is not stable, so which of two experts with equal router probabilities
is picked is whatever libstdc++'s introsort does. This replays it step by step
(bits/stl_algo.h and stl_heap.h: introsort with median-of-three pivots, 16-element
insertion-sort threshold, heapsort past 2*log2(n) levels). For up to 16 elements it
is a plain insertion sort, which is stable: equal values keep index order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_THRESHOLD = 16  # libstdc++'s _S_threshold


def argsort_desc(values: Sequence[float]) -> list[int]:
    """Indices of values, largest first, in exactly the order ggml_argsort(DESC) gives."""
    a = list(range(len(values)))

    def comp(i: int, j: int) -> bool:
        return values[i] > values[j]

    if len(a) > 1:
        _introsort_loop(a, 0, len(a), 2 * (len(a).bit_length() - 1), comp)
        _final_insertion_sort(a, 0, len(a), comp)
    return a


Comp = Callable[[int, int], bool]


def _introsort_loop(a: list[int], first: int, last: int, depth: int, comp: Comp) -> None:
    while last - first > _THRESHOLD:
        if depth == 0:
            _heap_sort(a, first, last, comp)
            return
        depth -= 1
        mid = first + (last - first) // 2
        _move_median_to_first(a, first, first + 1, mid, last - 1, comp)
        cut = _unguarded_partition(a, first + 1, last, first, comp)
        _introsort_loop(a, cut, last, depth, comp)
        last = cut


def _move_median_to_first(a: list[int], result: int, x: int, y: int, z: int, comp: Comp) -> None:
    if comp(a[x], a[y]):
        if comp(a[y], a[z]):
            pick = y
        elif comp(a[x], a[z]):
            pick = z
        else:
            pick = x
    elif comp(a[x], a[z]):
        pick = x
    elif comp(a[y], a[z]):
        pick = z
    else:
        pick = y
    a[result], a[pick] = a[pick], a[result]


def _unguarded_partition(a: list[int], first: int, last: int, pivot: int, comp: Comp) -> int:
    while True:
        while comp(a[first], a[pivot]):
            first += 1
        last -= 1
        while comp(a[pivot], a[last]):
            last -= 1
        if not first < last:
            return first
        a[first], a[last] = a[last], a[first]
        first += 1


def _final_insertion_sort(a: list[int], first: int, last: int, comp: Comp) -> None:
    if last - first > _THRESHOLD:
        _insertion_sort(a, first, first + _THRESHOLD, comp)
        for i in range(first + _THRESHOLD, last):
            _unguarded_linear_insert(a, i, comp)
    else:
        _insertion_sort(a, first, last, comp)


def _insertion_sort(a: list[int], first: int, last: int, comp: Comp) -> None:
    for i in range(first + 1, last):
        if comp(a[i], a[first]):
            a[first : i + 1] = [a[i], *a[first:i]]
        else:
            _unguarded_linear_insert(a, i, comp)


def _unguarded_linear_insert(a: list[int], last: int, comp: Comp) -> None:
    val = a[last]
    while comp(val, a[last - 1]):
        a[last] = a[last - 1]
        last -= 1
    a[last] = val


def _heap_sort(a: list[int], first: int, last: int, comp: Comp) -> None:
    """std::__partial_sort(first, last, last): make_heap, then sort_heap."""
    n = last - first
    for parent in range((n - 2) // 2, -1, -1):
        _adjust_heap(a, first, parent, n, a[first + parent], comp)
    while last - first > 1:
        last -= 1
        value = a[last]
        a[last] = a[first]
        _adjust_heap(a, first, 0, last - first, value, comp)


def _adjust_heap(a: list[int], base: int, hole: int, n: int, value: int, comp: Comp) -> None:
    top = hole
    child = hole
    while child < (n - 1) // 2:
        child = 2 * (child + 1)
        if comp(a[base + child], a[base + child - 1]):
            child -= 1
        a[base + hole] = a[base + child]
        hole = child
    if n % 2 == 0 and child == (n - 2) // 2:
        child = 2 * (child + 1)
        a[base + hole] = a[base + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2  # std::__push_heap
    while hole > top and comp(a[base + parent], value):
        a[base + hole] = a[base + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[base + hole] = value
