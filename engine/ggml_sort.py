"""The order ggml_argsort(GGML_SORT_ORDER_DESC) gives, ties included, in compiled code.

ggml-cpu sorts a row's indices with std::sort and `data[a] > data[b]`; std::sort is
not stable, so which of two equal values comes first is whatever libstdc++'s introsort
does (bits/stl_algo.h, stl_heap.h): median-of-three quicksort down to runs of 16,
heapsort past 2*log2(n) levels, then one insertion sort. The mixture-of-experts router
picks its experts by this order, so equal router probabilities pick llama.cpp's
experts. Up to 16 values it is an insertion sort: equal values keep index order.
tests/reference_argsort.py is the same algorithm in plain Python.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_THRESHOLD = 16  # libstdc++'s _S_threshold
# Rows of argsort_desc_into's stack: 2 * depth limit + 4 for any n below 2**62.
STACK_ROWS = 256


@njit(nogil=True)
def argsort_desc(v: np.ndarray) -> np.ndarray:
    """Indices of v, largest value first, in ggml_argsort's order."""
    a = np.empty(v.shape[0], np.int64)
    argsort_desc_into(v, a, np.empty((STACK_ROWS, 3), np.int64))
    return a


@njit(nogil=True)
def argsort_desc_into(v: np.ndarray, a: np.ndarray, stack: np.ndarray) -> None:
    """argsort_desc(v) into a[:len(v)] (int64), with `stack` ([STACK_ROWS, 3] int64) to
    work in: what a compiled caller runs per token without allocating."""
    n = v.shape[0]
    for i in range(n):
        a[i] = i
    if n < 2:
        return
    depth_limit = 0
    m = n
    while m > 1:  # 2 * floor(log2(n)), as std::__lg
        m >>= 1
        depth_limit += 2
    # __introsort_loop: loops on the left part, recurses on the right; the parts are
    # disjoint, so a stack of (first, last, depth) sorts them alike.
    top = 0
    stack[0] = (0, n, depth_limit)
    top = 1
    while top > 0:
        top -= 1
        first, last, depth = stack[top, 0], stack[top, 1], stack[top, 2]
        while last - first > _THRESHOLD:
            if depth == 0:
                _heap_sort(a, v, first, last)
                break
            depth -= 1
            mid = first + (last - first) // 2
            _move_median_to_first(a, v, first, first + 1, mid, last - 1)
            cut = _unguarded_partition(a, v, first + 1, last, first)
            stack[top] = (cut, last, depth)
            top += 1
            last = cut
    if n > _THRESHOLD:
        _insertion_sort(a, v, 0, _THRESHOLD)
        for i in range(_THRESHOLD, n):
            _unguarded_linear_insert(a, v, i)
    else:
        _insertion_sort(a, v, 0, n)


@njit(nogil=True)
def _move_median_to_first(a, v, result, x, y, z):
    if v[a[x]] > v[a[y]]:
        if v[a[y]] > v[a[z]]:
            pick = y
        elif v[a[x]] > v[a[z]]:
            pick = z
        else:
            pick = x
    elif v[a[x]] > v[a[z]]:
        pick = x
    elif v[a[y]] > v[a[z]]:
        pick = z
    else:
        pick = y
    a[result], a[pick] = a[pick], a[result]


@njit(nogil=True)
def _unguarded_partition(a, v, first, last, pivot):
    while True:
        while v[a[first]] > v[a[pivot]]:
            first += 1
        last -= 1
        while v[a[pivot]] > v[a[last]]:
            last -= 1
        if not first < last:
            return first
        a[first], a[last] = a[last], a[first]
        first += 1


@njit(nogil=True)
def _insertion_sort(a, v, first, last):
    for i in range(first + 1, last):
        if v[a[i]] > v[a[first]]:
            val = a[i]
            for j in range(i, first, -1):
                a[j] = a[j - 1]
            a[first] = val
        else:
            _unguarded_linear_insert(a, v, i)


@njit(nogil=True)
def _unguarded_linear_insert(a, v, last):
    val = a[last]
    while v[val] > v[a[last - 1]]:
        a[last] = a[last - 1]
        last -= 1
    a[last] = val


@njit(nogil=True)
def _heap_sort(a, v, first, last):
    """std::__partial_sort(first, last, last): make_heap, then sort_heap."""
    n = last - first
    for parent in range((n - 2) // 2, -1, -1):
        _adjust_heap(a, v, first, parent, n, a[first + parent])
    while last - first > 1:
        last -= 1
        value = a[last]
        a[last] = a[first]
        _adjust_heap(a, v, first, 0, last - first, value)


@njit(nogil=True)
def _adjust_heap(a, v, base, hole, n, value):
    top = hole
    child = hole
    while child < (n - 1) // 2:
        child = 2 * (child + 1)
        if v[a[base + child]] > v[a[base + child - 1]]:
            child -= 1
        a[base + hole] = a[base + child]
        hole = child
    if n % 2 == 0 and child == (n - 2) // 2:
        child = 2 * (child + 1)
        a[base + hole] = a[base + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2  # std::__push_heap
    while hole > top and v[a[base + parent]] > v[value]:
        a[base + hole] = a[base + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[base + hole] = value
