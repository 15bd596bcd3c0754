"""The llama architecture (SmolLM2, Llama 2/3, Mistral-style GGUFs).

RMSNorm, rotary embeddings in llama.cpp's "normal" mode (adjacent pairs: the GGUF
converter permuted Q and K for it), grouped-query attention, SwiGLU FFN, output
projection tied to token_embd when output.weight is absent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from numallm.engine.arch.spec import ACT_SILU, ArchSpec, HParams, get_key

# llama.cpp's defaults where a llama GGUF leaves a key out.
DEFAULT_ROPE_BASE = 10000.0
DEFAULT_RMS_EPS = 1e-5


def describe(md: Mapping[str, Any], path: str) -> ArchSpec:
    a = "llama"
    n_embd = int(get_key(md, f"{a}.embedding_length", path))
    n_head = int(get_key(md, f"{a}.attention.head_count", path))
    head_dim = n_embd // n_head
    tokens = get_key(md, "tokenizer.ggml.tokens", path)
    hp = HParams(
        n_layer=int(get_key(md, f"{a}.block_count", path)),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(get_key(md, f"{a}.attention.head_count_kv", path, n_head)),
        head_dim=head_dim,
        n_ff=int(get_key(md, f"{a}.feed_forward_length", path)),
        n_vocab=int(md.get(f"{a}.vocab_size", len(tokens))),
        n_ctx_train=int(get_key(md, f"{a}.context_length", path, 2048)),
        rms_eps=float(get_key(md, f"{a}.attention.layer_norm_rms_epsilon", path, DEFAULT_RMS_EPS)),
        rope_base=float(get_key(md, f"{a}.rope.freq_base", path, DEFAULT_ROPE_BASE)),
        rope_base_local=float(get_key(md, f"{a}.rope.freq_base", path, DEFAULT_ROPE_BASE)),
        n_rot=int(get_key(md, f"{a}.rope.dimension_count", path, head_dim)),
        rope_neox=False,
        attn_scale=1.0 / math.sqrt(head_dim),
        embd_scale=1.0,
        act=ACT_SILU,
        sliding_window=0,
        swa_period=0,
        final_softcap=0.0,
    )
    return ArchSpec(
        name=a,
        hparams=hp,
        matrices=tuple(f"blk.{{}}.{n}.weight" for n in
                       ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")),
        vectors=("blk.{}.attn_norm.weight", "blk.{}.ffn_norm.weight", None, None, None, None),
    )
