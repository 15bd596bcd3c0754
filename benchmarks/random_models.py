"""Random-weight GGUF files with the shapes of real models, for speed measurements.

    python3 benchmarks/random_models.py llama-7b Q4_K_M            # write (or find) one file
    python3 benchmarks/random_models.py qwen3moe-a3b Q4_K --layers 2

A file's speed depends on its shapes and types, not on its values, so a benchmark of a
7B model does not need the 7B model: these files have a real model's hyperparameters,
tensor names and types (one type throughout, or llama.cpp's Q4_K_M mix), a real
vocabulary, and random quantized blocks whose fp16 scale fields are set to small
finite values, so that every engine computes finite numbers at the real cost.

Each shape is a small record (SHAPES); another benchmark adds its own. Files go to
~/.cache/numallm/bench-models/ (or $NUMALLM_CACHE/bench-models), are written through
gguf's GGUFWriter one tensor at a time (never the whole file in memory), named by
shape, layer count and type, moved into place only once complete, and reused when
present: the bytes are a function of the name (each tensor's generator is seeded by
its name).

The vocabulary is SmolLM2's (the default model's, fetched once): its byte-level BPE
tokens and merges, cut to the shape's vocabulary size (with the merges whose result
was cut dropped) or padded with unused "[PAD<n>]" tokens, as llama.cpp's converter
pads. Real tokens mean both engines' tokenizers load the file as they would a real
one, and text generated from it is printable.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, LlamaFileType, RopeScalingType, TokenType, quants

from numallm.engine.gguf_file import read_gguf
from numallm.engine.model_store import cache_dir as numallm_cache_dir
from numallm.engine.model_store import fetch_known_model
from numallm.progress import progress_bar

Q = GGMLQuantizationType


@dataclass(frozen=True)
class LatentAttention:
    """DeepSeek's multi-head latent attention (deepseek2): the shape's head_dim is a
    query/key head (its nope part, then rope_dim rotated values), n_head_kv is 1."""

    q_lora_rank: int   # 0: a plain attn_q (V2-Lite); else attn_q_a -> attn_q_a_norm -> attn_q_b
    kv_lora_rank: int  # the latent per token, decompressed per head by attn_k_b and attn_v_b
    rope_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class YaRN:
    """RoPE scaling keys as llama.cpp's converter writes them from a yarn rope_scaling."""

    factor: float
    orig_ctx: int
    log_mul: float = 0.0  # deepseek2's yarn_log_multiplier: 0.1 * mscale_all_dim
    beta_fast: float = 32.0
    beta_slow: float = 1.0


