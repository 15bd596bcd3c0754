"""The test oracle: llama.cpp's forward passes in plain float64 numpy.

Architectures: llama (dense, or Mixtral-style with experts), gemma3, qwen2, qwen3 and
qwen3moe, each as llama.cpp's src/models/<arch>.cpp builds its graph, and the
mixture-of-experts FFN as llm_graph_context::build_moe_ffn (softmax or sigmoid gating,
selection bias, expert groups). deepseek2 and glm4moe are in reference_mla.

Written for obviousness, not speed: every weight is dequantized to float32 with
gguf-py (an implementation independent of the engine's kernels) and every step is
the textbook formula. It is checked against logits recorded from llama.cpp in
tests/test_reference_forward.py; the engine's fast forward pass is checked against it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
from gguf import GGUFReader, quants
from reference_argsort import argsort_desc
from threadpoolctl import threadpool_limits

ARCHITECTURES = ("llama", "gemma3", "qwen2", "qwen3", "qwen3moe", "deepseek2", "glm4moe")
NEOX_ROPE = frozenset({"gemma3", "qwen2", "qwen3", "qwen3moe"})  # llama_model_rope_type: LLAMA_ROPE_TYPE_NEOX
QK_NORM = frozenset({"gemma3", "qwen3", "qwen3moe"})  # per-head RMS norm of Q and K before RoPE
# Smallest normal float16: build_moe_ffn clamps the routing weights' sum to it before dividing.
MOE_WEIGHTS_SUM_MIN = 6.103515625e-5
# Gemma 3 constants llama.cpp hard-codes rather than reads (llama_load_hparams_gemma3):
GEMMA3_SWA_PATTERN = 6  # every 6th layer attends globally, the others in a sliding window
GEMMA3_SWA_ROPE_BASE = 10000.0  # sliding-window layers' RoPE base; global ones use the file's


@dataclass(frozen=True)
class ModelWeights:
    """Hyperparameters and dequantized float32 weights, [out, in] like the GGUF rows."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    rms_eps: float
    sliding_window: int  # 0: every layer attends to the whole past
    final_logit_softcap: float  # 0: none
    n_expert: int  # 0: dense FFN
    n_expert_used: int
    tensors: dict[str, np.ndarray]
    # build_moe_ffn's arguments: llama and qwen3moe hard-code softmax and renormalisation.
    expert_gating: str = "softmax"  # or "sigmoid"
    expert_weights_norm: bool = True
    expert_weights_scale: float = 0.0  # 0: none
    n_expert_groups: int = 0  # 0 or 1: no group-limited routing
    n_group_used: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # every "<arch>.*" key, prefix dropped

    def w(self, name: str) -> np.ndarray:
        return self.tensors[name + ".weight"]

    def bias(self, name: str) -> np.ndarray | None:
        return self.tensors.get(name + ".bias")


def load_weights(path: str | os.PathLike[str]) -> ModelWeights:
    """Read and dequantize a GGUF once per process (keyed by path, size and mtime)."""
    st = os.stat(path)
    return _load(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)  # float32 copies: SmolLM2 0.5 GB, Gemma 3 270M 1.1 GB
