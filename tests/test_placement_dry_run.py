"""`numallm placement --dry-run`: plans from a GGUF's tensor table alone (engine/dry_run.py),
on recorded machines, for header-only files of real large models (tests/large_shapes.py):
Qwen3-235B-A22B and DeepSeek-V3 671B on 2 nodes of 512 GiB and smaller. Expected figures
are worked out here from the tensor table, independently of the planner."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from large_shapes import write_header_only
from numallm.cli import main as cli_main
from numallm.engine import arch
from numallm.engine.dry_run import dry_run, file_kv, file_matrices
from numallm.engine.gguf_file import GGUFFile, read_gguf
from numallm.engine.placement_inputs import forward_matrices, kv_heads
from numallm.engine.weights import check_model, matrix_tables
from numallm.errors import BadInputError, ModelFormatError
from numallm.numa.placement import group_reads, tensor_group
from numallm.numa.topology import Topology, detect
from numallm.numa.workers import plan_workers
from test_placement_plan import with_free
from test_topology_fixtures import FIXTURE_JSONS, FIXTURES, extract  # noqa: F401  (extract: the session fixture)

GiB = 1 << 30
TWO_NODES = "32intel64-2p8co2t+8ve"  # 2 sockets, 2 NUMA nodes, 8 workers each
N_CTX = 4096
# What every token reads in full (auto mirrors these when a whole copy does not fit)
ALWAYS_QWEN = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_inp", "output"}
ALWAYS_DEEPSEEK = {"attn_q_a", "attn_q_b", "attn_kv_a_mqa", "attn_k_b", "attn_v_b", "attn_output", "ffn_gate",
                   "ffn_up", "ffn_down", "ffn_gate_inp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp",
                   "output"}


@pytest.fixture(scope="module")
def root(extract: Callable[[dict[str, Any]], str]) -> str:  # noqa: F811
    if not FIXTURE_JSONS:
        pytest.skip(f"no topology fixtures in {FIXTURES}")
    return extract(json.loads((FIXTURES / f"{TWO_NODES}.json").read_text()))


@pytest.fixture(scope="module")
def header_only(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Q], Path]:
    folder = tmp_path_factory.mktemp("header-only")
    made: dict[tuple[str, Q], Path] = {}

    def get(model: str, qtype: Q) -> Path:
        if (model, qtype) not in made:
            made[model, qtype] = write_header_only(folder / f"{model}-{qtype.name}.gguf", model, qtype)
        return made[model, qtype]
    return get


def machine(root: str, node_bytes: int) -> Topology:
    topo = detect(root)
    assert [n.os_index for n in topo.nodes] == [0, 1]
    return with_free(topo, {0: node_bytes, 1: node_bytes})


def facts(gf: GGUFFile) -> dict[str, Any]:
    """Bytes by kind, from the tensor table: all matrices, the always-read ones, the experts,
    one embedding row; and what a token reads."""
    mats = [t for t in gf.tensors.values() if len(t.shape) >= 2]
    used = gf.metadata[f"{gf.architecture}.expert_used_count"]
    experts = [t for t in mats if t.name.endswith("_exps.weight")]
    embd = gf.tensors["token_embd.weight"]
    always = sum(t.nbytes for t in mats if t not in experts and t is not embd)
    expert_bytes = sum(t.nbytes for t in experts)
    return {"total": sum(t.nbytes for t in mats), "always": always, "experts": expert_bytes,
            "read": always + expert_bytes * used / experts[0].shape[2] + embd.nbytes / embd.shape[1]}


def plan(path: Path, topo: Topology, numa: str = "auto", budget: int | None = None) -> dict[str, Any]:
    gf = read_gguf(path, header_only=True)
    return dry_run(gf, topo, plan_workers(topo), numa=numa, numa_node=None, mirror_budget=budget, n_ctx=N_CTX,
                   kv_type="f16")


def mirrored(report: dict[str, Any]) -> set[str]:
    return {g["name"] for g in report["groups"] if g["placement"] == "mirror"}


def test_header_only_files_have_the_real_tensor_tables(header_only: Callable[[str, Q], Path]) -> None:
    qwen = read_gguf(header_only("qwen3-235b-a22b", Q.Q4_K), header_only=True)
    ds = read_gguf(header_only("deepseek-v3", Q.Q8_0), header_only=True)
    for gf, params, n_tensors in ((qwen, 235.1e9, 3 + 94 * 12), (ds, 671.0e9, 3 + 61 * 10 + 3 * 3 + 58 * 8)):
        assert gf.file_size < 200_000 and len(gf.tensors) == n_tensors
        n = sum(int(np.prod(t.shape)) for t in gf.tensors.values())
        assert abs(n - params) < 0.01 * params  # the published parameter counts
    assert ds.tensors["blk.3.ffn_down_exps.weight"].shape == (2048, 7168, 256)
    assert ds.tensors["blk.0.attn_k_b.weight"].shape == (128, 512, 128)
    # only a dry run may read them: elsewhere the missing data is the error it always was
    with pytest.raises(ModelFormatError, match="truncated file: tensor 'token_embd.weight' needs bytes"):
        read_gguf(header_only("deepseek-v3", Q.Q8_0))


def test_qwen3_235b_q4_k_mirrors_whole_on_two_512_gib_nodes(root: str, header_only: Callable[[str, Q], Path]) -> None:
    path = header_only("qwen3-235b-a22b", Q.Q4_K)
    f = facts(read_gguf(path, header_only=True))
    assert 120 * GiB < f["total"] < 125 * GiB  # 132 GB: 4.5 bits a weight
    r = plan(path, machine(root, 512 * GiB))
    assert r["mode"] == "mirror" and r["fits"] and r["modes"]["mirror"]["fits"]
    kv = 94 * N_CTX * 2 * (128 + 128) * 2  # a node's 8 workers attend with 32 query heads: 2 KV heads
    assert [(n["weight_bytes"], n["kv_bytes"]) for n in r["nodes"]] == [(f["total"], kv)] * 2
    assert r["per_token"]["read_bytes"] == round(f["read"]) and r["per_token"]["remote_bytes"] == 0
    # on 2 x 96 GiB a copy does not fit: attention, router and output are mirrored, the experts split
    small = plan(path, machine(root, 96 * GiB))
    assert small["mode"] == "partial-mirror" and small["fits"] and mirrored(small) == ALWAYS_QWEN
    assert not small["modes"]["mirror"]["fits"] and small["modes"]["distribute"]["fits"]
    embd = f["total"] - f["always"] - f["experts"]  # whole on worker 0's node: only it looks rows up
    assert [n["weight_bytes"] for n in small["nodes"]] == [f["always"] + f["experts"] // 2 + embd,
                                                           f["always"] + f["experts"] // 2]
    assert small["per_token"]["remote_bytes"] == 0


def test_deepseek_v3_q8_0_needs_distributing_on_two_512_gib_nodes(root: str,
                                                                   header_only: Callable[[str, Q], Path]) -> None:
    path = header_only("deepseek-v3", Q.Q8_0)
    f = facts(read_gguf(path, header_only=True))
    assert 660 * GiB < f["total"] < 668 * GiB  # 713 GB: 8.5 bits a weight
    r = plan(path, machine(root, 512 * GiB))
    modes = r["modes"]
    assert not modes["mirror"]["fits"] and "needs 664." in modes["mirror"]["memory"]
    assert modes["distribute"]["fits"] and modes["partial-mirror"]["fits"]
    assert r["mode"] == "partial-mirror" and r["fits"] and mirrored(r) == ALWAYS_DEEPSEEK
    kv = 61 * N_CTX * (512 + 64) * 2  # the MLA latent and RoPE key, one copy per node
    assert r["kv_bytes"] == kv and [n["kv_bytes"] for n in r["nodes"]] == [kv, kv]
    assert r["kv_bytes_per_token"] == 61 * (512 + 64) * 2
    assert r["per_token"]["read_bytes"] == round(f["read"]) and r["per_token"]["remote_bytes"] == 0
    # a 300 GiB budget mirrors one of the three 215.7 GiB expert groups besides (ties: by name)
    budget = plan(path, machine(root, 512 * GiB), "mirror", 300 * GiB)
    assert budget["mode"] == "partial-mirror" and budget["fits"]
    assert mirrored(budget) == ALWAYS_DEEPSEEK | {"ffn_down_exps"}
    gate = next(g for g in budget["groups"] if g["name"] == "ffn_gate_exps")
    assert gate["placement"] == "distribute" and "a copy would pass the budget" in gate["why"]
    # at Q4_K (380 GB) a whole copy fits on each node
    assert plan(header_only("deepseek-v3", Q.Q4_K), machine(root, 512 * GiB))["mode"] == "mirror"


@pytest.mark.parametrize("name", ["tiny-qwen3moe", "tiny-glm4moe", "tiny-deepseek-v3", "tiny-deepseek-v2-lite",
                                  "tiny-deepseek-v2-legacy"])
def test_the_dry_run_plans_what_the_engine_places(fixture_model: Callable[[str], Path], name: str) -> None:
    """On a file the engine runs, the tensor table gives the decoder's matrices: the same
    bytes per group and per token, and the same row groups, as the engine's own tables
    (its names are the slots'); glm4moe: shared experts and a leading dense layer;
    deepseek2: MLA's matrices, attn_k_b / attn_v_b cut between heads (split from the
    legacy file's attn_kv_b, as `numallm placement --dry-run` plans it)."""
    path = fixture_model(name)
    gf = arch.upgrade(read_gguf(path, header_only=True))
    hp = arch.describe(gf.metadata, str(path)).hparams
    layout = check_model(gf, arch.describe(gf.metadata, str(path)))
    mats = forward_matrices(*matrix_tables(layout, hp.n_layer, layout.read_span()[0]), hp.n_expert_used)
    slots = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate": "gate", "ffn_up": "up",
             "ffn_down": "down", "ffn_gate_inp": "router", "ffn_gate_exps": "gate_exps", "ffn_up_exps": "up_exps",
             "ffn_down_exps": "down_exps", "ffn_gate_shexp": "gate_shexp", "ffn_up_shexp": "up_shexp",
             "ffn_down_shexp": "down_shexp", "attn_q_a": "q_a", "attn_q_b": "q_b", "attn_kv_a_mqa": "kv_a_mqa",
             "attn_k_b": "k_b", "attn_v_b": "v_b"}
    if "output.weight" not in gf.tensors:
        slots["token_embd"] = "output"  # tied: the embeddings are the output projection
    table = file_matrices(gf)
    assert sorted((slots.get(g, g), *rest) for g, *rest in group_reads(table)) == sorted(group_reads(mats))
    groups = {(slots.get(tensor_group(m.name), tensor_group(m.name)), m.row_group) for m in table}
    assert groups == {(tensor_group(m.name), m.row_group) for m in mats}
    planned, placed = file_kv(gf, 64), kv_heads(hp, 64, "f16")  # deepseek2: the latent cache
    assert (planned.n_head, planned.n_head_kv, planned.head_bytes) == (placed.n_head, placed.n_head_kv, placed.head_bytes)


