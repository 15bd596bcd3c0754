"""The oracle (reference_forward) against llama.cpp, and the synthetic models it runs on."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader, quants
from kquants import K_QUANT_TYPES, quantize_k
from numallm.engine.gguf_file import read_gguf
from numallm.engine.model_store import fetch_known_model
from numallm.engine.tokenizer import Tokenizer
from reference_forward import reference_logits
from synthetic import Q, write_tiny_gemma3, write_tiny_llama
from synthetic_arch import QWEN_ARCHS, edge_case_router, write_tiny_qwen

FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp"
# Short prompts (one float64 forward each over prompt + 31 greedy tokens, ~1-2 s); the
# chat one runs the special tokens and the template's structure through the model.
PROMPTS = ("plain", "chat", "code")

# Tolerances on |reference - llama.cpp| over the recorded top-20 logits of all 32 steps,
# measured with `python3 -m pytest tests/test_reference_forward.py -k top20 -s`:
#   smollm2 plain/chat/code: max 0.79/0.98/0.62, rms 0.24/0.20/0.19
#   gemma3  plain/chat/code: max 0.61/1.16/1.29, rms 0.19/0.30/0.31
# (all 9 prompts: smollm2 max <= 1.05, rms <= 0.28; gemma3 max <= 2.64 on "long",
# rms <= 0.31). That is llama.cpp's own noise, not the oracle's: each fixture's
# self_consistency has llama.cpp differ from itself (prompt batched vs fed token by
# token) by 1.08 max / 0.21 rms (smollm2) and 6.57 max / 0.41 rms (gemma3), since it
# rounds activations to 8 bits for quantized matmuls. On F32 synthetic models, where
# it does not, the two agree to 1e-5 (test_synthetic_models_match_llama_cpp). The
# wrong RoPE mode (NEOX for llama, normal for gemma3) gives 9-20 max.
TOLERANCES = {"smollm2": (1.25, 0.30), "gemma3": (1.6, 0.40)}  # (max |diff|, rms)


# ---------------------------------------------------------------- llama.cpp fixtures


def recorded_prompts(model: str) -> list[dict[str, Any]]:
    path = FIXTURES / f"{model}.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: record it with scripts/record_llama_cpp_fixtures.py", pytrace=False)
    by_name = {p["name"]: p for p in json.loads(path.read_text(encoding="utf-8"))["prompts"]}
    missing = set(PROMPTS) - set(by_name)
    assert not missing, f"{path} lacks prompts {sorted(missing)}"
    return [by_name[name] for name in PROMPTS]


@pytest.fixture(scope="module", params=sorted(TOLERANCES))
def teacher_forced(request: pytest.FixtureRequest) -> tuple[str, list[tuple[dict[str, Any], np.ndarray]]]:
    """(model, [(record, reference logits for steps 0..31)]), teacher-forced on llama.cpp's greedy ids."""
    model: str = request.param
    recorded = recorded_prompts(model)
    path = fetch_known_model(model)
    out = []
    for rec in recorded:
        tokens, greedy = rec["tokens"], rec["greedy"]
        # steps[0] is the last prompt position, steps[i] the position of greedy[i-1].
        logits = reference_logits(path, tokens + greedy[:-1])[len(tokens) - 1 :]
        assert len(logits) == len(rec["steps"])
        out.append((rec, logits))
    return model, out


@pytest.mark.model
def test_matches_llama_cpp_top20(teacher_forced: tuple[str, list[tuple[dict[str, Any], np.ndarray]]]) -> None:
    model, runs = teacher_forced
    max_tol, rms_tol = TOLERANCES[model]
    for rec, logits in runs:
        diffs = np.concatenate(
            [logits[i, step["ids"]] - np.asarray(step["values"]) for i, step in enumerate(rec["steps"])]
        )
        max_abs, rms = float(np.abs(diffs).max()), float(np.sqrt(np.mean(diffs**2)))
        print(f"{model} {rec['name']}: max |diff| {max_abs:.3f}, rms {rms:.3f} over {diffs.size} logits")
        assert max_abs <= max_tol and rms <= rms_tol, f"{model} {rec['name']}: max {max_abs:.3f}, rms {rms:.3f}"


