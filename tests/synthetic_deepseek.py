"""Tiny, seeded GGUFs of the DeepSeek family (deepseek2: V2-Lite, V3/R1, Kimi K2) and GLM 4.5 (glm4moe).

Keys, key types and tensor names are those llama.cpp's converter writes
(conversion/deepseek.py, conversion/glm.py), on synthetic's parts:

deepseek2: multi-head latent attention. Q is attn_q (V2-Lite, q_lora_rank 0) or
attn_q_a -> attn_q_a_norm -> attn_q_b (V3); attn_kv_a_mqa gives the kv_lora_rank latent
(normed by attn_kv_a_norm) and the shared RoPE key part; the latent is decompressed per
head by attn_k_b / attn_v_b (the split form newer files carry: llama.cpp loads only those
when key_length_mla is set; `legacy` writes the older attn_kv_b instead). head_count_kv is 1 (MLA is MQA on the latent), key_length
kv_lora_rank + rope dims, value_length kv_lora_rank. Leading dense layers, then experts
plus a shared expert; V3 routes by sigmoid + exp_probs_b bias within expert groups and
scales the weights; V2-Lite by softmax. YaRN RoPE scaling with yarn_log_multiplier as the
converter writes it (0.1 * mscale_all_dim).

glm4moe: grouped-query attention with Q/K/V biases, optional per-head Q/K norms,
NEOX RoPE on half of each head; post_attention_norm is the FFN's input norm; sigmoid
routing with exp_probs_b and a shared expert after leading dense layers; the NextN
(multi-token prediction) layers follow the trunk's in block_count and llama.cpp skips them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, RopeScalingType
from gguf import MODEL_TENSOR as T
from synthetic import CHATML_TEMPLATE, SMOLLM_SPECIALS, Q, Shape, _add_vocab, _write, tensor_name
from synthetic_vocab import gpt2_vocab


class _Init:
    """Seeded weights scaled as synthetic._random_tensors' (activations stay O(1))."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def matrix(self, rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal((rows, cols)) * (gain / np.sqrt(cols))).astype(np.float32)

    def stack(self, n: int, rows: int, cols: int) -> np.ndarray:
        return np.stack([self.matrix(rows, cols) for _ in range(n)])

    def norm(self, n: int, gain: float = 1.0) -> np.ndarray:
        return (gain * (1.0 + 0.2 * self.rng.standard_normal(n))).astype(np.float32)

    def vector(self, n: int, std: float) -> np.ndarray:
        return (std * self.rng.standard_normal(n)).astype(np.float32)


def _ffn(init: _Init, s: Shape, i: int, moe: bool, n_shared: int, probs_bias: bool) -> dict[str, np.ndarray]:
    """Layer i's FFN: dense SwiGLU, or routed experts plus the shared expert (ffn_*_shexp)."""
    if not moe:
        return {tensor_name(T.FFN_GATE, i): init.matrix(s.n_ff, s.n_embd),
                tensor_name(T.FFN_UP, i): init.matrix(s.n_ff, s.n_embd),
                tensor_name(T.FFN_DOWN, i): init.matrix(s.n_embd, s.n_ff)}
    n_sh = s.n_ff_exp * n_shared
    out = {
        tensor_name(T.FFN_GATE_INP, i): init.matrix(s.n_expert, s.n_embd, gain=2.0),
        tensor_name(T.FFN_GATE_EXP, i): init.stack(s.n_expert, s.n_ff_exp, s.n_embd),
        tensor_name(T.FFN_UP_EXP, i): init.stack(s.n_expert, s.n_ff_exp, s.n_embd),
        tensor_name(T.FFN_DOWN_EXP, i): init.stack(s.n_expert, s.n_embd, s.n_ff_exp),
        tensor_name(T.FFN_GATE_SHEXP, i): init.matrix(n_sh, s.n_embd),
        tensor_name(T.FFN_UP_SHEXP, i): init.matrix(n_sh, s.n_embd),
        tensor_name(T.FFN_DOWN_SHEXP, i): init.matrix(s.n_embd, n_sh),
    }
    if probs_bias:  # sigmoid scores are in (0, 1): a bias of std 0.2 reorders some choices
        out[tensor_name(T.FFN_EXP_PROBS_B, i, "bias")] = init.vector(s.n_expert, 0.2)
    return out


