"""Memory read bandwidth: the one probe every benchmark and the roofline compare against.

`memory_read_bandwidth` streams an array larger than the caches with a vectorised
Numba loop on `threads` pinned threads, each summing its own slice, and reports the
best of a few passes; a kernel that reaches this figure is memory-bound.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _read_sum(a):  # type: ignore[no-untyped-def]
    # Integer adds vectorise without fastmath; 4 independent sums keep the loads in flight.
    s0 = s1 = s2 = s3 = np.uint64(0)
    n = a.shape[0] // 4 * 4
    for i in range(0, n, 4):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
    for i in range(n, a.shape[0]):
        s0 += a[i]
    return s0 + s1 + s2 + s3


def run_pinned(work: Callable[[int], object], threads: int, passes: int = 1) -> list[float]:
    """Run work(i) for i in range(threads) on threads pinned one per CPU, `passes` times;
    returns each pass's span from the first thread's start to the last one's end.

    The workers take their own timestamps: on a loaded machine the calling thread can
    be descheduled between releasing them and reading the clock."""
    cpus = sorted(os.sched_getaffinity(0))
    barrier = threading.Barrier(threads)
    starts = np.zeros((passes, threads))
    ends = np.zeros((passes, threads))
    errors: list[Exception] = []

    def body(i: int) -> None:
        os.sched_setaffinity(0, {cpus[i % len(cpus)]})
        for k in range(passes):
            barrier.wait()
            starts[k, i] = time.perf_counter()
            try:
                work(i)
            except Exception as e:  # noqa: BLE001 (re-raised in the calling thread below)
                errors.append(e)
            ends[k, i] = time.perf_counter()

    pool = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return list(ends.max(axis=1) - starts.min(axis=1))


def memory_read_bandwidth(nbytes: int = 256 << 20, threads: int = 1) -> float:
    """GB/s (1e9 bytes/s) of reading an nbytes array, threads each reading their own slice;
    the best of 5 passes after one warm-up pass."""
    a = np.ones(max(nbytes // 8, threads), np.uint64)  # ones: every page is really mapped
    bounds = np.linspace(0, a.shape[0], threads + 1).astype(np.int64)
    _read_sum(a[:8])  # compile (or load from cache) outside the timed passes
    times = run_pinned(lambda i: _read_sum(a[bounds[i]:bounds[i + 1]]), threads, passes=6)
    return float(a.nbytes / min(times[1:]) / 1e9)
