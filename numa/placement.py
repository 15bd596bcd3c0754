"""Where each byte of the weights and the KV cache goes under each --numa mode: the plan.

Pure logic over a Topology and the worker slots: nothing is allocated here. The engine
(engine/placing.py) builds a plan, checks it against free memory before allocating
anything, then fills each node's memory from threads bound to that node.

Modes (see README, issue 7): mirror = a whole copy on every node in use; distribute =
one copy split by rows, each node holding exactly the rows its own workers compute in
the forward pass (same part() split; an expert's rows too, so whichever experts a token
picks each node reads only its own slice of them); partial-mirror = mirror for the tensor
groups read most per byte stored (attention, router, output: every token reads all of
them), distribute for the rest (the experts: a token reads k of n), chosen within a
budget or within each node's free memory; interleave = one copy, pages round-robin over
the nodes in use; isolate = everything on one node; none = no policy, the kernel decides.

A worker's memory goes to its own node ("home"); when the cpuset forbids allocating
there, to the nearest allowed node with memory, and its reads then count as remote.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from numallm.errors import BadInputError, ResourceError
from numallm.numa.cpulist import format_cpulist
from numallm.numa.modes import NUMA_MODES
from numallm.numa.sizes import format_size, parse_size
from numallm.numa.split import part
from numallm.numa.sysfs import SysfsRoot
from numallm.numa.topology import LOCAL_DISTANCE, Topology
from numallm.numa.workers import WorkerSlot


# An effective mode only: --numa mirror with a --mirror-budget below a whole copy, or auto
# when a whole copy does not fit on every node.
PARTIAL = "partial-mirror"
PLACED_MODES = (*(m for m in NUMA_MODES if m != "auto"), PARTIAL)
PER_NODE_MODES = ("mirror", "distribute", PARTIAL)  # each node in use holds its own buffers
# The order in which check_memory suggests another mode: most mirrored first, then least
# memory and remote traffic.
_FALLBACKS = (PARTIAL, "distribute", "interleave", "isolate", "mirror")


@dataclass(frozen=True)
class Matrix:
    """A weight matrix as the forward pass reads it.

    row_group: part() cuts its rows on multiples of this, exactly as forward.py does
    (for gate and up: the larger group of the two). matmul: its rows are split among
    the workers every token; lookup: one row per token is read by worker 0 (the token
    embeddings; both flags when the output projection is tied to them). read_share: the
    fraction of tokens that read it (one expert of a mixture: experts used / experts)."""

    name: str
    rows: int
    row_bytes: int
    row_group: int
    matmul: bool = True
    lookup: bool = False
    read_share: float = 1.0

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


@dataclass(frozen=True)
class Extent:
    """Rows [row_lo, row_hi) of a matrix (bytes [byte_lo, byte_hi) of it) held on `node`.
    node None: no single node (interleave: pages round-robin over the plan's nodes;
    none: wherever the kernel puts them)."""

    row_lo: int
    row_hi: int
    byte_lo: int
    byte_hi: int
    node: int | None

    @property
    def nbytes(self) -> int:
        return self.byte_hi - self.byte_lo


@dataclass(frozen=True)
class KvHeads:
    """The KV cache in units of KV heads: head_bytes is one KV head's K and V for every
    layer, position and slot."""

    n_head: int
    n_head_kv: int
    head_bytes: int
    token_bytes: int = 0  # all KV heads' bytes per token (over every layer), for the reports


def tensor_group(name: str) -> str:
    """A matrix's tensor group: its slot over every layer and expert (the matrix names are
    blk.<layer>.<slot>[.<expert>]), or its own name outside the layers (output, token_embd)."""
    parts = name.split(".")
    return parts[2] if parts[0] == "blk" and len(parts) > 2 else name


@dataclass(frozen=True)
class GroupChoice:
    """How a tensor group is placed and why. nbytes: one copy of it; read_bytes: the bytes
    of it one generated token reads (all of a matmul's, k/n of an expert tensor's, one
    row of a looked-up matrix)."""

    name: str
    placement: str  # mirror, distribute, or the plan's mode where it places every group alike
    nbytes: int
    read_bytes: float
    why: str


def group_reads(matrices: Sequence[Matrix]) -> list[tuple[str, int, float, bool]]:
    """(group, bytes of one copy, bytes a token reads, whether its rows are split among the
    workers) per tensor group, most read per byte stored first (among equals the smaller
    first, so a budget fits more of them). A group of looked-up matrices only is read by
    worker 0 alone (distribute already keeps it whole on its node)."""
    size: dict[str, int] = {}
    reads: dict[str, float] = {}
    split: dict[str, bool] = {}
    for m in matrices:
        g = tensor_group(m.name)
        size[g] = size.get(g, 0) + m.nbytes
        reads[g] = reads.get(g, 0.0) + (m.nbytes * m.read_share if m.matmul else m.row_bytes)
        split[g] = split.get(g, False) or m.matmul
    return sorted(((g, size[g], reads[g], split[g]) for g in size),
                  key=lambda t: (-t[2] / max(t[1], 1), t[1], t[0]))


def _only_worker_0(g: str, nbytes: int, read: float) -> GroupChoice:
    return GroupChoice(g, "distribute", nbytes, read, f"{_share_text(nbytes, read)}: only worker 0 reads it (one "
                       "row per token), so it stays whole on that worker's node; a copy elsewhere would never be read")


def _share_text(nbytes: int, read: float) -> str:
    return f"a token reads {read / nbytes:.1%} of its {_size(nbytes)}" if nbytes else "empty"


@dataclass(frozen=True)
class PlacementPlan:
    mode: str  # the effective mode (never auto)
    nodes: tuple[int, ...]  # memory nodes in use, ascending
    workers: tuple[WorkerSlot, ...]
    homes: tuple[int, ...]  # the memory node of each worker, in worker order
    matrices: tuple[Matrix, ...]
    extents: tuple[tuple[Extent, ...], ...]  # per matrix, in matrices order
    kv: KvHeads | None
    kv_heads: tuple[tuple[int | None, tuple[int, ...]], ...]  # (node or None as in Extent, KV heads)
    groups: tuple[GroupChoice, ...] = ()  # per tensor group, most read per byte first

    @property
    def mirrored(self) -> frozenset[str]:
        """The tensor groups every node in use holds whole."""
        return frozenset(g.name for g in self.groups if g.placement == "mirror")

    def workers_per_node(self) -> dict[int, int]:
        """Workers running on each node (the node of their CPU)."""
        counts: dict[int, int] = {}
        for slot in self.workers:
            counts[slot.node] = counts.get(slot.node, 0) + 1
        return counts

    def extents_of(self, name: str) -> tuple[Extent, ...]:
        for m, ext in zip(self.matrices, self.extents):
            if m.name == name:
                return ext
        raise KeyError(name)

    def weight_bytes_per_node(self) -> dict[int, int] | None:
        """Weight bytes each node in use holds; None when the kernel decides (none mode)."""
        return self._per_node((e.node, e.nbytes) for ext in self.extents for e in ext)

    def kv_bytes_per_node(self) -> dict[int, int] | None:
        """KV cache bytes each node in use holds; None when the kernel decides (none mode)."""
        head_bytes = self.kv.head_bytes if self.kv else 0
        return self._per_node((node, len(heads) * head_bytes) for node, heads in self.kv_heads)

    def _per_node(self, pieces: Iterable[tuple[int | None, int]]) -> dict[int, int] | None:
        placed = dict.fromkeys(self.nodes, 0)
        spread = 0
        for node, nbytes in pieces:
            if node is None:
                spread += nbytes
            else:
                placed[node] += nbytes
        if spread and self.mode != "interleave":
            return None
        # pages go round-robin: equal shares, give or take a page per buffer
        share = math.ceil(spread / len(self.nodes))
        return {n: b + share for n, b in placed.items()}


def memory_nodes(topo: Topology) -> list[int]:
    """Nodes this process may allocate on that have memory."""
    return [n.os_index for n in topo.nodes if n.os_index in topo.allowed_nodes and n.memory_bytes != 0]


def home_node(topo: Topology, slot: WorkerSlot) -> int:
    """Where a worker's memory goes: its own node, else the nearest allowed node with memory
    (lowest number among equals; the lowest allowed one when distances are unknown)."""
    allowed = memory_nodes(topo) or sorted(topo.allowed_nodes)
    if slot.node in allowed:
        return slot.node
    order = [n.os_index for n in topo.nodes]
    own = topo.node(slot.node).distances if slot.node in order else None

    def distance(n: int) -> int:
        return own[order.index(n)] if own else LOCAL_DISTANCE
    return min(allowed, key=lambda n: (distance(n), n))


class Choice(NamedTuple):
    """choose_mode's answer: the effective mode, one line saying why, and for
    partial-mirror which tensor groups it mirrors and why (see GroupChoice)."""

    mode: str
    reason: str
    groups: tuple[GroupChoice, ...] = ()


def choose_mode(requested: str, topo: Topology, workers: Sequence[WorkerSlot], matrices: Sequence[Matrix],
                kv: KvHeads | None = None, mirror_budget: int | None = None) -> Choice:
    """The effective mode for --numa `requested` (and --mirror-budget) with these workers.

    auto on several nodes: mirror when every node in use has free memory for a whole copy
    of the weights plus its KV cache share (as mirror places it); else partial-mirror,
    mirroring the tensor groups read most per byte stored while every node still has
    room (fitting_groups), when that mirrors anything; else distribute. A node whose
    free memory is unknown makes it distribute (one copy is safe). mirror with a budget:
    the groups read most per byte stored whose copies fit in the budget (budget_groups);
    mirror when that is all of them, distribute when none. One node in use: none, and
    auto where that node is the only one, leave the pages to the kernel (nothing to
    place); auto on a machine with more nodes isolates there (so no page strays to
    another node); an explicit mode keeps its name and comes down to that node (one copy
    bound there), running the same placement code as on several nodes."""
    if requested not in NUMA_MODES:
        raise BadInputError(f"--numa {requested!r} is not a placement mode (use one of {', '.join(NUMA_MODES)})")
    if mirror_budget is not None and requested != "mirror":
        raise BadInputError(f"--mirror-budget goes with --numa mirror, not --numa {requested} "
                            "(auto chooses what to mirror from each node's free memory)")
    if mirror_budget is not None and mirror_budget < 0:
        raise BadInputError(f"--mirror-budget must not be negative, got {mirror_budget}")
    homes = sorted({home_node(topo, s) for s in workers})
    if len(homes) == 1:
        node = homes[0]
        if requested == "none" or (requested == "auto" and len(memory_nodes(topo)) <= 1):
            return Choice("none", f"--numa {requested}: one NUMA node in use (node {node}), no placement needed")
        if topo.libnuma is False:
            return Choice("none", f"--numa {requested}: one NUMA node in use (node {node}) and no libnuma "
                          "to bind memory with, so the kernel places the pages")
        if requested == "auto":
            return Choice("isolate", f"--numa auto: every worker uses node {node}, so everything goes there")
        return Choice(requested, f"--numa {requested}: one NUMA node in use (node {node}), so it comes "
                      "down to one copy bound there")
    in_use = format_cpulist(homes)
    if mirror_budget is not None:
        return _budgeted(matrices, mirror_budget, in_use)
    if requested != "auto":
        return Choice(requested, f"--numa {requested} over nodes {in_use}, as asked")
    total = sum(m.nbytes for m in matrices)
    kv_need = build_plan("mirror", topo, workers, matrices, kv).kv_bytes_per_node() or {}
    for n in homes:
        free = topo.node(n).free_bytes
        if free is None:
            return Choice("distribute", f"--numa auto: distribute, node {n}'s free memory is unknown (one copy is safe)")
        if free < total + kv_need.get(n, 0):
            lack = (f"node {n} has {_size(free)} free, less than a whole copy ({_size(total)}) plus its "
                    f"KV cache ({_size(kv_need.get(n, 0))})")
            groups = fitting_groups(topo, workers, matrices, kv)
            mirrored = [g for g in groups if g.placement == "mirror"]
            if not mirrored:
                return Choice("distribute", f"--numa auto: distribute, {lack}, and no tensor group's copies "
                              "fit beside one distributed copy")
            return Choice(PARTIAL, f"--numa auto: partial mirror, {lack}: mirrors {_names(mirrored)} "
                          f"({_size(sum(g.nbytes for g in mirrored))}, the groups read most per byte stored "
                          "that fit every node) and distributes the rest", groups)
    return Choice("mirror", f"--numa auto: mirror, every node in use ({in_use}) has room for a whole copy "
                  f"({_size(total)}) plus its KV cache")


def _names(groups: Sequence[GroupChoice]) -> str:
    return ", ".join(g.name for g in groups)


def budget_groups(matrices: Sequence[Matrix], budget: int) -> tuple[GroupChoice, ...]:
    """Each tensor group mirrored or distributed under --mirror-budget `budget` (bytes of
    one copy of what is mirrored): in group_reads' order, a group is mirrored when it
    fits in what the groups before it left of the budget."""
    used = 0
    out = []
    for g, nbytes, read, split in group_reads(matrices):
        if not split:
            out.append(_only_worker_0(g, nbytes, read))
        elif used + nbytes <= budget:
            used += nbytes
            out.append(GroupChoice(g, "mirror", nbytes, read, f"{_share_text(nbytes, read)}: mirrored, within "
                                   f"the budget ({_size(used)} of {_size(budget)} used)"))
        else:
            out.append(GroupChoice(g, "distribute", nbytes, read, f"{_share_text(nbytes, read)}: distributed, "
                                   f"a copy would pass the budget ({_size(budget - used)} of "
                                   f"{_size(budget)} left)"))
    return tuple(out)


def _budgeted(matrices: Sequence[Matrix], budget: int, in_use: str) -> Choice:
    groups = budget_groups(matrices, budget)
    mirrored = [g for g in groups if g.placement == "mirror"]
    given = f"--numa mirror --mirror-budget {_size(budget)} over nodes {in_use}"
    total = sum(g.nbytes for g in groups)
    if total <= budget:
        return Choice("mirror", f"{given}: the whole model ({_size(total)}) fits the budget, so every node "
                      "holds a copy")
    if not mirrored:
        return Choice("distribute", f"{given}: no tensor group fits the budget (the first to mirror, "
                      f"{groups[0].name}, is {_size(groups[0].nbytes)}), so one copy is distributed")
    return Choice(PARTIAL, f"{given}: mirrors {_names(mirrored)} ({_size(sum(g.nbytes for g in mirrored))}, "
                  "the groups read most per byte stored that fit the budget) and distributes the rest", groups)


def fitting_groups(topo: Topology, workers: Sequence[WorkerSlot], matrices: Sequence[Matrix],
                   kv: KvHeads | None = None) -> tuple[GroupChoice, ...]:
    """Each tensor group mirrored or distributed so that every node in use has room: from
    one distributed copy, in group_reads' order, a group every token reads in full
    (attention, router, shared experts, dense FFNs, output) is mirrored when a whole copy
    on every node (instead of each node's share of it) still fits each node's free
    memory (a node of unknown free memory fits nothing more). Experts stay distributed:
    that is what makes room (--mirror-budget can mirror them all the same)."""
    dist = build_plan("distribute", topo, workers, matrices, kv)
    share: dict[str, dict[int, int]] = {}
    for m, extents in zip(dist.matrices, dist.extents):
        by_node = share.setdefault(tensor_group(m.name), {})
        for e in extents:
            if e.node is not None:
                by_node[e.node] = by_node.get(e.node, 0) + e.nbytes
    weights, kv_bytes = dist.weight_bytes_per_node() or {}, dist.kv_bytes_per_node() or {}
    need = {n: weights.get(n, 0) + kv_bytes.get(n, 0) for n in dist.nodes}
    free = {n: topo.node(n).free_bytes for n in dist.nodes}
    out = []
    for g, nbytes, read, split in group_reads(matrices):
        if not split:
            out.append(_only_worker_0(g, nbytes, read))
            continue
        if read < nbytes:
            out.append(GroupChoice(g, "distribute", nbytes, read, f"{_share_text(nbytes, read)}: distributed, as "
                                   "auto keeps what a token reads only in part (the experts)"))
            continue
        more = {n: nbytes - share.get(g, {}).get(n, 0) for n in dist.nodes}
        over = [n for n in dist.nodes if free[n] is None or need[n] + more[n] > (free[n] or 0)]
        if not over:
            for n in dist.nodes:
                need[n] += more[n]
            out.append(GroupChoice(g, "mirror", nbytes, read, f"{_share_text(nbytes, read)}: mirrored, "
                                   "every node has room for a copy"))
            continue
        n = over[0]
        room = "its free memory is unknown" if free[n] is None else (
            f"it would need {_size(need[n] + more[n])} of its {_size(free[n] or 0)} free")
        out.append(GroupChoice(g, "distribute", nbytes, read, f"{_share_text(nbytes, read)}: distributed, a copy "
                               f"on every node does not fit node {n} ({room})"))
    return tuple(out)


def build_plan(mode: str, topo: Topology, workers: Sequence[WorkerSlot], matrices: Sequence[Matrix],
               kv: KvHeads | None = None, node: int | None = None,
               groups: Sequence[GroupChoice] = ()) -> PlacementPlan:
    """The placement of every matrix and KV head under an effective `mode` (see choose_mode).

    node: isolate's node (--numa-node); default the first worker's memory node.
    groups: partial-mirror's choice per tensor group (Choice.groups)."""
    if mode not in PLACED_MODES:
        raise BadInputError(f"no placement for mode {mode!r} (use one of {', '.join(PLACED_MODES)})")
    if not workers:
        raise BadInputError("a placement needs at least one worker")
    homes = tuple(home_node(topo, s) for s in workers)
    if node is not None and mode != "isolate":
        raise BadInputError(f"--numa-node {node} goes with --numa isolate, not --numa {mode}")
    if mode == "isolate":
        target = homes[0] if node is None else _check_node(topo, node)
        nodes: tuple[int, ...] = (target,)
    else:
        nodes = tuple(sorted(set(homes)))
    only = memory_nodes(topo)
    # none on a machine with one usable node: the kernel has no choice to make
    unbound = None if len(only) != 1 else only[0]
    if mode == "none" and unbound is not None:
        nodes = (unbound,)
    if mode != PARTIAL:
        groups = tuple(GroupChoice(g, mode, nbytes, read, f"{_share_text(nbytes, read)}; --numa {mode} places "
                                   "every group alike") for g, nbytes, read, _ in group_reads(matrices))
    elif {g.name for g in groups} != {tensor_group(m.name) for m in matrices}:
        raise BadInputError("a partial mirror needs a choice for every tensor group")
    mirrored = frozenset(g.name for g in groups if g.placement == "mirror")
    extents = tuple(_extents(_matrix_mode(mode, m, mirrored), m, nodes, homes, unbound) for m in matrices)
    kv_heads = _kv_heads(mode, kv, nodes, homes, unbound) if kv else ()
    return PlacementPlan(mode=mode, nodes=nodes,
                         workers=tuple(workers), homes=homes, matrices=tuple(matrices),
                         extents=extents, kv=kv, kv_heads=kv_heads, groups=tuple(groups))


def _matrix_mode(mode: str, m: Matrix, mirrored: frozenset[str]) -> str:
    if mode != PARTIAL:
        return mode
    return "mirror" if tensor_group(m.name) in mirrored else "distribute"


def _check_node(topo: Topology, node: int) -> int:
    if node not in memory_nodes(topo):
        raise BadInputError(f"--numa-node {node} is not a NUMA node with memory this process may use "
                            f"(those are: {format_cpulist(memory_nodes(topo))})")
    return node


def _extents(mode: str, m: Matrix, nodes: tuple[int, ...], homes: tuple[int, ...],
             unbound: int | None) -> tuple[Extent, ...]:
    # by shape alone, once: a model's every expert of a layer slot (tens of thousands of
    # matrices in a large mixture) has the same extents
    return _shape_extents(mode, m.rows, m.row_bytes, m.row_group, m.matmul, m.lookup, nodes, homes, unbound)


@functools.lru_cache(maxsize=4096)
def _shape_extents(mode: str, rows: int, row_bytes: int, row_group: int, matmul: bool, lookup: bool,
                   nodes: tuple[int, ...], homes: tuple[int, ...], unbound: int | None) -> tuple[Extent, ...]:
    def extent(lo: int, hi: int, node: int | None) -> Extent:
        return Extent(lo, hi, lo * row_bytes, hi * row_bytes, node)

    if mode == "mirror":
        return tuple(extent(0, rows, n) for n in nodes)
    if mode == "isolate":
        return (extent(0, rows, nodes[0]),)
    if mode in ("interleave", "none"):
        return (extent(0, rows, unbound if mode == "none" else None),)
    # distribute: each worker's rows on its home node, neighbouring shares of one node
    # merged; a looked-up matrix (token embeddings) whole on worker 0's node, since worker 0
    # looks up any token's row (tied to the output, the other nodes hold their rows too)
    out: list[Extent] = []
    for w, home in enumerate(homes):
        if not matmul or (lookup and home == homes[0]):
            continue
        lo, hi = part(rows, row_group, w, len(homes))
        if lo >= hi:
            continue
        if out and out[-1].node == home and out[-1].row_hi == lo:
            lo = out.pop().row_lo
        out.append(extent(lo, hi, home))
    if lookup:
        out.insert(0, extent(0, rows, homes[0]))
    return tuple(out)


def query_heads(worker: int, n_workers: int, kv: KvHeads) -> range:
    """The query heads a worker attends with, as forward.py splits them."""
    return range(*part(kv.n_head, 1, worker, n_workers))


def _kv_heads(mode: str, kv: KvHeads, nodes: tuple[int, ...], homes: tuple[int, ...],
              unbound: int | None) -> tuple[tuple[int | None, tuple[int, ...]], ...]:
    every = tuple(range(kv.n_head_kv))
    if mode == "isolate":
        return ((nodes[0], every),)
    if mode in ("interleave", "none"):
        return ((unbound if mode == "none" else None, every),)
    # mirror, distribute: a node keeps the KV heads its workers' query heads read, so a
    # KV head shared by workers on several nodes is kept once on each of them
    group = kv.n_head // kv.n_head_kv
    needed: dict[int, set[int]] = {n: set() for n in nodes}
    for w, home in enumerate(homes):
        needed[home].update(h // group for h in query_heads(w, len(homes), kv))
    return tuple((n, tuple(sorted(needed[n]))) for n in nodes)


def check_memory(plan: PlacementPlan, topo: Topology) -> None:
    """Raise ResourceError, before anything is allocated, when a node lacks free memory for
    its share of the plan; the message names the node, the numbers and a mode that fits."""
    short = memory_shortage(plan, topo)
    if short is not None:
        raise ResourceError(short)


def memory_shortage(plan: PlacementPlan, topo: Topology) -> str | None:
    """check_memory's one line (the node short of memory, the bytes, a mode that fits), or
    None when the plan fits."""
    short = _shortage(plan, topo)
    if short is None:
        return None
    where, need, weights, kv_bytes, free = short
    alternative = fitting_mode(plan, topo)
    advice = (f"--numa {alternative} would fit" if alternative else
              "no --numa mode fits: free some memory or use a smaller context (-c)")
    what = "a partial mirror" if plan.mode == PARTIAL else f"--numa {plan.mode}"
    return (f"{what} needs {_size(need)} on {where} ({_size(weights)} weights + "
            f"{_size(kv_bytes)} KV cache) but it has {_size(free)} free; {advice}")


def _shortage(plan: PlacementPlan, topo: Topology) -> tuple[str, int, int, int, int] | None:
    """(where, bytes needed, of which weights, of which KV, bytes free) of the first node
    (or, for none, the allowed nodes together) short of memory; None when all fit."""
    weights, kv = plan.weight_bytes_per_node(), plan.kv_bytes_per_node()
    if weights is None or kv is None:  # the kernel decides: only the total can be checked
        frees = [topo.node(n).free_bytes for n in memory_nodes(topo)]
        if any(f is None for f in frees):
            return None
        w = sum(m.nbytes for m in plan.matrices)
        k = plan.kv.n_head_kv * plan.kv.head_bytes if plan.kv else 0
        free = sum(f for f in frees if f is not None)
        nodes = format_cpulist(memory_nodes(topo))
        return (f"NUMA nodes {nodes} together", w + k, w, k, free) if w + k > free else None
    for n in plan.nodes:
        free = topo.node(n).free_bytes
        if free is not None and weights[n] + kv[n] > free:
            return f"NUMA node {n}", weights[n] + kv[n], weights[n], kv[n], free
    return None


def fitting_mode(plan: PlacementPlan, topo: Topology) -> str | None:
    """A mode whose plan for the same workers fits (as --numa arguments), or None: a
    partial mirror of what fits (as a --mirror-budget), then distribute, interleave,
    isolate on the node with the most free memory, mirror."""
    for mode in _FALLBACKS:
        if mode == PARTIAL:
            found = _fitting_budget(plan, topo)
            if found:
                return found
            continue
        if mode == plan.mode:
            continue
        node = None
        if mode == "isolate":
            node = max(memory_nodes(topo), key=lambda n: (topo.node(n).free_bytes or 0, -n))
        other = build_plan(mode, topo, plan.workers, plan.matrices, plan.kv, node)
        if _shortage(other, topo) is None:
            return mode if node is None else f"isolate --numa-node {node}"
    return None


def _fitting_budget(plan: PlacementPlan, topo: Topology) -> str | None:
    """`mirror --mirror-budget SIZE` for the partial mirror auto would choose here, when it
    mirrors some groups but not all, and that budget's plan fits."""
    if len(plan.nodes) < 2 or plan.mode not in PER_NODE_MODES:
        return None
    fitting = fitting_groups(topo, plan.workers, plan.matrices, plan.kv)
    mirrored = sum(g.nbytes for g in fitting if g.placement == "mirror")
    if not mirrored or all(g.placement == "mirror" for g in fitting):
        return None
    budget = format_size(mirrored)
    groups = budget_groups(plan.matrices, parse_size(budget, "--mirror-budget"))
    other = build_plan(PARTIAL, topo, plan.workers, plan.matrices, plan.kv, groups=groups)
    if (plan.mode == PARTIAL and other.mirrored == plan.mirrored) or _shortage(other, topo) is not None:
        return None
    return f"mirror --mirror-budget {budget}"


def locality(plan: PlacementPlan) -> dict[str, int | str | None]:
    """Weight bytes read per generated token from the reader's own node and from others,
    from the plan and the rows each worker reads (engine/page_report.py finds the same
    figures from where the pages really are). "embedding_*": the one token-embedding row worker 0
    looks up, averaged over the vocabulary. "basis": how the figures were found; under
    none on several nodes the figures are None (where the kernel put pages is not planned)."""
    if plan.mode == "none" and len(plan.nodes) > 1:
        return {"local_bytes": None, "remote_bytes": None, "matmul_local_bytes": None,
                "matmul_remote_bytes": None, "embedding_local_bytes": None,
                "embedding_remote_bytes": None, "basis": "unknown: the kernel places the pages"}
    matmul = [0.0, 0.0]
    lookup = [0.0, 0.0]
    n = len(plan.workers)
    local_rows: dict[tuple[int, int, tuple[Extent, ...]], tuple[float, float]] = {}  # by shape, as _extents
    for m, ext in zip(plan.matrices, plan.extents):
        if m.matmul:
            key = (m.rows, m.row_group, ext)
            if key not in local_rows:
                rows = [part(m.rows, m.row_group, w, n) for w in range(n)]
                near = sum(_local_rows(plan, ext, lo, hi, slot.node) for (lo, hi), slot in zip(rows, plan.workers))
                local_rows[key] = (near, sum(hi - lo for lo, hi in rows) - near)
            near, far = local_rows[key]
            matmul[0] += near * m.row_bytes * m.read_share
            matmul[1] += far * m.row_bytes * m.read_share
        if m.lookup:
            share = _local_rows(plan, ext, 0, m.rows, plan.workers[0].node) / m.rows
            lookup[0] += share * m.row_bytes
            lookup[1] += (1 - share) * m.row_bytes
    ml, mr, el, er = (round(v) for v in (*matmul, *lookup))
    return {"local_bytes": ml + el, "remote_bytes": mr + er, "matmul_local_bytes": ml,
            "matmul_remote_bytes": mr, "embedding_local_bytes": el, "embedding_remote_bytes": er,
            "basis": "interleave average" if plan.mode == "interleave" and len(plan.nodes) > 1 else "plan"}


def _local_rows(plan: PlacementPlan, extents: tuple[Extent, ...], lo: int, hi: int, node: int) -> float:
    """How many of rows [lo, hi) a worker running on `node` finds on its own node (reading
    its own node's copy where there is one: a plan never holds a row twice on one node);
    interleaved rows count 1/N."""
    local = 0.0
    for e in extents:
        overlap = max(0, min(hi, e.row_hi) - max(lo, e.row_lo))
        if e.node == node:
            local += overlap
        elif e.node is None and node in plan.nodes:  # interleave: 1 page in N is here
            local += overlap / len(plan.nodes)
    return local


def isolate_topology(topo: Topology, node: int) -> Topology:
    """The topology narrowed to one node, to plan isolate's workers there (plan_workers)."""
    _check_node(topo, node)
    cpus = topo.node(node).cpus & topo.allowed_cpus
    if not cpus:
        raise BadInputError(f"NUMA node {node} has no CPU this process may use; isolate needs its "
                            "workers there (choose another --numa-node)")
    return dataclasses.replace(topo, allowed_cpus=cpus, allowed_nodes=frozenset({node}))


def numa_balancing_warning(root: str = "/") -> str | None:
    """The one-line warning for --numa none when automatic NUMA balancing is on; None when it
    is off or absent. Only unplaced memory needs it: the kernel's balancing skips ranges with
    a memory policy of their own, and every placed Region has one (mbind)."""
    value = SysfsRoot(root).text("proc/sys/kernel/numa_balancing")
    if value is None or value == "0":
        return None
    return (f"kernel.numa_balancing is {value}: with --numa none the model's pages are bound to no node, "
            "and Linux may move them between nodes while it runs; a placing --numa mode binds them, "
            "or turn balancing off with `sysctl kernel.numa_balancing=0` (as root)")


def summary(plan: PlacementPlan) -> str:
    """The verbose startup line: mode, nodes in use, and per node the workers whose memory
    it holds and the bytes placed on it."""
    weights, kv = plan.weight_bytes_per_node(), plan.kv_bytes_per_node()
    per_node = "; ".join(
        f"node {n}: {plan.homes.count(n)} workers"
        + ("" if weights is None or kv is None else f", {_size(weights[n])} weights, {_size(kv[n])} KV cache")
        for n in plan.nodes)
    placed = "" if weights is not None else " (the kernel places the pages)"
    if plan.mode == PARTIAL:
        mirrored = [g.name for g in plan.groups if g.placement == "mirror"]
        placed = f" (mirrored: {', '.join(mirrored)}; distributed: the rest)"
    return f"numa {plan.mode}{placed}: {per_node}"


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes < 1 << 30 else f"{nbytes / 2**30:.2f} GiB"
