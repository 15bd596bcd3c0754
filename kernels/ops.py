"""The Python-level kernel calls the engine makes: thin wrappers over kernels.jit.

Each wrapper only turns the IntEnum into an int and calls the compiled function, so a
call costs the Numba dispatch (about a microsecond) and allocates nothing in Python;
the compiled matvec allocates its int8 copy of x (1.5 bytes per column).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from gguf import GGMLQuantizationType
from numallm.kernels import jit
from numallm.kernels.formats import block_size, packed_nbytes


def matvec(qtype: GGMLQuantizationType, w: np.ndarray, rows: int, cols: int,
           x: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
    """out[r0:r1] = W[r0:r1] @ x (releases the GIL; disjoint row ranges may run in parallel)."""
    jit.matvec(int(qtype), w, rows, cols, x, out, r0, r1)


def matmul(qtype: GGMLQuantizationType, w: np.ndarray, rows: int, cols: int,
           X: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
    """out[:, r0:r1] = X @ W[r0:r1].T for X float32[n, cols] C-contiguous, out float32[n, rows]."""
    jit.matmul(int(qtype), w, rows, cols, X, out, r0, r1)


def get_rows(qtype: GGMLQuantizationType, w: np.ndarray, rows: int, cols: int,
             ids: np.ndarray, out: np.ndarray) -> None:
    """out[i] = W[ids[i]] as float32 (embedding lookup)."""
    jit.get_rows(int(qtype), w, rows, cols, ids, out)


def dequantize(qtype: GGMLQuantizationType, w: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The whole weight as float32[rows, cols] (tests and references only)."""
    return jit.dequantize(int(qtype), w, rows, cols)


def warmup(qtypes: Iterable[GGMLQuantizationType]) -> None:
    """Compile (or load from Numba's cache) every kernel `qtypes` need, on tiny inputs.

    For callers of these Python wrappers (benchmarks, tests). A cached @njit caller such
    as the engine's forward pass holds its own copy of every kernel it calls, so
    warming it up needs none of this (loading both cost the engine 0.3 s per start)."""
    for qtype in set(qtypes):
        cols = max(block_size(qtype), 32)
        w = np.zeros(packed_nbytes(qtype, 2, cols), np.uint8)
        x = np.zeros(cols, np.float32)
        out = np.zeros((1, 2), np.float32)
        matvec(qtype, w, 2, cols, x, out[0], 0, 2)
        matmul(qtype, w, 2, cols, x.reshape(1, cols), out, 0, 2)
        get_rows(qtype, w, 2, cols, np.zeros(1, np.int64), np.zeros((1, cols), np.float32))
