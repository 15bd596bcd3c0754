"""deepseek2 in the engine: its multi-head latent attention against the reference
(tests/reference_mla.py) on dense-FFN files of the V3 shape (low-rank queries, YaRN) and
the V2-Lite shape (plain attn_q), through the latent KV cache past a 512-token batch;
the cache's size as stated; inconsistent MLA sizes refused in one line; and the whole
model against llama.cpp's recorded outputs on the tiny-deepseek-* fixtures."""

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
from numallm.engine.engine import Engine
from numallm.engine.gguf_file import read_gguf
from numallm.engine.kv_cache import kv_bytes_per_token
from numallm.engine.model_checks import check_architecture
from numallm.errors import ModelFormatError

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
     "key 'deepseek2.attention.key_length_mla' is missing: an older conversion with one attn_kv_b per layer"),
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
FIXTURES = ("tiny-deepseek-v3", "tiny-deepseek-v2-lite")


@pytest.fixture(scope="module", params=FIXTURES)
def fixture_engine(request: pytest.FixtureRequest,
                   fixture_model: Callable[[str], Path]) -> Iterator[tuple[str, Engine]]:
    eng = Engine(fixture_model(request.param), ctx_size=256)
    yield request.param, eng
    eng.close()


def test_fixture_hyperparameters_are_llama_cpps(fixture_engine: tuple[str, Engine]) -> None:
    name, eng = fixture_engine
    hp = eng.hparams
    lite = name.endswith("lite")
    assert (hp.q_lora_rank, hp.kv_lora_rank, hp.head_dim, hp.head_dim_v, hp.n_rot, hp.n_head_kv) == \
        (0 if lite else 32, R, 48, 32, N_ROT, 1)
    assert (hp.rope_freq_scale, hp.rope_ext_factor, hp.rope_n_ctx_orig) == (0.25, 1.0, 512)
    # llama_context: 1 / (1 + 0.1 ln 4); deepseek2.cpp's kq_scale: mscale^2 / sqrt(48)
    assert hp.rope_attn_factor == pytest.approx(1 / (1 + 0.1 * np.log(4)))
    mscale_all_dim = 0.707 if lite else 1.0
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
