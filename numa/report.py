"""`numallm topology`: the machine and the worker plan, for people (text) and scripts (JSON).

The JSON uses the field names of the topology fixtures' schema
(shared/topologies/README.md beside the checkout) for the facts they share, so a report of a
recorded root can be compared with the fixture's expected facts field by field.
"""

from collections import Counter
from typing import Any

from numallm.numa.cpulist import format_cpulist
from numallm.numa.topology import Core, NumaNode, Topology
from numallm.numa.workers import WorkerSlot

SCHEMA_VERSION = 1


def to_json(topo: Topology, plan: list[WorkerSlot]) -> dict[str, Any]:
    """Every fact of the topology and the worker plan, as JSON-ready data."""
    hist = Counter(len(core.pus) for core in topo.cores)
    return {
        "schema_version": SCHEMA_VERSION,
        "root": topo.root,
        "sysfs_numa": topo.sysfs_numa,
        "packages": len(topo.packages),
        "numa_nodes": len(topo.nodes),
        "cores": len(topo.cores),
        "pus": len(topo.pus),
        "smt_threads_per_core": next(iter(hist)) if len(hist) == 1 else None,
        "threads_per_core_histogram": {str(k): hist[k] for k in sorted(hist)},
        "cpus": format_cpulist(topo.cpus),
        "offline_cpus": format_cpulist(topo.offline_cpus),
        "allowed": _allowed_json(topo) if topo.restricted else None,
        "package_list": [{"os_index": p.os_index, "cpus": format_cpulist(p.cpus),
                          "nodes": sorted({topo.node_of_cpu(c) for c in p.cpus} - {None})}
                         for p in topo.packages],
        "nodes": [{"os_index": n.os_index, "cpus": format_cpulist(n.cpus), "cpuless": n.cpuless,
                   "memory_bytes": n.memory_bytes, "free_bytes": n.free_bytes,
                   "distances": None if n.distances is None else list(n.distances)}
                  for n in topo.nodes],
        "distances": None if topo.distances is None else [list(r) for r in topo.distances],
        "cores_list": [{"index": c.index, "core_id": c.core_id, "package": c.package, "die": c.die,
                        "cpus": format_cpulist(c.pus)} for c in topo.cores],
        "pu_map": {str(pu.os_index): {"core": pu.core, "core_id": topo.cores[pu.core].core_id,
                                      "package": pu.package, "node": pu.node}
                   for pu in topo.pus},
        "libnuma": topo.libnuma,
        "workers": [{"worker": s.worker, "cpu": s.cpu, "node": s.node, "core": s.core} for s in plan],
    }


def _allowed_json(topo: Topology) -> dict[str, Any]:
    cpus = topo.allowed_cpus
    return {"cpus": format_cpulist(cpus), "nodes": format_cpulist(topo.allowed_nodes),
            "pus": len(cpus), "cores": len({topo.pu(c).core for c in cpus}),
            "packages_with_allowed_pus": len({topo.pu(c).package for c in cpus})}


def render_text(topo: Topology, plan: list[WorkerSlot]) -> str:
    """The human view: package > node > core > PUs, memory, distances, what this process
    may use, and which CPU each worker gets."""
    lines = [_summary(topo), *_tree_lines(topo)]
    memory_only = [n for n in topo.nodes if n.cpuless]
    if memory_only:
        lines.append("  Memory-only NUMA nodes (no CPUs):")
        lines.extend(f"    {_node_line(n)}" for n in memory_only)
    if topo.offline_cpus:
        lines.append(f"  Offline CPUs: {format_cpulist(topo.offline_cpus)}")
    lines += _distance_lines(topo)
    lines.append(_allowed_line(topo))
    lines.append(_libnuma_line(topo.libnuma))
    n_cores = len({s.core for s in plan})
    lines.append(f"Workers: {len(plan)} on {n_cores} physical core{'s' if n_cores != 1 else ''}")
    lines.extend(f"  worker {s.worker:>3} -> CPU {s.cpu:>3}  (core {s.core}, node {s.node})" for s in plan)
    return "\n".join(lines)


