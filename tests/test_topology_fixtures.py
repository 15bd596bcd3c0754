"""detect() against real machines recorded by hwloc (../shared/topologies beside the checkout).

Each fixture's JSON holds the facts hwloc found in its sysfs dump. Every fact is
checked twice: from the Topology object, and from the `numallm topology --json`
report (report.to_json), which uses the fixture schema's field names.
"""

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from numallm.numa.cpulist import parse_cpulist
from numallm.numa.report import render_text, to_json
from numallm.numa.topology import Topology, detect
from numallm.numa.workers import plan_workers

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "topologies"  # ../shared beside the checkout
FIXTURE_JSONS = sorted(FIXTURES.glob("*.json"))

# Four fifths of the dumps' files lie below these names (CPU caches and frequencies, PCI
# devices, memory blocks); the detector reads nothing there, and leaving them out makes
# the extraction several times faster on a busy disk.
UNREAD_SUBTREES = ("cache", "cpuidle", "cpufreq", "hugepages", "memory[0-9]*", "pci[0-9]*",
                   "bus", "class", "firmware", "module")

pytestmark = pytest.mark.skipif(not FIXTURE_JSONS, reason=f"no topology fixtures in {FIXTURES}")


@pytest.fixture(scope="session")
def extract(tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, Any]], str]:
    """fixture JSON -> root of its dump, each tarball extracted once per session when first needed."""
    dest = tmp_path_factory.mktemp("topologies")
    done: set[str] = set()

    def root_of(expected: dict[str, Any]) -> str:
        if expected["tarball"] not in done:
            # GNU tar: many times faster than tarfile on these thousands of small files;
            # it refuses absolute and ../ member names by default
            subprocess.run(["tar", "-xjf", str(FIXTURES / expected["tarball"]), "-C", str(dest),
                            *(f"--exclude={name}" for name in UNREAD_SUBTREES)], check=True)
            done.add(expected["tarball"])
        return str(dest / expected["fsroot"])
    return root_of


def lstopo_size(nbytes: int) -> str:
    """A size as lstopo prints it (1024-based unit, rounded), the fixtures' memory_hwloc."""
    for unit, shift, limit in (("KiB", 10, 10 << 20), ("MiB", 20, 10 << 30), ("GiB", 30, 10 << 40)):
        if nbytes < limit:
            return f"{((nbytes >> (shift - 1)) + 1) >> 1}{unit}"
    return f"{((nbytes >> 39) + 1) >> 1}TiB"


def facts_from_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """The comparable facts of a document in the fixture schema (a fixture or our report).
    Cores and packages become partitions of the PU set: their numbering is free."""
    pu_map = doc["pu_map"]
    core_members: dict[int, set[int]] = {}
    for cpu, pu in pu_map.items():
        core_members.setdefault(pu["core"], set()).add(int(cpu))
    return {
        "counts": {k: doc[k] for k in ("packages", "numa_nodes", "cores", "pus", "sysfs_numa",
                                       "smt_threads_per_core", "threads_per_core_histogram")},
        "cpus": parse_cpulist(doc["cpus"]),
        "offline_cpus": parse_cpulist(doc["offline_cpus"]),
        "allowed": doc["allowed"],
        "packages": sorted((p["os_index"], sorted(parse_cpulist(p["cpus"]))) for p in doc["package_list"]),
        "nodes": sorted((n["os_index"], sorted(parse_cpulist(n["cpus"])), n["cpuless"]) for n in doc["nodes"]),
        "cores": sorted((sorted(parse_cpulist(c["cpus"])), c["core_id"], c["package"]) for c in doc["cores_list"]),
        "pu_map": {int(cpu): (pu["package"], pu["core_id"], pu["node"], sorted(core_members[pu["core"]]))
                   for cpu, pu in pu_map.items()},
    }


def memory_facts(nodes: list[dict[str, Any]], exact: set[int]) -> dict[int, tuple[str, int | None]]:
    """{node: (lstopo display, exact bytes for the nodes in `exact`)}; memory_hwloc when given."""
    return {n["os_index"]: (n["memory_hwloc"] if "memory_hwloc" in n else lstopo_size(n["memory_bytes"]),
                            n["memory_bytes"] if n["os_index"] in exact else None)
            for n in nodes}


