"""The machine as hwloc models it (Machine > Package > NUMA node > Core > PU), from sysfs.

Everything comes from the kernel's own description under a root prefix (see sysfs.py),
never from CPU numbering: SMT siblings are whatever core_cpus/thread_siblings say
(adjacent ids on AMD and laptops, N apart on Xeons), packages are physical_package_id,
NUMA nodes are node*/cpulist. Only online CPUs that have a topology/ directory count.
"""

import logging
import os
import re
from dataclasses import dataclass
from functools import cached_property

from numallm.errors import TopologyError
from numallm.numa import libnuma
from numallm.numa.allowed import read_restriction
from numallm.numa.cpulist import format_cpulist, parse_cpulist
from numallm.numa.sysfs import CPU_DIR, NODE_DIR, SysfsRoot

log = logging.getLogger(__name__)

LOCAL_DISTANCE = 10  # ACPI SLIT: a node's distance to itself


@dataclass(frozen=True)
class PU:
    """A logical CPU (hardware thread), named by its Linux CPU number."""

    os_index: int
    core: int  # index into Topology.cores
    package: int  # physical_package_id
    node: int | None  # the NUMA node listing it; None when that node is offline


@dataclass(frozen=True)
class Core:
    """A physical core and its PUs (one per SMT thread)."""

    index: int  # 0..cores-1: packages in order of their first CPU, then first CPU
    package: int  # physical_package_id
    die: int | None  # die_id where the kernel exposes it
    core_id: int  # sysfs core_id: unique within a package at best
    pus: tuple[int, ...]  # ascending


@dataclass(frozen=True)
class NumaNode:
    """A NUMA node: its local CPUs (none for memory-only nodes) and its memory."""

    os_index: int
    cpus: frozenset[int]
    memory_bytes: int | None  # MemTotal; None when the dump does not say
    free_bytes: int | None  # MemFree
    distances: tuple[int, ...] | None  # to each node of Topology.nodes, in that order

    @property
    def cpuless(self) -> bool:
        """Memory-only node (CXL, HBM, GPU memory) or a node whose CPUs are all offline."""
        return not self.cpus


@dataclass(frozen=True)
class Package:
    """A socket: os_index is physical_package_id (-1 when the kernel does not know it)."""

    os_index: int
    cpus: frozenset[int]


@dataclass(frozen=True)
class Topology:
    """One machine, its online CPUs, and the part of it this process may use."""

    root: str
    sysfs_numa: bool  # False: no node directories, one implicit node 0
    packages: tuple[Package, ...]
    nodes: tuple[NumaNode, ...]  # ascending os_index
    cores: tuple[Core, ...]
    pus: tuple[PU, ...]  # ascending os_index
    offline_cpus: frozenset[int]  # cpuN directories that are not usable online PUs
    allowed_cpus: frozenset[int]
    allowed_nodes: frozenset[int]
    libnuma: bool | None  # libnuma usable; None for a recorded root (not this machine)

    @cached_property
    def cpus(self) -> frozenset[int]:
        return frozenset(pu.os_index for pu in self.pus)

    @cached_property
    def _pu_by_cpu(self) -> dict[int, PU]:
        return {pu.os_index: pu for pu in self.pus}

    @property
    def restricted(self) -> bool:
        """True when affinity or cpuset hide some online CPU or some node."""
        return self.allowed_cpus != self.cpus or self.allowed_nodes != {n.os_index for n in self.nodes}

    @property
    def distances(self) -> tuple[tuple[int, ...], ...] | None:
        """The node distance matrix in node order; None when sysfs does not give it whole."""
        rows = tuple(n.distances for n in self.nodes)
        return None if any(r is None for r in rows) else rows  # type: ignore[return-value]

    def pu(self, cpu: int) -> PU:
        try:
            return self._pu_by_cpu[cpu]
        except KeyError:
            raise TopologyError(f"CPU {cpu} is not an online CPU of this machine "
                                f"(online: {format_cpulist(self.cpus)})") from None

    def node_of_cpu(self, cpu: int) -> int | None:
        """The NUMA node of an online CPU; None when its node is offline."""
        return self.pu(cpu).node

    def node(self, os_index: int) -> NumaNode:
        for n in self.nodes:
            if n.os_index == os_index:
                return n
        raise TopologyError(f"no NUMA node {os_index} (nodes: {format_cpulist(n.os_index for n in self.nodes)})")