@pytest.mark.model
def test_greedy_agrees_where_llama_cpp_is_decided(
    teacher_forced: tuple[str, list[tuple[dict[str, Any], np.ndarray]]],
) -> None:
    """Where llama.cpp's top-1 leads its top-2 by more than twice the tolerance, argmax must match."""
    model, runs = teacher_forced
    margin = 2 * TOLERANCES[model][0]
    checked = 0
    for rec, logits in runs:
        for i, step in enumerate(rec["steps"]):
            if step["values"][0] - step["values"][1] > margin:
                assert int(logits[i].argmax()) == rec["greedy"][i], f"{model} {rec['name']} step {i}"
                checked += 1
    assert checked >= 8 * len(runs), f"only {checked} decided steps: the check would be vacuous"


# ---------------------------------------------------------------- synthetic models

WRITERS: dict[str, Callable[..., Path]] = {
    "llama": write_tiny_llama, "gemma3": write_tiny_gemma3,
    "llama-moe": functools.partial(write_tiny_llama, n_expert=8, routers={1: edge_case_router(64)}),
    **{arch: functools.partial(write_tiny_qwen, arch=arch) for arch in QWEN_ARCHS},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    return {arch: write(folder / f"{arch}.gguf") for arch, write in WRITERS.items()}


def test_tiny_llama_has_llama_cpp_layout(tiny: dict[str, Path]) -> None:
    reader = GGUFReader(tiny["llama"])
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert (fields["llama.block_count"], fields["llama.embedding_length"], fields["llama.vocab_size"]) == (2, 64, 320)
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.rope.dimension_count"] == 16
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(fields["tokenizer.ggml.tokens"]) == 320
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["token_embd.weight"] == Q.Q8_0 and "output.weight" not in types
    assert types["blk.1.ffn_down.weight"] == Q.Q4_1 and types["blk.1.ffn_norm.weight"] == Q.F32
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    # GGUF shapes list the row length first: attn_k maps 64 inputs to 2 kv heads x 16.
    assert shapes["blk.0.attn_k.weight"] == (64, 32) and shapes["blk.0.ffn_down.weight"] == (128, 64)


def test_tiny_gemma3_has_llama_cpp_layout(tiny: dict[str, Path]) -> None:
    reader = GGUFReader(tiny["gemma3"])
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "gemma3" and fields["gemma3.attention.sliding_window"] == 8
    assert fields["gemma3.attention.key_length"] == 32 and fields["gemma3.attention.head_count_kv"] == 1
    assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.add_bos_token"] is True
    assert len(fields["tokenizer.ggml.scores"]) == len(fields["tokenizer.ggml.tokens"]) == 400
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    # head_dim 32 x 4 heads = 128 is wider than n_embd 64, as in Gemma 3 270M.
    assert shapes["blk.5.attn_q.weight"] == (64, 128) and shapes["blk.5.attn_output.weight"] == (128, 64)
    assert shapes["blk.0.attn_k_norm.weight"] == (32,) and "blk.5.post_ffw_norm.weight" in shapes


@pytest.mark.model
@pytest.mark.parametrize(("arch", "model"), [("llama", "smollm2"), ("gemma3", "gemma3")])
def test_tiny_models_carry_the_real_models_keys_and_types(arch: str, model: str, tiny: dict[str, Path]) -> None:
    """Every key the real GGUF has (bar descriptive general.* ones) with the same value type."""

    def key_types(path: Path) -> dict[str, list[str]]:
        return {k: [t.name for t in f.types] for k, f in GGUFReader(path).fields.items()}

    ours, real = key_types(tiny[arch]), key_types(fetch_known_model(model))
    descriptive = {"general.name", "general.organization", "general.finetune", "general.basename",
                   "general.size_label", "general.license", "general.languages", "general.tags"}
    wanted = {k: v for k, v in real.items() if k not in descriptive}
    assert {k: ours.get(k) for k in wanted} == wanted


@pytest.mark.parametrize("arch", sorted(WRITERS))
def test_tiny_logits_are_finite_varied_and_causal(arch: str, tiny: dict[str, Path]) -> None:
    # 20 tokens: past Gemma's 8-token sliding window, so windowed layers matter.
    ids = [2, 298, 13, 75, 292, 111, 114, 47, 35, 122, 114, 117, 261, 40, 77, 300, 10, 58, 99, 5]
    logits = reference_logits(tiny[arch], ids)
    assert logits.shape[0] == len(ids) and np.isfinite(logits).all()
    assert logits.std(axis=1).min() > 0.5  # a real distribution, not flat
    assert len(set(logits.argmax(axis=1).tolist())) > len(ids) // 2  # depends on the input
    # A fresh context sees only the past: a prefix's logits do not depend on what follows.
    np.testing.assert_allclose(reference_logits(tiny[arch], ids[:12]), logits[:12], rtol=1e-5, atol=1e-5)


def test_gemma3_sliding_window_forgets_old_tokens(tmp_path: Path) -> None:
    """One windowed layer (window 4): position p sees p-3..p, so from position 7 on the
    tokens at 1..3 are out of sight, while positions 4..6 still see some of them."""
    path = write_tiny_gemma3(tmp_path / "g.gguf", n_layer=1, sliding_window=4)
    a = reference_logits(path, [2, 300, 301, 302, 40, 41, 42, 43, 44])
    b = reference_logits(path, [2, 100, 101, 102, 40, 41, 42, 43, 44])
    np.testing.assert_allclose(a[7:], b[7:], rtol=1e-6, atol=1e-6)
    for p in (4, 5, 6):
        assert not np.allclose(a[p], b[p], rtol=1e-3, atol=1e-3), p


@pytest.mark.parametrize("arch", sorted(WRITERS))
def test_tiny_vocab_builds_a_round_tripping_tokenizer(arch: str, tiny: dict[str, Path]) -> None:
    tokenizer = Tokenizer.from_metadata(read_gguf(tiny[arch]).metadata)
    turn = ("<start_of_turn>", "<end_of_turn>") if arch == "gemma3" else ("<|im_start|>", "<|im_end|>")
    text = f"{turn[0]}user\nthe assistant, héllo 😀{turn[1]}"
    ids = tokenizer.tokenize(text, add_special=False)
    assert len(ids) < len(text.encode("utf-8")) - 10  # merges and specials were used
    assert tokenizer.detokenize(ids, special=True) == text


# (writer, kwargs, max |diff| and rms tolerated against llama.cpp run live on the file).
# F32 models take llama.cpp's exact f32 path: measured 4e-6 max / 7e-7 rms for llama;
# 5e-3 / 1e-3 for gemma3, whose GELU llama.cpp reads from an fp16 table (emulating that
# table brings it to 1.7e-3). Quantized models add llama.cpp's 8-bit activations:
# measured 0.25 / 0.06 (llama K-quants) and 0.29 / 0.05 (gemma3 Q5_0); a block decoded
# differently by the two sides gives rms > 1.
LIVE_LLAMA_CPP_CASES: dict[str, tuple[Callable[..., Path], dict[str, Any], float, float]] = {
    "llama-f32": (write_tiny_llama, {"weight_type": Q.F32, "embd_type": Q.F32}, 1e-4, 2e-5),
    "llama-f32-untied": (write_tiny_llama, {"weight_type": Q.F32, "embd_type": Q.F32, "tied_output": False},
                         1e-4, 2e-5),
    "gemma3-f32": (write_tiny_gemma3, {"weight_type": Q.F32, "embd_type": Q.F32}, 2e-2, 3e-3),
    "llama-k-quants": (write_tiny_llama, {"n_embd": 256, "n_ff": 512, "weight_type": Q.Q4_K, "embd_type": Q.Q6_K,
                                          "type_overrides": {"ffn_down": Q.Q5_K}}, 0.6, 0.15),
    "gemma3-q5_0": (write_tiny_gemma3, {}, 0.6, 0.15),
    # Qwen and MoE on llama.cpp's f32 path: measured 3-6e-6 max, <1e-6 rms; routing near
    # ties are far below anything that could flip there, exact ties (edge_case_router) exact.
    **{f"{arch}-f32": (functools.partial(write_tiny_qwen, arch=arch, routers={1: edge_case_router(64)}
                                         if arch == "qwen3moe" else None),
                       {"weight_type": Q.F32, "embd_type": Q.F32}, 1e-4, 2e-5) for arch in QWEN_ARCHS},
    "llama-moe-f32": (write_tiny_llama, {"weight_type": Q.F32, "embd_type": Q.F32, "n_expert": 8,
                                         "routers": {0: edge_case_router(64)}}, 1e-4, 2e-5),
}


@pytest.mark.parametrize("case", sorted(LIVE_LLAMA_CPP_CASES))
def test_synthetic_models_match_llama_cpp(case: str, tmp_path: Path) -> None:
    """llama.cpp itself loads the synthetic GGUFs and agrees with the reference on them.

    Needs the optional llama-cpp-python (pip install -e .[llama-cpp]); skipped without it.
    """
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    write, kwargs, max_tol, rms_tol = LIVE_LLAMA_CPP_CASES[case]
    path = write(tmp_path / "m.gguf", **kwargs)
    # 40 tokens: beyond gemma3's 8-token window, so windowed and global layers both count.
    ids = [2, *np.random.default_rng(0).integers(10, 300, 39).tolist()]
    # f32 KV cache and one thread: llama.cpp's most exact configuration.
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, n_threads=1, logits_all=True,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
    try:
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()
    diff = reference_logits(path, ids) - theirs
    max_abs, rms = float(np.abs(diff).max()), float(np.sqrt(np.mean(diff**2)))
    assert max_abs <= max_tol and rms <= rms_tol, f"{case}: max {max_abs:.2e}, rms {rms:.2e}"


# Effective bits per weight: quantization error roughly halves with each extra bit. The
# types the synthetic writer can encode from float weights; the i-quants, TQ and MXFP4
# (random blocks, no encoder in gguf-py) are checked in tests/test_type_fixtures.py.
_BITS = {Q.F16: 11, Q.BF16: 8, Q.Q8_0: 8, Q.Q6_K: 6, Q.Q5_0: 5, Q.Q5_1: 5, Q.Q5_K: 5,
         Q.Q4_0: 4, Q.Q4_1: 4, Q.Q4_K: 4}  # fmt: skip


@pytest.mark.parametrize("name", sorted(t.name for t in _BITS))
def test_quantized_tiny_llama_tracks_f32(name: str, tmp_path: Path) -> None:
    """Same seed, same float weights: logits move by about the quantization step.

    Measured relative rms error: 0.30 (Q4_0), 0.26-0.28 (Q4_1, Q4_K), 0.14-0.15 (5-bit),
    0.066 (Q6_K), 0.019 (Q8_0), 0.006 (BF16), 0.0007 (F16); the bound 8 * 2^-bits is
    1.3-5x above those. A mis-packed block gives ~1.4 (unrelated logits).
    """
    qtype = Q.__members__[name]
    ids = [1, 298, 13, 75, 292, 111, 114, 47]

    def logits(weights: Q) -> np.ndarray:
        # K-quant rows must be multiples of 256.
        path = write_tiny_llama(tmp_path / f"{weights.name}.gguf", n_embd=256, n_ff=512,
                                weight_type=weights, embd_type=weights)
        return reference_logits(path, ids)

    exact, got = logits(Q.F32), logits(qtype)
    rel_rms = np.sqrt(np.mean((got - exact) ** 2) / np.mean(exact**2))
    assert rel_rms < 8 * 2.0 ** -_BITS[qtype], f"{name}: relative rms error {rel_rms:.4f}"


@pytest.mark.parametrize("name", sorted(t.name for t in K_QUANT_TYPES))
def test_k_quant_encoder_round_trips_through_gguf(name: str) -> None:
    """Our encoder against gguf-py's decoder: error within one quantization step per block."""
    qtype = Q.__members__[name]
    rng = np.random.default_rng(1)
    data = rng.standard_normal((6, 512)).astype(np.float32) * np.array([[0], [1e-3], [1], [10], [1], [1]])
    data[4] = np.abs(data[4]) + 3  # all positive: the min term must not be forced in
    data[5, :256] = -np.abs(data[5, :256])  # all negative half
    decoded = quants.dequantize(quantize_k(data, qtype), qtype)
    blocks, err = data.reshape(-1, 256), np.abs(decoded - data).reshape(-1, 256)
    levels = {Q.Q4_K: 15, Q.Q5_K: 31, Q.Q6_K: 31}[qtype]
    step = (blocks.max(axis=1) - np.minimum(blocks.min(axis=1), 0)) / levels
    assert (err.max(axis=1) <= step + 1e-7).all(), err.max(axis=1) / np.maximum(step, 1e-12)


def test_bad_requests_are_clear_errors(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 256"):
        write_tiny_llama(tmp_path / "k.gguf", weight_type=Q.Q4_K)  # n_embd 64
    with pytest.raises(ValueError, match="type_overrides"):
        write_tiny_llama(tmp_path / "o.gguf", type_overrides={"ffn_dwn": Q.Q8_0})
    with pytest.raises(ValueError, match="within 0..319"):
        reference_logits(tiny["llama"], [1, 320])
