"""What the engine tells numa/ about a model so it can plan placement: the decoder's
matrices with the row groups the forward pass splits them on, and the KV cache."""

from __future__ import annotations

from numallm.engine.arch.slots import EXPERTS, LayerMatrix, MatrixEntry, MatrixTable, ModelMatrix
from numallm.engine.arch.spec import HParams
from numallm.engine.kv_cache import KV_ITEMSIZE, kv_bytes_per_token
from numallm.errors import BadInputError
from numallm.numa.placement import KvHeads, Matrix

# The forward pass splits each pair with one part() call, on the larger of their row groups
# (the routed and shared experts' down rows alike: each worker adds its own columns of both).
_CUT_TOGETHER = ((LayerMatrix.GATE, LayerMatrix.UP), (LayerMatrix.GATE_EXPS, LayerMatrix.UP_EXPS),
                 (LayerMatrix.GATE_SHEXP, LayerMatrix.UP_SHEXP), (LayerMatrix.DOWN_EXPS, LayerMatrix.DOWN_SHEXP))


def forward_matrices(layer: MatrixTable, model: MatrixTable, n_expert_used: int = 0) -> tuple[Matrix, ...]:
    """The matrices of the decoder's tables (engine/arch/slots.py) with the row groups
    its part() calls use: gate and up are cut together on the larger of their two groups.
    The token embeddings are looked up; tied to the output projection (same bytes), they
    are one matrix, read both ways. An expert tensor is one matrix per expert
    (blk.<layer>.<slot>.<expert>): the forward pass splits each expert's rows among the
    workers as it does a dense FFN's; a token reads n_expert_used of them (read_share)."""
    return tuple(m for m, _ in _table_matrices(layer, model, n_expert_used))


def matrix_offsets(layer: MatrixTable, model: MatrixTable) -> dict[str, int]:
    """Where each of forward_matrices' matrices starts in a weight buffer (bytes)."""
    return {m.name: offset for m, offset in _table_matrices(layer, model)}


def _table_matrices(layer: MatrixTable, model: MatrixTable, n_expert_used: int = 0) -> list[tuple[Matrix, int]]:
    out = []
    n_expert = max(1, int(layer.rows[:, LayerMatrix.ROUTER].max(initial=0)))
    share = n_expert_used / n_expert if n_expert_used else 1.0
    for il in range(layer.nbytes.shape[0]):
        group = {slot: max(layer.row_group[il, s] for s in pair) for pair in _CUT_TOGETHER for slot in pair}
        for slot in LayerMatrix:
            entry = layer.entry((il, slot))
            if not entry.nbytes:  # an empty slot: this architecture has no such matrix
                continue
            name = f"blk.{il}.{slot.name.lower()}"
            g = group.get(slot, entry.row_group)
            if slot in EXPERTS:
                out.extend(_table_matrix(f"{name}.{e}", expert, g, matmul=True, lookup=False, read_share=share)
                           for e, expert in enumerate(expert_entries(entry, n_expert)))
            else:
                out.append(_table_matrix(name, entry, g, matmul=True, lookup=False))
    # A pipeline stage may hold either or neither (an empty entry).
    embd, output = model.entry(ModelMatrix.TOKEN_EMBD), model.entry(ModelMatrix.OUTPUT)
    tied = embd.nbytes > 0 and output.nbytes > 0 and embd.offset == output.offset
    if output.nbytes:
        out.append(_table_matrix("output", output, output.row_group, matmul=True, lookup=tied))
    if embd.nbytes and not tied:
        out.append(_table_matrix("token_embd", embd, embd.row_group, matmul=False, lookup=True))
    return out


def expert_entries(entry: MatrixEntry, n_expert: int) -> list[MatrixEntry]:
    """An expert tensor's entry as n_expert entries, one per expert's rows (the forward
    pass reads expert e at the same offset)."""
    rows, nbytes = entry.rows // n_expert, entry.nbytes // n_expert
    return [entry._replace(rows=rows, offset=entry.offset + e * nbytes, nbytes=nbytes) for e in range(n_expert)]


def _table_matrix(name: str, entry: MatrixEntry, group: int, matmul: bool, lookup: bool,
                  read_share: float = 1.0) -> tuple[Matrix, int]:
    return (Matrix(name, entry.rows, entry.nbytes // entry.rows, int(group), matmul=matmul, lookup=lookup,
                   read_share=read_share), entry.offset)


def kv_heads(hp: HParams, n_ctx: int, kv_type: str, n_slots: int = 1) -> KvHeads:
    """The KV cache of engine/kv_cache.py (K and V, float16 or float32) in KV heads (a
    latent cache is one, which every query head reads)."""
    if kv_type not in KV_ITEMSIZE:
        raise BadInputError(f"cache type {kv_type!r} is not supported (use one of {', '.join(KV_ITEMSIZE)})")
    per_token = kv_bytes_per_token(hp, kv_type)
    return KvHeads(hp.n_head, hp.n_head_kv, n_slots * n_ctx * per_token // hp.n_head_kv, per_token)
