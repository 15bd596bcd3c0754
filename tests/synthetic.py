"""Tiny, seeded GGUF models laid out exactly like llama.cpp's own, for fast tests.

write_tiny_llama() imitates SmolLM2-135M-Instruct's GGUF (or, with n_expert > 0,
Mixtral's mixture-of-experts layout) and write_tiny_gemma3() Gemma 3 270M's (same keys,
key types and tensor names) at a size where a forward pass costs milliseconds, with any
weight type the engine supports. Their vocabularies are real (see synthetic_vocab), so a
tokenizer can be built from them. synthetic_arch adds the Qwen family on the same parts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import TENSOR_NAMES, GGMLQuantizationType, GGUFWriter, LlamaFileType, quants
from gguf import MODEL_TENSOR as T
from iq_blocks import RANDOM_BLOCK_TYPES, scaled_like
from kquants import K_QUANT_TYPES, quantize_k
from synthetic_vocab import Vocab, gpt2_vocab, spm_vocab

Q = GGMLQuantizationType

SMOLLM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2
GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_FILE_TYPES = {
    Q.F32: LlamaFileType.ALL_F32, Q.F16: LlamaFileType.MOSTLY_F16, Q.BF16: LlamaFileType.MOSTLY_BF16,
    Q.Q4_0: LlamaFileType.MOSTLY_Q4_0, Q.Q4_1: LlamaFileType.MOSTLY_Q4_1,
    Q.Q5_0: LlamaFileType.MOSTLY_Q5_0, Q.Q5_1: LlamaFileType.MOSTLY_Q5_1,
    Q.Q8_0: LlamaFileType.MOSTLY_Q8_0, Q.Q4_K: LlamaFileType.MOSTLY_Q4_K_M,
    Q.Q5_K: LlamaFileType.MOSTLY_Q5_K_M, Q.Q6_K: LlamaFileType.MOSTLY_Q6_K,
    Q.IQ1_S: LlamaFileType.MOSTLY_IQ1_S, Q.IQ1_M: LlamaFileType.MOSTLY_IQ1_M,
    Q.IQ2_XXS: LlamaFileType.MOSTLY_IQ2_XXS, Q.IQ2_XS: LlamaFileType.MOSTLY_IQ2_XS,
    Q.IQ2_S: LlamaFileType.MOSTLY_IQ2_S, Q.IQ3_XXS: LlamaFileType.MOSTLY_IQ3_XXS,
    Q.IQ3_S: LlamaFileType.MOSTLY_IQ3_S, Q.IQ4_NL: LlamaFileType.MOSTLY_IQ4_NL,
    Q.IQ4_XS: LlamaFileType.MOSTLY_IQ4_XS, Q.TQ1_0: LlamaFileType.MOSTLY_TQ1_0,
    Q.TQ2_0: LlamaFileType.MOSTLY_TQ2_0, Q.MXFP4: LlamaFileType.MOSTLY_MXFP4_MOE,
}
SUPPORTED_TYPES = frozenset(_FILE_TYPES)


@dataclass(frozen=True)
class Shape:
    """The hyperparameters all architectures share (n_expert 0: a dense FFN)."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0  # each expert's FFN width


@dataclass(frozen=True)
class Layout:
    """Which optional tensors a layer has, beyond llama's."""

    gemma: bool = False  # q/k norms and post-attention/post-FFN norms
    qk_norm: bool = False  # per-head RMS norm weights on Q and K (Qwen 3)
    qkv_bias: bool = False  # biases on Q, K and V (Qwen 2)


def tensor_name(kind: T, bid: int | None = None, suffix: str = "weight") -> str:
    """gguf-py's name for a tensor, e.g. (FFN_GATE_EXP, 3) -> "blk.3.ffn_gate_exps.weight"."""
    return f"{TENSOR_NAMES[kind].format(bid=bid)}.{suffix}"