@dataclass(frozen=True)
class ModelShape:
    """A model's architecture and hyperparameters; n_expert > 0 makes the FFN a
    mixture of experts (llama.cpp's merged *_exps tensors, a router per layer) after
    n_dense_lead dense layers, with n_expert_shared shared experts beside them."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx: int = 4096
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    qk_norm: bool = False    # per-head RMS norms of q and k (Qwen3)
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_dense_lead: int = 0
    n_expert_shared: int = 0
    expert_weights_scale: float = 0.0  # written where > 0 (deepseek2's routed_scaling_factor)
    mla: LatentAttention | None = None
    yarn: YaRN | None = None


SHAPES: dict[str, ModelShape] = {
    # Llama 2 7B.
    "llama-7b": ModelShape("llama", n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, head_dim=128,
                           n_ff=11008, n_vocab=32000),
    # Qwen3-8B, whole (4.6 GB in Q4_0): the dense qwen3 beside llama-7b.
    "qwen3-8b": ModelShape("qwen3", n_layer=36, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128,
                           n_ff=12288, n_vocab=151936, n_ctx=40960, rope_base=1e6, rms_eps=1e-6, qk_norm=True),
    # Qwen3-30B-A3B with 16 of its 48 layers (about 6 GB in Q4_K, for a 24 GiB machine).
    "qwen3moe-a3b": ModelShape("qwen3moe", n_layer=16, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128,
                               n_ff=6144, n_vocab=151936, n_ctx=40960, rope_base=1e6, rms_eps=1e-6,
                               qk_norm=True, n_expert=128, n_expert_used=8, n_ff_exp=768),
    # DeepSeek-V2-Lite with 16 of its 27 layers (about 5.6 GB in Q4_K): its config's softmax
    # routing without renormalisation, YaRN (factor 40, mscale_all_dim 0.707).
    "deepseek2-lite": ModelShape("deepseek2", n_layer=16, n_embd=2048, n_head=16, n_head_kv=1, head_dim=192,
                                 n_ff=10944, n_vocab=102400, n_ctx=163840, rms_eps=1e-6, n_expert=64,
                                 n_expert_used=6, n_ff_exp=1408, n_dense_lead=1, n_expert_shared=2,
                                 expert_weights_scale=1.0,
                                 mla=LatentAttention(q_lora_rank=0, kv_lora_rank=512, rope_dim=64, v_head_dim=128),
                                 yarn=YaRN(factor=40.0, orig_ctx=4096, log_mul=0.1 * 0.707)),
}

# The mixes a file can have: one type for every matrix (llama-quantize --pure), or
# llama.cpp's Q4_K_M (see q4_k_m_type).
SINGLE_TYPES = {"Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1, "Q5_0": Q.Q5_0, "Q8_0": Q.Q8_0,
                "Q4_K": Q.Q4_K, "Q5_K": Q.Q5_K, "Q6_K": Q.Q6_K,
                # the 1-3-bit grid types and the ternary ones (issue 21); llama.cpp writes no
                # pure file of these (it keeps some matrices wider), the benchmark wants one type.
                **{t: Q[t] for t in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                                     "TQ1_0", "TQ2_0")}}
MIXES = (*SINGLE_TYPES, "Q4_K_M")
_FILE_TYPES = {"Q4_0": LlamaFileType.MOSTLY_Q4_0, "Q4_1": LlamaFileType.MOSTLY_Q4_1,
               "Q5_0": LlamaFileType.MOSTLY_Q5_0, "Q8_0": LlamaFileType.MOSTLY_Q8_0,
               # ggml has no file type for a pure K-quant: the nearest names.
               "Q4_K": LlamaFileType.MOSTLY_Q4_K_S, "Q5_K": LlamaFileType.MOSTLY_Q5_K_S,
               "Q6_K": LlamaFileType.MOSTLY_Q6_K, "Q4_K_M": LlamaFileType.MOSTLY_Q4_K_M,
               **{t: LlamaFileType[f"MOSTLY_{t}"] for t in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
                                                            "IQ3_XXS", "IQ3_S", "TQ1_0", "TQ2_0")}}

# Each block's fp16 scale fields (ggml's block structs): the byte offset of d (Q6_K keeps
# it last), and of the min where the type has one, with the min's value as a multiple
# of d that centres random quants on 0 (Q4_1: x = d q + m, q 0..15; the K-quants:
# x = d sc q - dmin mn, sc and mn alike random, q 0..15 or 0..31). The other types'
# quants are centred by the format (the grid types by their sign bits; TQ2_0's digit 3,
# +2, leaves its random values a mean of d / 2: harmless for speed). Weights of mean 0 keep the token in the output:
# with a common sign every product gave the same direction for any input.
_F16_FIELDS: dict[GGMLQuantizationType, tuple[int, tuple[int, float] | None]] = {
    Q.Q4_0: (0, None), Q.Q5_0: (0, None), Q.Q8_0: (0, None), Q.Q6_K: (208, None),
    Q.Q4_1: (0, (2, -7.5)), Q.Q5_1: (0, (2, -15.5)), Q.Q4_K: (0, (2, 7.5)), Q.Q5_K: (0, (2, 15.5)),
    **{t: (0, None) for t in (Q.IQ1_S, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S)},
    Q.TQ1_0: (52, None), Q.TQ2_0: (64, None),
}
# IQ1_M has no d field: its fp16 bits are the top nibbles of the 4 uint16 scales at byte 48.
_IQ1M_SCALES = 48

# llama.cpp's quantizer gives a matrix whose rows do not split into a K-quant's blocks of
# 256 a type of blocks of 32 (src/llama-quant.cpp, tensor_type_fallback): DeepSeek's
# attn_k_b rows of 128 and expert ffn_down rows of 1408 among them.
_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


def _set_scales(blocks: np.ndarray, qtype: GGMLQuantizationType, d: np.ndarray) -> None:
    """Write d (one per block) and the min it implies into blocks [n, block bytes]."""
    n = blocks.shape[0]
    if qtype == Q.IQ1_M:
        bits = d.astype(np.float16).view(np.uint16).astype(np.uint16)
        scales = blocks[:, _IQ1M_SCALES:_IQ1M_SCALES + 8].copy().view(np.uint16) & np.uint16(0x0FFF)
        for k in range(4):
            scales[:, k] |= ((bits >> np.uint16(4 * k)) & np.uint16(15)) << np.uint16(12)
        blocks[:, _IQ1M_SCALES:_IQ1M_SCALES + 8] = scales.view(np.uint8)
        return
    d_off, min_field = _F16_FIELDS[qtype]
    blocks[:, d_off:d_off + 2] = d.astype(np.float16).view(np.uint8).reshape(n, 2)
    if min_field is not None:
        off, factor = min_field
        blocks[:, off:off + 2] = (factor * d).astype(np.float16).view(np.uint8).reshape(n, 2)


def cache_dir() -> Path:
    """bench-models/ in numallm's cache (~/.cache/numallm, or $NUMALLM_CACHE): never the repository."""
    return numallm_cache_dir() / "bench-models"


