"""The oracle for deepseek2 (multi-head latent attention) and glm4moe, as llama.cpp's
src/models/deepseek2.cpp and glm4-moe.cpp build their graphs, on reference_forward's parts.

MLA has two equal forms: the plain one decompresses the latent into per-head keys and
values (k_nope = latent @ k_b[h], v = latent @ v_b[h].T) and runs ordinary attention;
the absorbed one (llama.cpp's, and what a latent KV cache stores) folds k_b into the
query and v_b after the attention, so only the normed latent and the shared RoPE key
are cached per token. tests/test_reference_mla.py checks they agree.
"""

from __future__ import annotations

import numpy as np
from reference_forward import ModelWeights, Yarn, _linear, _projection, attention, moe_ffn, rms_norm, rope, silu


def yarn(m: ModelWeights) -> Yarn | None:
    """llama_context's YaRN parameters for the file (None: no RoPE scaling).

    yarn_attn_factor = get_mscale(f, mscale) / get_mscale(f, mscale_all_dim) / (1 + 0.1 ln f),
    where mscale_all_dim is yarn_log_multiplier / 0.1 (the converter wrote 0.1 x it) and
    mscale is mscale_all_dim for deepseek2 unless that is 1, else 1.
    """
    if m.meta.get("rope.scaling.type") != "yarn":
        return None
    factor = float(m.meta["rope.scaling.factor"])

    def get_mscale(mscale: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * mscale * np.log(factor) + 1.0

    attn_factor = 1.0
    log_mul = float(m.meta.get("rope.scaling.yarn_log_multiplier", 0.0)) / 0.1
    if log_mul:
        mscale = log_mul if m.arch == "deepseek2" and log_mul != 1.0 else 1.0
        attn_factor = get_mscale(mscale) / get_mscale(log_mul)
    else:
        attn_factor = get_mscale(1.0)
    attn_factor /= 1.0 + 0.1 * np.log(factor)
    n_ctx_orig = int(m.meta.get("rope.scaling.original_context_length", m.meta["context_length"]))
    return Yarn(factor, n_ctx_orig, attn_factor)


def head_sizes(m: ModelWeights) -> tuple[int, int]:
    """(query/key head size, value head size): the _mla keys, or in a file from before them
    (one attn_kv_b per layer) key_length and value_length, as llama.cpp's n_embd_head_k_mla()."""
    if "attention.key_length_mla" in m.meta:
        return int(m.meta["attention.key_length_mla"]), int(m.meta["attention.value_length_mla"])
    return int(m.meta["attention.key_length"]), int(m.meta["attention.value_length"])


def k_b_v_b(m: ModelWeights, blk: str) -> tuple[np.ndarray, np.ndarray]:
    """attn_k_b [H, r, nope] and attn_v_b [H, v, r]; from a file's attn_kv_b [H * (nope + v), r]
    as the converter splits it (each head's key rows, transposed, then its value rows)."""
    if f"{blk}.attn_kv_b.weight" not in m.tensors:
        return m.w(f"{blk}.attn_k_b"), m.w(f"{blk}.attn_v_b")
    k_mla, v = head_sizes(m)
    nope = k_mla - int(m.meta["rope.dimension_count"])
    kv_b = m.w(f"{blk}.attn_kv_b").reshape(m.n_head, nope + v, -1)
    return kv_b[:, :nope].transpose(0, 2, 1), kv_b[:, nope:]


def kq_scale(m: ModelWeights) -> float:
    """deepseek2's attention scale: mscale^2 / sqrt(qk head size), mscale = the rope's
    magnitude (attn_factor_org) x (1 + 0.1 mscale_all_dim ln factor)."""
    k_mla = head_sizes(m)[0]
    y = yarn(m)
    if y is None:
        return 1.0 / np.sqrt(k_mla)
    log_mul = float(m.meta.get("rope.scaling.yarn_log_multiplier", 0.0)) / 0.1
    mscale = y.attn_factor * (1 + 0.1 * np.log(y.factor)) * (1 + 0.1 * log_mul * np.log(y.factor))
    return mscale * mscale / np.sqrt(k_mla)


def mla_parts(m: ModelWeights, blk: str, h: np.ndarray, positions: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(q_nope [T, H, nope], q_pe [T, H, rope], latent [T, r] normed, k_pe [T, 1, rope]), RoPE applied."""
    n_tok, r, n_rot = len(h), int(m.meta["attention.kv_lora_rank"]), int(m.meta["rope.dimension_count"])
    if f"{blk}.attn_q_a.weight" in m.tensors:
        q = _linear(rms_norm(_linear(h, m.w(f"{blk}.attn_q_a")), m.w(f"{blk}.attn_q_a_norm"), m.rms_eps),
                    m.w(f"{blk}.attn_q_b"))
    else:
        q = _linear(h, m.w(f"{blk}.attn_q"))
    q = q.reshape(n_tok, m.n_head, head_sizes(m)[0])
    kv = _linear(h, m.w(f"{blk}.attn_kv_a_mqa"))
    latent = rms_norm(kv[:, :r], m.w(f"{blk}.attn_kv_a_norm"), m.rms_eps)
    y = yarn(m)
    q_pe = rope(q[..., -n_rot:], positions, n_rot, m.rope_base, neox=False, yarn=y)
    k_pe = rope(kv[:, None, r:], positions, n_rot, m.rope_base, neox=False, yarn=y)
    return q[..., :-n_rot], q_pe, latent, k_pe


def mla_attention(m: ModelWeights, blk: str, h: np.ndarray, positions: np.ndarray, absorbed: bool) -> np.ndarray:
    """Causal MLA over h [T, n_embd] -> the heads' outputs [T, H * v_head_dim], before attn_output."""
    q_nope, q_pe, latent, k_pe = mla_parts(m, blk, h, positions)
    k_b, v_b = k_b_v_b(m, blk)  # [H, r, nope], [H, v, r]
    n_tok, scale = len(h), kq_scale(m)
    if absorbed:  # MQA on [latent, k_pe], the latent as V; v_b after
        q = np.concatenate([np.einsum("thn,hrn->thr", q_nope, k_b), q_pe], axis=-1)
        k = np.concatenate([latent[:, None, :], k_pe], axis=-1)
        out = attention(q, k, latent[:, None, :], scale, 0).reshape(n_tok, m.n_head, -1)
        return np.einsum("thr,hvr->thv", out, v_b).reshape(n_tok, -1)
    k_nope = np.einsum("tr,hrn->thn", latent, k_b)
    k = np.concatenate([k_nope, np.broadcast_to(k_pe, (*k_nope.shape[:2], k_pe.shape[-1]))], axis=-1)
    v = np.einsum("tr,hvr->thv", latent, v_b)
    return attention(np.concatenate([q_nope, q_pe], axis=-1), k, v, scale, 0)


def gqa_attention(m: ModelWeights, blk: str, h: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """glm4moe: biased Q/K/V, optional per-head Q/K RMS norms, NEOX RoPE on the first n_rot dims."""
    n_tok = len(h)
    q = _projection(m, f"{blk}.attn_q", h).reshape(n_tok, m.n_head, m.head_dim)
    k = _projection(m, f"{blk}.attn_k", h).reshape(n_tok, m.n_head_kv, m.head_dim)
    v = _projection(m, f"{blk}.attn_v", h).reshape(n_tok, m.n_head_kv, m.head_dim)
    if f"{blk}.attn_q_norm.weight" in m.tensors:
        q = rms_norm(q, m.w(f"{blk}.attn_q_norm"), m.rms_eps)
    if f"{blk}.attn_k_norm.weight" in m.tensors:
        k = rms_norm(k, m.w(f"{blk}.attn_k_norm"), m.rms_eps)
    q = rope(q, positions, m.n_rot, m.rope_base, neox=True)
    k = rope(k, positions, m.n_rot, m.rope_base, neox=True)
    return attention(q, k, v, 1.0 / np.sqrt(m.head_dim), 0)


def swiglu(m: ModelWeights, name: str, h: np.ndarray, suffix: str = "") -> np.ndarray:
    """down(silu(gate(h)) * up(h)) with the ffn_{gate,up,down}<suffix> weights."""
    return _linear(silu(_linear(h, m.w(f"{name}_gate{suffix}"))) * _linear(h, m.w(f"{name}_up{suffix}")),
                   m.w(f"{name}_down{suffix}"))


def forward(m: ModelWeights, ids: np.ndarray, router_logits: list[np.ndarray] | None,
            experts: list[list[list[int] | None]] | None, absorbed: bool = True) -> np.ndarray:
    """Logits [T, n_vocab] (float32); arguments as reference_forward.reference_logits'."""
    positions = np.arange(len(ids), dtype=np.float64)
    n_dense = int(m.meta.get("leading_dense_block_count", 0))
    x = m.w("token_embd")[ids].astype(np.float64)
    for i in range(m.n_layer):
        blk = f"blk.{i}"
        h = rms_norm(x, m.w(f"{blk}.attn_norm"), m.rms_eps)
        if m.arch == "deepseek2":
            out = mla_attention(m, blk, h, positions, absorbed)
        else:
            out = gqa_attention(m, blk, h, positions)
        x = x + _linear(out, m.w(f"{blk}.attn_output"))
        # glm4moe's FFN norm is post_attention_norm (the HF name), deepseek2's ffn_norm.
        h = rms_norm(x, m.w(f"{blk}.ffn_norm" if m.arch == "deepseek2" else f"{blk}.post_attention_norm"),
                     m.rms_eps)
        if i < n_dense:
            out = swiglu(m, f"{blk}.ffn", h)
        else:
            out = moe_ffn(m, blk, h, router_logits, None if experts is None else [pos[i] for pos in experts])
            out = out + swiglu(m, f"{blk}.ffn", h, "_shexp")
        x = x + out
    x = rms_norm(x, m.w("output_norm"), m.rms_eps)
    return _projection(m, "output" if "output.weight" in m.tensors else "token_embd", x).astype(np.float32)