def _encode(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 [..., cols] -> what GGUFWriter.add_tensor takes with raw_dtype=qtype."""
    if qtype in K_QUANT_TYPES:
        rows = quantize_k(data.reshape(-1, data.shape[-1]), qtype)
        return rows.reshape(*data.shape[:-1], rows.shape[-1])
    if qtype in RANDOM_BLOCK_TYPES:  # no encoder: random blocks of the same spread
        rows = scaled_like(data.reshape(-1, data.shape[-1]), qtype)
        return rows.reshape(*data.shape[:-1], rows.shape[-1])
    return quants.quantize(data, qtype)


def _random_tensors(s: Shape, seed: int, layout: Layout, tied_output: bool,
                    routers: Mapping[int, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Random float32 weights scaled so activations stay O(1) through every layer.

    routers replaces the random router (ffn_gate_inp, [n_expert, n_embd]) of the given
    layers, so a test can craft ties or an expert that is never chosen.
    """
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        # Std gain/sqrt(cols): each output of x @ W.T keeps x's magnitude (times gain).
        return (rng.standard_normal((rows, cols)) * (gain / np.sqrt(cols))).astype(np.float32)

    def norm(n: int = s.n_embd, gain: float = 1.0) -> np.ndarray:
        # Around gain but not constant, so a forward pass that forgets the weight is caught.
        return (gain * (1.0 + 0.2 * rng.standard_normal(n))).astype(np.float32)

    # Embedding rows of norm ~2 give logits = norm(x) . e of std ~2: peaked enough for
    # a clear argmax, spread enough that top-k and sampling see many tokens.
    def experts(rows: int, cols: int) -> np.ndarray:
        return np.stack([matrix(rows, cols) for _ in range(s.n_expert)])

    unknown = set(routers or {}) - set(range(s.n_layer))
    if unknown or (routers and not s.n_expert):
        raise ValueError(f"routers names layers {sorted(routers or {})}; the model has {s.n_layer} layers "
                         f"and {s.n_expert} experts")
    tensors = {tensor_name(T.TOKEN_EMBD): matrix(s.n_vocab, s.n_embd, gain=2.0)}
    for i in range(s.n_layer):
        q, k, v = (s.n_head * s.head_dim, s.n_head_kv * s.head_dim, s.n_head_kv * s.head_dim)
        tensors |= {
            tensor_name(T.ATTN_NORM, i): norm(),
            tensor_name(T.ATTN_Q, i): matrix(q, s.n_embd),
            tensor_name(T.ATTN_K, i): matrix(k, s.n_embd),
            tensor_name(T.ATTN_V, i): matrix(v, s.n_embd),
            tensor_name(T.ATTN_OUT, i): matrix(s.n_embd, q),
            tensor_name(T.FFN_NORM, i): norm(),
        }
        if s.n_expert:
            router = matrix(s.n_expert, s.n_embd, gain=2.0)  # logits of std ~2: a clear choice
            tensors |= {
                tensor_name(T.FFN_GATE_INP, i): router if routers is None or i not in routers
                else np.asarray(routers[i], np.float32).reshape(router.shape),
                tensor_name(T.FFN_GATE_EXP, i): experts(s.n_ff_exp, s.n_embd),
                tensor_name(T.FFN_UP_EXP, i): experts(s.n_ff_exp, s.n_embd),
                tensor_name(T.FFN_DOWN_EXP, i): experts(s.n_embd, s.n_ff_exp),
            }
        else:
            tensors |= {
                tensor_name(T.FFN_GATE, i): matrix(s.n_ff, s.n_embd),
                tensor_name(T.FFN_UP, i): matrix(s.n_ff, s.n_embd),
                tensor_name(T.FFN_DOWN, i): matrix(s.n_embd, s.n_ff),
            }
        if layout.qkv_bias:
            # Qwen 2's biases are large (its K bias dominates some heads): well above noise.
            for kind, n in ((T.ATTN_Q, q), (T.ATTN_K, k), (T.ATTN_V, v)):
                tensors[tensor_name(kind, i, "bias")] = (0.5 * rng.standard_normal(n)).astype(np.float32)
        if layout.gemma or layout.qk_norm:
            tensors |= {
                tensor_name(T.ATTN_Q_NORM, i): norm(s.head_dim),
                tensor_name(T.ATTN_K_NORM, i): norm(s.head_dim),
            }
        if layout.gemma:
            tensors |= {
                # Gemma scales its input embedding by sqrt(n_embd); strong residual
                # writes keep the tied output from just predicting the current token.
                tensor_name(T.ATTN_POST_NORM, i): norm(gain=4.0),
                tensor_name(T.FFN_POST_NORM, i): norm(gain=4.0),
            }
    tensors[tensor_name(T.OUTPUT_NORM)] = norm()
    if not tied_output:
        tensors[tensor_name(T.OUTPUT)] = matrix(s.n_vocab, s.n_embd, gain=2.0)
    return tensors


def _kind(name: str) -> str:
    """A tensor's short name: "blk.0.ffn_up_exps.weight" -> "ffn_up_exps"."""
    return name.split(".")[-2]


def _write(
    path: str | os.PathLike[str],
    arch: str,
    s: Shape,
    tensors: dict[str, np.ndarray],
    weight_type: GGMLQuantizationType,
    embd_type: GGMLQuantizationType,
    type_overrides: Mapping[str, GGMLQuantizationType] | None,
    add_keys: Callable[[GGUFWriter], None],
) -> Path:
    """The GGUF every writer produces: shared keys, add_keys' extras, then the tensors."""
    kinds = {_kind(name) for name in tensors}
    unknown = set(type_overrides or {}) - kinds
    if unknown:
        raise ValueError(f"type_overrides names {sorted(unknown)}; this model's tensors are {sorted(kinds)}")
    types = {"token_embd": embd_type, "output": embd_type, **(type_overrides or {})}
    for qtype in {weight_type, *types.values()}:
        if qtype not in SUPPORTED_TYPES:
            raise ValueError(f"{qtype.name} is not one of {sorted(t.name for t in SUPPORTED_TYPES)}")
    writer = GGUFWriter(os.fspath(path), arch)
    writer.add_type("model")
    writer.add_name(f"tiny-{arch}-synthetic")
    writer.add_block_count(s.n_layer)
    writer.add_embedding_length(s.n_embd)
    writer.add_feed_forward_length(s.n_ff)
    writer.add_head_count(s.n_head)
    writer.add_head_count_kv(s.n_head_kv)
    if s.n_expert:
        writer.add_expert_count(s.n_expert)
        writer.add_expert_used_count(s.n_expert_used)
    add_keys(writer)
    writer.add_file_type(_FILE_TYPES[weight_type])
    writer.add_quantization_version(2)
    for name, data in tensors.items():
        kind = _kind(name)
        # 1-D tensors (norms, biases) and MoE routers stay F32 as llama.cpp's quantizer leaves them.
        kept = data.ndim == 1 or kind == "ffn_gate_inp"
        qtype = Q.F32 if kept else types.get(kind, weight_type)
        writer.add_tensor(name, _encode(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _add_vocab(writer: GGUFWriter, vocab: Vocab, model: str, pre: str, bos: int, eos: int, unk: int | None,
               pad: int, add_bos: bool) -> None:
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    if unk is not None:
        writer.add_unk_token_id(unk)
    writer.add_pad_token_id(pad)
    writer.add_add_bos_token(add_bos)
    writer.add_add_space_prefix(False)


def write_tiny_llama(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_vocab: int = 320,
    n_ctx: int = 256,
    weight_type: GGMLQuantizationType = Q.Q4_1,
    embd_type: GGMLQuantizationType = Q.Q8_0,
    tied_output: bool = True,
    type_overrides: Mapping[str, GGMLQuantizationType] | None = None,
    rope_freq_base: float = 10000.0,
    rms_eps: float = 1e-5,
    add_bos: bool = False,
    tokenizer_pre: str = "smollm",
    n_expert: int = 0,
    n_expert_used: int = 2,
    routers: Mapping[int, np.ndarray] | None = None,
    chat_template: str = CHATML_TEMPLATE,
    edit: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> Path:
    """Write a random llama-architecture GGUF shaped like SmolLM2's and return its path.

    With n_expert > 0 every layer's FFN is a Mixtral-style mixture of experts instead:
    llama.expert_count / expert_used_count, a router ffn_gate_inp (F32) and n_expert
    experts of width n_ff stacked in ffn_{gate,up,down}_exps; routers (layer -> an
    [n_expert, n_embd] matrix) replaces chosen layers' random routers. edit, if given,
    may drop or change tensors (by name) before they are written: a malformed file.

    weight_type applies to the layer matrices, embd_type to token_embd and (untied)
    output; type_overrides maps a tensor's short name ("ffn_down", "attn_v", "output",
    "token_embd", ...) to another type, as llama.cpp's mixed quantizations do. K-quant
    types need n_embd (and n_ff for ffn_down) to be a multiple of 256, as do the
    i-quants and TQ types but IQ4_NL; the types gguf-py cannot encode get random blocks
    with the float weights' spread (tests/iq_blocks.py). The vocabulary
    is GPT-2 byte-level BPE: <|endoftext|>, <|im_start|>, <|im_end|>, the 256 byte
    symbols, then merges up to n_vocab (259..490).
    """
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError(f"n_head={n_head} must divide n_embd={n_embd} and be a multiple of n_head_kv={n_head_kv}")
    s = Shape(n_layer, n_embd, n_head, n_head_kv, n_embd // n_head, n_ff, n_vocab, n_expert, n_expert_used, n_ff)
    vocab = gpt2_vocab(SMOLLM_SPECIALS, n_vocab)

    def keys(w: GGUFWriter) -> None:
        w.add_context_length(n_ctx)
        w.add_rope_freq_base(rope_freq_base)
        w.add_layer_norm_rms_eps(rms_eps)
        w.add_vocab_size(n_vocab)
        w.add_rope_dimension_count(s.head_dim)
        _add_vocab(w, vocab, "gpt2", tokenizer_pre, bos=1, eos=2, unk=0, pad=2, add_bos=add_bos)
        w.add_chat_template(chat_template)

    tensors = _random_tensors(s, seed, Layout(), tied_output, routers)
    if edit is not None:  # a malformed file for the loader's checks: drop or reshape tensors
        edit(tensors)
    return _write(path, "llama", s, tensors, weight_type, embd_type, type_overrides, keys)


def write_tiny_gemma3(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_layer: int = 6,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 1,
    head_dim: int = 32,
    n_ff: int = 128,
    n_vocab: int = 400,
    n_ctx: int = 256,
    sliding_window: int = 8,
    weight_type: GGMLQuantizationType = Q.Q5_0,
    embd_type: GGMLQuantizationType = Q.Q8_0,
    type_overrides: Mapping[str, GGMLQuantizationType] | None = None,
    rope_freq_base: float = 1_000_000.0,
    rms_eps: float = 1e-6,
) -> Path:
    """Write a random gemma3-architecture GGUF shaped like Gemma 3 270M's and return its path.

    Every 6th layer attends globally, the others within sliding_window tokens (llama.cpp's
    fixed Gemma 3 pattern), so n_layer=6 and a small window exercise both. head_dim is
    free of n_embd / n_head as in Gemma. Types as in write_tiny_llama (the output is
    always tied). The vocabulary is SentencePiece-style: <pad>, <eos>, <bos>, <unk>,
    <mask>, <start_of_turn>, <end_of_turn>, "\\n", 256 <0xNN> byte tokens, then pieces
    up to n_vocab (321..577).
    """
    if n_head % n_head_kv:
        raise ValueError(f"n_head={n_head} must be a multiple of n_head_kv={n_head_kv}")
    s = Shape(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab)
    vocab = spm_vocab(GEMMA_SPECIALS, ("\n",), n_vocab)

    def keys(w: GGUFWriter) -> None:
        w.add_context_length(n_ctx)
        w.add_layer_norm_rms_eps(rms_eps)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_freq_base(rope_freq_base)
        w.add_sliding_window(sliding_window)
        _add_vocab(w, vocab, "llama", "default", bos=2, eos=1, unk=3, pad=0, add_bos=True)
        w.add_add_eos_token(False)
        w.add_add_sep_token(False)

    tensors = _random_tensors(s, seed, Layout(gemma=True), True)
    return _write(path, "gemma3", s, tensors, weight_type, embd_type, type_overrides, keys)
