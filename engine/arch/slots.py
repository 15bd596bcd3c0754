"""The generic decoder's tensor slots, and the tables that say where each one's data is.

A slot is a part of the decoder (a layer's q projection, its attention norm, ...); an
architecture maps the slots it uses to its GGUF tensors (engine/arch/spec.py), the
weight loader fills the tables, and the compiled forward pass reads them by these
names. Slot numbers and table columns are defined here and nowhere else. A slot no
architecture maps, or a tensor a file leaves out, has a zero entry (length or nbytes
0): the decoder skips that step. The compiled code freezes these values when it is
built, so numallm.kernels.numba_cache stamps its cache with this file too.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from numallm.engine.arch.spec import HParams


class LayerMatrix(IntEnum):
    """A layer's matrices (their names are the placement plan's: blk.<layer>.<name>)."""

    Q = 0
    K = 1
    V = 2
    O = 3
    GATE = 4
    UP = 5
    DOWN = 6
    ROUTER = 7     # a mixture-of-experts layer's: the router (ffn_gate_inp) [n_expert, n_embd]
    GATE_EXPS = 8  # and every expert's gate, up and down, one GGUF tensor each: expert e's
    UP_EXPS = 9    # rows are the e-th of n_expert equal row ranges of the matrix seen as 2-D
    DOWN_EXPS = 10
    GATE_SHEXP = 11  # the shared experts' FFN (n_expert_shared of them as one, n_ff_exp wide each),
    UP_SHEXP = 12    # which every token of a mixture-of-experts layer runs besides its routed ones
    DOWN_SHEXP = 13


EXPERTS = frozenset({LayerMatrix.GATE_EXPS, LayerMatrix.UP_EXPS, LayerMatrix.DOWN_EXPS})


class LayerVector(IntEnum):
    """A layer's float32 vectors."""

    ATTN_NORM = 0
    FFN_NORM = 1
    POST_ATTN_NORM = 2  # RMSNorm of the attention output before the residual add
    POST_FFN_NORM = 3
    Q_NORM = 4          # per-head RMSNorm of q and k, before RoPE
    K_NORM = 5
    Q_BIAS = 6          # added to the q, k, v projections (GGUF's <name>.bias)
    K_BIAS = 7
    V_BIAS = 8
    EXP_PROBS_B = 9     # a mixture-of-experts layer's selection bias: added to the router's
                        # probabilities to choose experts, not to weight them (GGUF's exp_probs_b.bias)


BIASES = frozenset({LayerVector.Q_BIAS, LayerVector.K_BIAS, LayerVector.V_BIAS, LayerVector.EXP_PROBS_B})


class ModelMatrix(IntEnum):
    TOKEN_EMBD = 0
    OUTPUT = 1  # the output projection: token_embd itself when the file has none (tied)


class ModelVector(IntEnum):
    OUTPUT_NORM = 0


def matrix_shape(slot: LayerMatrix, hp: HParams) -> tuple[int, int]:
    """(rows, cols) of a layer's matrix (one expert's of an expert slot): rows are
    outputs, cols inputs (GGUF's [cols, rows], [cols, rows, n_expert] for experts)."""
    qdim = hp.n_head * hp.head_dim
    kvdim = hp.n_head_kv * hp.head_dim
    shexp = hp.n_ff_exp * hp.n_expert_shared
    return {LayerMatrix.Q: (qdim, hp.n_embd), LayerMatrix.K: (kvdim, hp.n_embd), LayerMatrix.V: (kvdim, hp.n_embd),
            LayerMatrix.O: (hp.n_embd, qdim), LayerMatrix.GATE: (hp.n_ff, hp.n_embd),
            LayerMatrix.UP: (hp.n_ff, hp.n_embd), LayerMatrix.DOWN: (hp.n_embd, hp.n_ff),
            LayerMatrix.ROUTER: (hp.n_expert, hp.n_embd), LayerMatrix.GATE_EXPS: (hp.n_ff_exp, hp.n_embd),
            LayerMatrix.UP_EXPS: (hp.n_ff_exp, hp.n_embd), LayerMatrix.DOWN_EXPS: (hp.n_embd, hp.n_ff_exp),
            LayerMatrix.GATE_SHEXP: (shexp, hp.n_embd), LayerMatrix.UP_SHEXP: (shexp, hp.n_embd),
            LayerMatrix.DOWN_SHEXP: (hp.n_embd, shexp)}[slot]


def vector_length(slot: LayerVector, hp: HParams) -> int:
    if slot in (LayerVector.Q_NORM, LayerVector.K_NORM):
        return hp.head_dim
    if slot == LayerVector.Q_BIAS:
        return hp.n_head * hp.head_dim
    if slot in (LayerVector.K_BIAS, LayerVector.V_BIAS):
        return hp.n_head_kv * hp.head_dim
    if slot == LayerVector.EXP_PROBS_B:
        return hp.n_expert
    return hp.n_embd


class MatrixEntry(NamedTuple):
    """One matrix of a weight buffer, in the kernels' layout."""

    qtype: int      # int(GGMLQuantizationType)
    rows: int
    cols: int
    offset: int     # bytes into the buffer
    nbytes: int     # 0: the slot is empty
    row_group: int  # a share of its rows must start at a multiple of this (kernels.row_group)


class MatrixTable(NamedTuple):
    """MatrixEntry's fields, each an int64 array indexed like the slots: [layer, LayerMatrix]
    or [ModelMatrix]."""

    qtype: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    offset: np.ndarray
    nbytes: np.ndarray
    row_group: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> MatrixTable:
        return cls(*(np.zeros(shape, np.int64) for _ in cls._fields))

    def entry(self, index: int | tuple[int, int]) -> MatrixEntry:
        return MatrixEntry(*(int(column[index]) for column in self))

    def put(self, index: int | tuple[int, int], entry: MatrixEntry) -> None:
        for column, value in zip(self, entry):
            column[index] = value


class VectorTable(NamedTuple):
    """Where each vector is in WeightTables.vecs, indexed like the slots."""

    offset: np.ndarray
    length: np.ndarray  # 0: the slot is empty

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> VectorTable:
        return cls(np.zeros(shape, np.int64), np.zeros(shape, np.int64))


class WeightTables(NamedTuple):
    """Everything the forward pass knows of the weights except the buffer itself, which
    is every node's own (the offsets hold in each node's copy or shard)."""

    layer: MatrixTable      # [n_layer, len(LayerMatrix)]
    model: MatrixTable      # [len(ModelMatrix)]
    layer_vec: VectorTable  # [n_layer, len(LayerVector)]
    model_vec: VectorTable  # [len(ModelVector)]
    vecs: np.ndarray        # float32: every vector
