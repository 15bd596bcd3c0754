"""Tiny, seeded GGUFs of the Qwen family (qwen2, qwen3, qwen3moe), on synthetic's parts.

Keys, key types and tensor names are those of the real Qwen2.5 / Qwen3 / Qwen3-MoE GGUFs
(convert_hf_to_gguf.py's output); the vocabulary is the synthetic GPT-2 BPE one with
Qwen's ChatML specials and `tokenizer.ggml.pre = "qwen2"`. The Mixtral-style llama with
experts is synthetic.write_tiny_llama(n_expert=...).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from synthetic import (CHATML_TEMPLATE, SMOLLM_SPECIALS, Layout, Q, Shape, _add_vocab, _random_tensors,
                       _write, write_tiny_llama)
from synthetic_deepseek import DEEPSEEK_FIXTURE_MODELS
from synthetic_vocab import gpt2_vocab

QWEN_ARCHS = ("qwen2", "qwen3", "qwen3moe")


def write_tiny_qwen(
    path: str | os.PathLike[str],
    arch: str,
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int | None = None,
    n_ff: int = 128,
    n_vocab: int = 320,
    n_ctx: int = 256,
    n_expert: int = 8,
    n_expert_used: int = 2,
    n_ff_exp: int = 32,
    routers: Mapping[int, np.ndarray] | None = None,
    weight_type: GGMLQuantizationType = Q.Q8_0,
    embd_type: GGMLQuantizationType = Q.Q8_0,
    tied_output: bool = True,
    type_overrides: Mapping[str, GGMLQuantizationType] | None = None,
    rope_freq_base: float = 1_000_000.0,
    rms_eps: float = 1e-6,
) -> Path:
    """Write a random qwen2, qwen3 or qwen3moe GGUF and return its path.

    qwen2: llama's layer plus biases on Q, K and V (head_dim is n_embd / n_head).
    qwen3, qwen3moe: per-head RMS norms on Q and K, head_dim free of n_embd / n_head
    (default 2 * n_embd / n_head, as Qwen3 0.6B's 128 x 16 heads for n_embd 1024) and
    written as attention.key_length / value_length. qwen3moe's FFN is n_expert experts
    of width n_ff_exp (expert_feed_forward_length), n_expert_used of them per token;
    n_ff is then only the metadata's dense width, as in the real files. routers maps
    a layer to a crafted [n_expert, n_embd] router. Types as in synthetic.write_tiny_llama
    (K-quants need n_embd, n_head * head_dim and n_ff or n_ff_exp multiples of 256).
    """
    if arch not in QWEN_ARCHS:
        raise ValueError(f"arch must be one of {QWEN_ARCHS}, got {arch!r}")
    qwen3 = arch != "qwen2"
    if head_dim is None:
        head_dim = 2 * n_embd // n_head if qwen3 else n_embd // n_head
    if n_head % n_head_kv or (not qwen3 and head_dim * n_head != n_embd):
        raise ValueError(f"n_head={n_head} must be a multiple of n_head_kv={n_head_kv}"
                         + ("" if qwen3 else f" and head_dim={head_dim} x n_head must be n_embd={n_embd}"))
    moe = arch == "qwen3moe"
    if moe and not 0 < n_expert_used <= n_expert:
        raise ValueError(f"n_expert_used={n_expert_used} must be within 1..n_expert={n_expert}")
    s = Shape(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab,
              *((n_expert, n_expert_used, n_ff_exp) if moe else (0, 0, 0)))
    vocab = gpt2_vocab(SMOLLM_SPECIALS, n_vocab)

    def keys(w: GGUFWriter) -> None:
        if moe:
            w.add_expert_feed_forward_length(n_ff_exp)
        w.add_context_length(n_ctx)
        w.add_rope_freq_base(rope_freq_base)
        w.add_layer_norm_rms_eps(rms_eps)
        if qwen3:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        # Qwen's own: <|endoftext|> is BOS and padding, <|im_end|> EOS, no BOS added.
        _add_vocab(w, vocab, "gpt2", "qwen2", bos=0, eos=2, unk=None, pad=0, add_bos=False)
        w.add_chat_template(CHATML_TEMPLATE)

    tensors = _random_tensors(s, seed, Layout(qk_norm=qwen3, qkv_bias=not qwen3), tied_output, routers)
    return _write(path, arch, s, tensors, weight_type, embd_type, type_overrides, keys)


def edge_case_router(n_embd: int, seed: int = 0) -> np.ndarray:
    """An 8-expert router whose top-2 choice meets llama.cpp's edge cases at many tokens.

    Rows: a, -a, b, -b, c, c, c, 0. Experts 4, 5 and 6 tie exactly, so whenever c is
    among the two best logits (about 40% of tokens) the sort's tie order decides:
    ggml's argsort keeps index order for 8 values, so expert 4 (and 5, when c is best)
    runs and expert 6 never does. Of each pair (a, -a), (b, -b) one logit is >= 0, so
    expert 7 (logit exactly 0) is never chosen either, except where those are within
    rounding of 0 (rare: a and b are large).
    """
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((3, n_embd)) / np.sqrt(n_embd)
    a, b, c = 4.0 * r[0], 4.0 * r[1], 6.0 * r[2]
    return np.stack([a, -a, b, -b, c, c, c, np.zeros(n_embd)]).astype(np.float32)


# The synthetic models llama.cpp's outputs are recorded for (tests/fixtures/llama_cpp/<name>.json,
# by scripts/record_llama_cpp_fixtures.py --synthetic): each architecture once, Q8_0 and
# K-quants (Q4_K_M-like: Q4_K with Q6_K embeddings and ffn_down), dense and MoE, each MoE
# with an edge-case router in one layer. n_ctx 2048 so llama.cpp runs them at the real
# models' context size.
FIXTURE_MODELS: dict[str, Callable[[str | os.PathLike[str]], Path]] = {
    "tiny-qwen2": functools.partial(write_tiny_qwen, arch="qwen2", n_ctx=2048),
    "tiny-qwen3": functools.partial(
        write_tiny_qwen, arch="qwen3", n_ctx=2048, n_embd=256, n_head=8, n_head_kv=2, head_dim=64, n_ff=512,
        weight_type=Q.Q4_K, embd_type=Q.Q6_K, type_overrides={"ffn_down": Q.Q6_K}),
    "tiny-qwen3moe": functools.partial(
        write_tiny_qwen, arch="qwen3moe", n_ctx=2048, n_layer=3, routers={1: edge_case_router(64)}),
    "tiny-llama-moe": functools.partial(
        write_tiny_llama, n_ctx=2048, n_embd=256, n_ff=256, n_expert=8, n_expert_used=2,
        routers={0: edge_case_router(256)}, weight_type=Q.Q4_K, embd_type=Q.Q6_K,
        type_overrides={"ffn_down_exps": Q.Q6_K}),
    **DEEPSEEK_FIXTURE_MODELS,
}


def describe(writer: Callable[..., Path]) -> str:
    """A FIXTURE_MODELS entry as the call it makes, for the fixtures' headers."""
    assert isinstance(writer, functools.partial)

    def spell(value: object) -> str:
        if isinstance(value, GGMLQuantizationType):
            return f"Q.{value.name}"
        if isinstance(value, np.ndarray):  # only crafted routers are arrays here
            return f"edge_case_router({value.shape[1]})"
        if isinstance(value, Mapping):
            return "{" + ", ".join(f"{k!r}: {spell(v)}" for k, v in value.items()) + "}"
        return repr(value)

    args = ", ".join(f"{k}={spell(v)}" for k, v in writer.keywords.items())
    return f"{writer.func.__name__}(path, {args})"
