"""detect("/") on this machine: the affinity as the allowed view, and life without libnuma."""

import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from numallm.numa.topology import detect


def test_live_allowed_view_is_the_affinity() -> None:
    topo = detect("/")
    assert topo.allowed_cpus == os.sched_getaffinity(0) & topo.cpus
    assert topo.libnuma is not None  # checked on the live machine only
    assert len(topo.pus) <= (os.cpu_count() or 0)


def test_taskset_like_affinity_restricts_the_allowed_view() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to confine a thread to one of them")
    seen: dict[str, Any] = {}

    def confined() -> None:  # a thread's affinity, as taskset sets a process's
        os.sched_setaffinity(0, {cpus[-1]})
        seen["topo"] = detect("/")
    t = threading.Thread(target=confined)
    t.start()
    t.join()
    topo = seen["topo"]
    assert topo.restricted and topo.allowed_cpus == {cpus[-1]}


# py-libnuma finds libnuma.so through ctypes.util.find_library; when that finds nothing it
# opens CDLL(None) and fails with AttributeError on the first numa_* symbol
WITHOUT_LIBNUMA = """
import ctypes.util, logging, sys
real = ctypes.util.find_library
ctypes.util.find_library = lambda name: None if name == "numa" else real(name)
logging.basicConfig(format="WARNING %(message)s")
from numallm.errors import TopologyError
from numallm.numa import libnuma
from numallm.numa.topology import detect
from numallm.numa.workers import WorkerPool, plan_workers
topo = detect("/")
assert topo.libnuma is False and not libnuma.available()
with WorkerPool(plan_workers(topo)) as pool:
    assert len(pool.run(lambda slot: slot.cpu)) == len(pool)
try:
    libnuma.bind_thread_memory(0)
except TopologyError as exc:
    print("ERROR", exc)
"""


def test_without_libnuma_one_warning_and_binding_names_the_package() -> None:
    run = subprocess.run([sys.executable, "-c", WITHOUT_LIBNUMA], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "libnuma1" in warnings[0]
    assert run.stdout.strip() == ("ERROR binding memory to node 0 needs libnuma: install the Debian "
                                  "package libnuma1 (apt-get install libnuma1)")