def test_dry_run_command(root: str, header_only: Callable[[str, Q], Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = str(header_only("deepseek-v3", Q.Q8_0))
    run = subprocess.run([sys.executable, "-m", "numallm", "placement", "--dry-run", "-m", path, "--root", root,
                          "--node-memory", "512G", "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["dry_run"] and report["architecture"] == "deepseek2" and report["mode"] == "partial-mirror"
    assert [n["free_bytes"] for n in report["nodes"]] == [512 * GiB] * 2
    # the text view of an explicit mirror says it does not fit, and what would
    assert cli_main(["placement", "--dry-run", "-m", path, "--root", root, "--node-memory", "512G",
                     "--numa", "mirror"]) == 0
    text = capsys.readouterr().out
    assert "does not fit: --numa mirror needs 664." in text and "--numa mirror --mirror-budget 167" in text
    assert "ffn_up_exps    mirror" in text


@pytest.mark.parametrize("args, message", [
    ([], "truncated file: tensor 'token_embd.weight'"),  # a real placement needs the data
    (["--dry-run", "--numa", "mirror", "--mirror-budget", "12Q"], "--mirror-budget '12Q' is not a size"),
    (["--dry-run", "--mirror-budget", "1G"], "--mirror-budget goes with --numa mirror"),
    (["--node-memory", "1G"], "--node-memory goes with --dry-run"),
    (["--dry-run", "--node-memory", "lots"], "--node-memory 'lots' is not a size"),
])
def test_bad_input_is_one_line_and_exit_2(header_only: Callable[[str, Q], Path], capsys: pytest.CaptureFixture[str],
                                          args: list[str], message: str) -> None:
    assert cli_main(["placement", "-m", str(header_only("deepseek-v3", Q.Q8_0)), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_tensor_names_are_not_planned(tmp_path: Path) -> None:
    w = GGUFWriter(tmp_path / "odd.gguf", "llama")
    w.add_block_count(1)
    w.add_tensor_info("token_embd.weight", (32, 64), np.dtype(np.float32), 32 * 64 * 4)
    w.add_tensor_info("blk.0.mystery.weight", (64, 64), np.dtype(np.float32), 64 * 64 * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with pytest.raises(BadInputError, match="'blk.0.mystery' is not one of llama.cpp's tensor names"):
        file_matrices(read_gguf(tmp_path / "odd.gguf", header_only=True))
