"""What the engine tells numa/ about a model so it can plan placement: the decoder's
matrices with the row groups the forward pass splits them on, and the KV cache."""

from __future__ import annotations

import numpy as np

from numallm.engine.arch.spec import MATRICES, HParams
from numallm.engine.forward import W_GATE, W_UP
from numallm.engine.kv_cache import KV_ITEMSIZE
from numallm.errors import BadInputError
from numallm.numa.placement import KvHeads, Matrix


def forward_matrices(wtab: np.ndarray, gtab: np.ndarray) -> tuple[Matrix, ...]:
    """The matrices of the decoder's tables (engine/forward.py) with the row groups its
    part() calls use: gate and up are cut together on the larger of their two groups.
    The token embeddings are looked up; tied to the output projection (same bytes), they
    are one matrix, read both ways."""
    return tuple(m for m, _ in _table_matrices(wtab, gtab))


def matrix_offsets(wtab: np.ndarray, gtab: np.ndarray) -> dict[str, int]:
    """Where each of forward_matrices' matrices starts in a weight buffer (bytes)."""
    return {m.name: offset for m, offset in _table_matrices(wtab, gtab)}


def _table_matrices(wtab: np.ndarray, gtab: np.ndarray) -> list[tuple[Matrix, int]]:
    out = []
    for il, layer in enumerate(wtab):
        for m, entry in enumerate(layer):
            group = max(layer[W_GATE, 5], layer[W_UP, 5]) if m in (W_GATE, W_UP) else entry[5]
            out.append(_table_matrix(f"blk.{il}.{MATRICES[m]}", entry, group, matmul=True, lookup=False))
    embd, output = gtab
    tied = embd[3] == output[3]
    out.append(_table_matrix("output", output, output[5], matmul=True, lookup=bool(tied)))
    if not tied:
        out.append(_table_matrix("token_embd", embd, embd[5], matmul=False, lookup=True))
    return out


def _table_matrix(name: str, entry: np.ndarray, group: int, matmul: bool, lookup: bool) -> tuple[Matrix, int]:
    rows, nbytes = int(entry[1]), int(entry[4])
    return Matrix(name, rows, nbytes // rows, int(group), matmul=matmul, lookup=lookup), int(entry[3])


def kv_heads(hp: HParams, n_ctx: int, kv_type: str, n_slots: int = 1) -> KvHeads:
    """The KV cache of engine/kv_cache.py (K and V, float16 or float32) in KV heads."""
    if kv_type not in KV_ITEMSIZE:
        raise BadInputError(f"cache type {kv_type!r} is not supported (use one of {', '.join(KV_ITEMSIZE)})")
    itemsize = KV_ITEMSIZE[kv_type]
    return KvHeads(hp.n_head, hp.n_head_kv, 2 * n_slots * hp.n_layer * n_ctx * hp.head_dim * itemsize)
