"""Worker placement (which CPU each worker gets) and the pool of pinned worker threads.

Default: one worker per allowed physical core, pinned to one PU of it; its SMT siblings
stay idle (they share the core's execution units and caches, so a second thread there
mostly competes with the first). Workers are numbered node by node, so workers
0..k-1 share node 0's memory, k.. node 1's, and so on.
"""

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

from numallm.errors import BadInputError, TopologyError
from numallm.numa.cpulist import format_cpulist
from numallm.numa.topology import Topology

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True)
class WorkerSlot:
    """Worker `worker` runs on CPU `cpu` (one PU of core `core`, an index into
    Topology.cores) and uses the memory of NUMA node `node`."""

    worker: int
    cpu: int
    node: int
    core: int


def plan_workers(topo: Topology, threads: int | None = None, smt: bool = False) -> list[WorkerSlot]:
    """Where each worker runs.

    threads=None: one worker per allowed physical core, or per allowed PU with smt.
    Fewer workers than cores are spread over the nodes in proportion to their allowed
    cores, so every node's memory bandwidth is used; more workers than cores (one
    warning unless smt) take SMT siblings, again spread over the nodes.
    """
    tiers = _pu_tiers(topo)
    n_cores = sum(len(cpus) for cpus in tiers[0].values())
    n_pus = sum(len(cpus) for tier in tiers for cpus in tier.values())
    if threads is None:
        threads = n_pus if smt else n_cores
    if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0:
        raise BadInputError(f"--threads must be a positive whole number, not {threads!r}")
    if threads > n_pus:
        raise BadInputError(f"--threads {threads} is more than the {n_pus} CPUs this process may use "
                            f"({format_cpulist(topo.allowed_cpus)}); use at most {n_pus}")
    if threads > n_cores and not smt:
        log.warning("--threads %d is more than the %d allowed physical cores: %d of the workers "
                    "run on SMT siblings of other workers' cores", threads, n_cores, threads - n_cores)
    _warn_about_uncovered_nodes(topo)
    chosen: list[tuple[int, int, int]] = []  # (node, tier, cpu): sorts node by node
    left = threads
    for tier, pus in enumerate(tiers):
        if left == 0:
            break
        take = _spread(pus, left)
        chosen.extend((node, tier, cpu) for node, cpus in take.items() for cpu in cpus)
        left -= sum(len(c) for c in take.values())
    chosen.sort()
    return [WorkerSlot(worker=i, cpu=cpu, node=node, core=topo.pu(cpu).core)
            for i, (node, _, cpu) in enumerate(chosen)]


def _pu_tiers(topo: Topology) -> list[dict[int, list[int]]]:
    """Allowed PUs by rank within their core (tier 0 = first allowed PU of each core,
    tier 1 = second, ...), each tier grouped by the node whose memory they will use."""
    fallback = _fallback_node(topo)
    tiers: list[dict[int, list[int]]] = []
    for core in topo.cores:
        allowed = [c for c in core.pus if c in topo.allowed_cpus]
        for rank, cpu in enumerate(allowed):
            if rank == len(tiers):
                tiers.append({})
            node = topo.node_of_cpu(cpu)
            tiers[rank].setdefault(fallback if node is None else node, []).append(cpu)
    return tiers


def _spread(by_node: dict[int, list[int]], count: int) -> dict[int, list[int]]:
    """`count` of the CPUs, shared among the nodes in proportion to how many each has
    (largest remainder; ties go to the lower node)."""
    total = sum(len(c) for c in by_node.values())
    if count >= total:
        return by_node
    shares = {n: count * len(c) // total for n, c in by_node.items()}
    rest = count - sum(shares.values())
    by_remainder = sorted(by_node, key=lambda n: (-(count * len(by_node[n]) % total), n))
    for n in by_remainder[:rest]:
        shares[n] += 1
    return {n: by_node[n][:shares[n]] for n in by_node}


def _fallback_node(topo: Topology) -> int:
    """Memory node for CPUs whose own node is offline: the first allowed node with memory."""
    with_memory = [n.os_index for n in topo.nodes if n.os_index in topo.allowed_nodes and n.memory_bytes]
    return with_memory[0] if with_memory else min(topo.allowed_nodes)


def _warn_about_uncovered_nodes(topo: Topology) -> None:
    """One line for each way the cpuset splits CPUs from their memory."""
    no_cpu = [n.os_index for n in topo.nodes
              if n.cpus and n.os_index in topo.allowed_nodes and not n.cpus & topo.allowed_cpus]
    if no_cpu:
        log.warning("this process may use no CPU of NUMA node(s) %s: no worker runs next to "
                    "that memory", format_cpulist(no_cpu))
    no_memory = [n.os_index for n in topo.nodes
                 if n.cpus & topo.allowed_cpus and n.os_index not in topo.allowed_nodes]
    if no_memory:
        log.warning("this process may not allocate on NUMA node(s) %s where some of its workers "
                    "run: their memory is remote", format_cpulist(no_memory))
    homeless = sorted(c for c in topo.allowed_cpus if topo.node_of_cpu(c) is None)
    if homeless:
        log.warning("CPUs %s belong to no online NUMA node; their workers use node %d's memory",
                    format_cpulist(homeless), _fallback_node(topo))


# ----------------------------------------------------------------------- the pool

_local = threading.local()


def current_worker() -> int:
    """The number of the pool worker running this code."""
    return _slot().worker


def current_node() -> int:
    """The NUMA node of the pool worker running this code."""
    return _slot().node


def _slot() -> WorkerSlot:
    slot: WorkerSlot | None = getattr(_local, "slot", None)
    if slot is None:
        raise RuntimeError("current_node()/current_worker() called outside a WorkerPool worker thread")
    return slot


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the call is over: an interrupt after some workers were handed
    the job and before the others would leave them waiting at a barrier for ever. A
    call takes milliseconds; the interrupt is delivered right after it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only
        return
    caught: list[FrameType | None] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, caught[0])
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


