"""MLA's two forms in the oracle agree: decompressed keys/values, the absorbed latent
(llama.cpp's graph), and a latent KV cache filled one token at a time, past 512 tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from reference_forward import load_weights, reference_logits
from reference_mla import forward, kq_scale, mla_attention, mla_parts

MLA_MODELS = ("tiny-deepseek-v3", "tiny-deepseek-v2-lite", "tiny-deepseek-v2-legacy")  # legacy: attn_kv_b


@pytest.mark.parametrize("name", MLA_MODELS)
def test_absorbed_equals_decompressed(name: str, fixture_model: Callable[[str], Path]) -> None:
    m = load_weights(fixture_model(name))
    ids = np.random.default_rng(1).integers(0, 320, 40)
    plain = forward(m, ids, None, None, absorbed=False)
    absorbed = reference_logits(fixture_model(name), ids)
    assert np.abs(plain - absorbed).max() < 1e-4
    assert np.abs(absorbed).max() > 1.0  # real logits, not zeros


def test_latent_cache_equals_full_attention(fixture_model: Callable[[str], Path]) -> None:
    """Token by token, each attending over the cached (latent, k_pe) rows only, equals the
    whole sequence's decompressed attention; 600 tokens crosses 512 (a typical ubatch)."""
    m = load_weights(fixture_model("tiny-deepseek-v3"))
    n, blk = 600, "blk.1"
    h = np.random.default_rng(2).standard_normal((n, m.n_embd))
    positions = np.arange(n, dtype=np.float64)
    full = mla_attention(m, blk, h, positions, absorbed=False)
    k_b, v_b = m.w(f"{blk}.attn_k_b"), m.w(f"{blk}.attn_v_b")
    cache = np.zeros((0, 1, int(m.meta["attention.key_length"])))
    rows = []
    for t in range(n):
        q_nope, q_pe, latent, k_pe = mla_parts(m, blk, h[t:t + 1], positions[t:t + 1])
        cache = np.concatenate([cache, np.concatenate([latent[:, None, :], k_pe], axis=-1)])
        q = np.concatenate([np.einsum("thn,hrn->thr", q_nope, k_b), q_pe], axis=-1)
        # One query row at the end of the cache: causal masking hides nothing.
        scores = np.einsum("hd,kd->hk", q[0], cache[:, 0]) * kq_scale(m)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        out = (probs / probs.sum(axis=-1, keepdims=True)) @ cache[:, 0, :latent.shape[1]]
        rows.append(np.einsum("hr,hvr->hv", out, v_b).reshape(-1))
    assert np.abs(np.stack(rows) - full).max() < 1e-9
    # Past 512 the oldest rows still count: the last token over only the newest 512 differs.
    scores = np.einsum("hd,kd->hk", q[0], cache[-512:, 0]) * kq_scale(m)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    out = (probs / probs.sum(axis=-1, keepdims=True)) @ cache[-512:, 0, :latent.shape[1]]
    assert np.abs(np.einsum("hr,hvr->hv", out, v_b).reshape(-1) - full[-1]).max() > 1e-4