def _tree_lines(topo: Topology) -> list[str]:
    """Package > NUMA node > core > PUs, as hwloc draws it; when a node spans several
    packages (a UMA multi-socket machine) the node goes above them instead."""
    package_of = {c: i for i, p in enumerate(topo.packages) for c in p.cpus}

    def package_key(core: Core) -> int | None:
        return package_of[core.pus[0]]

    def node_key(core: Core) -> int | None:
        return topo.node_of_cpu(core.pus[0])

    def package_line(i: int | None) -> str:
        p = topo.packages[i or 0]  # every CPU has a package
        return f"Package {p.os_index}: CPUs {format_cpulist(p.cpus)}"

    def node_line(node: int | None) -> str:
        return "no online NUMA node" if node is None else _node_line(topo.node(node))

    levels = [(package_key, package_line), (node_key, node_line)]
    if any(len({package_of[c] for c in n.cpus}) > 1 for n in topo.nodes):
        levels.reverse()
    (outer_key, outer_line), (inner_key, inner_line) = levels
    lines = []
    for outer in sorted({outer_key(c) for c in topo.cores}, key=_none_last):
        lines.append(f"  {outer_line(outer)}")
        cores = [c for c in topo.cores if outer_key(c) == outer]
        for inner in sorted({inner_key(c) for c in cores}, key=_none_last):
            lines.append(f"    {inner_line(inner)}")
            lines.extend(f"      {_core_line(topo, c)}" for c in cores if inner_key(c) == inner)
    return lines


def _summary(topo: Topology) -> str:
    hist = Counter(len(core.pus) for core in topo.cores)
    smt = ", ".join(f"{hist[k]} with {k}" for k in sorted(hist))
    return (f"Machine (root {topo.root}): {_count(len(topo.packages), 'package')}, "
            f"{_count(len(topo.nodes), 'NUMA node')}, {_count(len(topo.cores), 'core')} "
            f"({smt} thread{'s' if len(hist) > 1 or 1 not in hist else ''} each), "
            f"{_count(len(topo.pus), 'PU')}")


def _node_line(node: NumaNode) -> str:
    cpus = format_cpulist(node.cpus) or "none"
    return (f"NUMA node {node.os_index}: {_size(node.memory_bytes)} memory, "
            f"{_size(node.free_bytes)} free; CPUs {cpus}")


def _core_line(topo: Topology, core: Core) -> str:
    pus = " ".join(str(c) if c in topo.allowed_cpus else f"{c}(not allowed)" for c in core.pus)
    die = "" if core.die is None else f", die {core.die}"
    return f"Core {core.index} (core_id {core.core_id}{die}): PU{'s' if len(core.pus) > 1 else ''} {pus}"


def _distance_lines(topo: Topology) -> list[str]:
    matrix = topo.distances
    if matrix is None:
        return ["NUMA distances: unknown (node*/distance missing or inconsistent)"]
    ids = [n.os_index for n in topo.nodes]
    width = max(4, *(len(str(v)) + 1 for row in matrix for v in row), *(len(str(i)) + 1 for i in ids))
    lines = ["NUMA distances (10 = local):", "  node" + "".join(f"{i:>{width}}" for i in ids)]
    lines += [f"  {i:>4}" + "".join(f"{v:>{width}}" for v in row) for i, row in zip(ids, matrix)]
    return lines


def _allowed_line(topo: Topology) -> str:
    if not topo.restricted:
        return (f"This process may use: every online CPU ({format_cpulist(topo.allowed_cpus)}) "
                f"and every NUMA node ({format_cpulist(topo.allowed_nodes)}); nothing restricts it")
    a = _allowed_json(topo)
    return (f"This process may use: CPUs {a['cpus']} ({_count(a['pus'], 'PU')} on "
            f"{_count(a['cores'], 'core')}) and NUMA nodes {a['nodes']} (affinity/cpuset restricted)")


def _libnuma_line(libnuma: bool | None) -> str:
    if libnuma is None:
        return "libnuma: not checked (recorded root, not this machine)"
    return "libnuma: available" if libnuma else "libnuma: missing (install the Debian package libnuma1)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "unknown"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):.1f} {unit}"
    return f"{nbytes >> 10} KiB"


def _none_last(node: int | None) -> tuple[bool, int]:
    return (node is None, node or 0)
