"""The --numa placement plan (numa/placement.py) on recorded multi-node machines and on
synthetic topologies: shards, copies, KV heads, the memory check, auto's choice, locality.

Expected rows are worked out with the forward pass's compiled part() (the function the
workers really run), independently of the plan's own Python call of it.
"""

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numallm.engine.arch.slots import LayerMatrix, MatrixEntry, MatrixTable, ModelMatrix
from numallm.engine.arch.spec import HParams
from numallm.numa.split import part_jit as compiled_part
from numallm.engine.kv_cache import KVCache
from numallm.engine.placement_inputs import forward_matrices, kv_heads
from numallm.errors import BadInputError, ResourceError
from numallm.numa.placement import (
    KvHeads,
    Matrix,
    PlacementPlan,
    build_plan,
    check_memory,
    choose_mode,
    home_node,
    isolate_topology,
    locality,
    numa_balancing_warning,
    summary,
)
from numallm.numa.topology import Topology, detect
from numallm.numa.workers import WorkerSlot, plan_workers
from test_topology_fixtures import FIXTURE_JSONS, FIXTURES, extract  # noqa: F401  (extract: the session fixture)

MULTI_NODE = ["16amd64-8n2c", "memorysidecaches", "48amd64-4pa2n6c-sparse", "nvidiagpunumanodes",
              "16amd64-8n2c-cpusets"]
GiB = 1 << 30

# A small model's shapes with awkward sizes: rows not multiples of the groups, a group
# larger than some workers' shares, a tied embedding (matmul and lookup) and an untied one.
MATRICES = (
    Matrix("blk.0.q", 576, 360, 1),
    Matrix("blk.0.k", 192, 360, 1),
    Matrix("blk.0.gate", 1536, 360, 4),
    Matrix("blk.0.down", 576, 960, 8),
    Matrix("output", 49153, 360, 16, matmul=True, lookup=True),
)
UNTIED = MATRICES[:-1] + (Matrix("output", 49153, 360, 16), Matrix("token_embd", 49153, 360, 16,
                                                                       matmul=False, lookup=True))
KV = KvHeads(n_head=9, n_head_kv=3, head_bytes=3 << 20)
TOTAL = sum(m.nbytes for m in MATRICES)
MATMUL_BYTES = sum(m.nbytes for m in MATRICES if m.matmul)


@pytest.fixture(scope="module")
def machines(extract: Callable[[dict[str, Any]], str]) -> dict[str, Topology]:  # noqa: F811
    if not FIXTURE_JSONS:
        pytest.skip(f"no topology fixtures in {FIXTURES}")
    return {name: detect(extract(json.loads((FIXTURES / f"{name}.json").read_text())))
            for name in MULTI_NODE}


def rows_by_node(workers: list[WorkerSlot], homes: tuple[int, ...], m: Matrix) -> dict[int, set[int]]:
    """Rows each node's workers compute, by the compiled split."""
    out: dict[int, set[int]] = {}
    for w, home in enumerate(homes):
        lo, hi = compiled_part(m.rows, m.row_group, w, len(workers))
        out.setdefault(home, set()).update(range(lo, hi))
    return out


def share_bytes(m: Matrix, worker: int, n_workers: int) -> int:
    """Bytes of m a worker reads per token, by the compiled split."""
    lo, hi = compiled_part(m.rows, m.row_group, worker, n_workers)
    return (hi - lo) * m.row_bytes


