"""The qwen2 architecture (Qwen 2 and 2.5), as llama.cpp's qwen2 graph runs it.

llama's layer with biases on the Q, K and V projections and NeoX-style rotary
embeddings (llama_model_rope_type: LLAMA_ROPE_TYPE_NEOX).
"""

from __future__ import annotations

from gguf import MODEL_ARCH
from numallm.engine.arch.spec import (
    INT_KEYS,
    QKV_BIASES,
    STANDARD_MATRICES,
    STANDARD_VECTORS,
    Architecture,
    float_keys,
)

# llama.cpp's generic default for the RoPE base (llama-model.cpp); Qwen's own rms_eps.
DEFAULT_ROPE_BASE = 10000.0
DEFAULT_RMS_EPS = 1e-6

ARCH = Architecture(
    arch=MODEL_ARCH.QWEN2,
    keys=(*INT_KEYS, *float_keys(DEFAULT_ROPE_BASE, DEFAULT_RMS_EPS)),
    matrices=STANDARD_MATRICES,
    vectors=STANDARD_VECTORS,
    optional_vectors=QKV_BIASES,
    fixed=dict(rope_neox=True),
)