def _load(path: str, size: int, mtime_ns: int) -> ModelWeights:
    # size and mtime_ns only key the cache: a test that rewrites a file gets it re-read.
    reader = GGUFReader(path)
    fields = reader.fields
    arch = fields["general.architecture"].contents()
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: the reference implements {ARCHITECTURES}, not {arch!r}")

    def meta(key: str, default: float | None = None) -> float:
        if f"{arch}.{key}" in fields:
            return fields[f"{arch}.{key}"].contents()
        if default is None:
            raise ValueError(f"{path}: missing {arch}.{key}")
        return default

    n_embd, n_head = int(meta("embedding_length")), int(meta("attention.head_count"))
    head_dim = int(meta("attention.key_length", n_embd // n_head))
    own_moe = arch in ("deepseek2", "glm4moe")  # these read build_moe_ffn's arguments from the file
    gating = int(meta("expert_gating_func", 2 if arch == "glm4moe" else 1))
    return ModelWeights(
        arch=arch,
        # NextN (multi-token prediction) layers follow the trunk's; a forward pass skips them.
        n_layer=int(meta("block_count")) - int(meta("nextn_predict_layers", 0)),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(meta("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_rot=int(meta("rope.dimension_count", head_dim)),
        rope_base=float(meta("rope.freq_base", 10000.0)),
        rms_eps=float(meta("attention.layer_norm_rms_epsilon")),
        sliding_window=int(meta("attention.sliding_window", 0)),
        final_logit_softcap=float(meta("final_logit_softcapping", 0.0)),
        n_expert=int(meta("expert_count", 0)),
        n_expert_used=int(meta("expert_used_count", 0)),
        tensors={t.name: quants.dequantize(t.data, t.tensor_type) for t in reader.tensors},
        expert_gating={1: "softmax", 2: "sigmoid"}[gating],
        expert_weights_norm=bool(meta("expert_weights_norm", 0)) if own_moe else True,
        expert_weights_scale=float(meta("expert_weights_scale", 0.0)) if own_moe else 0.0,
        n_expert_groups=int(meta("expert_group_count", 0)),
        n_group_used=int(meta("expert_group_used_count", 0)),
        meta={k[len(arch) + 1:]: fields[k].contents() for k in fields if k.startswith(f"{arch}.")},
    )


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


@dataclass(frozen=True)
class Yarn:
    """YaRN RoPE scaling as ggml's rope_yarn takes it (ext_factor 1, beta_fast 32, beta_slow 1:
    llama.cpp's defaults for a file whose rope.scaling.type is "yarn")."""

    factor: float  # rope.scaling.factor: freq_scale is its inverse
    n_ctx_orig: int  # rope.scaling.original_context_length
    attn_factor: float  # llama_context's yarn_attn_factor
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    def corr_dims(self, n_rot: int, base: float) -> tuple[float, float]:
        """ggml_rope_yarn_corr_dims: the pairs below low keep their frequency, above high interpolate."""
        def dim(beta: float) -> float:
            return n_rot * np.log(self.n_ctx_orig / (beta * 2 * np.pi)) / (2 * np.log(base))
        return max(0.0, np.floor(dim(self.beta_fast))), min(n_rot - 1.0, np.ceil(dim(self.beta_slow)))


def rope(x: np.ndarray, positions: np.ndarray, n_rot: int, base: float, neox: bool,
         yarn: Yarn | None = None) -> np.ndarray:
    """Rotary embedding on x [tokens, heads, head_dim] as llama.cpp's ggml_rope_ext.

    Pair i (0 <= i < n_rot/2) turns by angle pos * base^(-2i/n_rot). "Normal" mode
    (llama) pairs x[2i] with x[2i+1]; NEOX mode (gemma3) pairs x[i] with x[i + n_rot/2].
    Dimensions past n_rot pass through. With yarn, each pair's angle mixes the
    interpolated (angle / factor) and the original by ggml's ramp over the pairs, and
    the rotation scales by attn_factor * (1 + 0.1 ln factor) (rope_yarn).
    """
    theta = positions[:, None] * base ** (-np.arange(0, n_rot, 2) / n_rot)  # [tokens, n_rot/2]
    mag = 1.0
    if yarn is not None:
        low, high = yarn.corr_dims(n_rot, base)
        extrap = 1 - np.clip((np.arange(n_rot // 2) - low) / max(0.001, high - low), 0, 1)
        theta = theta / yarn.factor * (1 - extrap) + theta * extrap
        mag = yarn.attn_factor * (1 + 0.1 * np.log(yarn.factor))
    cos, sin = mag * np.cos(theta)[:, None, :], mag * np.sin(theta)[:, None, :]
    first, second = (np.s_[..., : n_rot // 2], np.s_[..., n_rot // 2 : n_rot]) if neox else (
        np.s_[..., 0:n_rot:2], np.s_[..., 1:n_rot:2])
    out = x.copy()
    out[first] = x[first] * cos - x[second] * sin
    out[second] = x[first] * sin + x[second] * cos
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, window: int) -> np.ndarray:
    """Grouped-query causal attention: q [T, n_head, d], k/v [T, n_head_kv, d] -> [T, n_head*d].

    Query head h reads kv head h // (n_head / n_head_kv), as ggml's broadcast does.
    With window > 0, position p sees only keys at p - window < key <= p.
    """
    n_tok, n_head, _ = q.shape
    group = n_head // k.shape[1]
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) * scale
    pos = np.arange(n_tok)
    hidden = pos[None, :] > pos[:, None]  # [query, key]: the future
    if window:
        hidden |= pos[:, None] - pos[None, :] >= window
    scores[:, hidden] = -np.inf
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", probs, v).reshape(n_tok, -1)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation, the one ggml_gelu computes."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_groups(scores: np.ndarray, n_groups: int, n_used: int) -> np.ndarray:
    """scores [n_expert] with all but the n_used best of n_groups equal groups set to -inf;
    a group's score is the sum of its two best (build_moe_ffn, as DeepSeek V3's router)."""
    groups = scores.reshape(n_groups, -1)
    best2 = [sum(g[argsort_desc(g.tolist())[:2]]) for g in groups]
    out = np.full_like(groups, -np.inf)
    kept = argsort_desc(best2)[:n_used]
    out[kept] = groups[kept]
    return out.reshape(-1)


def route(logits: np.ndarray, n_used: int, norm_w: bool = True, scale: float = 0.0,
          forced: list[list[int] | None] | None = None, gating: str = "softmax",
          bias: np.ndarray | None = None, groups: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Experts [T, n_used] and their weights [T, n_used] per token, as build_moe_ffn.

    Softmax (or sigmoid) over all experts; the selection scores add bias (exp_probs_b)
    and, with groups = (n_groups > 1, n_used_groups), keep only the best groups'
    experts (top_groups); the n_used best scores in ggml_argsort_top_k's order (ties as
    std::sort leaves them: see reference_argsort) are chosen, their unbiased
    probabilities the weights, divided by their sum (clamped below at
    MOE_WEIGHTS_SUM_MIN) when norm_w, times scale unless scale is 0 or 1 (llama.cpp's
    "not set"). forced[t], where given, replaces token t's choice (to follow llama.cpp's
    recorded routing).
    """
    probs = softmax(logits) if gating == "softmax" else 1.0 / (1.0 + np.exp(-logits))
    scores = probs if bias is None else probs + bias
    if groups[0] > 1:
        scores = np.stack([top_groups(row, *groups) for row in scores])
    selected = np.array([argsort_desc(row.tolist())[:n_used] if forced is None or forced[t] is None
                         else forced[t] for t, row in enumerate(scores)], dtype=np.int64)
    weights = np.take_along_axis(probs, selected, axis=1)
    if norm_w:
        weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), MOE_WEIGHTS_SUM_MIN)
    if scale not in (0.0, 1.0):
        weights = weights * scale
    return selected, weights


def moe_ffn(m: ModelWeights, blk: str, h: np.ndarray, router_logits: list[np.ndarray] | None = None,
            forced: list[list[int] | None] | None = None) -> np.ndarray:
    """The experts' SwiGLU FFNs on h [T, n_embd], mixed by the router's weights.

    Gating, renormalisation and scale are the model's (llama and qwen3moe: softmax,
    renormalised, no scale); exp_probs_b, where the layer has it, biases the choice. A
    llama file may leave out ffn_gate_exps (llama.cpp: TENSOR_NOT_REQUIRED); the FFN is
    then silu(up).
    """
    logits = _linear(h, m.w(f"{blk}.ffn_gate_inp"))
    if router_logits is not None:
        router_logits.append(logits)
    selected, weights = route(logits, m.n_expert_used, m.expert_weights_norm, m.expert_weights_scale, forced,
                              m.expert_gating, m.tensors.get(f"{blk}.exp_probs_b.bias"),
                              (m.n_expert_groups, m.n_group_used))
    gate = m.tensors.get(f"{blk}.ffn_gate_exps.weight")
    up, down = m.w(f"{blk}.ffn_up_exps"), m.w(f"{blk}.ffn_down_exps")
    out = np.zeros_like(h)
    for e in np.unique(selected):
        tok, slot = np.nonzero(selected == e)
        x = h[tok]
        u = _linear(x, up[e])
        act = silu(u) if gate is None else silu(_linear(x, gate[e])) * u
        out[tok] += weights[tok, slot][:, None] * _linear(act, down[e])
    return out


def reference_logits(path: str | os.PathLike[str], token_ids: list[int] | np.ndarray,
                     router_logits: list[np.ndarray] | None = None,
                     experts: list[list[list[int] | None]] | None = None) -> np.ndarray:
    """Logits [n_tokens, n_vocab] (float32) at every position of token_ids, from an empty context.

    Given a list, router_logits receives each MoE layer's router logits [n_tokens, n_expert].
    experts[position][layer], where not None, is the routing to use instead of the own
    (llama.cpp's, recorded in a fixture)."""
    m = load_weights(path)
    ids = np.asarray(token_ids, dtype=np.int64)
    n_vocab = len(m.w("token_embd"))
    if ids.ndim != 1 or not len(ids) or ids.min() < 0 or ids.max() >= n_vocab:
        raise ValueError(f"token ids must be a non-empty list within 0..{n_vocab - 1}")
    # These skinny matmuls are memory-bound; multi-threaded OpenBLAS on a shared,
    # busy 2-core machine measured 10-20x slower than one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        return _forward(m, ids, router_logits, experts)


def _linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T in float64, converting w a slab at a time (Gemma's embedding is 1.3 GB as float64)."""
    rows = 32768
    return np.concatenate([x @ w[i : i + rows].astype(np.float64).T for i in range(0, len(w), rows)], axis=-1)


def _projection(m: ModelWeights, name: str, x: np.ndarray) -> np.ndarray:
    """x @ W.T, plus the bias where the file has one (llama.cpp adds Q/K/V biases, which
    Qwen 2 has, and qwen2's optional output.bias wherever present)."""
    bias = m.bias(name)
    out = _linear(x, m.w(name))
    return out if bias is None else out + bias


def _forward(m: ModelWeights, ids: np.ndarray, router_logits: list[np.ndarray] | None,
             experts: list[list[list[int] | None]] | None) -> np.ndarray:
    if m.arch in ("deepseek2", "glm4moe"):
        import reference_mla  # it builds on this module
        return reference_mla.forward(m, ids, router_logits, experts)
    gemma = m.arch == "gemma3"
    neox = m.arch in NEOX_ROPE
    n_tok = len(ids)
    positions = np.arange(n_tok, dtype=np.float64)

    x = m.w("token_embd")[ids].astype(np.float64)
    if gemma:
        x *= np.sqrt(m.n_embd)
    for i in range(m.n_layer):
        blk = f"blk.{i}"
        h = rms_norm(x, m.w(f"{blk}.attn_norm"), m.rms_eps)
        q = _projection(m, f"{blk}.attn_q", h).reshape(n_tok, m.n_head, m.head_dim)
        k = _projection(m, f"{blk}.attn_k", h).reshape(n_tok, m.n_head_kv, m.head_dim)
        v = _projection(m, f"{blk}.attn_v", h).reshape(n_tok, m.n_head_kv, -1)
        if m.arch in QK_NORM:
            # Gemma 3 and Qwen 3 normalise each head's query and key before RoPE.
            q = rms_norm(q, m.w(f"{blk}.attn_q_norm"), m.rms_eps)
            k = rms_norm(k, m.w(f"{blk}.attn_k_norm"), m.rms_eps)
        if gemma:
            # Only (i+1) % 6 == 0 layers are global, the rest slide with RoPE base 10000.
            is_global = (i + 1) % GEMMA3_SWA_PATTERN == 0 or not m.sliding_window
            base, window = (m.rope_base, 0) if is_global else (GEMMA3_SWA_ROPE_BASE, m.sliding_window)
        else:
            base, window = m.rope_base, 0
        q = rope(q, positions, m.n_rot, base, neox=neox)
        k = rope(k, positions, m.n_rot, base, neox=neox)
        # 1/sqrt(head_dim) for both (llama.cpp scales Gemma 3 27B differently; not supported here).
        out = _linear(attention(q, k, v, 1.0 / np.sqrt(m.head_dim), window), m.w(f"{blk}.attn_output"))
        if gemma:
            out = rms_norm(out, m.w(f"{blk}.post_attention_norm"), m.rms_eps)
        x = x + out

        h = rms_norm(x, m.w(f"{blk}.ffn_norm"), m.rms_eps)
        if f"{blk}.ffn_gate_inp.weight" in m.tensors:  # llama.cpp's test for a MoE layer
            out = moe_ffn(m, blk, h, router_logits, None if experts is None else [pos[i] for pos in experts])
        else:
            act = gelu_tanh if gemma else silu
            out = _linear(act(_linear(h, m.w(f"{blk}.ffn_gate"))) * _linear(h, m.w(f"{blk}.ffn_up")),
                          m.w(f"{blk}.ffn_down"))
        if gemma:
            out = rms_norm(out, m.w(f"{blk}.post_ffw_norm"), m.rms_eps)
        x = x + out

    x = rms_norm(x, m.w("output_norm"), m.rms_eps)
    # Without output.weight the model ties its output projection to the embedding.
    logits = _projection(m, "output" if "output.weight" in m.tensors else "token_embd", x)
    if m.final_logit_softcap:
        logits = m.final_logit_softcap * np.tanh(logits / m.final_logit_softcap)
    return logits.astype(np.float32)