def file_name(shape_name: str, mix: str, n_layer: int | None = None) -> str:
    full = SHAPES[shape_name].n_layer
    cut = f"-L{n_layer}" if n_layer is not None and n_layer != full else ""
    return f"{shape_name}{cut}-{mix}.random.gguf"


def q4_k_m_type(name: str, n_layer: int) -> GGMLQuantizationType:
    """The type llama.cpp's quantizer gives a matrix in a Q4_K_M file of a model without
    tied embeddings whose dimensions are multiples of 256 (src/llama-quant.cpp,
    llama_tensor_get_type_impl): output Q6_K; attn_v and ffn_down (the experts' too)
    Q6_K in the first and last eighth of the layers and every third layer between,
    the rest Q4_K. attn_v is counted per tensor, ffn_down per layer: the same layers."""
    if name == "output.weight":
        return Q.Q6_K
    if name.startswith("blk.") and (".attn_v." in name or ".ffn_down" in name):
        il = int(name.split(".")[1])
        more_bits = il < n_layer // 8 or il >= 7 * n_layer // 8 or (il - n_layer // 8) % 3 == 2
        return Q.Q6_K if more_bits else Q.Q4_K
    return Q.Q4_K


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]  # numpy order: (experts,) rows, cols
    quantized: bool         # a matrix in the file's mix; else F32 (norms, the MoE router)


def _attention(s: ModelShape, b: str) -> Iterator[_Tensor]:
    """Layer b's attention: grouped-query, or DeepSeek's latent attention."""
    q_dim = s.n_head * s.head_dim
    if s.mla is None:
        kv_dim = s.n_head_kv * s.head_dim
        yield _Tensor(f"{b}.attn_q.weight", (q_dim, s.n_embd), True)
        yield _Tensor(f"{b}.attn_k.weight", (kv_dim, s.n_embd), True)
        yield _Tensor(f"{b}.attn_v.weight", (kv_dim, s.n_embd), True)
        yield _Tensor(f"{b}.attn_output.weight", (s.n_embd, q_dim), True)
        return
    m = s.mla
    if m.q_lora_rank:
        yield _Tensor(f"{b}.attn_q_a.weight", (m.q_lora_rank, s.n_embd), True)
        yield _Tensor(f"{b}.attn_q_a_norm.weight", (m.q_lora_rank,), False)
        yield _Tensor(f"{b}.attn_q_b.weight", (q_dim, m.q_lora_rank), True)
    else:
        yield _Tensor(f"{b}.attn_q.weight", (q_dim, s.n_embd), True)
    yield _Tensor(f"{b}.attn_kv_a_mqa.weight", (m.kv_lora_rank + m.rope_dim, s.n_embd), True)
    yield _Tensor(f"{b}.attn_kv_a_norm.weight", (m.kv_lora_rank,), False)
    # The converter's split of kv_b: k_b transposed per head (rows of the nope width), v_b not.
    yield _Tensor(f"{b}.attn_k_b.weight", (s.n_head, m.kv_lora_rank, s.head_dim - m.rope_dim), True)
    yield _Tensor(f"{b}.attn_v_b.weight", (s.n_head, m.v_head_dim, m.kv_lora_rank), True)
    yield _Tensor(f"{b}.attn_output.weight", (s.n_embd, s.n_head * m.v_head_dim), True)


