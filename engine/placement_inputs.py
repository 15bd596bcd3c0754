"""What the engine tells numa/ about a model so it can plan placement: the decoder's
matrices with the row groups the forward pass splits them on, and the KV cache."""

from __future__ import annotations

from numallm.engine.arch.slots import LayerMatrix, MatrixEntry, MatrixTable, ModelMatrix
from numallm.engine.arch.spec import HParams
from numallm.engine.kv_cache import KV_ITEMSIZE
from numallm.errors import BadInputError
from numallm.numa.placement import KvHeads, Matrix

# The forward pass splits these with one part() call, on the larger of their row groups.
_CUT_TOGETHER = (LayerMatrix.GATE, LayerMatrix.UP)


def forward_matrices(layer: MatrixTable, model: MatrixTable) -> tuple[Matrix, ...]:
    """The matrices of the decoder's tables (engine/arch/slots.py) with the row groups
    its part() calls use: gate and up are cut together on the larger of their two groups.
    The token embeddings are looked up; tied to the output projection (same bytes), they
    are one matrix, read both ways."""
    return tuple(m for m, _ in _table_matrices(layer, model))


def matrix_offsets(layer: MatrixTable, model: MatrixTable) -> dict[str, int]:
    """Where each of forward_matrices' matrices starts in a weight buffer (bytes)."""
    return {m.name: offset for m, offset in _table_matrices(layer, model)}


def _table_matrices(layer: MatrixTable, model: MatrixTable) -> list[tuple[Matrix, int]]:
    out = []
    for il in range(layer.nbytes.shape[0]):
        together = max(layer.row_group[il, s] for s in _CUT_TOGETHER)
        for slot in LayerMatrix:
            entry = layer.entry((il, slot))
            if entry.nbytes:  # an empty slot: this architecture has no such matrix
                group = together if slot in _CUT_TOGETHER else entry.row_group
                out.append(_table_matrix(f"blk.{il}.{slot.name.lower()}", entry, group, matmul=True, lookup=False))
    embd, output = model.entry(ModelMatrix.TOKEN_EMBD), model.entry(ModelMatrix.OUTPUT)
    tied = embd.offset == output.offset
    out.append(_table_matrix("output", output, output.row_group, matmul=True, lookup=tied))
    if not tied:
        out.append(_table_matrix("token_embd", embd, embd.row_group, matmul=False, lookup=True))
    return out


def _table_matrix(name: str, entry: MatrixEntry, group: int, matmul: bool, lookup: bool) -> tuple[Matrix, int]:
    return Matrix(name, entry.rows, entry.nbytes // entry.rows, int(group), matmul=matmul, lookup=lookup), entry.offset


def kv_heads(hp: HParams, n_ctx: int, kv_type: str, n_slots: int = 1) -> KvHeads:
    """The KV cache of engine/kv_cache.py (K and V, float16 or float32) in KV heads."""
    if kv_type not in KV_ITEMSIZE:
        raise BadInputError(f"cache type {kv_type!r} is not supported (use one of {', '.join(KV_ITEMSIZE)})")
    itemsize = KV_ITEMSIZE[kv_type]
    return KvHeads(hp.n_head, hp.n_head_kv, 2 * n_slots * hp.n_layer * n_ctx * hp.head_dim * itemsize)
