"""The worker pool on this machine: pinning, thread-local node ids, run() semantics."""

import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType

import pytest

from numallm.errors import TopologyError
from numallm.numa.topology import Topology, detect
from numallm.numa.workers import WorkerPool, WorkerSlot, current_node, current_worker, plan_workers


def _load_probe() -> ModuleType:
    """tests/vm/topology_probe.py: the same observations the NUMA VM tests make."""
    path = Path(__file__).parent / "vm" / "topology_probe.py"
    spec = importlib.util.spec_from_file_location("topology_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load_probe()


@pytest.fixture(scope="module")
def topo() -> Topology:
    return detect("/")


def slots_over_allowed_cpus(topo: Topology, count: int) -> list[WorkerSlot]:
    """`count` workers dealt round-robin over the allowed CPUs (several may share one),
    so these tests run the same on a machine with few CPUs."""
    cpus = sorted(topo.allowed_cpus)
    return [WorkerSlot(worker=i, cpu=cpus[i % len(cpus)], node=topo.node_of_cpu(cpus[i % len(cpus)]) or 0,
                       core=topo.pu(cpus[i % len(cpus)]).core) for i in range(count)]


def test_workers_run_pinned_with_their_node(topo: Topology) -> None:
    plan = plan_workers(topo, smt=True)  # every allowed CPU
    with WorkerPool(plan) as pool:
        seen = pool.run(probe.observe)
    assert len({w["tid"] for w in seen}) == len(plan)
    for slot, w in zip(plan, seen):
        assert (w["worker"], w["affinity"], w["stat_cpu"]) == (slot.worker, [slot.cpu], slot.cpu)
        assert w["node"] == slot.node == topo.node_of_cpu(slot.cpu)


def test_bound_worker_memory_lands_on_its_node(topo: Topology) -> None:
    if not topo.libnuma:
        pytest.skip("libnuma is not usable on this machine")
    plan = plan_workers(topo)
    with WorkerPool(plan) as pool:
        for strict in (True, False):
            pages = pool.run(probe.page_nodes_after_binding, strict)
            assert pages == [[slot.node] * probe.PAGES for slot in plan]


def test_run_returns_results_in_worker_order_on_the_same_threads(topo: Topology) -> None:
    with WorkerPool(slots_over_allowed_cpus(topo, 5)) as pool:
        first = pool.run(lambda slot, a, b: (slot.worker, a + b, threading.get_native_id()), 2, 3)
        for call in range(50):  # one handshake per call; the threads stay the same
            again = pool.run(lambda slot, k: (slot.worker, k, threading.get_native_id()), call)
            assert [(w, k) for w, k, _ in again] == [(w, call) for w in range(5)]
            assert [t for *_, t in again] == [t for *_, t in first]
    assert [(w, s) for w, s, _ in first] == [(w, 5) for w in range(5)]


def test_workers_run_concurrently(topo: Topology) -> None:
    plan = slots_over_allowed_cpus(topo, 4)
    barrier = threading.Barrier(len(plan), timeout=60)  # run one at a time and it breaks
    with WorkerPool(plan) as pool:
        assert pool.run(lambda slot: barrier.wait() >= 0) == [True] * len(plan)


def test_a_worker_exception_reaches_the_caller_and_the_pool_goes_on(topo: Topology) -> None:
    def fail_on_odd(slot: WorkerSlot) -> int:
        if slot.worker % 2:
            raise ValueError(f"worker {slot.worker} failed")
        return slot.worker
    with WorkerPool(slots_over_allowed_cpus(topo, 4)) as pool:
        with pytest.raises(ValueError, match="worker 1 failed"):  # the first in worker order
            pool.run(fail_on_odd)
        assert pool.run(lambda slot: current_worker()) == [0, 1, 2, 3]


def test_close_joins_every_thread_and_is_idempotent(topo: Topology) -> None:
    pool = WorkerPool(slots_over_allowed_cpus(topo, 3))
    threads = [t for t in threading.enumerate() if t.name.startswith("numallm-worker-")]
    assert len(threads) >= 3
    pool.close()
    pool.close()
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError, match="closed"):
        pool.run(lambda slot: None)


def test_pinning_to_an_unusable_cpu_is_a_topology_error(topo: Topology) -> None:
    usable = slots_over_allowed_cpus(topo, 1)[0]
    bad = WorkerSlot(worker=1, cpu=os.cpu_count() or 1 << 12, node=0, core=0)  # no such CPU
    before = threading.active_count()
    with pytest.raises(TopologyError, match=f"cannot pin worker 1 to CPU {bad.cpu}"):
        WorkerPool([usable, bad])
    assert threading.active_count() == before


def test_worker_identity_outside_a_worker_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside a WorkerPool worker"):
        current_node()
