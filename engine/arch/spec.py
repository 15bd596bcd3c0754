"""What an architecture tells the generic decoder: hyperparameters and tensor names."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from numallm.errors import ModelFormatError

# Per-layer matrices, in the order of the decoder's weight table.
MATRICES = ("q", "k", "v", "o", "gate", "up", "down")
# Per-layer vectors (norm weights), in the order of the decoder's vector table.
VECTORS = ("attn_norm", "ffn_norm", "post_attn_norm", "post_ffn_norm", "q_norm", "k_norm")

# The GGUF names of those matrices in llama.cpp's llama-family files.
STANDARD_MATRICES = tuple(f"blk.{{}}.{n}.weight" for n in
                          ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"))

ACT_SILU = 0
ACT_GELU_TANH = 1


class HParams(NamedTuple):
    """Everything the decoder needs to know, in one record Numba can take as an argument."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float        # global layers
    rope_base_local: float  # sliding-window layers
    n_rot: int
    rope_neox: bool         # rotate (x[i], x[i + n_rot/2]) instead of adjacent pairs
    attn_scale: float
    embd_scale: float       # token embeddings are multiplied by this
    act: int                # ACT_SILU or ACT_GELU_TANH, gated FFN either way
    sliding_window: int     # 0: no sliding-window layers
    swa_period: int         # layer il is global when (il + 1) % swa_period == 0; 0: all global
    final_softcap: float    # 0: none


@dataclass(frozen=True)
class ArchSpec:
    name: str
    hparams: HParams
    # GGUF tensor names: matrices[m] and vectors[v] are format strings taking the layer.
    matrices: tuple[str, ...]
    vectors: tuple[str | None, ...]
    token_embd: str = "token_embd.weight"
    output: str = "output.weight"         # falls back to token_embd when absent (tied)
    output_norm: str = "output_norm.weight"


def standard_hparams(md: Mapping[str, Any], arch: str, path: str, rope_base: float,
                     rms_eps: float) -> dict[str, Any]:
    """The keys every architecture names alike (`<arch>.block_count`, ...), with defaults
    where llama.cpp has them; the architecture module adds or overrides the rest."""
    n_embd = int(get_key(md, f"{arch}.embedding_length", path))
    n_head = int(get_key(md, f"{arch}.attention.head_count", path))
    head_dim = int(md.get(f"{arch}.attention.key_length", n_embd // n_head))
    tokens = get_key(md, "tokenizer.ggml.tokens", path)
    base = float(get_key(md, f"{arch}.rope.freq_base", path, rope_base))
    return dict(
        n_layer=int(get_key(md, f"{arch}.block_count", path)),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(get_key(md, f"{arch}.attention.head_count_kv", path, n_head)),
        head_dim=head_dim,
        n_ff=int(get_key(md, f"{arch}.feed_forward_length", path)),
        n_vocab=int(md.get(f"{arch}.vocab_size", len(tokens))),
        n_ctx_train=int(get_key(md, f"{arch}.context_length", path, 2048)),
        rms_eps=float(get_key(md, f"{arch}.attention.layer_norm_rms_epsilon", path, rms_eps)),
        rope_base=base,
        rope_base_local=base,
        n_rot=int(get_key(md, f"{arch}.rope.dimension_count", path, head_dim)),
        attn_scale=1.0 / math.sqrt(head_dim),
        final_softcap=float(md.get(f"{arch}.final_logit_softcapping", 0.0)),
    )


def get_key(md: Mapping[str, Any], key: str, path: str, default: Any = None) -> Any:
    """A metadata value, its default, or a one-line error naming the missing key."""
    if key in md:
        return md[key]
    if default is not None:
        return default
    raise ModelFormatError(f"{path}: required key {key!r} is missing")
