"""The engine under every --numa mode on machines with 2 and 4 NUMA nodes, in the NUMA VM.

One script loads a tiny synthetic model under each mode in turn, decodes 8 greedy
tokens and reads back from the kernel (move_pages, engine/page_report.py) where the
pages of every weight shard or copy and every KV head are. It runs here first (one
node: every mode degrades to it; this also compiles the kernels into the cache the
guests load from, see tests/vm_harness.py), then in a 2-node and a 4-node VM booted at
once. The tests judge those observations against what each mode promises (issue 7),
computing the expected rows and KV heads per node from the work split themselves.
The same boots run test_placement_moe_vm.py's tiny mixture of experts under mirror,
distribute, interleave and the budgeted mirror (issue 19): the greedy tokens and logits
of every mode equal to the single-node ones, and no weight byte read from another node
where the experts are mirrored or split.
About 2 minutes with a warm cache, 4 when the kernels must be compiled first, on two
busy cores; most of a guest's time is starting Python and Numba under emulation.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import numpy as np
import pytest
from numallm.numa.placement import tensor_group
from numallm.numa.split import part
from synthetic import write_tiny_llama
from test_placement_moe_vm import EXPERT_GROUPS, budget_for_all_but_the_experts, group_bytes, write_moe
import vm_harness
from vm_harness import PYTHON, Machine, Outcome, guest_code, portable_env, run_here_and_in_vms, vm_available, workdir

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(not vm_available(), reason="the NUMA VM (../shared/numa-vm) is absent")]

MODES = ("mirror", "distribute", "interleave", "isolate", "none")
# The mixture of experts (test_placement_moe_vm.py's) under these and "budget": --numa
# mirror --mirror-budget with room for all but the experts. Not auto: with room for a
# copy on every node, as here, it mirrors (test_placement_vm.py checks that).
MOE_MODES = ("mirror", "distribute", "interleave")
# 4 CPUs each: 2 workers per node on 2 nodes, 1 per node on 4 (one worker per core).
MACHINES = {
    "2 nodes": Machine(nodes=2, sockets=2, cores=2, distance=21),
    "4 nodes": Machine(nodes=4, sockets=2, cores=2, distance=17),
}
PAGE = 4096
N_TOKENS = 8
each_machine = pytest.mark.parametrize("machine", list(MACHINES))

# Runs here and in each guest. MODEL, MODES, MOE_MODEL, MOE_RUNS and N_TOKENS are
# prepended; save_result comes from vm_harness. The greedy loop runs the engine's batch
# API one token at a time (as generate does) so that the token ids and their logits can
# be compared.
OBSERVE = """
import numpy as np
from numallm.engine import Engine
from numallm.kernels.simd.cpu import simd_path
from numallm.kernels.numba_cache import compiled_sources_digest

def observe(model, runs):
    out = {}
    for name, options in runs.items():
        with Engine(model, **options) as e:
            ids = e.tokenize("hello world")
            logits = e.eval_batch(ids, np.zeros(len(ids)), np.arange(len(ids)), [len(ids) - 1])[0]
            rows = []
            for _ in range(N_TOKENS):
                rows.append(logits.tolist())
                ids.append(int(np.argmax(logits)))
                logits = e.eval_batch(ids[-1:], [0], [len(ids) - 1], [0])[0]
            placed = e.placed
            plan = placed.plan
            out[name] = {
                "ids": ids, "logits": rows, "report": placed.page_report(), "homes": list(plan.homes),
                "nodes": list(plan.nodes), "n_head": e.hparams.n_head, "n_head_kv": e.hparams.n_head_kv,
                "matrices": [{"name": m.name, "rows": m.rows, "row_bytes": m.row_bytes, "row_group": m.row_group,
                              "matmul": m.matmul, "lookup": m.lookup} for m in plan.matrices],
            }
    return out

