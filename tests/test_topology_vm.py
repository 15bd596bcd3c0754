"""Topology detection and worker pinning on real multi-node kernels, in the NUMA VM.

Each machine shape boots once (about 5 s, plus a few seconds per Python start under
emulation) and runs tests/vm/topology_probe.py, which gathers every observation; the
tests below judge them against the shape the VM was given.
"""

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from numallm.numa.cpulist import format_cpulist, parse_cpulist
from vm_harness import NUMA_VM, PYTHON, REPO, run_in_vm
PROBE = Path(__file__).parent / "vm" / "topology_probe.py"
GUEST_MEM_MIB = 2048

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(not NUMA_VM.exists(), reason=f"the NUMA VM script {NUMA_VM} is absent")]


@dataclass(frozen=True)
class Shape:
    """A VM machine: CPUs numbered socket by socket, core by core, SMT siblings adjacent
    (QEMU's order), split evenly over the nodes in order."""

    nodes: int
    sockets: int
    cores: int
    threads: int
    distance: int

    @property
    def n_cpus(self) -> int:
        return self.sockets * self.cores * self.threads

    def node_cpus(self, node: int) -> set[int]:
        per = self.n_cpus // self.nodes
        return set(range(node * per, (node + 1) * per))

    def node_of(self, cpu: int) -> int:
        return cpu // (self.n_cpus // self.nodes)

    def core_cpus(self) -> list[set[int]]:
        return [set(range(c, c + self.threads)) for c in range(0, self.n_cpus, self.threads)]

    def args(self) -> list[str]:
        """numa-vm's options for this shape."""
        return ["--nodes", str(self.nodes), "--sockets", str(self.sockets), "--cores", str(self.cores),
                "--threads", str(self.threads), "--dist", str(self.distance)]


SHAPES = {
    "2 sockets, 2 nodes, SMT2": Shape(nodes=2, sockets=2, cores=2, threads=2, distance=21),
    "2 sockets, 4 nodes, SMT2": Shape(nodes=4, sockets=2, cores=2, threads=2, distance=17),
}


@pytest.fixture(scope="module", params=list(SHAPES.values()), ids=list(SHAPES))
def guest(request: pytest.FixtureRequest) -> tuple[Shape, dict[str, Any]]:
    """Boot the shape once and run the probe in it."""
    shape: Shape = request.param
    # The guest sees the host's / read-only and a fresh /tmp, but the current directory
    # read-write at its own path: run from the checkout (so the probe and the editable
    # install resolve wherever it is cloned) and let the probe write into a folder in it.
    workdir = Path(tempfile.mkdtemp(prefix=".numa-vm-", dir=REPO))
    try:
        returncode, output = run_in_vm([*shape.args(), "--mem", f"{GUEST_MEM_MIB}M"],
                                       [PYTHON, str(PROBE.resolve()), str(workdir / "probe.json")], timeout=420)
        assert returncode == 0, f"probe failed in the VM (exit {returncode}):\n{output[-4000:]}"
        return shape, json.loads((workdir / "probe.json").read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_detector_reports_the_machine_the_vm_was_given(guest: tuple[Shape, dict[str, Any]]) -> None:
    shape, seen = guest
    report = seen["report"]
    assert (report["packages"], report["numa_nodes"], report["cores"], report["pus"]) == (
        shape.sockets, shape.nodes, shape.sockets * shape.cores, shape.n_cpus)
    assert report["smt_threads_per_core"] == shape.threads and report["offline_cpus"] == ""
    assert report["allowed"] is None and report["libnuma"] is True
    assert [(n["os_index"], parse_cpulist(n["cpus"])) for n in report["nodes"]] == [
        (n, frozenset(shape.node_cpus(n))) for n in range(shape.nodes)]
    assert report["distances"] == [[10 if a == b else shape.distance for b in range(shape.nodes)]
                                   for a in range(shape.nodes)]
    assert sorted(parse_cpulist(c["cpus"]) for c in report["cores_list"]) == sorted(shape.core_cpus(), key=min)
    per_socket = shape.cores * shape.threads
    assert [(p["os_index"], parse_cpulist(p["cpus"])) for p in report["package_list"]] == [
        (s, frozenset(range(s * per_socket, (s + 1) * per_socket))) for s in range(shape.sockets)]
    share = GUEST_MEM_MIB // shape.nodes << 20
    for node in report["nodes"]:  # the kernel keeps a little of each node for itself
        assert 0.7 * share < node["memory_bytes"] <= share and 0 < node["free_bytes"] < node["memory_bytes"]
    assert f"NUMA node {shape.nodes - 1}:" in seen["text"]


def test_each_worker_runs_pinned_where_planned(guest: tuple[Shape, dict[str, Any]]) -> None:
    shape, seen = guest
    plan = seen["report"]["workers"]
    assert len(plan) == shape.sockets * shape.cores  # one per physical core
    assert [w["node"] for w in plan] == sorted(w["node"] for w in plan)
    for run in (seen["workers"], seen["smt_workers"]):
        assert len({w["tid"] for w in run}) == len(run)  # one thread each
        for i, w in enumerate(run):
            _, cpu, node = w["slot"]
            assert (w["worker"], w["affinity"], w["stat_cpu"]) == (i, [cpu], cpu)
            assert w["node"] == node == shape.node_of(cpu)
    assert sorted(w["slot"][1] for w in seen["smt_workers"]) == list(range(shape.n_cpus))
    assert {w["slot"][1] for w in seen["workers"]} == {min(c) for c in shape.core_cpus()}


def test_worker_memory_lands_on_its_node(guest: tuple[Shape, dict[str, Any]]) -> None:
    _, seen = guest
    for bound in seen["page_nodes"]:  # strict binding, then preferred node
        assert bound == [[w["node"]] * len(pages) for w, pages in zip(seen["workers"], bound)]
    for node in seen["report"]["nodes"]:
        total, free = seen["libnuma_node_memory"][str(node["os_index"])]
        assert total == node["memory_bytes"] and 0 < free <= total


def test_affinity_restriction_is_the_allowed_view(guest: tuple[Shape, dict[str, Any]]) -> None:
    shape, seen = guest
    last = shape.nodes - 1
    confined = seen["confined_to_last_node"]
    assert confined["allowed"]["cpus"] == format_cpulist(shape.node_cpus(last))
    assert confined["allowed"]["cores"] == len(shape.node_cpus(last)) // shape.threads
    assert confined["allowed"]["nodes"] == format_cpulist(range(shape.nodes))  # memory stays free
    assert {(w["node"], shape.node_of(w["cpu"])) for w in confined["workers"]} == {(last, last)}
