"""The glm4moe architecture (GLM-4.5, 4.6, 4.7 and GLM-4.5-Air), as llama.cpp's glm4-moe graph runs it.

Grouped-query attention with the Q/K/V biases the file carries, per-head Q/K RMSNorm
where it has them (GLM-4.5, not Air), NeoX RoPE on the first rope.dimension_count
values of each head (half of it in the released models); post_attention_norm is the
FFN's input norm. The first leading_dense_block_count layers have a dense SwiGLU FFN,
the others routed experts (sigmoid unless the file says otherwise, exp_probs_b
required, engine/arch/routed.py) plus the shared expert. block_count includes the
nextn_predict_layers NextN (multi-token prediction) layers after the trunk, which
llama.cpp skips when it generates; so does numallm. A file with rope.dimension_sections
(GLM-4.5V's multimodal RoPE) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gguf import MODEL_ARCH, MODEL_TENSOR, Keys
from numallm.engine.arch.qwen3 import QK_NORMS
from numallm.engine.arch.routed import EXP_PROBS_B, ROUTED_EXPERT_KEYS, SHARED_EXPERT_MATRICES, gating
from numallm.engine.arch.slots import LayerVector
from numallm.engine.arch.spec import (
    EXPERT_MATRICES,
    GATING_SIGMOID,
    INT_KEYS,
    QKV_BIASES,
    STANDARD_MATRICES,
    Architecture,
    float_keys,
)

# llama.cpp's generic defaults (the released files set both).
DEFAULT_ROPE_BASE = 10000.0
DEFAULT_RMS_EPS = 1e-5


def _derived(hp: Mapping[str, Any]) -> dict[str, Any]:
    return gating(hp, GATING_SIGMOID)


ARCH = Architecture(
    arch=MODEL_ARCH.GLM4_MOE,
    keys=(*INT_KEYS, *ROUTED_EXPERT_KEYS, *float_keys(DEFAULT_ROPE_BASE, DEFAULT_RMS_EPS)),
    matrices=STANDARD_MATRICES,  # the dense FFN's in the leading dense layers
    vectors={LayerVector.ATTN_NORM: MODEL_TENSOR.ATTN_NORM, LayerVector.FFN_NORM: MODEL_TENSOR.ATTN_POST_NORM},
    optional_vectors={**QKV_BIASES, **QK_NORMS},
    expert_matrices=EXPERT_MATRICES,
    shared_expert_matrices=SHARED_EXPERT_MATRICES,
    expert_vectors=EXP_PROBS_B,
    fixed=dict(rope_neox=True),
    derived=_derived,
    # llama.cpp runs such a file (GLM-4.5V's text model) with multimodal RoPE instead
    refused_keys={Keys.Rope.DIMENSION_SECTIONS: "multimodal RoPE sections (M-RoPE)"},
)
