"""Anonymous memory on chosen NUMA nodes: allocate with a policy, advise huge pages, fill
from threads bound to a node, and read back where the pages really are.

A Region is one anonymous mapping whose usable body starts on a 2 MiB boundary (so
transparent huge pages can back it) between two PROT_NONE guard pages (so the kernel
never merges its VMAs with a neighbour's, and /proc/self/smaps figures for the body are
the body's own). The body's policy (mbind) decides where every page goes whichever
thread touches it; fills still run on threads bound to the node, so a fill's own
scratch memory (a repack's temporaries) lands there too.
"""

from __future__ import annotations

import dataclasses
import mmap
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numallm.errors import ResourceError
from numallm.numa import libnuma
from numallm.numa.pages import HUGE, PAGE, address, align_down, align_up, guarded_map, libc, os_error
from numallm.numa.sysfs import NODE_DIR, SysfsRoot
from numallm.numa.topology import Topology

_COPY_STEP = 8 << 20     # bytes per copy task
_SMAPS_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")

Range = tuple[int, int]  # [lo, hi) byte offsets into a region's body
# What the kernel drops, before it fails an allocation bound to a node, besides MemFree
_RECLAIMABLE = ("Active(file)", "Inactive(file)", "SReclaimable")


class Region:
    """`nbytes` of anonymous memory with a placement policy ("bind" to one node,
    "interleave" over several, or "default": the kernel's first-touch rule).

    noreserve: reserve no swap for the whole range (a distribute shard populates only
    part of a full-size range)."""

    def __init__(self, nbytes: int, policy: str = "default", nodes: Sequence[int] = (),
                 noreserve: bool = False) -> None:
        self.nbytes = nbytes
        self.policy = policy
        self.nodes = tuple(nodes)
        try:
            self._map: mmap.mmap | None
            self._map, self._whole, self._start = guarded_map(nbytes, noreserve)
        except OSError as e:
            raise ResourceError(f"cannot reserve {nbytes} bytes of address space ({e.strerror})") from None
        self.array = self._whole[self._start:self._start + nbytes]
        self._locked: list[Range] = []
        if policy != "default":
            try:
                libnuma.bind_range(self.address, align_up(max(nbytes, 1), PAGE), policy, self.nodes)
            except BaseException:
                self.close()
                raise

    @property
    def address(self) -> int:
        return address(self._whole) + self._start

    def advise_hugepages(self, populated: Iterable[Range], hugepages: bool) -> None:
        """Huge pages for the 2 MiB-aligned interior of each populated range, none elsewhere:
        a huge page across a range's edge would fill the neighbour's bytes too (a
        distribute shard's boundary page doubled on two nodes). hugepages False: none at all."""
        assert self._map is not None
        body = align_up(max(self.nbytes, 1), PAGE)
        self._map.madvise(mmap.MADV_NOHUGEPAGE, self._start, body)
        if not hugepages:
            return
        for lo, hi in merge_ranges(populated):
            a, b = align_up(lo, HUGE), align_down(hi, HUGE)
            if b > a:
                self._map.madvise(mmap.MADV_HUGEPAGE, self._start + a, b - a)

    def lock(self, ranges: Iterable[Range]) -> None:
        """mlock the pages of `ranges` (the populated ones: mlock faults in what it locks)."""
        for lo, hi in merge_ranges((align_down(a, PAGE), align_up(b, PAGE)) for a, b in ranges):
            if libc().mlock(self.address + lo, hi - lo) != 0:
                err = os_error("mlock")
                raise ResourceError(f"--load-mode mlock: locking {hi - lo} bytes failed ({err.strerror}); "
                                    "check `ulimit -l` and free memory, or use --load-mode none")
            self._locked.append((lo, hi))

    def close(self) -> None:
        """Unlock, give the pages back now, and unmap once no view is left (idempotent).

        MADV_DONTNEED frees the memory even while a caller still holds a view (it then
        reads zeros, never freed memory); the mapping itself goes when the last view does."""
        if self._map is None:
            return
        for lo, hi in self._locked:
            libc().munlock(self.address + lo, hi - lo)
        self._locked.clear()
        self._map.madvise(mmap.MADV_DONTNEED, self._start, align_up(max(self.nbytes, 1), PAGE))
        self.array = self._whole = np.empty(0, np.uint8)
        try:
            self._map.close()
        except BufferError:
            pass  # a view is still alive somewhere: the GC unmaps it
        self._map = None


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """The union of byte ranges, as sorted disjoint ranges (touching ones joined)."""
    out: list[Range] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def bound_to(node: int | None) -> Callable[[], None] | None:
    """A thread initializer binding the thread's memory to `node` (strict); None: no binding."""
    if node is None:
        return None
    return lambda: libnuma.bind_thread_memory(node, strict=True)


