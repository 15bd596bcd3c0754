"""The qwen3moe architecture (Qwen 3 mixture-of-experts), as llama.cpp's qwen3moe graph runs it.

qwen3's attention (per-head q/k RMSNorm, NeoX RoPE, head_dim from key_length) and in
every layer a mixture-of-experts FFN: softmax router, expert_used_count of expert_count
experts of width expert_feed_forward_length, their weights renormalised to sum 1.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, Keys
from numallm.engine.arch.qwen2 import DEFAULT_RMS_EPS, DEFAULT_ROPE_BASE
from numallm.engine.arch.qwen3 import QK_NORMS
from numallm.engine.arch.spec import (
    ATTENTION_MATRICES,
    EXPERT_MATRICES,
    INT_KEYS,
    MAX_EXPERTS,
    MAX_FF,
    QKV_BIASES,
    STANDARD_VECTORS,
    Architecture,
    Key,
    float_keys,
)

ARCH = Architecture(
    arch=MODEL_ARCH.QWEN3MOE,
    keys=(*INT_KEYS,
          Key(Keys.LLM.EXPERT_COUNT, int, 1, MAX_EXPERTS, "n_expert", required=True),
          Key(Keys.LLM.EXPERT_USED_COUNT, int, 1, MAX_EXPERTS, "n_expert_used", required=True),
          Key(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, int, 1, MAX_FF, "n_ff_exp"),
          *float_keys(DEFAULT_ROPE_BASE, DEFAULT_RMS_EPS)),
    matrices=ATTENTION_MATRICES,
    vectors={**STANDARD_VECTORS, **QK_NORMS},
    optional_vectors=QKV_BIASES,
    expert_matrices=EXPERT_MATRICES,
    fixed=dict(rope_neox=True),
)