def write_tiny_deepseek2(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_layer: int = 3,
    n_embd: int = 64,
    n_head: int = 4,
    q_lora_rank: int = 32,
    kv_lora_rank: int = 32,
    qk_nope_head_dim: int = 32,
    qk_rope_head_dim: int = 16,
    v_head_dim: int = 32,
    n_ff: int = 128,
    n_vocab: int = 320,
    n_ctx: int = 2048,
    n_leading_dense: int = 1,
    n_expert: int = 16,
    n_expert_used: int = 4,
    n_ff_exp: int = 32,
    n_expert_shared: int = 1,
    n_expert_groups: int = 4,
    n_group_used: int = 2,
    sigmoid: bool = True,
    expert_weights_norm: bool = True,
    expert_weights_scale: float = 2.5,
    yarn_factor: float = 4.0,
    yarn_orig_ctx: int = 512,
    mscale_all_dim: float = 1.0,
    weight_type: GGMLQuantizationType = Q.Q8_0,
    embd_type: GGMLQuantizationType = Q.Q8_0,
    rope_freq_base: float = 10000.0,
    rms_eps: float = 1e-6,
    legacy: bool = False,
    type_overrides: Mapping[str, GGMLQuantizationType] | None = None,
) -> Path:
    """Write a random deepseek2 GGUF and return its path.

    Defaults are V3-like (q_lora_rank > 0, sigmoid routing with exp_probs_b in
    n_expert_groups groups of which n_group_used are kept, weights renormalised and
    scaled). q_lora_rank 0 gives V2-Lite's plain attn_q; the file then says
    q_lora_rank = 0, since llama.cpp requires the key unless the layer count is one of
    the real Lite models'. sigmoid False: softmax routing, no exp_probs_b and no
    expert_gating_func key (as V2 files, which llama.cpp reads as softmax).
    n_expert_groups 0 writes no group keys. yarn_factor 0 writes no RoPE scaling.
    legacy: the layout of conversions before attn_k_b / attn_v_b: one attn_kv_b per layer
    (the same weights), head_count_kv n_head, key_length and value_length the heads' sizes
    and no _mla keys. type_overrides: a type per tensor kind, as synthetic's writers take.
    """
    if n_expert_groups and (n_expert % n_expert_groups or not 0 < n_group_used <= n_expert_groups):
        raise ValueError(f"n_expert={n_expert} must split into n_expert_groups={n_expert_groups} "
                         f"of which n_group_used={n_group_used} are kept")
    k_mla = qk_nope_head_dim + qk_rope_head_dim
    s = Shape(n_layer, n_embd, n_head, n_head if legacy else 1, kv_lora_rank + qk_rope_head_dim, n_ff, n_vocab,
              n_expert, n_expert_used, n_ff_exp)
    init = _Init(seed)
    tensors = {tensor_name(T.TOKEN_EMBD): init.matrix(n_vocab, n_embd, gain=2.0)}
    for i in range(n_layer):
        tensors[tensor_name(T.ATTN_NORM, i)] = init.norm(n_embd)
        if q_lora_rank:
            tensors |= {tensor_name(T.ATTN_Q_A, i): init.matrix(q_lora_rank, n_embd),
                        tensor_name(T.ATTN_Q_A_NORM, i): init.norm(q_lora_rank),
                        tensor_name(T.ATTN_Q_B, i): init.matrix(n_head * k_mla, q_lora_rank)}
        else:
            tensors[tensor_name(T.ATTN_Q, i)] = init.matrix(n_head * k_mla, n_embd)
        # Head h's key rows [nope, kv_lora_rank] and value rows [v, kv_lora_rank] of kv_b_proj
        # (drawn in the order the fixtures' files were written in).
        k_b = init.stack(n_head, qk_nope_head_dim, kv_lora_rank)
        kv_a = {tensor_name(T.ATTN_KV_A_MQA, i): init.matrix(kv_lora_rank + qk_rope_head_dim, n_embd),
                tensor_name(T.ATTN_KV_A_NORM, i): init.norm(kv_lora_rank)}
        v_b = init.stack(n_head, v_head_dim, kv_lora_rank)
        if legacy:  # kv_b_proj whole: each head's key rows, then its value rows
            kv_b = {tensor_name(T.ATTN_KV_B, i): np.concatenate([k_b, v_b], axis=1).reshape(-1, kv_lora_rank)}
        else:  # attn_k_b is stored transposed ([n_head, kv_lora_rank, nope]): k_nope = latent @ k_b[h].
            kv_b = {tensor_name(T.ATTN_K_B, i): np.ascontiguousarray(k_b.transpose(0, 2, 1)),
                    tensor_name(T.ATTN_V_B, i): v_b}
        tensors |= kv_a | kv_b | {
            tensor_name(T.ATTN_OUT, i): init.matrix(n_embd, n_head * v_head_dim),
            tensor_name(T.FFN_NORM, i): init.norm(n_embd),
        }
        tensors |= _ffn(init, s, i, i >= n_leading_dense, n_expert_shared, sigmoid)
    tensors[tensor_name(T.OUTPUT_NORM)] = init.norm(n_embd)
    tensors[tensor_name(T.OUTPUT)] = init.matrix(n_vocab, n_embd, gain=2.0)
    vocab = gpt2_vocab(SMOLLM_SPECIALS, n_vocab)

    def keys(w: GGUFWriter) -> None:
        w.add_context_length(n_ctx)
        w.add_rope_freq_base(rope_freq_base)
        w.add_layer_norm_rms_eps(rms_eps)
        w.add_leading_dense_block_count(n_leading_dense)
        w.add_vocab_size(n_vocab)
        w.add_q_lora_rank(q_lora_rank)
        w.add_kv_lora_rank(kv_lora_rank)
        if legacy:  # the heads' sizes, as before the _mla keys
            w.add_key_length(k_mla)
            w.add_value_length(v_head_dim)
        else:
            w.add_key_length(kv_lora_rank + qk_rope_head_dim)
            w.add_value_length(kv_lora_rank)
            w.add_key_length_mla(k_mla)
            w.add_value_length_mla(v_head_dim)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_expert_shared_count(n_expert_shared)
        w.add_expert_weights_scale(expert_weights_scale)
        if expert_weights_norm:
            w.add_expert_weights_norm(True)
        if sigmoid:
            w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        if n_expert_groups:
            w.add_expert_group_count(n_expert_groups)
            w.add_expert_group_used_count(n_group_used)
        w.add_rope_dimension_count(qk_rope_head_dim)
        if yarn_factor:
            w.add_rope_scaling_type(RopeScalingType.YARN)
            w.add_rope_scaling_factor(yarn_factor)
            w.add_rope_scaling_orig_ctx_len(yarn_orig_ctx)
            w.add_rope_scaling_yarn_log_mul(0.1 * mscale_all_dim)
        _add_vocab(w, vocab, "gpt2", "deepseek-v3", bos=0, eos=2, unk=None, pad=0, add_bos=True)
        w.add_chat_template(CHATML_TEMPLATE)

    return _write(path, "deepseek2", s, tensors, weight_type, embd_type, type_overrides, keys)