@dataclass(frozen=True)
class _CpuFacts:
    package: int
    package_key: object  # physical_package_id, or the package's CPU set when that is -1
    core_id: int
    die: int | None
    siblings: frozenset[int]


def detect(root: str = "/") -> Topology:
    """Read the topology of the Linux root at `root` ("/" = this machine, live)."""
    fs = SysfsRoot(root)
    if not fs.isdir(CPU_DIR):
        raise TopologyError(f"{fs.path(CPU_DIR)} does not exist: {root!r} is not a Linux root "
                            "with sysfs (give the top directory of a topology dump, or '/')")
    present = fs.numbered_entries(CPU_DIR, "cpu")
    online = _online_cpus(fs, present)
    cpus = frozenset(c for c in present if c in online and fs.isdir(f"{CPU_DIR}/cpu{c}/topology"))
    if not cpus:
        raise TopologyError(f"no online CPU with a topology directory under {fs.path(CPU_DIR)}")
    facts = {c: _cpu_facts(fs, c, cpus) for c in sorted(cpus)}
    packages, cores = _packages_and_cores(facts)
    nodes, sysfs_numa = _read_nodes(fs, cpus)
    node_of = {c: n.os_index for n in nodes for c in n.cpus}
    core_of = {c: core.index for core in cores for c in core.pus}
    pus = tuple(PU(c, core_of[c], facts[c].package, node_of.get(c)) for c in sorted(cpus))
    live = os.path.realpath(root) == "/"
    allowed_cpus, allowed_nodes = _allowed(fs, live, cpus, nodes)
    return Topology(root=root, sysfs_numa=sysfs_numa, packages=packages, nodes=nodes,
                    cores=cores, pus=pus, offline_cpus=frozenset(present) - cpus,
                    allowed_cpus=allowed_cpus, allowed_nodes=allowed_nodes,
                    libnuma=libnuma.available() if live else None)


def _online_cpus(fs: SysfsRoot, present: list[int]) -> frozenset[int]:
    online = fs.parsed(f"{CPU_DIR}/online", parse_cpulist)
    if online is not None:
        return online
    # old kernels: no cpu/online, each cpuN/online tells; absent (a CPU that cannot go
    # offline) or empty counts as online, as in hwloc
    return frozenset(c for c in present if fs.text(f"{CPU_DIR}/cpu{c}/online") != "0")


def _cpu_facts(fs: SysfsRoot, cpu: int, cpus: frozenset[int]) -> _CpuFacts:
    t = f"{CPU_DIR}/cpu{cpu}/topology"
    siblings = (fs.cpuset(f"{t}/core_cpus_list", f"{t}/core_cpus")
                or fs.cpuset(f"{t}/thread_siblings_list", f"{t}/thread_siblings")
                or frozenset())
    package = fs.integer(f"{t}/physical_package_id")
    package = -1 if package is None else package
    package_key: object = package
    if package < 0:  # unknown id: the kernel's package CPU set is the package's identity
        package_key = (fs.cpuset(f"{t}/package_cpus_list", f"{t}/package_cpus")
                       or fs.cpuset(f"{t}/core_siblings_list", f"{t}/core_siblings")
                       or cpus) & cpus
    core_id = fs.integer(f"{t}/core_id")
    return _CpuFacts(package=package, package_key=package_key,
                     core_id=-1 if core_id is None else core_id,
                     die=fs.integer(f"{t}/die_id"), siblings=(siblings & cpus) | {cpu})


def _packages_and_cores(facts: dict[int, _CpuFacts]) -> tuple[tuple[Package, ...], tuple[Core, ...]]:
    by_package: dict[object, set[int]] = {}
    for c, f in facts.items():
        by_package.setdefault(f.package_key, set()).add(c)
    package_cpus = sorted(by_package.values(), key=min)
    packages = tuple(Package(facts[min(p)].package, frozenset(p)) for p in package_cpus)
    blocks: list[frozenset[int]] = []
    for members in package_cpus:  # a core never spans packages, whatever siblings claim
        blocks.extend(sorted(_merge_overlapping([facts[c].siblings & members for c in members]), key=min))
    cores = tuple(Core(index=i, package=facts[min(b)].package, die=facts[min(b)].die,
                       core_id=facts[min(b)].core_id, pus=tuple(sorted(b)))
                  for i, b in enumerate(blocks))
    return packages, cores


