"""The reference's mixture-of-experts routing (build_moe_ffn) and the synthetic MoE/Qwen files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from reference_argsort import argsort_desc
from reference_forward import load_weights, moe_ffn, reference_logits, rms_norm, route, silu
from synthetic import Q, write_tiny_llama
from synthetic_arch import edge_case_router, write_tiny_qwen


def test_argsort_is_stable_up_to_16_values() -> None:
    # libstdc++'s std::sort is a plain insertion sort below 17 elements: ties keep index order.
    rng = np.random.default_rng(0)
    for n in range(1, 17):
        values = rng.integers(0, 3, n).astype(float).tolist()
        assert argsort_desc(values) == sorted(range(n), key=lambda i: (-values[i], i))


def test_argsort_ties_past_16_values_follow_std_sort() -> None:
    # Expected orders printed by a g++ 12 program calling std::sort(idx, idx + n,
    # [&](int a, int b) { return v[a] > v[b]; }), ggml-cpu's argsort; ties are not in index order.
    values = [1.0, 0.0] * 10
    assert argsort_desc(values) == [0, 2, 18, 4, 6, 16, 8, 10, 14, 12, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1]
    values = [3, 1, 3, 2, 1, 3, 2, 2, 1, 3, 1, 2, 3, 3, 1, 2, 2, 1, 3, 1, 2, 3, 1, 2, 1, 3, 2, 1, 3, 2, 1, 3]
    assert argsort_desc([float(v) for v in values]) == [
        31, 2, 28, 5, 25, 9, 21, 12, 13, 18, 0, 16, 29, 26, 23, 20, 15, 11, 7, 6, 3, 17, 14, 19, 10, 22, 8, 24,
        27, 4, 30, 1]


def test_argsort_is_a_descending_sort_at_any_size() -> None:
    rng = np.random.default_rng(1)
    for n in (17, 33, 128, 257, 1000):
        values = rng.integers(0, 5, n).astype(float).tolist()
        order = argsort_desc(values)
        assert sorted(order) == list(range(n))
        assert all(values[a] >= values[b] for a, b in zip(order, order[1:]))


def test_route_breaks_ties_by_index_and_renormalises() -> None:
    logits = np.array([[0.0, 2.0, 2.0, 1.0, 2.0, -1.0, 0.5, 0.0]])
    selected, weights = route(logits, 2)
    assert selected.tolist() == [[1, 2]]  # three-way tie at 2.0: the two lowest ids
    np.testing.assert_allclose(weights, [[0.5, 0.5]])
    selected, weights = route(logits, 3, norm_w=False)
    assert selected.tolist() == [[1, 2, 4]]
    probs = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(weights[0], probs[[1, 2, 4]])
    _, scaled = route(logits, 3, norm_w=True, scale=2.5)
    np.testing.assert_allclose(scaled.sum(), 2.5)


def test_route_sends_every_token_to_a_dominant_expert() -> None:
    h = np.random.default_rng(2).standard_normal((64, 16))
    router = np.random.default_rng(3).standard_normal((8, 16)) * 0.1
    h[:, 0] = np.abs(h[:, 0]) + 1.0  # every token has a positive first feature ...
    router[5, 0] = 50.0  # ... that expert 5 weighs far above anything else
    selected, weights = route(h @ router.T, 2)
    assert (selected[:, 0] == 5).all() and (selected[:, 1] != 5).all()
    assert (weights[:, 0] > 0.99).all()


def test_edge_case_router_never_picks_experts_6_and_7_and_ties_pick_4() -> None:
    router = edge_case_router(64).astype(np.float64)
    h = np.random.default_rng(4).standard_normal((4000, 64))
    selected, _ = route(h @ router.T, 2)
    used = np.bincount(selected.ravel(), minlength=8)
    assert used[6] == used[7] == 0 and (used[:6] > 0).all()
    with5 = (selected == 5).any(axis=1)
    assert (selected[with5] == 4).any(axis=1).all(), "expert 5 only ever comes with its tie partner 4"
    assert (selected == 4).any(axis=1).mean() > 0.3  # the tie order decides for many tokens


def test_moe_ffn_is_the_weighted_sum_of_the_chosen_experts(tmp_path: Path) -> None:
    path = write_tiny_qwen(tmp_path / "m.gguf", "qwen3moe", n_layer=1, weight_type=Q.F32, embd_type=Q.F32)
    m = load_weights(path)
    h = np.random.default_rng(5).standard_normal((6, 64))
    router = m.w("blk.0.ffn_gate_inp")
    gate, up, down = (m.w(f"blk.0.ffn_{x}_exps") for x in ("gate", "up", "down"))
    got = moe_ffn(m, "blk.0", h)
    for t in range(len(h)):
        logits = router.astype(np.float64) @ h[t]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        top = np.argsort(-probs, kind="stable")[:2]
        want = sum(probs[e] / probs[top].sum() * (down[e] @ (silu(gate[e] @ h[t]) * (up[e] @ h[t]))) for e in top)
        np.testing.assert_allclose(got[t], want, rtol=1e-10, atol=1e-10)


def test_every_expert_is_used_by_a_random_router(tmp_path: Path) -> None:
    path = write_tiny_qwen(tmp_path / "m.gguf", "qwen3moe", n_layer=1)
    m = load_weights(path)
    x = m.w("token_embd")[np.arange(320)].astype(np.float64)  # the first layer's FFN sees ~these
    selected, _ = route(rms_norm(x, m.w("blk.0.ffn_norm"), m.rms_eps) @ m.w("blk.0.ffn_gate_inp").T, 2)
    assert (np.bincount(selected.ravel(), minlength=8) > 0).all()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "qwen3moe"])
def test_qwen_files_have_llama_cpp_layout(arch: str, tmp_path: Path) -> None:
    path = write_tiny_qwen(tmp_path / "m.gguf", arch)
    reader = GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert fields["general.architecture"] == arch and fields["tokenizer.ggml.pre"] == "qwen2"
    assert fields[f"{arch}.rope.freq_base"] == 1e6 and fields[f"{arch}.attention.head_count_kv"] == 2
    if arch == "qwen2":
        assert shapes["blk.1.attn_k.bias"] == (32,) and types["blk.1.attn_q.bias"] == Q.F32
        assert f"{arch}.attention.key_length" not in fields and "blk.0.attn_q_norm.weight" not in shapes
    else:
        # head_dim 32 from key_length, 4 heads: Q is 128 wide on a 64-wide model, as in Qwen 3.
        assert fields[f"{arch}.attention.key_length"] == fields[f"{arch}.attention.value_length"] == 32
        assert shapes["blk.0.attn_q.weight"] == (64, 128) and shapes["blk.0.attn_q_norm.weight"] == (32,)
        assert "blk.0.attn_q.bias" not in shapes
    if arch == "qwen3moe":
        assert (fields["qwen3moe.expert_count"], fields["qwen3moe.expert_used_count"]) == (8, 2)
        assert fields["qwen3moe.expert_feed_forward_length"] == 32
        assert shapes["blk.1.ffn_gate_exps.weight"] == (64, 32, 8) and shapes["blk.1.ffn_down_exps.weight"] == (32, 64, 8)
        assert types["blk.1.ffn_gate_inp.weight"] == Q.F32 and types["blk.1.ffn_up_exps.weight"] == Q.Q8_0
        assert "blk.0.ffn_gate.weight" not in shapes
    else:
        assert shapes["blk.0.ffn_gate.weight"] == (64, 128)


def test_llama_with_experts_has_mixtral_layout(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", n_embd=256, n_ff=256, n_expert=4, n_expert_used=2,
                            weight_type=Q.Q6_K)
    reader = GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert (fields["llama.expert_count"], fields["llama.expert_used_count"]) == (4, 2)
    assert shapes["blk.0.ffn_up_exps.weight"] == (256, 256, 4) and types["blk.0.ffn_up_exps.weight"] == Q.Q6_K
    assert shapes["blk.0.ffn_gate_inp.weight"] == (256, 4) and "blk.0.ffn_up.weight" not in shapes


def test_writers_are_deterministic(tmp_path: Path) -> None:
    def digest(name: str, seed: int) -> str:
        path = write_tiny_qwen(tmp_path / name, "qwen3moe", seed=seed, routers={0: edge_case_router(64)})
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest("a.gguf", 0) == digest("b.gguf", 0) != digest("c.gguf", 1)


def test_crafted_router_is_written_and_bad_requests_are_clear(tmp_path: Path) -> None:
    router = edge_case_router(64)
    path = write_tiny_qwen(tmp_path / "m.gguf", "qwen3moe", routers={1: router})
    np.testing.assert_array_equal(load_weights(path).w("blk.1.ffn_gate_inp"), router)
    with pytest.raises(ValueError, match="routers"):
        write_tiny_qwen(tmp_path / "x.gguf", "qwen3moe", routers={5: router})
    with pytest.raises(ValueError, match="routers"):
        write_tiny_qwen(tmp_path / "x.gguf", "qwen3", routers={0: router})
    with pytest.raises(ValueError, match="arch"):
        write_tiny_qwen(tmp_path / "x.gguf", "qwen4")
    with pytest.raises(ValueError, match="n_expert_used"):
        write_tiny_qwen(tmp_path / "x.gguf", "qwen3moe", n_expert_used=9)


def test_qwen_logits_depend_on_biases_and_q_k_norms(tmp_path: Path) -> None:
    """Dropping what sets an architecture apart changes its logits (so the reference uses it)."""
    ids = [1, 298, 13, 75, 292, 111, 114, 47]
    for arch, drop in (("qwen2", "attn_k.bias"), ("qwen3", "attn_q_norm.weight")):
        path = write_tiny_qwen(tmp_path / f"{arch}.gguf", arch)
        full = reference_logits(path, ids)
        m = load_weights(path)
        key = f"blk.0.{drop}"
        saved = m.tensors[key]
        m.tensors[key] = np.zeros_like(saved) if drop.endswith("bias") else np.ones_like(saved)
        try:
            changed = reference_logits(path, ids)
        finally:
            m.tensors[key] = saved
        assert np.abs(changed - full).max() > 0.05, arch
