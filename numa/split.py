"""How work is cut among workers: the one rule placement and the forward pass share.

Each worker gets a contiguous share of every matrix's output rows (and of the
attention heads); placement puts those rows on the worker's node, the forward pass
computes exactly those rows. `part` is plain Python for planning (no compilation, it
runs in the NUMA VM too); `part_jit` is the same function compiled for Numba code.
"""

from numba import njit


def part(total: int, group: int, worker: int, n_workers: int) -> tuple[int, int]:
    """Worker's share [lo, hi) of `total` items, cut on multiples of `group`."""
    n_groups = (total + group - 1) // group
    lo = min(n_groups * worker // n_workers * group, total)
    hi = min(n_groups * (worker + 1) // n_workers * group, total)
    return lo, hi


part_jit = njit(nogil=True, cache=True)(part)