out = {"simd_path": simd_path(), "sources_digest": compiled_sources_digest()}
out.update(observe(MODEL, {mode: {"numa": mode} for mode in MODES}))
out["moe"] = observe(MOE_MODEL, MOE_RUNS)
save_result(out)
"""


@pytest.fixture(scope="module")
def runs() -> dict[str, Outcome]:
    """The observations here and in each VM (one boot per machine)."""
    with workdir() as folder:  # the guests read the models from the checkout (their /tmp is their own)
        # Matrices of several pages each, so that interleave's page-by-page spread shows in
        # each worker's rows; still milliseconds per token.
        model = write_tiny_llama(folder / "tiny.gguf", n_embd=256, n_head=4, n_head_kv=2, n_ff=512)
        moe = write_moe(folder / "moe.gguf")
        moe_runs = {**{m: {"numa": m} for m in MOE_MODES},
                    "budget": {"numa": "mirror", "mirror_budget": budget_for_all_but_the_experts(group_bytes(moe))}}
        script = (f"MODEL = {str(model)!r}\nMODES = {MODES!r}\nMOE_MODEL = {str(moe)!r}\nMOE_RUNS = {moe_runs!r}\n"
                  f"N_TOKENS = {N_TOKENS}\n" + OBSERVE)
        here, vms = run_here_and_in_vms(script, list(MACHINES.values()), imports=["numallm.engine.engine"])
    return {"here": here, **dict(zip(MACHINES, vms))}


def _observed(runs: dict[str, Outcome], machine: str) -> dict[str, Any]:
    return runs[machine].check()


def _nodes(machine: str) -> list[int]:
    return list(range(MACHINES[machine].nodes))


@each_machine
def test_the_guest_runs_the_avx2_build_compiled_here(runs: dict[str, Outcome], machine: str) -> None:
    here, seen = runs["here"].check(), _observed(runs, machine)
    assert here["simd_path"] == seen["simd_path"] == "avx2"  # kernels/simd/cpu.py obeys the portable target
    assert here["sources_digest"] == seen["sources_digest"]  # the cache stamp agrees


@each_machine
def test_greedy_tokens_are_the_single_node_tokens_in_every_mode(runs: dict[str, Outcome], machine: str) -> None:
    here = runs["here"].check()
    single = here["isolate"]  # one node on any machine
    assert len(single["ids"]) == len(here["none"]["ids"]) > N_TOKENS
    seen = _observed(runs, machine)
    assert {m: seen[m]["report"]["mode"] for m in MODES} == {m: m for m in MODES}
    assert seen["mirror"]["nodes"] == seen["distribute"]["nodes"] == _nodes(machine)
    for obs in [*(here[m] for m in MODES), *(seen[m] for m in MODES)]:
        assert obs["ids"] == single["ids"]
        # bit for bit: the same compiled kernels everywhere, and each output row and each
        # attention head is computed whole by one worker, however many there are
        np.testing.assert_array_equal(obs["logits"], single["logits"])


def _distributed_rows(m: dict[str, Any], homes: list[int], nodes: list[int]) -> dict[int, set[int]]:
    """The rows of matrix m each node holds when distributed: those its workers compute
    (forward.py's split), and a looked-up matrix (the token embeddings) whole on worker 0's."""
    want: dict[int, set[int]] = {n: set() for n in nodes}
    for w, home in enumerate(homes):
        if m["matmul"]:
            want[home].update(range(*part(m["rows"], m["row_group"], w, len(homes))))
    if m["lookup"]:
        want[homes[0]] = set(range(m["rows"]))
    return want


def _rows_by_node(report: dict[str, Any], m: dict[str, Any], nodes: list[int]) -> dict[int, set[int]]:
    got: dict[int, set[int]] = {n: set() for n in nodes}
    for e in report["extents"]:
        if e["matrix"] == m["name"]:
            got[e["planned_node"]].update(range(e["row_lo"], e["row_hi"]))
    return got


@each_machine
def test_every_shard_and_copy_is_on_its_node(runs: dict[str, Outcome], machine: str) -> None:
    seen = _observed(runs, machine)
    nodes = _nodes(machine)
    for mode in ("mirror", "distribute", "isolate"):
        for e in seen[mode]["report"]["extents"]:
            assert e["bytes_by_node"] == {str(e["planned_node"]): e["bytes"]} and e["missing_bytes"] == 0, (mode, e)

    # mirror: every node in use holds every matrix whole
    mirror = seen["mirror"]
    whole = {(m["name"], n, 0, m["rows"]) for m in mirror["matrices"] for n in nodes}
    assert {(e["matrix"], e["planned_node"], e["row_lo"], e["row_hi"]) for e in mirror["report"]["extents"]} == whole

    # distribute: each node holds exactly the rows its workers compute (forward.py's split),
    # plus the looked-up token embeddings whole on worker 0's node
    dist = seen["distribute"]
    homes = dist["homes"]
    assert sorted(set(homes)) == nodes
    for m in dist["matrices"]:
        assert _rows_by_node(dist["report"], m, nodes) == _distributed_rows(m, homes, nodes), m["name"]
    # one copy: every row once, plus the embedding rows other nodes compute as the output,
    # plus at most a page at each end of a shard (a page shared by two nodes' rows is on both)
    matrix_bytes = sum(m["rows"] * m["row_bytes"] for m in dist["matrices"])
    looked_up = sum(m["rows"] * m["row_bytes"] for m in dist["matrices"] if m["lookup"])
    edges = 2 * PAGE * len(dist["report"]["extents"])
    assert matrix_bytes <= sum(n["weight_bytes"] for n in dist["report"]["nodes"]) <= matrix_bytes + looked_up + edges

    # isolate: weights and workers on one node
    iso = seen["isolate"]
    (node,) = iso["nodes"]
    assert set(iso["homes"]) == {node}
    assert {n["os_index"] for n in iso["report"]["nodes"] if n["weight_bytes"]} == {node}

    # interleave: the pages of the one buffer go round-robin over every node
    (buf,) = seen["interleave"]["report"]["buffers"]
    per_node = [buf["bytes_by_node"].get(str(n), 0) for n in nodes]
    assert sum(per_node) >= buf["planned_bytes"] and max(per_node) - min(per_node) <= 2 * PAGE, per_node


@each_machine
def test_kv_heads_are_kept_on_the_nodes_whose_workers_read_them(runs: dict[str, Outcome], machine: str) -> None:
    seen = _observed(runs, machine)
    for mode in ("mirror", "distribute"):
        obs = seen[mode]
        homes, n_head, n_head_kv = obs["homes"], obs["n_head"], obs["n_head_kv"]
        group = n_head // n_head_kv
        want: dict[int, set[int]] = {n: set() for n in _nodes(machine)}
        for w, home in enumerate(homes):  # forward.py: worker w attends with query heads part(n_head, 1, w, W)
            want[home].update(q // group for q in range(*part(n_head, 1, w, len(homes))))
        kept: dict[int, set[int]] = {n: set() for n in _nodes(machine)}
        for h in obs["report"]["kv"]:
            if h["kept"]:
                kept[h["buffer"]].add(h["head"])
                assert h["bytes_by_node"].keys() == {str(h["buffer"])} and h["missing_bytes"] == 0, (mode, h)
            else:  # never written, so never given a page
                assert h["bytes_by_node"] == {}, (mode, h)
        assert kept == want, mode
    iso = seen["isolate"]
    assert {n["os_index"] for n in iso["report"]["nodes"] if n["kv_bytes"]} == set(iso["nodes"])
    assert {n["os_index"] for n in seen["interleave"]["report"]["nodes"] if n["kv_bytes"]} == set(_nodes(machine))


@each_machine
def test_locality_figures(runs: dict[str, Outcome], machine: str) -> None:
    seen = _observed(runs, machine)
    n = MACHINES[machine].nodes
    for mode in ("mirror", "distribute", "isolate"):
        assert seen[mode]["report"]["per_token"]["matmul_remote_bytes"] == 0, mode
    assert seen["mirror"]["report"]["per_token"]["embedding_remote_bytes"] == 0
    row = max(m["row_bytes"] for m in seen["distribute"]["matrices"] if m["lookup"])
    assert 0 <= seen["distribute"]["report"]["per_token"]["embedding_remote_bytes"] <= row
    t = seen["interleave"]["report"]["per_token"]
    remote = t["matmul_remote_bytes"] / (t["matmul_local_bytes"] + t["matmul_remote_bytes"])
    assert remote == pytest.approx((n - 1) / n, abs=0.05)


MOE_MODE_OF = {**{m: m for m in MOE_MODES}, "budget": "partial-mirror"}


@each_machine
def test_moe_greedy_tokens_are_the_single_node_tokens_in_every_mode(runs: dict[str, Outcome], machine: str) -> None:
    here, seen = runs["here"].check()["moe"], _observed(runs, machine)["moe"]
    single = here["mirror"]  # one node here: every mode degrades to it
    assert len(single["ids"]) > N_TOKENS
    assert {name: obs["report"]["mode"] for name, obs in seen.items()} == MOE_MODE_OF
    for obs in [*here.values(), *seen.values()]:
        assert obs["ids"] == single["ids"]
        # bit for bit, as the dense model: each row of an expert is computed whole by one
        # worker, which then sums those columns of the k experts' outputs in the token's
        # order of choice (forward.py's _experts), however many workers there are
        np.testing.assert_array_equal(obs["logits"], single["logits"])


@each_machine
@pytest.mark.parametrize("name", ["mirror", "distribute", "budget"])
def test_moe_weights_are_read_with_no_remote_byte(runs: dict[str, Outcome], machine: str, name: str) -> None:
    """mirror: every group whole on every node; distribute: each node's workers' rows of
    every expert (and attention, router, output); budget: attention, router and output
    mirrored, the experts distributed. The pages, read back, are where planned."""
    obs = _observed(runs, machine)["moe"][name]
    rep, nodes, homes = obs["report"], _nodes(machine), obs["homes"]
    assert obs["nodes"] == nodes and sorted(set(homes)) == nodes
    for e in rep["extents"]:
        assert e["missing_bytes"] == 0 and e["bytes_by_node"] == {str(e["planned_node"]): e["bytes"]}, e
    groups = {g["name"]: g for g in rep["groups"]}
    assert set(EXPERT_GROUPS) < set(groups)
    sizes: dict[str, int] = {}
    for m in obs["matrices"]:
        g = tensor_group(m["name"])
        sizes[g] = sizes.get(g, 0) + m["rows"] * m["row_bytes"]
        mirrored = name == "mirror" or (name == "budget" and g not in EXPERT_GROUPS)
        want = {n: set(range(m["rows"])) for n in nodes} if mirrored else _distributed_rows(m, homes, nodes)
        assert _rows_by_node(rep, m, nodes) == want, m["name"]
    for g, nbytes in sizes.items():
        if name == "budget":
            assert groups[g]["placement"] == ("distribute" if g in EXPERT_GROUPS else "mirror"), groups[g]
        if name == "mirror" or (name == "budget" and g not in EXPERT_GROUPS):
            assert groups[g]["bytes_by_node"] == {str(n): nbytes for n in nodes}, g
    pt = rep["per_token"]
    assert pt["remote_bytes"] == 0 and pt["matmul_local_bytes"] > 0


def test_a_guest_that_would_compile_stops_at_once() -> None:
    # The guard the guests run under, tried here: a function missing from the cache must
    # be a quick, named failure, not many minutes of emulated compiling.
    script = "from numba import njit\n@njit\ndef not_in_the_cache(x):\n    return x + 1\nnot_in_the_cache(1)\n"
    with workdir() as folder:
        run = subprocess.run([PYTHON, "-c", guest_code(script, folder)], env=portable_env(), capture_output=True,
                             text=True, timeout=120, check=False)
    assert run.returncode != 0
    assert "Numba had to compile not_in_the_cache(int64)" in run.stderr, run.stderr[-2000:]


def test_a_guest_that_does_not_boot_in_time_is_booted_again() -> None:
    # No guest boots in 2 s: each try is killed at its deadline, not at the end of its
    # 60 s timeout, and the last one's failure is what the caller sees.
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match="did not boot in 2 s") as seen:
        returncode, _ = vm_harness.run_in_vm(["--nodes", "2"], ["/bin/true"], timeout=60, boot_deadline=2)
    assert returncode != 0 and len(seen) == vm_harness.BOOT_TRIES - 1
    assert time.perf_counter() - t0 < 60
