"""deepseek2 in the engine: its multi-head latent attention against the reference
(tests/reference_mla.py) on dense-FFN files of the V3 shape (low-rank queries, YaRN) and
the V2-Lite shape (plain attn_q), through the latent KV cache past a 512-token batch;
the cache's size as stated; inconsistent MLA sizes refused in one line; the whole
model against llama.cpp's recorded outputs on the tiny-deepseek-* fixtures; and files
from before attn_k_b / attn_v_b, their attn_kv_b split at load: the split's bytes, its
refusals, the same logits as the weights written split, and every placement."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from reference_forward import load_weights
from reference_mla import forward as reference_forward
from synthetic_deepseek import write_tiny_deepseek2
from synthetic_fixtures import check_logits, load_fixture, logits_on, run_ids

from numallm.bench.roofline import kv_bytes_read
from numallm.engine.arch import describe, upgrade
from numallm.engine.arch.slots import LayerMatrix
from numallm.engine.engine import Engine
from numallm.engine.gguf_file import read_gguf
from numallm.engine.kv_cache import kv_bytes_per_token
from numallm.engine.model_checks import check_architecture
from numallm.engine.placing import place_model
from numallm.engine.weights import check_model, fill_image
from numallm.engine.weights import load_weights as load_model_weights
from numallm.errors import ModelFormatError
from numallm.numa import libnuma
from numallm.numa.memory import Region
from numallm.numa.topology import detect
from numallm.numa.workers import plan_workers

# Float32 weights and cache: the engine and the float64 reference differ only by float32 rounding.
F32 = dict(weight_type=Q.F32, embd_type=Q.F32)
# All layers dense, so the attention is what is compared (the routing is tests/test_moe.py's).
DENSE = dict(n_leading_dense=3)
SHAPES = {
    "v3": {},  # q_lora_rank 32, YaRN factor 4 from 512, mscale_all_dim 1
    "v2-lite": dict(q_lora_rank=0, mscale_all_dim=0.707),
}
R, N_ROT, N_LAYER = 32, 16, 3  # write_tiny_deepseek2's kv_lora_rank, qk_rope_head_dim, n_layer


@pytest.fixture(scope="module")
def dense_mla(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    folder = tmp_path_factory.mktemp("dense-mla")
    return lambda shape: write_tiny_deepseek2(folder / f"{shape}.gguf", **DENSE, **F32, **SHAPES[shape])


@pytest.fixture(scope="module", params=list(SHAPES))
def engine(request: pytest.FixtureRequest, dense_mla: Callable[[str], Path]) -> Iterator[tuple[Path, Engine]]:
    path = dense_mla(request.param)
    eng = Engine(path, ctx_size=1024, kv_type="f32")
    yield path, eng
    eng.close()


def test_logits_match_the_reference_batched_and_token_by_token(engine: tuple[Path, Engine]) -> None:
    path, eng = engine
    ids = np.random.default_rng(1).integers(0, 320, 40)
    ref = reference_forward(load_weights(path), ids, None, None)
    batched = eng.logits(list(ids))
    one_by_one = np.stack([eng.eval_batch(np.array([t]), np.array([0]), np.array([p]), np.array([0]))[0]
                           for p, t in enumerate(ids)])
    assert np.abs(ref).max() > 1.0
    assert np.abs(batched - ref).max() < 1e-4
    assert np.abs(one_by_one - ref).max() < 1e-4


def test_a_prompt_past_512_through_the_latent_cache_equals_full_attention(engine: tuple[Path, Engine]) -> None:
    """The engine runs 600 prompt tokens as a batch of 512, then 88 reading the first 512
    back from the latent cache; the reference attends over all 600 decompressed (per-head
    keys and values, no cache), past YaRN's original context of 512."""
    path, eng = engine
    ids = np.random.default_rng(2).integers(0, 320, 600)
    ref = reference_forward(load_weights(path), ids, None, None, absorbed=False)
    assert np.abs(eng.logits(list(ids)) - ref).max() < 1e-4