def facts_from_topology(topo: Topology) -> dict[str, Any]:
    """The same facts read straight off the Topology object (not through the report)."""
    hist: dict[int, int] = {}
    for core in topo.cores:
        hist[len(core.pus)] = hist.get(len(core.pus), 0) + 1
    allowed = None
    if topo.restricted:
        allowed = {"cpus": topo.allowed_cpus, "nodes": topo.allowed_nodes, "pus": len(topo.allowed_cpus),
                   "cores": sum(1 for c in topo.cores if set(c.pus) & topo.allowed_cpus),
                   "packages_with_allowed_pus": sum(1 for p in topo.packages if p.cpus & topo.allowed_cpus)}
    return {
        "counts": {"packages": len(topo.packages), "numa_nodes": len(topo.nodes), "cores": len(topo.cores),
                   "pus": len(topo.pus), "sysfs_numa": topo.sysfs_numa,
                   "smt_threads_per_core": next(iter(hist)) if len(hist) == 1 else None,
                   "threads_per_core_histogram": {str(k): v for k, v in sorted(hist.items())}},
        "cpus": topo.cpus,
        "offline_cpus": topo.offline_cpus,
        "allowed": allowed,
        "packages": sorted((p.os_index, sorted(p.cpus)) for p in topo.packages),
        "nodes": sorted((n.os_index, sorted(n.cpus), n.cpuless) for n in topo.nodes),
        "cores": sorted((list(c.pus), c.core_id, c.package) for c in topo.cores),
        "pu_map": {pu.os_index: (pu.package, topo.cores[pu.core].core_id, topo.node_of_cpu(pu.os_index),
                                 list(topo.cores[pu.core].pus)) for pu in topo.pus},
    }


def expected_allowed(allowed: dict[str, Any] | None) -> dict[str, Any] | None:
    if allowed is None:
        return None
    return {**allowed, "cpus": parse_cpulist(allowed["cpus"]), "nodes": parse_cpulist(allowed["nodes"])}


@pytest.fixture(params=FIXTURE_JSONS, ids=[p.stem for p in FIXTURE_JSONS])
def fixture(request: pytest.FixtureRequest,
            extract: Callable[[dict[str, Any]], str]) -> tuple[dict[str, Any], Topology]:
    expected = json.loads(request.param.read_text())
    return expected, detect(extract(expected))


def test_detector_finds_every_fact_of_the_fixture(fixture: tuple[dict[str, Any], Topology]) -> None:
    expected, topo = fixture
    want = facts_from_schema(expected)
    want["allowed"] = expected_allowed(expected["allowed"])
    got = facts_from_topology(topo)
    for key in want:
        assert got[key] == want[key], key
    exact = {n["os_index"] for n in expected["nodes"] if "memory_bytes" in n}
    got_nodes = [{"os_index": n.os_index, "memory_bytes": n.memory_bytes} for n in topo.nodes]
    assert memory_facts(got_nodes, exact) == memory_facts(expected["nodes"], exact)


def test_reports_match_the_fixture(fixture: tuple[dict[str, Any], Topology]) -> None:
    expected, topo = fixture
    plan = plan_workers(topo)
    text = render_text(topo, plan).splitlines()
    assert sum(line.lstrip().startswith("Core ") for line in text) == expected["cores"]
    assert sum(line.lstrip().startswith("worker ") for line in text) == len(plan)
    report = json.loads(json.dumps(to_json(topo, plan)))  # must survive JSON
    assert facts_from_schema(report) == facts_from_schema(expected)
    exact = {n["os_index"] for n in expected["nodes"] if "memory_bytes" in n}
    assert memory_facts(report["nodes"], exact) == memory_facts(expected["nodes"], exact)
    node_ids = [n["os_index"] for n in report["nodes"]]
    assert node_ids == sorted(node_ids)
    if report["distances"] is not None:  # a square matrix in node order, each node nearest itself
        assert [n["distances"] for n in report["nodes"]] == report["distances"]
        assert all(len(row) == len(node_ids) and 0 < row[i] == min(row)
                   for i, row in enumerate(report["distances"]))


def test_default_plan_is_one_worker_per_allowed_physical_core(
        fixture: tuple[dict[str, Any], Topology], caplog: pytest.LogCaptureFixture) -> None:
    expected, topo = fixture
    with caplog.at_level(logging.WARNING):
        plan = plan_workers(topo)
    allowed = expected_allowed(expected["allowed"])
    n_cores = allowed["cores"] if allowed else expected["cores"]
    allowed_cpus = allowed["cpus"] if allowed else parse_cpulist(expected["cpus"])
    assert [s.worker for s in plan] == list(range(n_cores))
    assert len({s.core for s in plan}) == n_cores  # one worker per core...
    for slot in plan:
        assert slot.cpu in allowed_cpus and slot.cpu in topo.cores[slot.core].pus  # ...on one of its PUs
        node = expected["pu_map"][str(slot.cpu)]["node"]
        assert slot.node == node or (node is None and slot.node in topo.allowed_nodes)
    assert [s.node for s in plan] == sorted(s.node for s in plan)  # node by node
    assert not [r for r in caplog.records if "--threads" in r.getMessage()]
