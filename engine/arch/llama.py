"""The llama architecture (SmolLM2, Llama 2/3, Mistral-style GGUFs, Mixtral-style with experts).

RMSNorm, rotary embeddings in llama.cpp's "normal" mode (adjacent pairs: the GGUF
converter permuted Q and K for it), grouped-query attention, SwiGLU FFN, output
projection tied to token_embd when output.weight is absent, Q/K/V biases where the
file has them, and with expert_count > 0 a mixture-of-experts FFN of n_ff-wide experts:
the generic decoder's defaults, so this description only names its keys and tensors.
"""

from __future__ import annotations

from gguf import MODEL_ARCH
from numallm.engine.arch.spec import (
    EXPERT_KEYS,
    EXPERT_MATRICES,
    INT_KEYS,
    QKV_BIASES,
    STANDARD_MATRICES,
    STANDARD_VECTORS,
    Architecture,
    float_keys,
)

# llama.cpp's defaults where a llama GGUF leaves a key out.
DEFAULT_ROPE_BASE = 10000.0
DEFAULT_RMS_EPS = 1e-5

ARCH = Architecture(
    arch=MODEL_ARCH.LLAMA,
    keys=(*INT_KEYS, *EXPERT_KEYS, *float_keys(DEFAULT_ROPE_BASE, DEFAULT_RMS_EPS)),
    matrices=STANDARD_MATRICES,
    vectors=STANDARD_VECTORS,
    optional_vectors=QKV_BIASES,
    expert_matrices=EXPERT_MATRICES,
)