def _ffn(s: ModelShape, b: str, il: int) -> Iterator[_Tensor]:
    """Layer il's FFN: dense, or router, routed experts and the shared experts."""
    if not s.n_expert or il < s.n_dense_lead:
        yield _Tensor(f"{b}.ffn_gate.weight", (s.n_ff, s.n_embd), True)
        yield _Tensor(f"{b}.ffn_up.weight", (s.n_ff, s.n_embd), True)
        yield _Tensor(f"{b}.ffn_down.weight", (s.n_embd, s.n_ff), True)
        return
    yield _Tensor(f"{b}.ffn_gate_inp.weight", (s.n_expert, s.n_embd), False)
    yield _Tensor(f"{b}.ffn_gate_exps.weight", (s.n_expert, s.n_ff_exp, s.n_embd), True)
    yield _Tensor(f"{b}.ffn_up_exps.weight", (s.n_expert, s.n_ff_exp, s.n_embd), True)
    yield _Tensor(f"{b}.ffn_down_exps.weight", (s.n_expert, s.n_embd, s.n_ff_exp), True)
    if s.n_expert_shared:
        n_sh = s.n_expert_shared * s.n_ff_exp
        yield _Tensor(f"{b}.ffn_gate_shexp.weight", (n_sh, s.n_embd), True)
        yield _Tensor(f"{b}.ffn_up_shexp.weight", (n_sh, s.n_embd), True)
        yield _Tensor(f"{b}.ffn_down_shexp.weight", (s.n_embd, n_sh), True)


def _tensors(s: ModelShape) -> Iterator[_Tensor]:
    """Every tensor of the shape's architecture, llama.cpp's names and order."""
    yield _Tensor("token_embd.weight", (s.n_vocab, s.n_embd), True)
    for il in range(s.n_layer):
        b = f"blk.{il}"
        yield _Tensor(f"{b}.attn_norm.weight", (s.n_embd,), False)
        yield from _attention(s, b)
        if s.qk_norm:
            yield _Tensor(f"{b}.attn_q_norm.weight", (s.head_dim,), False)
            yield _Tensor(f"{b}.attn_k_norm.weight", (s.head_dim,), False)
        yield _Tensor(f"{b}.ffn_norm.weight", (s.n_embd,), False)
        yield from _ffn(s, b, il)
    yield _Tensor("output_norm.weight", (s.n_embd,), False)
    yield _Tensor("output.weight", (s.n_vocab, s.n_embd), True)


