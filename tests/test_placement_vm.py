"""Where each --numa mode really puts the real SmolLM2's pages on 2- and 4-node machines,
in the NUMA VM: read back from the guest kernel (move_pages) by tests/vm/placement_probe.py,
judged here against the machine shape and forward.py's split of rows and heads; and where
mirror and distribute put a deepseek2 model's (its latent KV cache, one KV head that every
query head reads, kept whole on each node; the per-head attn_k_b / attn_v_b blocks with
the workers of their heads)."""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from numallm.numa.split import part
from synthetic_arch import FIXTURE_MODELS
from test_topology_vm import SHAPES, Shape
from vm_harness import NUMA_VM, PYTHON, REPO, run_in_vm

PROBE = Path(__file__).parent / "vm" / "placement_probe.py"
N_CTX = 256
# Repacking compiles one small Numba function; numa-vm points NUMBA_CACHE_DIR into the
# guest's fresh /tmp, so keep it in the checkout instead (gitignored): after the first
# boot, the guests (all the same emulated CPU) load it from there.
GUEST_NUMBA_CACHE = REPO / ".numa-vm-placement-numba"
N_HEAD, N_HEAD_KV = 9, 3  # SmolLM2-135M
MiB = 1 << 20

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(not NUMA_VM.exists(), reason=f"the NUMA VM script {NUMA_VM} is absent")]


@pytest.fixture(scope="module", params=list(SHAPES.values()), ids=list(SHAPES))
def guest(request: pytest.FixtureRequest, smollm2: Path) -> tuple[Shape, dict[str, Any]]:
    """Boot the shape once and place the model under every mode in it; then, in the same
    boot, tiny-deepseek-v3 (its latent KV cache: seen["deepseek2"])."""
    shape: Shape = request.param
    workdir = Path(tempfile.mkdtemp(prefix=".numa-vm-", dir=REPO))  # the guest sees the checkout
    try:
        deepseek = FIXTURE_MODELS["tiny-deepseek-v3"](workdir / "tiny-deepseek-v3.gguf")
        probe = ["env", f"NUMBA_CACHE_DIR={GUEST_NUMBA_CACHE}", PYTHON, str(PROBE.resolve())]
        smollm2_run = [*probe, str(workdir / "probe.json"), str(smollm2), str(N_CTX), "--cli"]
        deepseek_run = [*probe, str(workdir / "deepseek2.json"), str(deepseek), str(N_CTX), "--modes=mirror,distribute"]
        returncode, output = run_in_vm([*shape.args(), "--mem", "4096M"],
                                       ["sh", "-c", f"{shlex.join(smollm2_run)} && {shlex.join(deepseek_run)}"],
                                       timeout=540)
        assert returncode == 0, f"probe failed in the VM (exit {returncode}):\n{output[-4000:]}"
        seen = json.loads((workdir / "probe.json").read_text())
        return shape, seen | {"deepseek2": json.loads((workdir / "deepseek2.json").read_text())}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def homes(shape: Shape) -> list[int]:
    """One worker per core, numbered node by node."""
    per_node = shape.sockets * shape.cores // shape.nodes
    return [n for n in range(shape.nodes) for _ in range(per_node)]