def _merge_overlapping(sets: list[frozenset[int]]) -> list[frozenset[int]]:
    """Partition from sibling sets; sets that overlap without being equal are merged
    (a damaged or inconsistent dump), with one warning."""
    owner: dict[int, int] = {}
    groups: list[set[int]] = []
    for s in set(sets):
        hits = {owner[c] for c in s if c in owner}
        if not hits:
            groups.append(set(s))
            index = len(groups) - 1
        else:
            index = min(hits)
            for other in hits - {index}:
                groups[index] |= groups[other]
                groups[other] = set()
            groups[index] |= s
        for c in groups[index]:
            owner[c] = index
    merged = [frozenset(g) for g in groups if g]
    if len(merged) != len(set(sets)):
        log.warning("inconsistent SMT sibling lists (core_cpus/thread_siblings); merged into %d cores",
                    len(merged))
    return merged


def _read_nodes(fs: SysfsRoot, cpus: frozenset[int]) -> tuple[tuple[NumaNode, ...], bool]:
    ids = fs.numbered_entries(NODE_DIR, "node")
    if not ids:  # kernel without NUMA: one implicit node holding everything
        total, free = _meminfo(fs, "proc/meminfo")
        return (NumaNode(0, cpus, total, free, (LOCAL_DISTANCE,)),), False
    seen: dict[int, int] = {}
    node_cpus: dict[int, frozenset[int]] = {}
    for n in ids:
        d = f"{NODE_DIR}/node{n}"
        listed = (fs.cpuset(f"{d}/cpulist", f"{d}/cpumap") or frozenset()) & cpus
        twice = {c for c in listed if c in seen}
        if twice:
            log.warning("CPUs %s are listed by node %d and node %d; keeping node %d",
                        format_cpulist(twice), seen[min(twice)], n, seen[min(twice)])
        node_cpus[n] = listed - twice
        seen.update((c, n) for c in node_cpus[n])
    rows = {n: fs.parsed(f"{NODE_DIR}/node{n}/distance", _distance_row) for n in ids}
    if not all(_valid_row(rows[n], i, len(ids)) for i, n in enumerate(ids)):
        log.warning("node*/distance under %s is missing, does not cover the %d nodes or has "
                    "a node nearer than itself; NUMA distances unknown", fs.path(NODE_DIR), len(ids))
        rows = dict.fromkeys(ids)
    nodes = []
    for n in ids:
        total, free = _meminfo(fs, f"{NODE_DIR}/node{n}/meminfo")
        nodes.append(NumaNode(n, node_cpus[n], total, free, rows[n]))
    return tuple(nodes), True


def _valid_row(row: tuple[int, ...] | None, own: int, n_nodes: int) -> bool:
    """One positive distance per node, the node's own the smallest (old kernels print 0s)."""
    return row is not None and len(row) == n_nodes and min(row) > 0 and row[own] == min(row)


def _distance_row(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split())
    except ValueError:
        raise ValueError(f"not a row of integers: {text[:60]!r}") from None


_MEM_FIELD = re.compile(r"(MemTotal|MemFree):\s*(\d+)\s*kB")


def _meminfo(fs: SysfsRoot, rel: str) -> tuple[int | None, int | None]:
    """(MemTotal, MemFree) in bytes from a meminfo file; None for what it does not give."""
    fields = {k: int(v) * 1024 for k, v in _MEM_FIELD.findall(fs.text(rel) or "")}
    if "MemTotal" not in fields:
        log.warning("no MemTotal in %s; that node's memory size is unknown", fs.path(rel))
    return fields.get("MemTotal"), fields.get("MemFree")


def _allowed(fs: SysfsRoot, live: bool, cpus: frozenset[int],
             nodes: tuple[NumaNode, ...]) -> tuple[frozenset[int], frozenset[int]]:
    limit = read_restriction(fs, live)
    allowed_cpus = cpus if limit.cpus is None else cpus & limit.cpus
    node_ids = frozenset(n.os_index for n in nodes)
    allowed_nodes = node_ids if limit.mems is None else node_ids & limit.mems
    if not allowed_cpus:
        raise TopologyError(
            f"this process may use none of the online CPUs {format_cpulist(cpus)} "
            f"(allowed: {format_cpulist(limit.cpus or ())}); widen taskset/numactl or the cpuset")
    if not allowed_nodes:
        raise TopologyError(
            f"this process may use none of the NUMA nodes {format_cpulist(node_ids)} "
            f"(allowed: {format_cpulist(limit.mems or ())}); widen the cpuset's mems")
    return allowed_cpus, allowed_nodes