@cache
def _unit_rms(qtype: GGMLQuantizationType) -> float:
    """RMS of the values of random blocks of qtype with d = 1."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    blocks = np.random.default_rng(0).integers(0, 256, (256, ts), dtype=np.uint8)
    _set_scales(blocks, qtype, np.ones(256))
    values = quants.dequantize(blocks, qtype)
    return float(np.sqrt(np.mean(values.astype(np.float64) ** 2)))


def random_blocks(qtype: GGMLQuantizationType, shape: tuple[int, ...], rng: np.random.Generator,
                  value_rms: float | None = None) -> np.ndarray:
    """Random blocks of a [.., rows, cols] matrix of qtype, as bytes [.., rows, row bytes],
    with every fp16 scale field set (within a factor 2) for values of RMS value_rms,
    by default 1 / sqrt(cols): each output of a product with a unit-RMS vector then
    has an RMS about 1."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    *lead, cols = shape
    if cols % bs:
        raise ValueError(f"{qtype.name} needs rows of a multiple of {bs} values, not {cols}")
    n_blocks = math.prod(lead) * (cols // bs)
    data = np.frombuffer(rng.bytes(n_blocks * ts), np.uint8).reshape(n_blocks, ts).copy()
    scale = (value_rms if value_rms is not None else 1.0 / math.sqrt(cols)) / _unit_rms(qtype)
    _set_scales(data, qtype, scale * rng.uniform(0.5, 1.5, n_blocks))
    return data.reshape(*lead, cols // bs * ts)


def _random_f32(t: _Tensor, rng: np.random.Generator) -> np.ndarray:
    if len(t.shape) == 1:  # a norm's weight: around 1
        return (1.0 + 0.1 * rng.standard_normal(t.shape)).astype(np.float32)
    return (rng.standard_normal(t.shape) / math.sqrt(t.shape[-1])).astype(np.float32)


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    keys: dict[str, object]  # the other tokenizer.* keys (ids, flags, chat template)


def smollm2_vocabulary(n_vocab: int) -> Vocabulary:
    """SmolLM2's BPE vocabulary cut or padded to n_vocab tokens (see the module docstring)."""
    md = read_gguf(fetch_known_model("smollm2")).metadata
    tokens = list(md["tokenizer.ggml.tokens"])[:n_vocab]
    types = [int(t) for t in md["tokenizer.ggml.token_type"]][:n_vocab]
    kept = set(tokens)
    merges = [m for m in md["tokenizer.ggml.merges"] if m.replace(" ", "", 1) in kept]
    pad = n_vocab - len(tokens)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
    types += [int(TokenType.UNUSED)] * pad
    keys = {k: v for k, v in md.items() if k.startswith("tokenizer.")
            and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")}
    return Vocabulary(tokens, types, merges, keys)


def _add_header(w: GGUFWriter, s: ModelShape, mix: str, vocab: Vocabulary, name: str) -> None:
    w.add_type("model")
    w.add_name(name)
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_freq_base(s.rope_base)
    w.add_layer_norm_rms_eps(s.rms_eps)
    w.add_vocab_size(s.n_vocab)
    if s.mla is not None:
        m = s.mla
        # llama.cpp requires q_lora_rank unless the layer count is a real Lite model's: a cut needs it.
        w.add_q_lora_rank(m.q_lora_rank)
        w.add_kv_lora_rank(m.kv_lora_rank)
        w.add_key_length(m.kv_lora_rank + m.rope_dim)  # the latent cache's, as the converter writes
        w.add_value_length(m.kv_lora_rank)
        w.add_key_length_mla(s.head_dim)
        w.add_value_length_mla(m.v_head_dim)
        w.add_rope_dimension_count(m.rope_dim)
    elif s.head_dim * s.n_head == s.n_embd:
        w.add_rope_dimension_count(s.head_dim)
    else:
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    if s.yarn is not None:
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(s.yarn.factor)
        w.add_rope_scaling_orig_ctx_len(s.yarn.orig_ctx)
        w.add_rope_scaling_yarn_beta_fast(s.yarn.beta_fast)
        w.add_rope_scaling_yarn_beta_slow(s.yarn.beta_slow)
        if s.yarn.log_mul:
            w.add_rope_scaling_yarn_log_mul(s.yarn.log_mul)
    if s.n_expert:
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_feed_forward_length(s.n_ff_exp)
    if s.n_dense_lead:
        w.add_leading_dense_block_count(s.n_dense_lead)
    if s.n_expert_shared or s.mla is not None:  # deepseek2 requires the key
        w.add_expert_shared_count(s.n_expert_shared)
    if s.expert_weights_scale:
        w.add_expert_weights_scale(s.expert_weights_scale)
    w.add_file_type(_FILE_TYPES[mix])
    w.add_quantization_version(2)
    w.add_tokenizer_model(str(vocab.keys["tokenizer.ggml.model"]))
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    adders: dict[str, Callable[[object], None]] = {
        "tokenizer.ggml.pre": w.add_tokenizer_pre, "tokenizer.ggml.bos_token_id": w.add_bos_token_id,
        "tokenizer.ggml.eos_token_id": w.add_eos_token_id, "tokenizer.ggml.unknown_token_id": w.add_unk_token_id,
        "tokenizer.ggml.padding_token_id": w.add_pad_token_id, "tokenizer.ggml.add_bos_token": w.add_add_bos_token,
        "tokenizer.ggml.add_space_prefix": w.add_add_space_prefix, "tokenizer.chat_template": w.add_chat_template,
    }
    for key, value in vocab.keys.items():
        if key in adders:
            adders[key](value)


def _tensor_type(t: _Tensor, s: ModelShape, mix: str) -> GGMLQuantizationType:
    """The type of matrix t in a file of shape s and mix, with llama.cpp's fallback for rows
    that do not split into the mix's blocks."""
    qt = q4_k_m_type(t.name, s.n_layer) if mix == "Q4_K_M" else SINGLE_TYPES[mix]
    return _FALLBACK.get(qt, qt) if t.shape[-1] % GGML_QUANT_SIZES[qt][0] else qt


def tensor_bytes(s: ModelShape, mix: str) -> int:
    """Bytes of all tensors of a file of shape s and mix (the file is a little larger)."""
    total = 0
    for t in _tensors(s):
        if t.quantized:
            bs, ts = GGML_QUANT_SIZES[_tensor_type(t, s, mix)]
            total += math.prod(t.shape) // bs * ts
        else:
            total += 4 * math.prod(t.shape)
    return total


def write_model(path: Path, s: ModelShape, mix: str) -> None:
    """Write a random-weight GGUF of shape s and mix to path, tensor by tensor."""
    if mix not in MIXES:
        raise ValueError(f"{mix}: not one of {', '.join(MIXES)}")
    tensors = list(_tensors(s))
    w = GGUFWriter(os.fspath(path), s.arch)
    _add_header(w, s, mix, smollm2_vocabulary(s.n_vocab), f"random {s.arch} {s.n_layer} layers {mix}")
    for t in tensors:
        if t.quantized:
            qt = _tensor_type(t, s, mix)
            bs, ts = GGML_QUANT_SIZES[qt]
            byte_shape = (*t.shape[:-1], t.shape[-1] // bs * ts)
            w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=qt)
        else:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), 4 * math.prod(t.shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    bar = progress_bar(sum(ti.nbytes for ti in w.tensors[0].values()), f"writing {path.name}")
    for t in tensors:
        rng = np.random.default_rng(zlib.crc32(t.name.encode()))
        if t.quantized:
            # Embedding rows of RMS 1, as large as what each layer adds: the input token
            # then shows in the logits (at 1/sqrt(n_embd) every token gave the same).
            data = random_blocks(_tensor_type(t, s, mix), t.shape, rng, 1.0 if t.name == "token_embd.weight" else None)
        else:
            data = _random_f32(t, rng)
        w.write_tensor_data(data)
        bar.update(data.nbytes)
    bar.close()
    w.close()


def ensure_model(shape_name: str, mix: str, n_layer: int | None = None, directory: Path | None = None) -> Path:
    """The cached file of this shape (cut to n_layer layers) and mix, written first if absent."""
    if shape_name not in SHAPES:
        raise ValueError(f"{shape_name}: not one of {', '.join(SHAPES)}")
    shape = SHAPES[shape_name] if n_layer is None else replace(SHAPES[shape_name], n_layer=n_layer)
    target = (directory or cache_dir()) / file_name(shape_name, mix, n_layer)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    need, free = tensor_bytes(shape, mix), shutil.disk_usage(target.parent).free
    if need > free:
        raise OSError(f"{target.name} needs {need / 1e9:.1f} GB but {target.parent} has {free / 1e9:.1f} GB "
                      "free: delete files there or set NUMALLM_CACHE to a larger disk")
    partial = target.with_name(target.name + ".partial")
    try:
        write_model(partial, shape, mix)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("mix", choices=MIXES)
    ap.add_argument("--layers", type=int, help="cut the model to this many layers")
    args = ap.parse_args(argv)
    print(ensure_model(args.shape, args.mix, args.layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
