"""detect() and plan_workers() on small machines written by hand: placement rules, and
bad input (missing, malformed or unreadable files, empty allowed sets) giving one clear
TopologyError or a one-line warning, never a crash."""

import logging
from pathlib import Path

import pytest

from numallm.errors import BadInputError, TopologyError
from numallm.numa.cpulist import format_cpulist
from numallm.numa.report import render_text, to_json
from numallm.numa.topology import detect
from numallm.numa.workers import plan_workers


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def write_machine(root: Path, sockets: int = 2, cores: int = 4, threads: int = 2, nodes: int = 2,
                  distance: int = 21) -> Path:
    """A Xeon-like sysfs: SMT siblings numbered sockets*cores apart (cpu0 & cpu8), the
    CPUs of each socket split evenly over its share of the nodes, 1 GiB per node."""
    n_cores = sockets * cores
    cpus = range(n_cores * threads)
    base = "sys/devices/system"
    write(root, f"{base}/cpu/online", f"0-{len(cpus) - 1}")
    for cpu in cpus:
        core = cpu % n_cores
        topo = f"{base}/cpu/cpu{cpu}/topology"
        write(root, f"{topo}/physical_package_id", str(core // cores))
        write(root, f"{topo}/core_id", str(core % cores))
        write(root, f"{topo}/thread_siblings_list", ",".join(str(core + t * n_cores) for t in range(threads)))
    per_node = n_cores // nodes
    for n in range(nodes):
        node_cores = range(n * per_node, (n + 1) * per_node)
        write(root, f"{base}/node/node{n}/cpulist",
              format_cpulist(c + t * n_cores for c in node_cores for t in range(threads)))
        write(root, f"{base}/node/node{n}/meminfo",
              f"Node {n} MemTotal:  1048576 kB\nNode {n} MemFree:  524288 kB")
        write(root, f"{base}/node/node{n}/distance",
              " ".join("10" if m == n else str(distance) for m in range(nodes)))
    return root


def write_cpuset(root: Path, cpus: str, mems: str) -> None:
    """Confine the recorded process to a legacy cpuset, as Torque and old containers do."""
    write(root, "proc/self/cpuset", "/job")
    write(root, "proc/mounts", "none /dev/cpuset cpuset rw 0 0")
    write(root, "dev/cpuset/job/cpus", cpus)
    write(root, "dev/cpuset/job/mems", mems)


# ---------------------------------------------------------------- what is detected

def test_siblings_numbered_apart_are_one_core(tmp_path: Path) -> None:
    topo = detect(str(write_machine(tmp_path)))
    assert [c.pus for c in topo.cores] == [(c, c + 8) for c in range(8)]
    assert [(p.os_index, sorted(p.cpus)) for p in topo.packages] == [
        (0, [0, 1, 2, 3, 8, 9, 10, 11]), (1, [4, 5, 6, 7, 12, 13, 14, 15])]
    assert topo.node_of_cpu(8) == 0 and topo.node_of_cpu(12) == 1
    assert topo.distances == ((10, 21), (21, 10))
    assert topo.node(1).memory_bytes == 1 << 30 and topo.node(1).free_bytes == 1 << 29
    assert not topo.restricted and topo.libnuma is None


def test_cgroup_v2_cpuset_restricts_the_allowed_view(tmp_path: Path) -> None:
    root = write_machine(tmp_path)
    write(root, "proc/self/cgroup", "0::/slice/job")
    write(root, "proc/mounts", "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0")
    write(root, "sys/fs/cgroup/slice/job/cpuset.cpus.effective", "4-7,12-15")
    write(root, "sys/fs/cgroup/slice/job/cpuset.mems.effective", "1")
    topo = detect(str(root))
    assert topo.restricted and topo.allowed_cpus == set(range(4, 8)) | set(range(12, 16))
    assert topo.allowed_nodes == {1}
    assert to_json(topo, plan_workers(topo))["allowed"] == {
        "cpus": "4-7,12-15", "nodes": "1", "pus": 8, "cores": 4, "packages_with_allowed_pus": 1}


# ---------------------------------------------------------------- worker placement

def test_default_plan_one_worker_per_core_node_by_node(tmp_path: Path) -> None:
    plan = plan_workers(detect(str(write_machine(tmp_path))))
    assert [(s.worker, s.cpu, s.node) for s in plan] == [(i, i, i // 4) for i in range(8)]
    assert [s.core for s in plan] == list(range(8))


def test_smt_plan_uses_every_pu_first_cores_then_siblings(tmp_path: Path) -> None:
    plan = plan_workers(detect(str(write_machine(tmp_path))), smt=True)
    assert [s.cpu for s in plan] == [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]
    assert [s.node for s in plan] == [0] * 8 + [1] * 8


def test_fewer_threads_than_cores_are_spread_over_the_nodes(tmp_path: Path) -> None:
    plan = plan_workers(detect(str(write_machine(tmp_path))), threads=3)
    assert [(s.cpu, s.node) for s in plan] == [(0, 0), (1, 0), (4, 1)]


def test_threads_above_physical_cores_warn_once_and_take_siblings(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topo = detect(str(write_machine(tmp_path)))
    with caplog.at_level(logging.WARNING):
        plan = plan_workers(topo, threads=10)
    assert len(caplog.records) == 1 and "more than the 8 allowed physical cores" in caplog.text
    assert [s.cpu for s in plan] == [0, 1, 2, 3, 8, 4, 5, 6, 7, 12]  # one sibling per node
    assert len({s.cpu for s in plan}) == 10


@pytest.mark.parametrize("threads", [0, -1, 17])
def test_impossible_thread_counts_are_bad_input(tmp_path: Path, threads: int) -> None:
    topo = detect(str(write_machine(tmp_path)))
    with pytest.raises(BadInputError, match="--threads"):
        plan_workers(topo, threads=threads)


def test_threads_above_the_allowed_cpus_are_bad_input(tmp_path: Path) -> None:
    root = write_machine(tmp_path)
    write_cpuset(root, "0-1,8-9", "0")
    topo = detect(str(root))
    assert len(plan_workers(topo, threads=4)) == 4
    with pytest.raises(BadInputError, match="more than the 4 CPUs this process may use"):
        plan_workers(topo, threads=5)


def test_cpuset_without_cpus_of_a_node_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_machine(tmp_path)
    write_cpuset(root, "0-3", "0-1")
    topo = detect(str(root))
    with caplog.at_level(logging.WARNING):
        plan = plan_workers(topo)
    assert {s.node for s in plan} == {0}
    assert len(caplog.records) == 1 and "no CPU of NUMA node(s) 1" in caplog.text


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("make_root", [lambda p: p, lambda p: p / "missing"], ids=["empty", "missing"])
def test_root_without_sysfs(tmp_path: Path, make_root) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TopologyError, match="is not a Linux root with sysfs"):
        detect(str(make_root(tmp_path)))


@pytest.mark.parametrize("rel, text, message", [
    ("sys/devices/system/cpu/cpu3/topology/physical_package_id", "socket0", "not an integer"),
    ("sys/devices/system/cpu/cpu3/topology/thread_siblings_list", "3-x", "not a CPU number"),
    ("sys/devices/system/cpu/online", "0-15-", "not a CPU number"),
    ("sys/devices/system/node/node1/cpulist", "9-4", "descending range"),
    ("sys/devices/system/node/node1/distance", "21 ten", "not a row of integers"),
])
def test_malformed_file_is_one_clear_error(tmp_path: Path, rel: str, text: str, message: str) -> None:
    root = write_machine(tmp_path)
    write(root, rel, text)
    with pytest.raises(TopologyError, match=message) as info:
        detect(str(root))
    assert str(root / rel) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_file_is_one_clear_error(tmp_path: Path) -> None:
    root = write_machine(tmp_path)
    core_id = root / "sys/devices/system/cpu/cpu5/topology/core_id"
    core_id.unlink()
    core_id.mkdir()  # reading a directory fails even as root, unlike chmod 000
    with pytest.raises(TopologyError, match=f"cannot read {core_id}"):
        detect(str(root))


def test_no_online_cpu_is_an_error(tmp_path: Path) -> None:
    root = write_machine(tmp_path)
    write(root, "sys/devices/system/cpu/online", "")
    with pytest.raises(TopologyError, match="no online CPU"):
        detect(str(root))


@pytest.mark.parametrize("cpus, mems, message", [
    ("", "0-1", "may use none of the online CPUs"),
    ("64-65", "0-1", "may use none of the online CPUs"),
    ("0-15", "7", "may use none of the NUMA nodes"),
])
def test_empty_allowed_set_is_an_error(tmp_path: Path, cpus: str, mems: str, message: str) -> None:
    root = write_machine(tmp_path)
    write_cpuset(root, cpus, mems)
    with pytest.raises(TopologyError, match=message):
        detect(str(root))


def test_incomplete_distances_and_memory_warn_and_stay_unknown(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_machine(tmp_path)
    write(root, "sys/devices/system/node/node1/distance", "21")
    (root / "sys/devices/system/node/node0/meminfo").unlink()
    with caplog.at_level(logging.WARNING):
        topo = detect(str(root))
    assert len(caplog.records) == 2 and all("\n" not in r.getMessage() for r in caplog.records)
    assert topo.distances is None and topo.node(0).memory_bytes is None
    plan = plan_workers(topo)
    assert to_json(topo, plan)["distances"] is None
    text = render_text(topo, plan)
    assert "NUMA distances: unknown" in text and "NUMA node 0: unknown memory" in text


def test_text_report_puts_a_node_spanning_packages_above_them(tmp_path: Path) -> None:
    topo = detect(str(write_machine(tmp_path, nodes=1)))
    tree = [line for line in render_text(topo, plan_workers(topo)).splitlines()
            if line.lstrip().startswith(("Package", "NUMA node"))]
    assert tree == ["  NUMA node 0: 1.0 GiB memory, 512.0 MiB free; CPUs 0-15",
                    "    Package 0: CPUs 0-3,8-11", "    Package 1: CPUs 4-7,12-15"]


def test_text_report_shows_the_tree_memory_distances_and_workers(tmp_path: Path) -> None:
    root = write_machine(tmp_path, nodes=4)
    write_cpuset(root, "0-5,8-13", "0-3")
    topo = detect(str(root))
    lines = render_text(topo, plan_workers(topo)).splitlines()
    tree = [line.strip() for line in lines if line.lstrip().startswith(("Package", "NUMA node", "Core"))]
    assert tree[:4] == ["Package 0: CPUs 0-3,8-11",
                        "NUMA node 0: 1.0 GiB memory, 512.0 MiB free; CPUs 0-1,8-9",
                        "Core 0 (core_id 0): PUs 0 8",
                        "Core 1 (core_id 1): PUs 1 9"]
    assert "Core 6 (core_id 2): PUs 6(not allowed) 14(not allowed)" in tree
    assert "     3  21  21  21  10" in lines  # the distance matrix's last row
    assert "This process may use: CPUs 0-5,8-13 (12 PUs on 6 cores) and NUMA nodes 0-3" in "\n".join(lines)
    assert lines[-6:] == [f"  worker {w:>3} -> CPU {c:>3}  (core {c}, node {c // 2})" for w, c in enumerate(range(6))]
