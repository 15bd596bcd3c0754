"""The gemma3 architecture (Gemma 3 text models), as llama.cpp's gemma3 graph runs it.

Differences from llama: embeddings scaled by sqrt(n_embd); RMSNorm before and after
both attention and FFN; per-head RMSNorm on q and k; NeoX-style rotary embeddings;
GELU (tanh) gated FFN; sliding-window layers interleaved with global ones, each kind
with its own RoPE base; head_dim from the file (key_length), not n_embd / n_head.
The norm weights are used as stored: llama.cpp's converter already added Gemma's 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gguf import MODEL_ARCH, MODEL_TENSOR, Keys
from numallm.engine.arch.slots import LayerVector
from numallm.engine.arch.spec import (
    ACT_GELU_TANH,
    INT_KEYS,
    MAX_CONTEXT,
    STANDARD_MATRICES,
    Architecture,
    Key,
    float_keys,
)

# Hard-coded in llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3) rather than in the file:
ROPE_BASE_LOCAL = 10000.0   # sliding-window layers' RoPE base
SWA_PERIOD = 6              # every 6th layer is global, the other five use the window
DEFAULT_ROPE_BASE = 1000000.0
DEFAULT_RMS_EPS = 1e-6
DEFAULT_SLIDING_WINDOW = 512


def _derived(hp: Mapping[str, Any]) -> dict[str, Any]:
    return {"embd_scale": math.sqrt(hp["n_embd"])}


ARCH = Architecture(
    arch=MODEL_ARCH.GEMMA3,
    keys=(*INT_KEYS,
          Key(Keys.Attention.SLIDING_WINDOW, int, 1, MAX_CONTEXT, "sliding_window", DEFAULT_SLIDING_WINDOW),
          *float_keys(DEFAULT_ROPE_BASE, DEFAULT_RMS_EPS)),
    matrices=STANDARD_MATRICES,
    vectors={
        LayerVector.ATTN_NORM: MODEL_TENSOR.ATTN_NORM,
        LayerVector.FFN_NORM: MODEL_TENSOR.FFN_PRE_NORM,  # gguf's name for gemma's ffn_norm
        LayerVector.POST_ATTN_NORM: MODEL_TENSOR.ATTN_POST_NORM,
        LayerVector.POST_FFN_NORM: MODEL_TENSOR.FFN_POST_NORM,
        LayerVector.Q_NORM: MODEL_TENSOR.ATTN_Q_NORM,
        LayerVector.K_NORM: MODEL_TENSOR.ATTN_K_NORM,
    },
    fixed=dict(rope_neox=True, act=ACT_GELU_TANH, rope_base_local=ROPE_BASE_LOCAL, swa_period=SWA_PERIOD),
    derived=_derived,
)
