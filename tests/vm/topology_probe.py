"""What this machine looks like to numallm, and where its workers really run.

    python3 topology_probe.py OUT.json

Run inside the NUMA VM by tests/test_topology_vm.py (one boot per machine shape, so
every check of that shape is gathered here in one guest run) and imported on the host
by tests/test_workers.py. Records raw observations; the tests judge them.
"""

import ctypes
import json
import mmap
import os
import sys
import threading
from typing import Any

from numallm.numa import libnuma
from numallm.numa.report import render_text, to_json
from numallm.numa.topology import detect
from numallm.numa.workers import WorkerPool, WorkerSlot, current_node, current_worker, plan_workers

PAGES = 4


def stat_cpu(tid: int) -> int:
    """The CPU a thread last ran on: field 39 of /proc/self/task/TID/stat. Read by the
    thread itself, that is the CPU it is running on now."""
    with open(f"/proc/self/task/{tid}/stat") as f:
        after_comm = f.read().rsplit(")", 1)[1].split()  # comm may hold spaces; field 3 on
    return int(after_comm[39 - 3])


def observe(slot: WorkerSlot) -> dict[str, Any]:
    """Where this worker thread is, by the kernel's account and by the pool's."""
    tid = threading.get_native_id()
    return {"slot": [slot.worker, slot.cpu, slot.node], "worker": current_worker(), "node": current_node(),
            "affinity": sorted(os.sched_getaffinity(0)), "stat_cpu": stat_cpu(tid), "tid": tid}


def page_nodes_after_binding(slot: WorkerSlot, strict: bool = True) -> list[int]:
    """Bind this thread's memory to its node (strictly, or as preferred node), fault in
    fresh pages, ask which node holds them."""
    libnuma.bind_thread_memory(current_node(), strict)
    try:
        buf = mmap.mmap(-1, PAGES * mmap.PAGESIZE)
        for page in range(PAGES):
            buf[page * mmap.PAGESIZE] = 1  # first touch allocates under the bound policy
        view = ctypes.c_char.from_buffer(buf)
        base = ctypes.addressof(view)
        nodes = libnuma.nodes_of_pages([base + page * mmap.PAGESIZE for page in range(PAGES)])
        del view  # the buffer cannot close while a ctypes view exports it
        buf.close()
        return nodes
    finally:
        libnuma.unbind_thread_memory()


def detect_with_affinity(cpus: set[int]) -> dict[str, Any]:
    """detect("/") and the default plan from a thread confined to `cpus` (as under taskset)."""
    out: dict[str, Any] = {}

    def confined() -> None:
        os.sched_setaffinity(0, cpus)
        topo = detect("/")
        out.update(to_json(topo, plan_workers(topo)))
    t = threading.Thread(target=confined)
    t.start()
    t.join()
    return out


def probe() -> dict[str, Any]:
    topo = detect("/")
    plan = plan_workers(topo)
    with WorkerPool(plan) as pool:
        workers = pool.run(observe)
        memory = [pool.run(page_nodes_after_binding, strict) for strict in (True, False)] \
            if topo.libnuma else None
    with WorkerPool(plan_workers(topo, smt=True)) as pool:
        smt_workers = pool.run(observe)
    last_node = topo.nodes[-1]
    return {
        "report": to_json(topo, plan),
        "text": render_text(topo, plan),
        "workers": workers,
        "page_nodes": memory,
        "smt_workers": smt_workers,
        "libnuma_node_memory": {n.os_index: libnuma.node_memory(n.os_index) for n in topo.nodes}
        if topo.libnuma else None,
        "confined_to_last_node": detect_with_affinity(set(last_node.cpus)) if last_node.cpus else None,
    }


if __name__ == "__main__":
    with open(sys.argv[1], "w") as f:
        json.dump(probe(), f)
