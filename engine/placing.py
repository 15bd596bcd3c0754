"""Put the weights and the KV cache where the --numa mode says, for real.

place_model plans (numa/placement.py), checks every node's free memory (counting the
page cache the kernel can drop) before allocating anything, then allocates each node's memory with its policy
(numa/memory.py) and fills it from threads bound to that node: reads straight from the
file for the first copy (repacked there), copies of it for mirror's other nodes, only
the rows a node's workers compute for distribute, and for partial-mirror the mirrored
groups whole plus those rows of the rest (each node read from the file). Every node's
weight buffer has the same layout, so the weight tables are valid in each.

Load modes with a placing mode (anything but none): auto and none read buffered, dio
reads with O_DIRECT, mlock reads buffered and then locks what was placed, and mmap
reads buffered too (a file mapping's pages sit wherever the page cache put them, so a
mapping cannot be placed; one warning says so).
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numallm.engine.arch.spec import ArchSpec
from numallm.engine.gguf_file import GGUFFile
from numallm.engine.kv_cache import KV_ITEMSIZE, KVCache, head_ranges, kv_layout
from numallm.engine.load_lock import check_lock_limit
from numallm.engine.placement_inputs import forward_matrices, kv_heads, matrix_offsets
from numallm.engine.weights import (
    Layout,
    Weights,
    check_model,
    fill_image,
    load_weights,
    make_weights,
    matrix_tables,
    resolve_load_mode,
)
from numallm.numa.memory import (
    Range,
    Region,
    bound_to,
    copy_on_node,
    merge_ranges,
    populate_zero,
    with_available_memory,
)
from numallm.numa.pages import PAGE, align_up
from numallm.numa.placement import (
    PER_NODE_MODES,
    PlacementPlan,
    build_plan,
    check_memory,
    choose_mode,
    home_node,
    isolate_topology,
    numa_balancing_warning,
    summary,
)
from numallm.numa.topology import Topology
from numallm.numa.workers import WorkerSlot, plan_workers

log = logging.getLogger(__name__)

_warned_balancing = False


@dataclass
class NodeKv:
    """One K/V pair: bound to `node` (None: interleaved or unplaced), holding KV heads `heads`."""

    node: int | None
    heads: tuple[int, ...]
    k: np.ndarray
    v: np.ndarray


def placed_workers(topo: Topology, numa: str, numa_node: int | None, threads: int | None,
                   smt: bool) -> list[WorkerSlot]:
    """The workers for --numa `numa`: plan_workers' usual plan, except that isolate keeps
    them on its node (--numa-node, else the first worker's memory node)."""
    workers = plan_workers(topo, threads, smt)
    if numa != "isolate":
        return workers
    node = home_node(topo, workers[0]) if numa_node is None else numa_node
    return plan_workers(isolate_topology(topo, node), threads, smt)


def buffer_key(plan: PlacementPlan, worker: int) -> int | None:
    """Which buffers a worker uses: its home node's (mirror, distribute, partial-mirror),
    else the one shared set (None)."""
    return plan.homes[worker] if plan.mode in PER_NODE_MODES else None


@dataclass
class PlacedModel:
    """The placed weights and KV cache. Buffers are keyed by node for mirror and distribute
    (a worker uses its home node's), else by None (one set every worker shares)."""

    plan: PlacementPlan
    weights: Weights
    why: str
    wbufs: dict[int | None, np.ndarray]
    kvs: dict[int | None, NodeKv]
    populated: dict[int | None, list[Range]]  # weight bytes placed in each buffer
    hugepages: bool
    _regions: list[Region] = field(default_factory=list, repr=False)

    def key(self, worker: int) -> int | None:
        return buffer_key(self.plan, worker)

    def buffers(self, worker: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weight buffer, K, V) of worker `worker`'s home node."""
        kv = self.kvs[self.key(worker)]
        return self.wbufs[self.key(worker)], kv.k, kv.v

    @property
    def kv_nbytes(self) -> int:
        """Bytes of KV cache that can be written: the kept heads' K and V, over every node."""
        return sum(len(kv.heads) * (kv.k[:, :, :1].nbytes + kv.v[:, :, :1].nbytes) for kv in self.kvs.values())

    def page_report(self) -> dict[str, Any]:
        """Where every page really is (the data `numallm placement --json` prints)."""
        from numallm.engine.page_report import page_report

        return page_report(self)

    def close(self) -> None:
        """Unlock and free every buffer (idempotent)."""
        self.weights.close()
        for r in self._regions:
            r.close()
        self._regions.clear()
        self.wbufs.clear()
        self.kvs.clear()


def place_model(gf: GGUFFile, spec: ArchSpec, topo: Topology, workers: list[WorkerSlot], *,
                numa: str = "auto", numa_node: int | None = None, mirror_budget: int | None = None,
                load_mode: str = "auto", hugepages: bool = True, n_ctx: int, n_slots: int = 1,
                kv_type: str = "f16", verbose: bool = False) -> PlacedModel:
    """Plan, check memory, allocate and fill. verbose: one stderr line per node filled.
    mirror_budget: --mirror-budget in bytes (with numa "mirror")."""
    hp = spec.hparams
    topo = with_available_memory(topo)  # page cache and reclaimable slab count as free
    layout = check_model(gf, spec)
    base, size = layout.read_span()
    layer, model = matrix_tables(layout, hp.n_layer, base)
    matrices = forward_matrices(layer, model, hp.n_expert_used)
    kv = kv_heads(hp, n_ctx, kv_type, n_slots)
    choice = choose_mode(numa, topo, workers, matrices, kv, mirror_budget)
    mode, reason = choice.mode, choice.reason
    plan = build_plan(mode, topo, workers, matrices, kv, numa_node, choice.groups)
    check_memory(plan, topo)
    if mode == "none":
        _warn_numa_balancing()
        return _unplaced(gf, spec, plan, reason, load_mode, n_ctx, n_slots, kv_type, hugepages)
    fill_mode = _fill_mode(load_mode, mode)
    ranges = _weight_ranges(plan, matrix_offsets(layer, model), layout, base, size)
    if fill_mode == "mlock":  # before anything is allocated, so a low limit fails fast
        check_lock_limit(sum(align_up(hi - lo, PAGE) for rs in ranges.values() for lo, hi in rs))
    regions: list[Region] = []
    try:
        wbufs = {key: _region(plan, key, size, rs, hugepages, regions) for key, rs in ranges.items()}
        direct = _fill_weights(plan, gf, layout, base, wbufs, ranges, fill_mode, verbose)
        if fill_mode == "mlock":
            for key, region in zip(ranges, regions):  # the weight regions, made in this order
                region.lock(ranges[key])
        weights = make_weights(layout, hp.n_layer, wbufs[buffer_key(plan, 0)], base, mapped=False,
                               load_mode=fill_mode, direct=direct)
        kvs = _place_kv(plan, *kv_layout(hp, n_ctx, n_slots, kv_type), KV_ITEMSIZE[kv_type], hugepages, regions)
    except BaseException:
        for r in regions:
            r.close()
        raise
    return PlacedModel(plan=plan, weights=weights, why=_why(plan, reason, fill_mode, hugepages), wbufs=wbufs,
                       kvs=kvs, populated=ranges, hugepages=hugepages, _regions=regions)


def _warn_numa_balancing() -> None:
    global _warned_balancing
    warning = numa_balancing_warning()
    if warning and not _warned_balancing:
        _warned_balancing = True
        log.warning(warning)


def _fill_mode(load_mode: str, mode: str) -> str:
    """How node buffers are filled for --load-mode `load_mode` (see the module's docstring)."""
    if load_mode == "mmap":
        log.warning("--load-mode mmap with --numa %s: the node buffers are filled by buffered reads "
                    "(a file mapping cannot be placed on nodes); use --load-mode auto to silence this", mode)
        return "none"
    return resolve_load_mode(load_mode, numa_copies=True)


def _unplaced(gf: GGUFFile, spec: ArchSpec, plan: PlacementPlan, reason: str, load_mode: str, n_ctx: int,
              n_slots: int, kv_type: str, hugepages: bool) -> PlacedModel:
    """--numa none: today's load (the mapping in place, or an anonymous image) and one
    lazily allocated KV pair; the kernel decides where pages go."""
    weights = load_weights(gf, spec, load_mode, hugepages=hugepages)
    cache = KVCache(spec.hparams, n_ctx, n_slots, kv_type)
    heads = tuple(range(spec.hparams.n_head_kv))
    return PlacedModel(plan=plan, weights=weights, why=_why(plan, reason, weights.load_mode, hugepages),
                       wbufs={None: weights.buf}, kvs={None: NodeKv(None, heads, cache.k, cache.v)},
                       populated={None: [(0, weights.buf.size)]}, hugepages=hugepages)


def _weight_ranges(plan: PlacementPlan, offsets: dict[str, int], layout: Layout, base: int,
                   size: int) -> dict[int | None, list[Range]]:
    """Image bytes each weight buffer holds: all of them (mirror: on every node), or for
    distribute and partial-mirror each node's extents (the norm vectors too on worker 0's
    node, where they are copied from)."""
    if plan.mode == "mirror":
        return {n: [(0, size)] for n in plan.nodes}
    if plan.mode not in PER_NODE_MODES:
        return {None: [(0, size)]}
    ranges: dict[int | None, list[Range]] = {n: [] for n in plan.nodes}
    for m, extents in zip(plan.matrices, plan.extents):
        for e in extents:
            ranges[e.node].append((offsets[m.name] + e.byte_lo, offsets[m.name] + e.byte_hi))
    ranges[plan.homes[0]] += layout.vector_ranges(base)
    return {n: merge_ranges(r) for n, r in ranges.items()}


def _region(plan: PlacementPlan, key: int | None, nbytes: int, populated: list[Range], hugepages: bool,
            regions: list[Region]) -> np.ndarray:
    """A buffer for `key` (appended to `regions`, for closing): bound to that node, or
    (None) interleaved over the nodes in use (interleave) or bound to the one node
    (isolate). Only `populated` will be touched: the rest reserves no memory."""
    nodes = plan.nodes if key is None else (key,)
    partial = sum(hi - lo for lo, hi in populated) < nbytes
    region = Region(nbytes, "interleave" if plan.mode == "interleave" else "bind", nodes, noreserve=partial)
    regions.append(region)
    region.advise_hugepages(populated, hugepages)
    return region.array


def _fill_weights(plan: PlacementPlan, gf: GGUFFile, layout: Layout, base: int, wbufs: dict[int | None, np.ndarray],
                  ranges: dict[int | None, list[Range]], fill_mode: str, verbose: bool) -> bool:
    """Read (and repack) each buffer's ranges on threads bound to its node; mirror's
    other nodes copy the first node's finished copy instead, all at once. True when
    O_DIRECT was used to the end."""
    t0 = time.perf_counter()
    direct = True
    keys = list(wbufs)
    readers = keys[:1] if plan.mode == "mirror" else keys
    for key in readers:
        direct &= fill_image(gf, layout, wbufs[key], base, ranges[key], direct=fill_mode == "dio",
                             setup=bound_to(None if plan.mode == "interleave" else _node(plan, key)),
                             desc="loading weights" if key is None else f"loading weights (node {key})")
    copies = keys[1:] if plan.mode == "mirror" else []
    if copies:
        with ThreadPoolExecutor(len(copies)) as pool:
            for fut in [pool.submit(copy_on_node, wbufs[k], wbufs[keys[0]], ranges[k], k) for k in copies]:
                fut.result()
    if verbose:
        placed = sum(hi - lo for rs in ranges.values() for lo, hi in rs)
        print(f"numallm: placed {placed / 1e6:.1f} MB of weights on node(s) {','.join(map(str, plan.nodes))} "
              f"({plan.mode}) in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return direct


def _node(plan: PlacementPlan, key: int | None) -> int:
    """The node a buffer is bound to (isolate's shared one: the plan's only node)."""
    return plan.nodes[0] if key is None else key


def _place_kv(plan: PlacementPlan, shapes: tuple[tuple[int, ...], ...], dtype: type, itemsize: int,
              hugepages: bool, regions: list[Region]) -> dict[int | None, NodeKv]:
    """A K and a V array (shapes: theirs) per entry of the plan's KV heads, bound like the
    weights, with the kept heads faulted in from threads bound to the node (the rest never
    touched). A latent cache's one KV head is kept on every node its workers are on."""
    kvs: dict[int | None, NodeKv] = {}
    for node, heads in plan.kv_heads:
        key = node if plan.mode in PER_NODE_MODES else None
        arrays = []
        for shape in shapes:
            rs = head_ranges(shape, itemsize, heads)
            arr = _region(plan, key, int(np.prod(shape)) * itemsize, rs, hugepages, regions)
            populate_zero(arr, rs, None if plan.mode == "interleave" else _node(plan, key))
            arrays.append(arr.view(dtype).reshape(shape))
        kvs[key] = NodeKv(node, heads, *arrays)
    return kvs


_FILLS = {"none": "buffered reads", "dio": "O_DIRECT reads", "mlock": "buffered reads, then locked"}


def _why(plan: PlacementPlan, reason: str, fill_mode: str, hugepages: bool) -> str:
    """The verbose startup line: why this mode, nodes, workers and bytes per node, how filled."""
    if plan.mode == "none":
        how = f"load mode {fill_mode}, pages where the kernel puts them"
    else:
        how = f"weights filled by {_FILLS[fill_mode]} on threads bound to each node, huge pages " + (
            "asked" if hugepages else "off")
    return f"{reason}; {summary(plan)}; {how}"
