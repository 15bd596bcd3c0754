"""The llama architecture (SmolLM2, Llama 2/3, Mistral-style GGUFs).

RMSNorm, rotary embeddings in llama.cpp's "normal" mode (adjacent pairs: the GGUF
converter permuted Q and K for it), grouped-query attention, SwiGLU FFN, output
projection tied to token_embd when output.weight is absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from numallm.engine.arch.spec import ACT_SILU, STANDARD_MATRICES, ArchSpec, HParams, standard_hparams

# llama.cpp's defaults where a llama GGUF leaves a key out.
DEFAULT_ROPE_BASE = 10000.0
DEFAULT_RMS_EPS = 1e-5


def describe(md: Mapping[str, Any], path: str) -> ArchSpec:
    hp = HParams(**standard_hparams(md, "llama", path, DEFAULT_ROPE_BASE, DEFAULT_RMS_EPS),
                 rope_neox=False, embd_scale=1.0, act=ACT_SILU, sliding_window=0, swa_period=0)
    return ArchSpec(
        name="llama",
        hparams=hp,
        matrices=STANDARD_MATRICES,
        vectors=("blk.{}.attn_norm.weight", "blk.{}.ffn_norm.weight", None, None, None, None),
    )
