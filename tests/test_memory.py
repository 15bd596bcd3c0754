"""numa/memory.py on this machine: placed anonymous memory, its policy, huge page advice,
filling from bound threads, and the read-back of where pages are (engine/page_report's
PageMap), checked against the kernel's own answers page by page."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numallm.engine.kv_cache import lazy_zeros
from numallm.engine.page_report import PageMap
from numallm.numa import libnuma
from numallm.numa.memory import (
    Region,
    available_bytes,
    copy_on_node,
    merge_ranges,
    page_nodes,
    populate_zero,
    smaps_bytes,
    thp_setting,
    with_available_memory,
)
from numallm.numa.pages import HUGE, PAGE, address, anonymous
from numallm.numa.topology import detect
from vm_harness import PYTHON, run_in_vm, vm_available, workdir

pytestmark = pytest.mark.skipif(not libnuma.available(), reason="libnuma is not usable here")

MiB = 1 << 20


@pytest.fixture(scope="module")
def node() -> int:
    return detect("/").nodes[0].os_index


def test_available_memory_counts_what_the_kernel_can_reclaim(tmp_path: Path) -> None:
    node1 = tmp_path / "sys/devices/system/node/node1"
    node1.mkdir(parents=True)
    (node1 / "meminfo").write_text("Node 1 MemTotal: 8000 kB\nNode 1 MemFree: 1000 kB\nNode 1 Active(file): 200 kB\n"
                                   "Node 1 Inactive(file): 30 kB\nNode 1 Dirty: 5 kB\nNode 1 SReclaimable: 4 kB\n")
    assert available_bytes(str(tmp_path), 1) == (1000 + 200 + 30 + 4) * 1024
    assert available_bytes(str(tmp_path), 0) is None
    live = detect("/")
    for n in with_available_memory(live).nodes:
        assert n.free_bytes is not None and n.free_bytes >= (live.node(n.os_index).free_bytes or 0) * 0.9


def test_merge_ranges() -> None:
    assert merge_ranges([(5, 9), (0, 3), (3, 4), (8, 12), (20, 20)]) == [(0, 4), (5, 12)]
    assert merge_ranges([]) == []


@pytest.mark.parametrize("policy", ["bind", "interleave", "default"])
def test_region_pages_land_where_the_policy_says_and_only_where_touched(node: int, policy: str) -> None:
    r = Region(9 * MiB + 123, policy, [node] if policy != "default" else [], noreserve=True)
    try:
        assert address(r.array) % HUGE == 0 and r.array.size == 9 * MiB + 123
        populate_zero(r.array, [(MiB + 5, 3 * MiB), (6 * MiB, 9 * MiB + 123)], node)
        start, nodes = page_nodes(r.array)
        assert start == r.address and len(nodes) == (9 * MiB + 123 + PAGE - 1) // PAGE
        touched = np.zeros(len(nodes), bool)
        touched[MiB // PAGE:3 * MiB // PAGE] = True
        touched[6 * MiB // PAGE:] = True
        assert (nodes[touched] == node).all() and (nodes[~touched] == -2).all()
    finally:
        r.close()


def test_page_map_counts_bytes_like_a_page_by_page_walk(node: int) -> None:
    """Random byte ranges over a half-populated buffer, against a brute-force count."""
    r = Region(3 * MiB, "bind", [node])
    try:
        populate_zero(r.array, [(0, MiB), (MiB + 3 * PAGE, 2 * MiB + 17)], node)
        pm = PageMap(r.array[100:])  # a buffer that does not start on a page boundary
        per_page = np.repeat(page_nodes(r.array)[1], PAGE)[100:3 * MiB]
        rng = np.random.default_rng(1)
        for _ in range(200):
            lo, hi = sorted(rng.integers(0, per_page.size, 2))
            vals, counts = np.unique(per_page[lo:hi], return_counts=True)
            assert pm.bytes_by_node(lo, hi) == {int(v): int(c) for v, c in zip(vals, counts)}
    finally:
        r.close()


def test_hugepage_advice_covers_only_the_aligned_interior_of_populated_ranges(node: int) -> None:
    if thp_setting() in ("never", "absent"):
        pytest.skip(f"transparent huge pages are {thp_setting()} on this kernel")
    r = Region(16 * MiB, "bind", [node], noreserve=True)
    try:
        # two shards, neither on a 2 MiB boundary: interiors [2, 6) and [8, 12) MiB
        ranges = [(MiB + PAGE, 6 * MiB + PAGE), (7 * MiB + 3 * PAGE, 12 * MiB + 5)]
        r.advise_hugepages(ranges, True)
        populate_zero(r.array, ranges, node)
        (s,) = smaps_bytes([(r.address, r.nbytes)])
        populated = sum(hi - lo for lo, hi in merge_ranges(ranges))
        assert s["AnonHugePages"] <= 8 * MiB  # never a huge page across a shard's edge
        assert populated <= s["Rss"] < populated + 2 * PAGE + 8
        assert s["AnonHugePages"] > 0, "the kernel gave no huge page to advised, aligned 2 MiB blocks"
        off = Region(8 * MiB, "bind", [node])
        try:
            off.advise_hugepages([(0, 8 * MiB)], False)
            populate_zero(off.array, [(0, 8 * MiB)], node)
            assert smaps_bytes([(off.address, off.nbytes)])[0]["AnonHugePages"] == 0
        finally:
            off.close()
    finally:
        r.close()


def test_a_kv_cache_is_faulted_in_only_where_written() -> None:
    # A first token writes position 0 of every layer and head: one write per MiB here.
    # np.zeros (huge pages, where THP allows) would fault in and zero all 32 MiB for it.
    k = lazy_zeros((1, 4, 8, 4096, 128), np.uint16)
    k[0, :, :, 0, :] = 1
    (s,) = smaps_bytes([(address(k), k.nbytes)])
    assert s["AnonHugePages"] == 0
    assert 4 * 8 * PAGE <= s["Rss"] <= 4 * 8 * 2 * PAGE
    assert k.flags.writeable and not k[0, :, :, 1:].any()


def test_smaps_counts_a_span_inside_a_larger_mapping() -> None:
    # A span that is only part of a VMA (tensor data inside a file mapping, say) counts
    # in proportion, not as nothing.
    import mmap

    whole = mmap.mmap(-1, 8 * MiB)
    buf = np.frombuffer(whole, np.uint8)
    buf[::PAGE] = 1  # every page resident
    try:
        (half,) = smaps_bytes([(address(buf), 4 * MiB)])
    finally:
        del buf
        whole.close()
    assert 2 * MiB <= half["Rss"] <= 4 * MiB, half  # 4 MiB unless a neighbour merged in too


def test_anonymous_buffers_keep_their_own_smaps_figures() -> None:
    # Two mappings made one after another with the same flags (a weights copy and a
    # KV cache, both without huge pages) would merge into one VMA: then smaps could
    # only share the resident bytes between them. Guard pages keep them apart.
    full, full_map = anonymous(8 * MiB, hugepages=False)
    empty, empty_map = anonymous(8 * MiB, hugepages=False)
    full[::PAGE] = 1
    got = smaps_bytes([(address(full), full.size), (address(empty), empty.size)])
    assert address(full) % HUGE == 0 and address(empty) % HUGE == 0
    assert [g["Rss"] for g in got] == [8 * MiB, 0], got
    del full, empty
    full_map.close()
    empty_map.close()


def test_copy_on_node_and_close_frees_memory(node: int) -> None:
    src = np.random.default_rng(0).integers(0, 256, 5 * MiB + 7, dtype=np.uint8)
    r = Region(src.size, "bind", [node])
    copy_on_node(r.array, src, [(0, src.size)], node)
    assert np.array_equal(r.array, src) and (page_nodes(r.array)[1] == node).all()
    view = r.array
    r.close()
    r.close()  # idempotent
    assert r.array.size == 0
    assert not view.any()  # a view kept past close reads zeros, never freed memory


@pytest.mark.vm
@pytest.mark.skipif(not vm_available(), reason="the NUMA VM (../shared/numa-vm) is absent")
def test_bound_regions_are_left_alone_by_numa_balancing() -> None:
    # Automatic NUMA balancing migrates pages toward the threads that read them, unless
    # their range has a policy of its own: a Region's mbind is what keeps placed weights
    # where they were put. The unbound buffer beside it (filled by a thread bound to node 1,
    # as first touch would place it) is the control: it must move, or balancing never ran.
    child = textwrap.dedent("""
        import collections, json, os, threading, time
        from numallm.numa.pages import anonymous
        from numallm.numa import libnuma
        from numallm.numa.memory import Region, page_nodes
        open("/proc/sys/kernel/numa_balancing", "w").write("1")
        os.sched_setaffinity(0, {0})  # the reading thread runs on node 0
        bound = Region(16 << 20, "bind", [1])
        bound.array[:] = 1  # touched from node 0: the range's policy still puts it on node 1
        loose, _ = anonymous(16 << 20)
        def fill():
            libnuma.bind_thread_memory(1)
            loose[:] = 1
        t = threading.Thread(target=fill); t.start(); t.join()
        where = lambda a: dict(collections.Counter(page_nodes(a)[1].tolist()))
        before = [where(bound.array), where(loose)]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and where(loose).get(1, 0) > 0:
            for _ in range(20):
                bound.array[::4096].sum(); loose[::4096].sum()
        json.dump({"before": before, "after": [where(bound.array), where(loose)],
                   "seconds": time.monotonic() - t0}, open("balancing.json", "w"))
    """)
    with workdir() as folder:
        returncode, output = run_in_vm(["--nodes", "2", "--sockets", "2", "--cores", "1", "--mem", "1024M"],
                                       [PYTHON, "-c", f"import os; os.chdir({str(folder)!r})\n" + child], timeout=300)
        assert returncode == 0, f"the VM run failed (exit {returncode}):\n{output[-3000:]}"
        seen = json.loads((folder / "balancing.json").read_text())
    on_node_1 = {"1": 16 * MiB // PAGE}  # node: pages (JSON keys are strings)
    assert seen["before"] == [on_node_1, on_node_1], seen
    assert "1" not in seen["after"][1], f"balancing moved nothing in {seen['seconds']:.0f} s: {seen}"
    assert seen["after"][0] == on_node_1, seen