@pytest.mark.parametrize("name", MULTI_NODE)
def test_distribute_shards_are_exactly_each_nodes_worker_rows(machines: dict[str, Topology], name: str) -> None:
    topo = machines[name]
    workers = plan_workers(topo)
    plan = build_plan("distribute", topo, workers, MATRICES, KV)
    assert set(plan.nodes) == set(plan.homes) and len(plan.nodes) > 1
    assert set(plan.nodes) <= topo.allowed_nodes
    first = plan.homes[0]
    extra = 0
    for m in MATRICES:
        held: dict[int, set[int]] = {}
        for e in plan.extents_of(m.name):
            assert (e.byte_lo, e.byte_hi) == (e.row_lo * m.row_bytes, e.row_hi * m.row_bytes)
            assert not held.get(e.node, set()) & set(range(e.row_lo, e.row_hi))  # never twice on a node
            held.setdefault(e.node, set()).update(range(e.row_lo, e.row_hi))
        expected = {n: rows for n, rows in rows_by_node(workers, plan.homes, m).items() if rows}
        if m.lookup:
            # worker 0 looks up any token's row: the whole matrix sits on its node, and the
            # other nodes keep the rows their workers compute with it as the output projection
            expected[first] = set(range(m.rows))
            extra += sum(len(rows) for n, rows in expected.items() if n != first) * m.row_bytes
        assert held == expected
    per_node = plan.weight_bytes_per_node()
    assert per_node is not None and sum(per_node.values()) == TOTAL + extra


def test_memory_only_nodes_get_nothing(machines: dict[str, Topology]) -> None:
    topo = machines["nvidiagpunumanodes"]
    workers = plan_workers(topo)
    for mode in ("mirror", "distribute", "interleave"):
        plan = build_plan(mode, topo, workers, MATRICES, KV)
        assert plan.nodes == (0, 8)
        assert plan.weight_bytes_per_node().keys() == plan.kv_bytes_per_node().keys() == {0, 8}


@pytest.mark.parametrize("name", MULTI_NODE)
def test_mirror_holds_the_whole_model_on_every_node(machines: dict[str, Topology], name: str) -> None:
    topo = machines[name]
    plan = build_plan("mirror", topo, plan_workers(topo), MATRICES, KV)
    assert plan.weight_bytes_per_node() == dict.fromkeys(plan.nodes, TOTAL)
    for m in MATRICES:
        assert sorted((e.node, e.row_lo, e.row_hi) for e in plan.extents_of(m.name)) == \
            [(n, 0, m.rows) for n in plan.nodes]