def test_the_latent_cache_is_latent_plus_rotated_key_per_token_and_layer(dense_mla: Callable[[str], Path],
                                                                         capfd: pytest.CaptureFixture[str]) -> None:
    eng = Engine(dense_mla("v3"), ctx_size=256, verbose=True)
    try:
        per_token = N_LAYER * (R + N_ROT) * 2  # f16: 288 B, where per-head keys and values would take
        assert kv_bytes_per_token(eng.hparams, "f16") == per_token  # 3 x 4 heads x (48 + 32) x 2 = 1920
        assert eng.placed.kv_nbytes == 256 * per_token
        assert kv_bytes_read(eng.hparams, 2, 99) == 100 * per_token  # what bench's roofline counts
        assert f"({per_token} B per token, latent)" in capfd.readouterr().err
    finally:
        eng.close()


def test_placement_reports_the_latent_cache_and_reads_no_remote_byte(dense_mla: Callable[[str], Path]) -> None:
    run = subprocess.run([sys.executable, "-m", "numallm", "placement", "-m", str(dense_mla("v3")), "--numa",
                          "distribute", "-c", "64", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["kv_bytes_per_token"] == N_LAYER * (R + N_ROT) * 2
    assert sum(n["kv_bytes"] for n in report["nodes"]) == 64 * report["kv_bytes_per_token"]
    assert {g["name"] for g in report["groups"]} >= {"q_a", "q_b", "kv_a_mqa", "k_b", "v_b", "o"}
    assert report["per_token"]["remote_bytes"] == 0


def _checked(path: Path, **changes: object) -> None:
    gf = read_gguf(path)
    md = {k: v for k, v in gf.metadata.items() if changes.get(k, 0) is not None}
    md |= {k: v for k, v in changes.items() if v is not None}
    check_architecture(dataclasses.replace(gf, metadata=md))


@pytest.mark.parametrize("changes, message", [
    ({"deepseek2.attention.key_length": 64},
     "deepseek2.attention.key_length is 64 but the latent cache's is 48 (deepseek2.attention.kv_lora_rank 32 "
     "+ deepseek2.rope.dimension_count 16): the file is inconsistent"),
    ({"deepseek2.attention.value_length": 48},
     "deepseek2.attention.value_length is 48 but the latent cache's is 32 (deepseek2.attention.kv_lora_rank 32)"),
    ({"deepseek2.rope.dimension_count": 48},
     "deepseek2.rope.dimension_count 48 should be even and less than deepseek2.attention.key_length_mla 48"),
    ({"deepseek2.attention.key_length_mla": None},
     "key 'deepseek2.attention.key_length_mla' is missing, and there is no attn_kv_b per layer to derive it from"),
])
def test_inconsistent_mla_sizes_are_refused_in_one_line(dense_mla: Callable[[str], Path],
                                                        changes: dict[str, object], message: str) -> None:
    _checked(dense_mla("v3"))  # as written: fine
    with pytest.raises(ModelFormatError) as err:
        _checked(dense_mla("v3"), **changes)
    assert message in str(err.value) and "\n" not in str(err.value)


# llama.cpp's outputs on the MoE fixtures (tests/synthetic_fixtures.py): DeepSeek-V3-like
# (q_lora, YaRN, sigmoid + exp_probs_b in expert groups, shared expert, a dense first layer)
# and V2-Lite-like (plain attn_q, softmax), on llama.cpp's routing.
# And a V2-Lite-like file from before attn_k_b / attn_v_b, on llama.cpp's non-absorbed path.
LEGACY = "tiny-deepseek-v2-legacy"
FIXTURES = ("tiny-deepseek-v3", "tiny-deepseek-v2-lite", LEGACY)


@pytest.fixture(scope="module", params=FIXTURES)
def fixture_engine(request: pytest.FixtureRequest,
                   fixture_model: Callable[[str], Path]) -> Iterator[tuple[str, Engine]]:
    eng = Engine(fixture_model(request.param), ctx_size=256)
    yield request.param, eng
    eng.close()


def test_fixture_hyperparameters_are_llama_cpps(fixture_engine: tuple[str, Engine]) -> None:
    name, eng = fixture_engine
    hp = eng.hparams
    v3 = name.endswith("v3")  # (the legacy file's head sizes are its key_length and value_length)
    assert (hp.q_lora_rank, hp.kv_lora_rank, hp.head_dim, hp.head_dim_v, hp.n_rot, hp.n_head_kv) == \
        (32 if v3 else 0, R, 48, 32, N_ROT, 1)
    assert (hp.rope_freq_scale, hp.rope_ext_factor, hp.rope_n_ctx_orig) == (0.25, 1.0, 512)
    # llama_context: 1 / (1 + 0.1 ln 4); deepseek2.cpp's kq_scale: mscale^2 / sqrt(48)
    assert hp.rope_attn_factor == pytest.approx(1 / (1 + 0.1 * np.log(4)))
    mscale_all_dim = 1.0 if v3 else 0.707
    assert hp.attn_scale == pytest.approx((1 + 0.1 * mscale_all_dim * np.log(4)) ** 2 / np.sqrt(48), rel=1e-6)


def test_fixture_logits_and_greedy_match_llama_cpp_on_its_routing(fixture_engine: tuple[str, Engine]) -> None:
    name, eng = fixture_engine
    check_logits(name, load_fixture(name), lambda rec: logits_on(eng, run_ids(rec), rec["experts"]))


def test_fixture_prompt_batch_matches_token_by_token(fixture_engine: tuple[str, Engine]) -> None:
    """A decode step (one token over the latent cache, routed and shared experts) agrees with the batch."""
    _, eng = fixture_engine
    ids = run_ids(load_fixture(fixture_engine[0])["prompts"][1])[:12]
    batched = eng.logits(ids)
    one_by_one = np.stack([eng.eval_batch(np.array([t]), np.array([0]), np.array([p]), np.array([0]))[0]
                           for p, t in enumerate(ids)])
    np.testing.assert_allclose(one_by_one, batched, atol=2e-2)


# Files from before attn_k_b / attn_v_b: one attn_kv_b per layer, split at load
# (engine/arch/legacy_mla.py). The latent, key and value widths apart (64, 32 + 16, 16),
# so that a split mixing them up shows.
LEGACY_SIZES = dict(kv_lora_rank=64, v_head_dim=16)


@pytest.fixture(scope="module")
def legacy_q8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A V2-Lite-like legacy file, Q8_0 (attn_kv_b too)."""
    return write_tiny_deepseek2(tmp_path_factory.mktemp("legacy") / "legacy.gguf", q_lora_rank=0, **LEGACY_SIZES,
                                legacy=True)


def test_a_legacy_files_attn_kv_b_splits_as_the_converter_does(legacy_q8: Path) -> None:
    path = legacy_q8
    raw = read_gguf(path)
    gf = upgrade(raw)
    md = {k.removeprefix("deepseek2.attention."): v for k, v in gf.metadata.items()}
    assert (md["key_length_mla"], md["value_length_mla"], md["key_length"], md["value_length"]) == (48, 16, 80, 64)
    check_architecture(gf)
    assert not any("attn_kv_b" in name for name in gf.tensors)
    k_b, v_b = gf.tensors["blk.1.attn_k_b.weight"], gf.tensors["blk.1.attn_v_b.weight"]
    # k_b dequantized to F16 (kv_b is Q8_0), v_b kept; both past the file's end
    assert (k_b.qtype, k_b.shape, v_b.qtype, v_b.shape) == (Q.F16, (32, 64, 4), Q.Q8_0, (64, 16, 4))
    assert min(k_b.offset, v_b.offset) >= raw.file_size
    kv_b = load_weights(path).w("blk.1.attn_kv_b").reshape(4, 48, 64)  # gguf-py's dequantization: [head, row, r]
    k_rows = gf.derived[k_b.name](0, 4 * 64)
    np.testing.assert_array_equal(k_rows.view(np.float16).reshape(4, 64, 32),
                                  kv_b[:, :32].transpose(0, 2, 1).astype(np.float16))
    t = raw.tensors["blk.1.attn_kv_b.weight"]
    file_rows = np.fromfile(path, np.uint8, count=t.nbytes, offset=t.offset).reshape(4, 48, t.row_bytes)
    np.testing.assert_array_equal(gf.derived[v_b.name](0, 4 * 16).reshape(4, 16, -1), file_rows[:, 32:])
    # heads alone, as placement cuts them: those heads' rows of the whole
    assert np.array_equal(gf.derived[k_b.name](64, 192), k_rows[64 * k_b.row_bytes:192 * k_b.row_bytes])
    assert np.array_equal(gf.derived[v_b.name](16, 48), file_rows[1:3, 32:].reshape(-1))


@pytest.mark.parametrize("changes, message", [
    ({"deepseek2.attention.value_length": None},
     "key 'deepseek2.attention.value_length' is missing, but splitting the file's attn_kv_b into attn_k_b and "
     "attn_v_b needs it"),
    ({"deepseek2.attention.value_length": 24},
     "tensor 'blk.0.attn_kv_b.weight' has shape [64, 192], expected [64, 224] (n_head 4 x (key 32 + value 24) rows)"),
    ({"deepseek2.rope.dimension_count": 48},
     "deepseek2.rope.dimension_count 48 leaves no key dimension outside RoPE in deepseek2.attention.key_length 48"),
])
def test_a_legacy_file_whose_sizes_do_not_fit_its_attn_kv_b_is_refused_in_one_line(
        legacy_q8: Path, changes: dict[str, object], message: str) -> None:
    gf = read_gguf(legacy_q8)
    md = {k: v for k, v in gf.metadata.items() if changes.get(k, 0) is not None}
    md |= {k: v for k, v in changes.items() if v is not None}
    with pytest.raises(ModelFormatError) as err:
        upgrade(dataclasses.replace(gf, metadata=md))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_legacy_file_gives_the_logits_of_its_weights_split(tmp_path: Path) -> None:
    """Float32 weights: the split keeps them as they are (k_b transposed), so the engine
    runs the very same numbers as on the file written split; and both match the
    reference's plain (non-absorbed, llama.cpp's path for these files) attention."""
    ids = list(np.random.default_rng(3).integers(0, 320, 30))
    logits = []
    for legacy in (False, True):
        path = write_tiny_deepseek2(tmp_path / f"{legacy}.gguf", **DENSE, **F32, **LEGACY_SIZES, legacy=legacy)
        eng = Engine(path, ctx_size=64, kv_type="f32")
        try:
            logits.append(eng.logits(ids))
        finally:
            eng.close()
    np.testing.assert_array_equal(logits[1], logits[0])
    ref = reference_forward(load_weights(path), np.array(ids), None, None, absorbed=False)
    assert np.abs(logits[1] - ref).max() < 1e-4


@pytest.mark.skipif(not libnuma.available(), reason="libnuma is not usable here")
def test_every_placement_of_a_legacy_file_holds_the_plain_loads_bytes(legacy_q8: Path) -> None:
    """The derived tensors reach every placed buffer (mirror's copies, distribute's and
    interleave's ranges), and heads of them filled alone equal the plain load's."""
    path = legacy_q8
    gf = upgrade(read_gguf(path))
    spec = describe(gf.metadata, str(path))
    plain = load_model_weights(gf, spec, "none")
    topo = detect("/")
    try:
        for mode in ("mirror", "distribute", "interleave"):
            placed = place_model(gf, spec, topo, plan_workers(topo), numa=mode, n_ctx=64)
            try:
                for key, ranges in placed.populated.items():
                    assert all(np.array_equal(placed.wbufs[key][lo:hi], plain.buf[lo:hi]) for lo, hi in ranges)
                assert {"k_b", "v_b"} <= {g["name"] for g in placed.page_report()["groups"]}
            finally:
                placed.close()
        layout = check_model(gf, spec)
        base, size = layout.read_span()
        heads = [(t.offset - base + h * t.nbytes // 4, t.offset - base + (h + 1) * t.nbytes // 4)
                 for (_, slot), t in layout.matrices if slot in (LayerMatrix.K_B, LayerMatrix.V_B) for h in (1, 2)]
        region = Region(size, noreserve=True)
        try:
            fill_image(gf, layout, region.array, base, heads, direct=False)
            assert all(np.array_equal(region.array[lo:hi], plain.buf[lo:hi]) for lo, hi in heads)
            first = heads[0][0] - heads[0][1] + heads[0][0]  # k_b's head 0: never filled
            assert not region.array[first:heads[0][0]].any()
        finally:
            region.close()
    finally:
        plain.close()