def kept_heads(shape: Shape) -> dict[int, set[int]]:
    """The KV heads each node's workers read (their query heads' KV heads)."""
    hs = homes(shape)
    out: dict[int, set[int]] = {n: set() for n in range(shape.nodes)}
    for w, home in enumerate(hs):
        out[home].update(q // (N_HEAD // N_HEAD_KV) for q in range(*part(N_HEAD, 1, w, len(hs))))
    return out


def on(node: int, nbytes: int) -> dict[str, int]:
    return {str(node): nbytes}


def check_kv(report: dict[str, Any], kept: dict[int | None, set[int]], target: dict[int | None, int]) -> None:
    """Every kept KV head fully on its buffer's node, no other head touched."""
    for h in report["kv"]:
        if h["head"] in kept[h["buffer"]]:
            assert h["missing_bytes"] == 0 and set(h["bytes_by_node"]) == {str(target[h["buffer"]])}, h
        else:
            assert h["bytes_by_node"] == {}, h


def test_mirror_holds_a_whole_copy_on_every_node(guest: tuple[Shape, dict[str, Any]]) -> None:
    shape, seen = guest
    for mode in ("mirror", "auto"):  # auto mirrors: every node has room for a copy here
        r = seen["modes"][mode]
        rep = r["report"]
        assert rep["mode"] == "mirror" and r["homes"] == homes(shape)
        assert [(n["os_index"], n["weight_bytes"], n["workers"]) for n in rep["nodes"]] == [
            (n, r["matrix_bytes"], homes(shape).count(n)) for n in range(shape.nodes)]
        for b in rep["buffers"]:
            assert b["bytes_by_node"] == on(b["buffer"], b["planned_bytes"])
        assert all(e["bytes_by_node"] == on(e["planned_node"], e["bytes"]) for e in rep["extents"])
        pt = rep["per_token"]
        assert (pt["remote_bytes"], pt["local_bytes"]) == (0, r["matrix_bytes"] + pt["embedding_local_bytes"])
        check_kv(rep, kept_heads(shape), {n: n for n in range(shape.nodes)})


def test_distribute_holds_each_nodes_rows_there_and_nothing_twice(guest: tuple[Shape, dict[str, Any]]) -> None:
    shape, seen = guest
    r = seen["modes"]["distribute"]
    rep = r["report"]
    assert rep["mode"] == "distribute" and r["plan_nodes"] == list(range(shape.nodes))
    for e in rep["extents"]:  # every shard (and the whole embedding on node 0) where planned
        assert e["missing_bytes"] == 0 and e["bytes_by_node"] == on(e["planned_node"], e["bytes"]), e
    planned = {int(n): b for n, b in r["planned_weight_bytes"].items()}
    for n in rep["nodes"]:
        # only the rows its workers compute, give or take the pages shared with a neighbour shard
        assert planned[n["os_index"]] <= n["weight_bytes"] < planned[n["os_index"]] * 1.02 + MiB
    assert sum(planned.values()) < r["matrix_bytes"] * 1.5  # about one copy, not one per node
    for b in rep["buffers"]:
        assert set(b["bytes_by_node"]) == {str(b["buffer"])}  # a node's buffer holds no other node's page
    pt = rep["per_token"]
    assert pt["matmul_remote_bytes"] == pt["embedding_remote_bytes"] == 0
    check_kv(rep, kept_heads(shape), {n: n for n in range(shape.nodes)})


def test_interleave_spreads_pages_evenly(guest: tuple[Shape, dict[str, Any]]) -> None:
    shape, seen = guest
    r = seen["modes"]["interleave"]
    rep = r["report"]
    share = r["matrix_bytes"] / shape.nodes
    assert all(abs(n["weight_bytes"] - share) < 0.1 * share for n in rep["nodes"]), rep["nodes"]
    pt = rep["per_token"]
    remote = pt["remote_bytes"] / (pt["local_bytes"] + pt["remote_bytes"])
    assert abs(remote - (shape.nodes - 1) / shape.nodes) < 0.1
    assert sum(n["kv_bytes"] for n in rep["nodes"]) == r["kv_nbytes"]


def test_isolate_puts_everything_on_the_chosen_node(guest: tuple[Shape, dict[str, Any]]) -> None:
    shape, seen = guest
    last = shape.nodes - 1
    r = seen["modes"]["isolate"]
    rep = r["report"]
    assert rep["mode"] == "isolate" and r["worker_nodes"] == [last] * len(r["worker_nodes"])
    assert [(n["os_index"], n["weight_bytes"], n["kv_bytes"]) for n in rep["nodes"]] == [
        (last, r["matrix_bytes"], r["kv_nbytes"])]
    assert rep["per_token"]["remote_bytes"] == 0
    check_kv(rep, {None: set(range(N_HEAD_KV))}, {None: last})


def test_none_leaves_pages_to_the_kernel_and_still_reports_them(guest: tuple[Shape, dict[str, Any]]) -> None:
    _, seen = guest
    rep = seen["modes"]["none"]["report"]
    assert rep["mode"] == "none" and rep["per_token"]["basis"] == "pages"
    assert all(set(n) == {"os_index", "weight_bytes", "kv_bytes", "workers"} for n in rep["nodes"])


def test_placement_command_json_in_the_vm(guest: tuple[Shape, dict[str, Any]]) -> None:
    shape, seen = guest
    cli = seen["cli"]
    assert cli["returncode"] == 0, cli["stderr"]
    report = json.loads(cli["stdout"])
    assert report["mode"] == "distribute" and report["n_ctx"] == N_CTX
    assert [(n["os_index"], n["workers"]) for n in report["nodes"]] == [(n, homes(shape).count(n))
                                                                         for n in range(shape.nodes)]
    assert cli["stderr"].count("warning: kernel.numa_balancing") <= 1  # said once if at all


LATENT_BYTES_PER_TOKEN = 3 * (32 + 16) * 2  # tiny-deepseek-v3: 3 layers of latent + rotated key, f16


@pytest.mark.parametrize("mode", ["mirror", "distribute"])
def test_latent_cache_is_local_on_each_node_and_no_weight_byte_is_remote(guest: tuple[Shape, dict[str, Any]],
                                                                         mode: str) -> None:
    shape, seen = guest
    r = seen["deepseek2"]["modes"][mode]
    rep = r["report"]
    nodes = list(range(shape.nodes))
    assert rep["mode"] == mode and r["plan_nodes"] == nodes
    assert r["kv_heads"] == [[n, [0]] for n in nodes]  # 4 query heads reach every node's workers
    assert rep["kv_bytes_per_token"] == LATENT_BYTES_PER_TOKEN
    for h in rep["kv"]:
        assert h["head"] == 0 and h["kept"] and h["missing_bytes"] == 0, h
        assert h["bytes_by_node"] == on(h["buffer"], N_CTX * LATENT_BYTES_PER_TOKEN), h
    assert [n["kv_bytes"] for n in rep["nodes"]] == [N_CTX * LATENT_BYTES_PER_TOKEN] * shape.nodes
    for e in rep["extents"]:
        assert e["missing_bytes"] == 0 and e["bytes_by_node"] == on(e["planned_node"], e["bytes"]), e
    assert rep["per_token"]["remote_bytes"] == 0