class WorkerPool:
    """One long-lived thread per slot, pinned to the slot's CPU.

    run(fn, *args) calls fn(slot, *args) on every worker at once and waits for all of
    them. The handshake is one plain lock per worker to start it and one lock the last
    finisher releases (no Condition: waking N threads through one would make them
    queue on its lock), so run() is cheap enough to call once per token.
    """

    def __init__(self, plan: Sequence[WorkerSlot]) -> None:
        if not plan:
            raise BadInputError("a worker pool needs at least one worker")
        self.plan = tuple(plan)
        n = len(self.plan)
        self._go = [threading.Lock() for _ in range(n)]  # held = worker i must wait
        for go in self._go:
            go.acquire()
        self._done = threading.Lock()  # released by the last worker to finish
        self._done.acquire()
        self._count_lock = threading.Lock()
        self._remaining = n  # the first handshake: every worker has pinned itself
        self._call_lock = threading.Lock()  # one run() or close() at a time
        self._job: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        self._results: list[Any] = [None] * n
        self._errors: list[BaseException | None] = [None] * n
        self._closed = False
        self._threads = [threading.Thread(target=self._serve, args=(i, slot), daemon=True,
                                          name=f"numallm-worker-{slot.worker}")
                         for i, slot in enumerate(self.plan)]
        for t in self._threads:
            t.start()
        self._done.acquire()
        failed = [(s, e) for s, e in zip(self.plan, self._errors) if e is not None]
        if failed:
            self.close()
            slot, exc = failed[0]
            raise TopologyError(f"cannot pin worker {slot.worker} to CPU {slot.cpu}: {exc}; "
                                "is that CPU allowed (taskset, numactl, cpuset)?")

    def _finished_one(self) -> None:
        with self._count_lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self._done.release()

    def _serve(self, i: int, slot: WorkerSlot) -> None:
        try:
            os.sched_setaffinity(0, {slot.cpu})  # 0 = the calling thread
            _local.slot = slot
        except OSError as exc:
            self._errors[i] = exc
        pinned = self._errors[i] is None
        self._finished_one()
        if not pinned:
            return
        go = self._go[i]
        while True:
            go.acquire()
            job = self._job
            if job is None:  # close()
                return
            fn, args = job
            try:
                self._results[i] = fn(slot, *args)
            except BaseException as exc:  # noqa: BLE001  handed to the caller of run()
                self._errors[i] = exc
            self._finished_one()

    def run(self, fn: Callable[..., R], *args: Any) -> list[R]:
        """fn(slot, *args) on every worker concurrently; results in plan order.
        The first worker (in plan order) that raised has its exception re-raised here."""
        with self._call_lock, _sigint_deferred():
            if self._closed:
                raise RuntimeError("this WorkerPool is closed")
            n = len(self.plan)
            self._results, self._errors = [None] * n, [None] * n
            self._remaining = n
            self._job = (fn, args)
            for go in self._go:
                go.release()
            self._done.acquire()
            self._job = None
            results, errors = self._results, self._errors
        for exc in errors:
            if exc is not None:
                raise exc
        return results

    def close(self) -> None:
        """Stop and join every worker (waiting for a run() under way); closing again does
        nothing. Not for calling from inside a worker."""
        with self._call_lock:
            if self._closed:
                return
            self._closed = True
            self._job = None
            for go in self._go:
                go.release()  # a worker that failed to pin never takes it: harmless
        for t in self._threads:
            t.join()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.plan)
