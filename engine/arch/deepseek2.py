"""The deepseek2 architecture (DeepSeek V2/V2-Lite/V3/R1, Kimi K2), as llama.cpp's deepseek2 graph runs it.

Multi-head latent attention: queries through attn_q_a -> attn_q_a_norm -> attn_q_b (or
attn_q where q_lora_rank is 0, as V2-Lite); attn_kv_a_mqa gives each token a
kv_lora_rank latent (normed by attn_kv_a_norm) and one n_rot-wide key part that RoPE
rotates ("normal" adjacent pairs) and all heads share. llama.cpp's absorbed form is
run: attn_k_b folds into each head's query, the attention reads the latent itself as
keys and values (the KV cache holds only latent and rotated key per token and layer:
engine/kv_cache.py), and attn_v_b turns each head's result into its values. Files
from before the split tensors (one attn_kv_b, no key_length_mla) are split at load
(engine/arch/legacy_mla.py). The attention scale carries YaRN's magnitude correction
(mscale^2 / sqrt(head_dim)); yarn_log_multiplier is read as llama.cpp reads it.
The FFN is engine/arch/routed.py's: leading dense layers, then routed experts (softmax
unless the file says otherwise) with the selection bias where the file has it, expert
groups, and shared experts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys
from numallm.engine.arch.legacy_mla import split_kv_b
from numallm.engine.arch.routed import EXP_PROBS_B, ROUTED_EXPERT_KEYS, SHARED_EXPERT_MATRICES, gating
from numallm.engine.arch.slots import LayerMatrix, LayerVector
from numallm.engine.arch.spec import (
    EXPERT_MATRICES,
    GATING_SIGMOID,
    GATING_SOFTMAX,
    INT_KEYS,
    MAX_EMBD,
    MAX_HEAD_DIM,
    STANDARD_MATRICES,
    STANDARD_VECTORS,
    Architecture,
    Key,
    float_keys,
)

DEFAULT_ROPE_BASE = 10000.0
DEFAULT_RMS_EPS = 1e-6  # llama.cpp requires the key; DeepSeek's own value

# key_length and value_length describe the latent cache (kv_lora_rank + n_rot, kv_lora_rank):
# checked, but the heads' sizes are the _mla keys.
_HEAD_KEYS = (Keys.Attention.KEY_LENGTH, Keys.Attention.VALUE_LENGTH)
MLA_KEYS = (
    Key(Keys.Attention.KEY_LENGTH, int, 1, MAX_HEAD_DIM),
    Key(Keys.Attention.VALUE_LENGTH, int, 1, MAX_HEAD_DIM),
    Key(Keys.Attention.KEY_LENGTH_MLA, int, 1, MAX_HEAD_DIM, "head_dim", required=True),
    Key(Keys.Attention.VALUE_LENGTH_MLA, int, 1, MAX_HEAD_DIM, "head_dim_v", required=True),
    Key(Keys.Attention.Q_LORA_RANK, int, 0, MAX_EMBD, "q_lora_rank", 0),
    Key(Keys.Attention.KV_LORA_RANK, int, 1, MAX_EMBD, "kv_lora_rank", required=True),
    Key(Keys.Rope.SCALING_YARN_LOG_MUL, float, -1e6, 1e6, "rope_yarn_log_mul", 0.0),
)


# GLM-4.7-Flash (deepseek2 with n_layer 47, or 48 counted as llama.cpp once did) routes
# by sigmoid where its file names no gating function; other deepseek2 files by softmax.
GLM47_FLASH_LAYERS, GLM47_FLASH_VOCAB = (47, 48), 154880


def _derived(hp: Mapping[str, Any]) -> dict[str, Any]:
    """deepseek2.cpp's kq_scale, in float32 as there: YaRN's magnitude, undone in the
    rotation's attn_factor by llama_context, comes back squared into the scores; and
    llama.cpp's default gating function."""
    f32 = np.float32
    log_scale = f32(math.log(1.0 / hp["rope_freq_scale"]))
    attn_factor_org = f32(hp["rope_attn_factor"]) * (f32(1.0) + f32(0.1) * log_scale)
    mscale = attn_factor_org * (f32(1.0) + f32(0.1) * f32(hp["rope_yarn_log_mul"]) * log_scale)
    glm47 = hp["n_layer"] in GLM47_FLASH_LAYERS and hp["n_vocab"] == GLM47_FLASH_VOCAB
    return {"attn_scale": float(mscale * mscale / f32(math.sqrt(hp["head_dim"]))),
            **gating(hp, GATING_SIGMOID if glm47 else GATING_SOFTMAX)}


ARCH = Architecture(
    arch=MODEL_ARCH.DEEPSEEK2,
    keys=(*(k for k in INT_KEYS if k.name not in _HEAD_KEYS), *MLA_KEYS, *ROUTED_EXPERT_KEYS,
          *float_keys(DEFAULT_ROPE_BASE, DEFAULT_RMS_EPS)),
    matrices={
        LayerMatrix.Q: MODEL_TENSOR.ATTN_Q,  # q_lora_rank 0; else Q_A and Q_B (ArchSpec.matrix_names)
        LayerMatrix.Q_A: MODEL_TENSOR.ATTN_Q_A,
        LayerMatrix.Q_B: MODEL_TENSOR.ATTN_Q_B,
        LayerMatrix.KV_A_MQA: MODEL_TENSOR.ATTN_KV_A_MQA,
        LayerMatrix.K_B: MODEL_TENSOR.ATTN_K_B,
        LayerMatrix.V_B: MODEL_TENSOR.ATTN_V_B,
        **{slot: kind for slot, kind in STANDARD_MATRICES.items()
           if slot not in (LayerMatrix.Q, LayerMatrix.K, LayerMatrix.V)},
    },
    vectors={**STANDARD_VECTORS, LayerVector.Q_A_NORM: MODEL_TENSOR.ATTN_Q_A_NORM,
             LayerVector.KV_A_NORM: MODEL_TENSOR.ATTN_KV_A_NORM},
    expert_matrices=EXPERT_MATRICES,
    shared_expert_matrices=SHARED_EXPERT_MATRICES,
    optional_expert_vectors=EXP_PROBS_B,  # llama.cpp: TENSOR_NOT_REQUIRED (V2 files have none)
    fixed=dict(n_head_kv=1),  # one latent for all heads (the file may say 1 or n_head)
    derived=_derived,
    upgrade=split_kv_b,
)
