"""Where mirror, distribute and the budgeted partial mirror put a mixture of experts'
pages on a 2-node machine, in the NUMA VM: a tiny qwen3moe placed by
tests/vm/placement_probe.py (--budget), read back from the guest kernel (move_pages),
judged here against forward.py's split of each expert's rows among the workers."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from gguf import GGMLQuantizationType as Q
from numallm.engine.gguf_file import read_gguf
from numallm.numa.placement import tensor_group
from numallm.numa.split import part
from synthetic_arch import write_tiny_qwen
from test_placement_vm import GUEST_NUMBA_CACHE, PROBE, homes, on
from test_topology_vm import SHAPES
from vm_harness import NUMA_VM, PYTHON, REPO, run_in_vm

SHAPE = SHAPES["2 sockets, 2 nodes, SMT2"]  # 4 workers, 2 a node
N_EXPERT, N_CTX, PAGE = 8, 128, 4096
EXPERT_GROUPS = ("gate_exps", "up_exps", "down_exps")
# The file's tensors by the engine's group names (engine/arch/slots.py; the output is tied)
GROUP_OF = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o", "ffn_gate_inp": "router",
            "ffn_gate_exps": "gate_exps", "ffn_up_exps": "up_exps", "ffn_down_exps": "down_exps",
            "token_embd": "output"}

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(not NUMA_VM.exists(), reason=f"the NUMA VM script {NUMA_VM} is absent")]


def write_moe(path: Path) -> Path:
    """The tiny qwen3moe both VM files place: Q4_K (read in the file's layout: nothing to
    compile for placing it), experts of 256 rows of 144 bytes, so a node's slice of one
    spans several pages on 2 nodes and two on 4."""
    return write_tiny_qwen(path, "qwen3moe", n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
                           n_ff_exp=256, n_expert=N_EXPERT, weight_type=Q.Q4_K, embd_type=Q.Q4_K)


def group_bytes(model: Path) -> dict[str, int]:
    """Bytes of each tensor group in the file."""
    sizes: dict[str, int] = {}
    for t in read_gguf(model).tensors.values():
        if len(t.shape) >= 2:
            group = GROUP_OF[t.name.split(".")[-2]]
            sizes[group] = sizes.get(group, 0) + t.nbytes
    return sizes


def budget_for_all_but_the_experts(sizes: dict[str, int]) -> int:
    return sum(b for g, b in sizes.items() if g not in EXPERT_GROUPS)


@pytest.fixture(scope="module")
def guest() -> tuple[dict[str, int], dict[str, Any]]:
    """(bytes of each tensor group in the file, what the probe saw), from one boot."""
    workdir = Path(tempfile.mkdtemp(prefix=".numa-vm-", dir=REPO))  # the guest's /tmp is its own
    try:
        model = write_moe(workdir / "moe.gguf")
        sizes = group_bytes(model)
        returncode, output = run_in_vm(
            [*SHAPE.args(), "--mem", "2048M"],
            ["env", f"NUMBA_CACHE_DIR={GUEST_NUMBA_CACHE}", PYTHON, str(PROBE.resolve()),
             str(workdir / "probe.json"), str(model), str(N_CTX), "--budget", str(budget_for_all_but_the_experts(sizes))],
            timeout=540)
        assert returncode == 0, f"probe failed in the VM (exit {returncode}):\n{output[-4000:]}"
        return sizes, json.loads((workdir / "probe.json").read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def expert_rows(extent: dict[str, Any], n_workers: int) -> None:
    """A shard of expert e of a layer: exactly the rows of it its node's workers compute."""
    rows = 256  # n_ff_exp for gate and up, n_embd for down: both 256 here
    mine = [part(rows, 1, w, n_workers) for w, home in enumerate(homes(SHAPE)) if home == extent["planned_node"]]
    assert (extent["row_lo"], extent["row_hi"]) == (mine[0][0], mine[-1][1]), extent


def by_group(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in report["groups"]}


def test_distribute_puts_each_nodes_slice_of_every_expert_there(guest: tuple[dict[str, int], dict[str, Any]]) -> None:
    sizes, seen = guest
    rep = seen["modes"]["distribute"]["report"]
    assert rep["mode"] == "distribute"
    experts = [e for e in rep["extents"] if tensor_group(e["matrix"]) in EXPERT_GROUPS]
    assert len(experts) == 2 * 3 * N_EXPERT * 2  # layers x tensors x experts x nodes: a slice each
    for e in rep["extents"]:
        assert e["missing_bytes"] == 0 and e["bytes_by_node"] == on(e["planned_node"], e["bytes"]), e
    for e in experts:
        expert_rows(e, len(homes(SHAPE)))
    groups = by_group(rep)
    for g in EXPERT_GROUPS:  # half the experts' bytes on each node, give or take a page per slice
        held = groups[g]["bytes_by_node"]
        assert set(held) == {"0", "1"}
        assert all(sizes[g] / 2 <= b <= sizes[g] / 2 + 2 * 3 * N_EXPERT * PAGE for b in held.values()), held
    pt = rep["per_token"]
    assert pt["remote_bytes"] == 0 and pt["matmul_local_bytes"] > 0


def test_mirror_puts_every_expert_on_every_node(guest: tuple[dict[str, int], dict[str, Any]]) -> None:
    sizes, seen = guest
    rep = seen["modes"]["mirror"]["report"]
    assert rep["mode"] == "mirror"
    groups = by_group(rep)
    for g, nbytes in sizes.items():
        assert groups[g]["bytes_by_node"] == {"0": nbytes, "1": nbytes}, g
    assert rep["per_token"]["remote_bytes"] == 0


def test_budget_mirrors_attention_and_router_and_distributes_the_experts(
        guest: tuple[dict[str, int], dict[str, Any]]) -> None:
    sizes, seen = guest
    rep = seen["modes"]["budget"]["report"]
    assert rep["mode"] == "partial-mirror" and "--mirror-budget" in rep["why"]
    groups = by_group(rep)
    for g, nbytes in sizes.items():
        placed = groups[g]
        if g in EXPERT_GROUPS:
            assert placed["placement"] == "distribute" and "a copy would pass the budget" in placed["why"]
            assert sum(placed["bytes_by_node"].values()) < nbytes + 2 * 3 * N_EXPERT * PAGE
        else:
            assert placed["placement"] == "mirror"
            assert placed["bytes_by_node"] == {"0": nbytes, "1": nbytes}, g
    for e in rep["extents"]:
        assert e["missing_bytes"] == 0 and e["bytes_by_node"] == on(e["planned_node"], e["bytes"]), e
        if tensor_group(e["matrix"]) in EXPERT_GROUPS:
            expert_rows(e, len(homes(SHAPE)))
    assert rep["per_token"]["remote_bytes"] == 0
    assert seen["modes"]["budget"]["planned_weight_bytes"]["0"] < seen["modes"]["mirror"]["planned_weight_bytes"]["0"]
