"""Where the placed pages really are, read back from the kernel (move_pages), not from
what was asked: bytes per node for every tensor group, plan extent, weight buffer and
KV head, the per-token locality those pages give each worker's reads, and huge pages.
`numallm placement --json` prints this; the NUMA VM tests judge it against the plan.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from numallm.engine.kv_cache import head_ranges
from numallm.engine.placement_inputs import matrix_offsets
from numallm.numa.memory import page_nodes, smaps_bytes, thp_setting
from numallm.numa.pages import PAGE, address
from numallm.numa.placement import tensor_group
from numallm.numa.split import part

if TYPE_CHECKING:
    from numallm.engine.placing import PlacedModel


class PageMap:
    """The node of every page of one buffer, and byte counts per node over its ranges."""

    def __init__(self, buf: np.ndarray) -> None:
        start, nodes = page_nodes(buf) if buf.size else (address(buf), np.zeros(0, np.int32))
        self.nodes: np.ndarray = nodes
        self.shift = address(buf) - start  # buffer byte 0 lies this far into its first page
        self.values = [int(v) for v in np.unique(self.nodes)]
        self.cum = {v: np.concatenate(([0], np.cumsum(self.nodes == v))) for v in self.values}

    def bytes_by_node(self, lo: int, hi: int) -> dict[int, int]:
        """Bytes [lo, hi) of the buffer per node holding them; negative keys are -errno of
        pages not there (-2: never touched)."""
        if hi <= lo:
            return {}
        a, b = lo + self.shift, hi + self.shift
        p0, p1 = a // PAGE, (b - 1) // PAGE
        if p0 == p1:
            return {int(self.nodes[p0]): b - a}
        out = {v: int(self.cum[v][p1] - self.cum[v][p0 + 1]) * PAGE for v in self.values}
        out[int(self.nodes[p0])] += (p0 + 1) * PAGE - a
        out[int(self.nodes[p1])] += b - p1 * PAGE
        return {v: n for v, n in out.items() if n}

    def sum_over(self, ranges: Iterable[tuple[int, int]]) -> dict[int, int]:
        total: dict[int, int] = {}
        for lo, hi in ranges:
            for v, n in self.bytes_by_node(lo, hi).items():
                total[v] = total.get(v, 0) + n
        return total


def _json_nodes(by_node: dict[int, int]) -> dict[str, int]:
    """Placed bytes per node, keys as JSON strings (pages not there left out)."""
    return {str(v): n for v, n in sorted(by_node.items()) if v >= 0}


def _missing(by_node: dict[int, int]) -> int:
    return sum(n for v, n in by_node.items() if v < 0)


def page_report(placed: PlacedModel) -> dict[str, Any]:
    plan, w = placed.plan, placed.weights
    pages = {key: PageMap(buf) for key, buf in placed.wbufs.items()}
    offsets = matrix_offsets(w.tables.layer, w.tables.model)

    groups: dict[str, dict[int, int]] = {}
    for m in plan.matrices:
        span = (offsets[m.name], offsets[m.name] + m.nbytes)
        g = groups.setdefault(tensor_group(m.name), {})
        for pm in pages.values():
            for v, n in pm.bytes_by_node(*span).items():
                g[v] = g.get(v, 0) + n

    extents = []
    for m, ext in zip(plan.matrices, plan.extents):
        for e in ext:
            key = e.node if e.node in pages else None
            by = pages[key].bytes_by_node(offsets[m.name] + e.byte_lo, offsets[m.name] + e.byte_hi)
            extents.append({"matrix": m.name, "row_lo": e.row_lo, "row_hi": e.row_hi, "bytes": e.nbytes,
                            "planned_node": e.node, "buffer": key, "bytes_by_node": _json_nodes(by), "missing_bytes": _missing(by)})

    kv = []
    kv_by_node: dict[int, int] = {}
    for key, nk in placed.kvs.items():
        item = nk.k.itemsize
        kmap, vmap = PageMap(nk.k.reshape(-1).view(np.uint8)), PageMap(nk.v.reshape(-1).view(np.uint8))
        for h in range(nk.k.shape[2]):
            by = kmap.sum_over(head_ranges(nk.k.shape, item, [h]))
            for v, n in vmap.sum_over(head_ranges(nk.v.shape, item, [h])).items():
                by[v] = by.get(v, 0) + n
            for v, n in by.items():
                kv_by_node[v] = kv_by_node.get(v, 0) + n
            kv.append({"buffer": key, "planned_node": nk.node, "head": h, "kept": h in nk.heads,
                       "bytes_by_node": _json_nodes(by), "missing_bytes": _missing(by)})

    weight_by_node: dict[int, int] = {}
    for g in groups.values():
        for v, n in g.items():
            weight_by_node[v] = weight_by_node.get(v, 0) + n
    on_cpu = plan.workers_per_node()
    listed = sorted({*plan.nodes, *on_cpu, *(v for v in weight_by_node if v >= 0), *(v for v in kv_by_node if v >= 0)})
    return {
        "mode": plan.mode,
        "why": placed.why,
        "load_mode": w.load_mode,
        "nodes": [{"os_index": n, "weight_bytes": weight_by_node.get(n, 0), "kv_bytes": kv_by_node.get(n, 0),
                   "workers": on_cpu.get(n, 0)} for n in listed],
        "per_token": measured_locality(placed, pages, offsets),
        "groups": [{"name": g.name, "placement": g.placement, "why": g.why,
                    "bytes_by_node": _json_nodes(groups[g.name]), "missing_bytes": _missing(groups[g.name])}
                   for g in plan.groups],
        "buffers": [{"buffer": key, "planned_bytes": sum(hi - lo for lo, hi in placed.populated[key]),
                     "bytes_by_node": _json_nodes(pm.sum_over([(0, placed.wbufs[key].size)]))}
                    for key, pm in pages.items()],
        "extents": extents,
        "kv": kv,
        "kv_bytes_per_token": plan.kv.token_bytes if plan.kv else 0,  # every layer's, on each node keeping it
        "hugepages": _hugepages(placed),
    }


def measured_locality(placed: PlacedModel, pages: dict[int | None, PageMap],
                      offsets: dict[str, int]) -> dict[str, int | str]:
    """Weight bytes read per generated token from the reader's own node and from others,
    from where the pages of each worker's buffer really are and the rows it reads
    (forward.py's split); "embedding_*": the one token-embedding row worker 0 looks up,
    averaged over the vocabulary. A page not there counts as remote."""
    plan = placed.plan
    n = len(plan.workers)
    matmul = [0.0, 0.0]
    lookup = [0.0, 0.0]
    for w, slot in enumerate(plan.workers):
        pm = pages[placed.key(w)]
        for m in plan.matrices:
            if m.matmul:
                lo, hi = part(m.rows, m.row_group, w, n)
                local = pm.bytes_by_node(offsets[m.name] + lo * m.row_bytes,
                                         offsets[m.name] + hi * m.row_bytes).get(slot.node, 0)
                matmul[0] += local * m.read_share
                matmul[1] += ((hi - lo) * m.row_bytes - local) * m.read_share
            if m.lookup and w == 0:
                local = pm.bytes_by_node(offsets[m.name], offsets[m.name] + m.nbytes).get(slot.node, 0)
                lookup[0] += local / m.rows
                lookup[1] += (m.nbytes - local) / m.rows
    ml, mr, el, er = (round(v) for v in (*matmul, *lookup))
    return {"local_bytes": ml + el, "remote_bytes": mr + er, "matmul_local_bytes": ml,
            "matmul_remote_bytes": mr, "embedding_local_bytes": el, "embedding_remote_bytes": er,
            "basis": "pages"}


def _hugepages(placed: PlacedModel) -> dict[str, Any]:
    """Resident and huge-page-backed bytes of the weight buffers and the KV arrays (smaps)."""
    def usage(arrays: list[np.ndarray]) -> dict[str, int]:
        found = smaps_bytes([(address(a), a.nbytes) for a in arrays])
        return {"resident_bytes": sum(s["Rss"] for s in found), "huge_bytes": sum(s["AnonHugePages"] for s in found)}

    return {"requested": placed.hugepages and not placed.weights.mapped, "thp": thp_setting(),
            "weights": usage(list(placed.wbufs.values())),
            "kv": usage([a for nk in placed.kvs.values() for a in (nk.k, nk.v)])}