def on_node(node: int | None, tasks: Sequence[Callable[[], None]], threads: int = 4) -> None:
    """Run `tasks` on `threads` threads whose memory is bound to `node` (None: unbound),
    re-raising the first failure."""
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(tasks))), initializer=bound_to(node)) as pool:
        for fut in [pool.submit(t) for t in tasks]:
            fut.result()


def populate_zero(dest: np.ndarray, ranges: Iterable[Range], node: int | None, threads: int = 2) -> None:
    """Fault in bytes `ranges` of dest (uint8) by writing zeros from threads bound to `node`."""
    def zero(lo: int, hi: int) -> Callable[[], None]:
        return lambda: dest[lo:hi].fill(0)
    on_node(node, [zero(a, min(a + _COPY_STEP, hi)) for lo, hi in merge_ranges(ranges)
                   for a in range(lo, hi, _COPY_STEP)], threads)


def copy_on_node(dest: np.ndarray, src: np.ndarray, ranges: Iterable[Range], node: int | None,
                 threads: int = 4) -> None:
    """Copy bytes `ranges` of src into dest (both uint8, same size) from threads bound to
    `node`: the copy's pages are written, hence placed, there."""
    def copy(lo: int, hi: int) -> Callable[[], None]:
        return lambda: np.copyto(dest[lo:hi], src[lo:hi])
    on_node(node, [copy(a, min(a + _COPY_STEP, hi)) for lo, hi in merge_ranges(ranges)
                   for a in range(lo, hi, _COPY_STEP)], threads)


def page_nodes(buf: np.ndarray) -> tuple[int, np.ndarray]:
    """(the address of the first page, the node of each page of buf) as read back from the
    kernel (move_pages); -2 for a page never touched. Any buffer: a Region's, a file mapping."""
    start = align_down(address(buf), PAGE)
    end = align_up(address(buf) + buf.nbytes, PAGE)
    return start, libnuma.page_nodes(start, (end - start) // PAGE, PAGE)


def smaps_bytes(spans: Sequence[tuple[int, int]], fields: Sequence[str] = ("Rss", "AnonHugePages")) -> list[dict[str, int]]:
    """For each (address, nbytes) span, the sums of /proc/self/smaps `fields` over the
    VMAs it covers: e.g. how much of a Region's body is resident, and how much of that in
    huge pages. A VMA reaching past the span (a file mapping whose tensor data is the
    span, or an array that is part of a larger mapping) counts in proportion to the part
    inside it; buffers from pages.guarded_map are VMAs of their own, so their figures are
    exact. One read of smaps for all spans (it is long in a big process)."""
    bounds = [(align_down(a, PAGE), align_up(a + n, PAGE)) for a, n in spans]
    sums = [dict.fromkeys(fields, 0) for _ in spans]
    inside: list[tuple[dict[str, int], float]] = []
    with open("/proc/self/smaps") as f:
        for line in f:
            m = _SMAPS_HEADER.match(line)
            if m:
                lo, hi = int(m.group(1), 16), int(m.group(2), 16)
                inside = [(s, (min(hi, b) - max(lo, a)) / (hi - lo))
                          for s, (a, b) in zip(sums, bounds) if lo < b and hi > a]
                continue
            if inside:
                key, _, value = line.partition(":")
                if key in fields:
                    for s, share in inside:
                        s[key] += round(int(value.split()[0]) * 1024 * share)
    return sums


def available_bytes(root: str, node: int) -> int | None:
    """A node's MemFree plus its page cache and reclaimable slab, which the kernel frees
    for a strictly bound allocation there: MemFree alone would count a node whose memory
    holds the model file's own cached pages (just read, by a thread bound there) as full.
    None when the node's meminfo is absent or unreadable."""
    text = SysfsRoot(root).text(f"{NODE_DIR}/node{node}/meminfo")
    if text is None:
        return None
    kib: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()  # "Node 0 MemFree: 123 kB"
        if len(parts) >= 4 and parts[3].isdigit():
            kib[parts[2].rstrip(":")] = int(parts[3])
    if "MemFree" not in kib:
        return None
    return (kib["MemFree"] + sum(kib.get(k, 0) for k in _RECLAIMABLE)) * 1024


def with_available_memory(topo: Topology) -> Topology:
    """The topology with each node's free_bytes counting what the kernel can reclaim
    (available_bytes), where its meminfo tells."""
    nodes = []
    for n in topo.nodes:
        avail = available_bytes(topo.root, n.os_index)
        nodes.append(n if avail is None else dataclasses.replace(n, free_bytes=avail))
    return dataclasses.replace(topo, nodes=tuple(nodes))


def thp_setting() -> str:
    """The kernel's transparent huge page mode (always, madvise, never), or "absent"."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "absent"
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else "absent"
