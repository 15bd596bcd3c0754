"""The qwen3 architecture (dense Qwen 3), as llama.cpp's qwen3 graph runs it.

llama's layer with a per-head RMSNorm of q and k before NeoX-style rotary embeddings,
and head_dim from the file (attention.key_length: Qwen 3 0.6B has 16 heads of 128 for
n_embd 1024).
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_TENSOR
from numallm.engine.arch.qwen2 import DEFAULT_RMS_EPS, DEFAULT_ROPE_BASE
from numallm.engine.arch.slots import LayerVector
from numallm.engine.arch.spec import (
    INT_KEYS,
    QKV_BIASES,
    STANDARD_MATRICES,
    STANDARD_VECTORS,
    Architecture,
    float_keys,
)

QK_NORMS = {LayerVector.Q_NORM: MODEL_TENSOR.ATTN_Q_NORM, LayerVector.K_NORM: MODEL_TENSOR.ATTN_K_NORM}

ARCH = Architecture(
    arch=MODEL_ARCH.QWEN3,
    keys=(*INT_KEYS, *float_keys(DEFAULT_ROPE_BASE, DEFAULT_RMS_EPS)),
    matrices=STANDARD_MATRICES,
    vectors={**STANDARD_VECTORS, **QK_NORMS},
    optional_vectors=QKV_BIASES,
    fixed=dict(rope_neox=True),
)