def write_tiny_glm4moe(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_layer: int = 3,
    n_nextn: int = 1,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 32,
    qk_norm: bool = True,
    n_ff: int = 128,
    n_vocab: int = 320,
    n_ctx: int = 2048,
    n_leading_dense: int = 1,
    n_expert: int = 8,
    n_expert_used: int = 2,
    n_ff_exp: int = 32,
    n_expert_shared: int = 1,
    expert_weights_scale: float = 2.5,
    weight_type: GGMLQuantizationType = Q.Q8_0,
    embd_type: GGMLQuantizationType = Q.Q8_0,
    rope_freq_base: float = 1_000_000.0,
    rms_eps: float = 1e-5,
) -> Path:
    """Write a random glm4moe GGUF (GLM-4.5-like) and return its path.

    n_layer trunk layers then n_nextn NextN layers (block_count is their sum,
    nextn_predict_layers n_nextn): a full MoE layer plus nextn.eh_proj / enorm / hnorm /
    shared_head_norm, which a forward pass skips. RoPE covers head_dim / 2 (partial
    rotary factor 0.5). qk_norm False leaves out attn_q_norm / attn_k_norm (GLM-4.5-Air).
    """
    if n_head % n_head_kv:
        raise ValueError(f"n_head={n_head} must be a multiple of n_head_kv={n_head_kv}")
    n_all = n_layer + n_nextn
    s = Shape(n_all, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_expert, n_expert_used, n_ff_exp)
    init = _Init(seed)
    q, kv = n_head * head_dim, n_head_kv * head_dim
    tensors = {tensor_name(T.TOKEN_EMBD): init.matrix(n_vocab, n_embd, gain=2.0)}
    for i in range(n_all):
        tensors |= {
            tensor_name(T.ATTN_NORM, i): init.norm(n_embd),
            tensor_name(T.ATTN_Q, i): init.matrix(q, n_embd),
            tensor_name(T.ATTN_K, i): init.matrix(kv, n_embd),
            tensor_name(T.ATTN_V, i): init.matrix(kv, n_embd),
            tensor_name(T.ATTN_Q, i, "bias"): init.vector(q, 0.5),
            tensor_name(T.ATTN_K, i, "bias"): init.vector(kv, 0.5),
            tensor_name(T.ATTN_V, i, "bias"): init.vector(kv, 0.5),
            tensor_name(T.ATTN_OUT, i): init.matrix(n_embd, q),
            tensor_name(T.ATTN_POST_NORM, i): init.norm(n_embd),
        }
        if qk_norm:
            tensors |= {tensor_name(T.ATTN_Q_NORM, i): init.norm(head_dim),
                        tensor_name(T.ATTN_K_NORM, i): init.norm(head_dim)}
        tensors |= _ffn(init, s, i, i >= n_leading_dense, n_expert_shared, True)
        if i >= n_layer:
            tensors |= {tensor_name(T.NEXTN_EH_PROJ, i): init.matrix(n_embd, 2 * n_embd),
                        tensor_name(T.NEXTN_ENORM, i): init.norm(n_embd),
                        tensor_name(T.NEXTN_HNORM, i): init.norm(n_embd),
                        tensor_name(T.NEXTN_SHARED_HEAD_NORM, i): init.norm(n_embd)}
    tensors[tensor_name(T.OUTPUT_NORM)] = init.norm(n_embd)
    tensors[tensor_name(T.OUTPUT)] = init.matrix(n_vocab, n_embd, gain=2.0)
    vocab = gpt2_vocab(SMOLLM_SPECIALS, n_vocab)

    def keys(w: GGUFWriter) -> None:
        w.add_context_length(n_ctx)
        w.add_rope_freq_base(rope_freq_base)
        w.add_layer_norm_rms_eps(rms_eps)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim // 2)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_expert_shared_count(n_expert_shared)
        w.add_leading_dense_block_count(n_leading_dense)
        w.add_expert_weights_scale(expert_weights_scale)
        w.add_expert_weights_norm(True)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        if n_nextn:
            w.add_nextn_predict_layers(n_nextn)
        _add_vocab(w, vocab, "gpt2", "glm4", bos=0, eos=2, unk=None, pad=0, add_bos=False)
        w.add_chat_template(CHATML_TEMPLATE)

    return _write(path, "glm4moe", s, tensors, weight_type, embd_type, None, keys)


# The MLA / sigmoid-routed models llama.cpp's outputs are recorded for (as synthetic_arch.FIXTURE_MODELS).
DEEPSEEK_FIXTURE_MODELS: dict[str, Callable[[str | os.PathLike[str]], Path]] = {
    "tiny-deepseek-v3": functools.partial(write_tiny_deepseek2, n_ctx=2048),
    "tiny-deepseek-v2-lite": functools.partial(
        write_tiny_deepseek2, n_ctx=2048, q_lora_rank=0, sigmoid=False, n_expert=8, n_expert_groups=0,
        n_expert_used=2, expert_weights_norm=False, expert_weights_scale=1.0, mscale_all_dim=0.707),
    # tiny-deepseek-v2-lite's weights in the layout of conversions before attn_k_b / attn_v_b
    "tiny-deepseek-v2-legacy": functools.partial(
        write_tiny_deepseek2, n_ctx=2048, q_lora_rank=0, sigmoid=False, n_expert=8, n_expert_groups=0,
        n_expert_used=2, expert_weights_norm=False, expert_weights_scale=1.0, mscale_all_dim=0.707, legacy=True),
    "tiny-glm4moe": functools.partial(write_tiny_glm4moe, n_ctx=2048),
}