@pytest.mark.parametrize("mode", ["mirror", "distribute"])
@pytest.mark.parametrize("name", MULTI_NODE)
def test_kv_heads_sit_on_every_node_whose_workers_read_them(machines: dict[str, Topology], name: str,
                                                            mode: str) -> None:
    topo = machines[name]
    workers = plan_workers(topo)
    for kv in (KV, KvHeads(n_head=4, n_head_kv=1, head_bytes=1 << 20)):
        plan = build_plan(mode, topo, workers, MATRICES, kv)
        group = kv.n_head // kv.n_head_kv
        needed: dict[int, set[int]] = {n: set() for n in plan.nodes}
        for w, home in enumerate(plan.homes):
            needed[home].update(h // group for h in range(*compiled_part(kv.n_head, 1, w, len(workers))))
        assert {n: set(heads) for n, heads in plan.kv_heads} == needed
        # every KV head is somewhere, and a head read from several nodes is on each of them
        assert set().union(*needed.values()) == set(range(kv.n_head_kv))
        assert plan.kv_bytes_per_node() == {n: len(h) * kv.head_bytes for n, h in needed.items()}


def test_one_kv_head_is_kept_once_per_reading_node(machines: dict[str, Topology]) -> None:
    topo = machines["memorysidecaches"]  # 4 nodes, 40 workers: 8 query heads reach only some nodes
    kv = KvHeads(n_head=8, n_head_kv=1, head_bytes=1 << 20)
    plan = build_plan("distribute", topo, plan_workers(topo), MATRICES, kv)
    readers = {home for w, home in enumerate(plan.homes) if len(range(*compiled_part(8, 1, w, len(plan.homes))))}
    assert len(readers) > 1
    assert plan.kv_bytes_per_node() == {n: (1 << 20) * (n in readers) for n in plan.nodes}


def with_free(topo: Topology, free: dict[int, int]) -> Topology:
    nodes = tuple(dataclasses.replace(n, free_bytes=free.get(n.os_index, n.free_bytes)) for n in topo.nodes)
    return dataclasses.replace(topo, nodes=nodes)


def big_model(rows: int) -> tuple[Matrix, ...]:
    """One 1 MiB-row matrix per GiB-scale shard: sizes the memory tests reason in."""
    return (Matrix("w", rows, 1 << 20, 1),)


def test_auto_mirrors_when_copies_fit_and_distributes_when_not(machines: dict[str, Topology]) -> None:
    base = machines["16amd64-8n2c"]  # 8 nodes with 2 workers each
    workers = plan_workers(base)
    weights = big_model(4 * 1024)  # one 4 GiB group, read in full by every token
    kv = KvHeads(n_head=16, n_head_kv=8, head_bytes=GiB // 2)  # each node's 2 workers read one KV head
    roomy = with_free(base, dict.fromkeys(range(8), 6 * GiB))
    assert choose_mode("auto", roomy, workers, weights, kv)[0] == "mirror"
    tight = with_free(base, {**dict.fromkeys(range(8), 6 * GiB), 5: 4 * GiB})
    mode, reason, groups = choose_mode("auto", tight, workers, weights, kv)
    assert mode == "distribute" and groups == ()  # the one group's copies cannot fit beside anything
    assert "node 5" in reason and "4.00 GiB free" in reason and "\n" not in reason
    # explicit modes are kept on several nodes
    assert choose_mode("interleave", tight, workers, weights, kv)[0] == "interleave"
    with pytest.raises(BadInputError):
        choose_mode("spread", roomy, workers, weights, kv)


def test_memory_check_names_node_numbers_and_a_mode_that_fits(machines: dict[str, Topology]) -> None:
    base = machines["16amd64-8n2c"]
    workers = plan_workers(base)  # 16 workers, 2 per node
    model = big_model(16 * 1024)  # 16 GiB: 2 GiB per node distributed
    # one KV head, read on every node: distribute keeps a copy per node, interleave one in all
    kv = KvHeads(n_head=16, n_head_kv=1, head_bytes=GiB)
    topo = with_free(base, {**dict.fromkeys(range(8), 5 * GiB // 2), 0: 6 * GiB})
    plan = build_plan("mirror", topo, workers, model, kv)
    with pytest.raises(ResourceError) as err:
        check_memory(plan, topo)
    msg = str(err.value)
    # node 0 is short: a 16 GiB copy and its 1 GiB of KV in 6 GiB
    assert "NUMA node 0" in msg and "17.00 GiB" in msg and "6.00 GiB free" in msg and "\n" not in msg
    # distribute needs 3 GiB a node (node 1 has 2.5), interleave (16 + 1) / 8 = 2.125 GiB
    assert "--numa interleave would fit" in msg
    dist = build_plan("distribute", topo, workers, model, kv)
    with pytest.raises(ResourceError, match=r"distribute needs 3\.00 GiB on NUMA node 1 .* 2\.50 GiB free"):
        check_memory(dist, topo)
    check_memory(build_plan("interleave", topo, workers, model, kv), topo)
    roomy = with_free(base, dict.fromkeys(range(8), 3 * GiB))
    check_memory(build_plan("distribute", roomy, workers, model, kv), roomy)
    starved = with_free(base, dict.fromkeys(range(8), GiB))
    with pytest.raises(ResourceError, match="no --numa mode fits"):
        check_memory(build_plan("distribute", starved, workers, model, kv), starved)
    # isolate is suggested on the node with the most free memory when only that fits
    one_big = with_free(base, {**dict.fromkeys(range(8), GiB), 6: 20 * GiB})
    with pytest.raises(ResourceError, match="--numa isolate --numa-node 6 would fit"):
        check_memory(build_plan("distribute", one_big, workers, model, kv), one_big)


def test_locality_of_each_mode(machines: dict[str, Topology]) -> None:
    topo = machines["48amd64-4pa2n6c-sparse"]  # 8 nodes, 6 workers each
    workers = plan_workers(topo)
    n = len({s.node for s in workers})
    for mode in ("mirror", "distribute"):
        loc = locality(build_plan(mode, topo, workers, MATRICES, KV))
        assert (loc["matmul_local_bytes"], loc["matmul_remote_bytes"]) == (MATMUL_BYTES, 0)
        assert loc["basis"] == "plan"
    # the looked-up embedding row is local too: distribute keeps the whole matrix on worker 0's node
    out = MATRICES[-1]
    for mode in ("mirror", "distribute"):
        loc = locality(build_plan(mode, topo, workers, MATRICES, KV))
        assert (loc["embedding_local_bytes"], loc["embedding_remote_bytes"], loc["remote_bytes"]) == (360, 0, 0)
    inter = locality(build_plan("interleave", topo, workers, MATRICES, KV))
    assert inter["basis"] == "interleave average"
    assert abs(inter["matmul_remote_bytes"] - MATMUL_BYTES * (n - 1) / n) <= 1
    assert inter["local_bytes"] + inter["remote_bytes"] == MATMUL_BYTES + out.row_bytes
    # isolate: only the target node's workers read locally
    iso_plan = build_plan("isolate", topo, workers, MATRICES, KV, node=33)
    iso = locality(iso_plan)
    mine = sum(share_bytes(m, w, len(workers)) for m in MATRICES for w, s in enumerate(workers) if s.node == 33)
    assert iso["matmul_local_bytes"] == mine
    assert iso_plan.weight_bytes_per_node() == {33: TOTAL}
    assert locality(build_plan("none", topo, workers, MATRICES, KV))["remote_bytes"] is None
    assert build_plan("none", topo, workers, MATRICES, KV).weight_bytes_per_node() is None


def test_untied_embedding_is_placed_but_not_read_as_a_matmul(machines: dict[str, Topology]) -> None:
    topo = machines["16amd64-8n2c"]
    plan = build_plan("distribute", topo, plan_workers(topo), UNTIED, KV)
    loc = locality(plan)
    matmul = sum(m.nbytes for m in UNTIED if m.matmul)
    assert (loc["matmul_local_bytes"], loc["matmul_remote_bytes"]) == (matmul, 0)
    assert (loc["embedding_local_bytes"], loc["embedding_remote_bytes"]) == (360, 0)
    assert sum(plan.weight_bytes_per_node().values()) == sum(m.nbytes for m in UNTIED)
    assert [(e.node, e.row_lo, e.row_hi) for e in plan.extents_of("token_embd")] == [(plan.homes[0], 0, 49153)]


def test_workers_on_nodes_the_cpuset_forbids_use_the_nearest_allowed_node(machines: dict[str, Topology]) -> None:
    topo = machines["16amd64-8n2c-cpusets"]  # workers on nodes 0,6,7, memory only on 1-4
    workers = plan_workers(topo)
    dist = topo.distances
    order = [n.os_index for n in topo.nodes]
    for s in workers:
        home = home_node(topo, s)
        assert home in topo.allowed_nodes
        if s.node not in topo.allowed_nodes:
            row = dist[order.index(s.node)]
            best = min(row[order.index(n)] for n in topo.allowed_nodes)
            assert row[order.index(home)] == best
    plan = build_plan("distribute", topo, workers, MATRICES, KV)
    loc = locality(plan)
    # the forbidden nodes' workers read their rows remotely, everyone else locally
    remote = sum(share_bytes(m, w, len(workers))
                 for m in MATRICES for w, s in enumerate(workers) if s.node not in topo.allowed_nodes)
    assert loc["matmul_remote_bytes"] == remote > 0


def single_node() -> Topology:
    return detect("/")


def test_every_mode_comes_down_to_the_one_node() -> None:
    topo = single_node()
    if len(topo.nodes) != 1:
        pytest.skip("this machine has several NUMA nodes")
    workers = plan_workers(topo)
    node = topo.nodes[0].os_index
    for requested in ("auto", "mirror", "distribute", "interleave", "isolate", "none"):
        mode, reason, _ = choose_mode(requested, topo, workers, MATRICES, KV)
        # auto and none: nothing to place; an explicit mode runs, over the one node
        assert mode == ("none" if requested in ("auto", "none") else requested)
        assert f"node {node}" in reason and requested in reason
        plan = build_plan(mode, topo, workers, MATRICES, KV)
        assert plan.nodes == (node,)
        assert plan.weight_bytes_per_node() == {node: TOTAL}
        assert plan.kv_bytes_per_node() == {node: KV.n_head_kv * KV.head_bytes}
        loc = locality(plan)
        assert (loc["local_bytes"], loc["remote_bytes"]) == (MATMUL_BYTES + 360, 0)


def test_one_node_in_use_on_a_multi_node_machine_comes_down_to_that_node(machines: dict[str, Topology]) -> None:
    topo = machines["16amd64-8n2c"]
    workers = plan_workers(isolate_topology(topo, 5))
    assert {s.node for s in workers} == {5} and len(workers) == 2
    assert choose_mode("mirror", topo, workers, MATRICES, KV)[0] == "mirror"
    assert choose_mode("auto", topo, workers, MATRICES, KV)[0] == "isolate"
    assert choose_mode("none", topo, workers, MATRICES, KV)[0] == "none"
    for mode in ("mirror", "distribute", "isolate"):
        plan = build_plan(mode, topo, workers, MATRICES, KV)
        assert plan.nodes == (5,) and plan.weight_bytes_per_node() == {5: TOTAL}
    with pytest.raises(BadInputError, match="--numa-node 9"):
        build_plan("isolate", topo, workers, MATRICES, KV, node=9)
    with pytest.raises(BadInputError, match="no CPU"):
        isolate_topology(topo_with_cpuless(topo), 250)


def topo_with_cpuless(topo: Topology) -> Topology:
    """topo plus a memory-only node 250, as on GPU and CXL machines."""
    extra = dataclasses.replace(topo.nodes[0], os_index=250, cpus=frozenset(), distances=None)
    return dataclasses.replace(topo, nodes=topo.nodes + (extra,), allowed_nodes=topo.allowed_nodes | {250})


@pytest.mark.parametrize("value, warns", [("1", True), ("2", True), ("0", False), (None, False)])
def test_numa_balancing_warning(tmp_path: Path, value: str | None, warns: bool) -> None:
    if value is not None:
        (tmp_path / "proc/sys/kernel").mkdir(parents=True)
        (tmp_path / "proc/sys/kernel/numa_balancing").write_text(value + "\n")
    warning = numa_balancing_warning(str(tmp_path))
    if warns:
        assert warning is not None and "sysctl kernel.numa_balancing=0" in warning and "\n" not in warning
    else:
        assert warning is None


def test_plan_is_frozen(machines: dict[str, Topology]) -> None:
    topo = machines["16amd64-8n2c"]
    plan = build_plan("mirror", topo, plan_workers(topo), MATRICES, KV)
    assert isinstance(plan, PlacementPlan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.mode = "distribute"  # type: ignore[misc]
    assert plan.workers_per_node() == dict.fromkeys(range(8), 2)


def table(rows: int, row_bytes: int, group: int, offset: int) -> MatrixEntry:
    """A weight-table entry as engine/weights.py writes it (qtype 0: unused here)."""
    return MatrixEntry(0, rows, 64, offset, rows * row_bytes, group)


@pytest.mark.parametrize("tied", [True, False])
def test_matrices_from_the_decoders_tables(tied: bool) -> None:
    groups = [1, 2, 2, 4, 8, 16, 4]  # q k v o gate up down: gate and up differ
    layer = MatrixTable.empty((2, len(LayerMatrix)))
    for il in range(2):
        for m, g in zip(LayerMatrix, groups):
            layer.put((il, m), table(100 + m, 10 + m, g, 1000 * (il * 7 + m)))
    model = MatrixTable.empty((len(ModelMatrix),))
    model.put(ModelMatrix.TOKEN_EMBD, table(500, 12, 2, 90_000))
    model.put(ModelMatrix.OUTPUT, table(500, 12, 2, 90_000 if tied else 99_000))
    mats = forward_matrices(layer, model)
    by_name = {m.name: m for m in mats}
    assert len(mats) == 2 * 7 + (1 if tied else 2)
    assert by_name["blk.1.q"] == Matrix("blk.1.q", 100, 10, 1)
    assert by_name["blk.0.gate"].row_group == by_name["blk.0.up"].row_group == 16  # cut together
    assert by_name["blk.0.down"].row_group == 4
    assert (by_name["output"].matmul, by_name["output"].lookup) == (True, tied)
    if not tied:
        assert by_name["token_embd"] == Matrix("token_embd", 500, 12, 2, matmul=False, lookup=True)


def test_kv_heads_match_the_cache_and_the_summary_line(machines: dict[str, Topology]) -> None:
    hp = HParams(n_layer=3, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=128, n_vocab=50,
                 n_ctx_train=64, rms_eps=1e-5, rope_base=1e4, rope_base_local=1e4, n_rot=16,
                 rope_neox=False, attn_scale=0.25, embd_scale=1.0, act=0, sliding_window=0,
                 swa_period=0, final_softcap=0.0)
    for kv_type in ("f16", "f32"):
        cache = KVCache(hp, 32, n_slots=2, kv_type=kv_type)
        heads = kv_heads(hp, 32, kv_type, n_slots=2)
        assert heads.n_head_kv * heads.head_bytes == cache.nbytes
    with pytest.raises(BadInputError, match="q8_0"):
        kv_heads(hp, 32, "q8_0")
    topo = machines["16amd64-8n2c"]
    plan = build_plan("distribute", topo, plan_workers(topo), MATRICES, KV)
    line = summary(plan)
    assert line.startswith("numa distribute: node 0: 2 workers, ") and "node 7: 2 workers" in line
    assert "\n" not in line
    assert "(the kernel places the pages)" in summary(build_plan("none", topo, plan_workers(topo), MATRICES, KV))


@pytest.mark.parametrize("mode", ["distribute", "mirror"])
def test_experts_are_placed_each_workers_rows_of_every_expert(mode: str, machines: dict[str, Topology]) -> None:
    """An expert tensor is one matrix per expert: distribute keeps on each node its
    workers' rows of every expert (no remote read whatever the routing), and a token
    reads experts_used / experts of them."""
    n_expert, rows, row_bytes = 4, 256, 36
    layer = MatrixTable.empty((1, len(LayerMatrix)))
    layer.put((0, LayerMatrix.Q), table(64, 36, 16, 0))
    layer.put((0, LayerMatrix.ROUTER), table(n_expert, 256, 1, 10_000))
    for i, slot in enumerate((LayerMatrix.GATE_EXPS, LayerMatrix.UP_EXPS, LayerMatrix.DOWN_EXPS)):
        layer.put((0, slot), table(n_expert * rows, row_bytes, 16, 100_000 * (i + 1)))
    model = MatrixTable.empty((len(ModelMatrix),))
    for m in ModelMatrix:
        model.put(m, table(500, 36, 16, 900_000))
    mats = forward_matrices(layer, model, n_expert_used=2)
    by_name = {m.name: m for m in mats}
    assert [f"blk.0.down_exps.{e}" in by_name for e in range(n_expert + 1)] == [True] * n_expert + [False]
    assert by_name["blk.0.gate_exps.3"] == Matrix("blk.0.gate_exps.3", rows, row_bytes, 16, read_share=0.5)
    topo = machines["16amd64-8n2c"]
    plan = build_plan(mode, topo, plan_workers(topo), mats, KV)
    loc = locality(plan)
    assert loc["matmul_remote_bytes"] == 0
    always = sum(m.nbytes for m in mats if m.read_share == 1.0)
    experts = sum(m.nbytes for m in mats if m.read_share < 1.0)
    assert experts == 3 * n_expert * rows * row_bytes
    assert loc["matmul_local_bytes"] == always + experts // 2
    if mode == "distribute":  # every expert's rows spread over all nodes
        for e in range(n_expert):
            assert {x.node for x in plan.extents_of(f"blk.0.gate_exps.{e}")} == set(range(8))
