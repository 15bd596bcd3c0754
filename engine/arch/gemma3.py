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

from numallm.engine.arch.spec import ACT_GELU_TANH, STANDARD_MATRICES, ArchSpec, HParams, standard_hparams

# Hard-coded in llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3) rather than in the file:
ROPE_BASE_LOCAL = 10000.0   # sliding-window layers' RoPE base
SWA_PERIOD = 6              # every 6th layer is global, the other five use the window
DEFAULT_ROPE_BASE = 1000000.0
DEFAULT_RMS_EPS = 1e-6
DEFAULT_SLIDING_WINDOW = 512


def describe(md: Mapping[str, Any], path: str) -> ArchSpec:
    base = standard_hparams(md, "gemma3", path, DEFAULT_ROPE_BASE, DEFAULT_RMS_EPS)
    base["rope_base_local"] = ROPE_BASE_LOCAL
    hp = HParams(**base, rope_neox=True, embd_scale=math.sqrt(base["n_embd"]), act=ACT_GELU_TANH,
                 sliding_window=int(md.get("gemma3.attention.sliding_window", DEFAULT_SLIDING_WINDOW)),
                 swa_period=SWA_PERIOD)
    return ArchSpec(
        name="gemma3",
        hparams=hp,
        matrices=STANDARD_MATRICES,
        vectors=("blk.{}.attn_norm.weight", "blk.{}.ffn_norm.weight",
                 "blk.{}.post_attention_norm.weight", "blk.{}.post_ffw_norm.weight",
                 "blk.{}.attn_q_norm.weight", "blk.{}.attn_k_norm.weight"),
    )
