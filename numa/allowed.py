"""What this process may use: its CPU affinity and the cpuset/cgroup it lives in.

taskset and numactl restrict the affinity (and numactl --membind the memory policy, which
is not a restriction of the process's node set); containers and batch systems (Torque,
Slurm) restrict the cpuset, seen through /proc/self/cpuset or /proc/self/cgroup and the
cgroup mounts in /proc/mounts. hwloc reads the same files.
"""

import os
from dataclasses import dataclass

from numallm.numa.cpulist import parse_cpulist
from numallm.numa.sysfs import SysfsRoot


@dataclass(frozen=True)
class Restriction:
    """CPUs and memory nodes this process may use; None where nothing restricts."""

    cpus: frozenset[int] | None
    mems: frozenset[int] | None


def read_restriction(fs: SysfsRoot, live: bool) -> Restriction:
    """The cpuset/cgroup limits under fs, narrowed by the affinity and Mems_allowed when live."""
    cpus, mems = _cpuset_limits(fs)
    status_mems = _status_mems_allowed(fs)
    if status_mems is not None:
        mems = status_mems if mems is None else mems & status_mems
    if live:
        # the affinity mask already lies inside the cpuset; it adds taskset/numactl limits
        affinity = frozenset(os.sched_getaffinity(0))
        cpus = affinity if cpus is None else cpus & affinity
    return Restriction(cpus, mems)


def _cpuset_limits(fs: SysfsRoot) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """(cpus, mems) of the first cgroup/cpuset mount that has this process's cpuset files."""
    cpuset_path = fs.text("proc/self/cpuset")
    v1_path: str | None = None
    v2_path: str | None = None
    for line in (fs.text("proc/self/cgroup") or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, group = rest.partition(":")
        if "cpuset" in controllers.split(","):
            v1_path = group
        elif hierarchy == "0" and controllers == "":
            v2_path = group
    for line in (fs.text("proc/mounts") or "").splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mount_point, fstype, options = fields[1], fields[2], fields[3].split(",")
        path: str | None
        if fstype == "cpuset":  # the legacy cpuset filesystem
            names, path = ("cpus", "mems"), cpuset_path or v1_path
        elif fstype == "cgroup" and "cpuset" in options:
            names = ("cpus", "mems") if "noprefix" in options else ("cpuset.cpus", "cpuset.mems")
            path = cpuset_path or v1_path
        elif fstype == "cgroup2":
            names = ("cpuset.cpus.effective", "cpuset.mems.effective")
            path = v2_path or cpuset_path
        else:
            continue
        if path is None:
            continue
        base = os.path.join(mount_point.lstrip("/"), path.lstrip("/"))
        cpus = fs.parsed(os.path.join(base, names[0]), parse_cpulist)
        mems = fs.parsed(os.path.join(base, names[1]), parse_cpulist)
        if cpus is not None and mems is not None:
            return cpus, mems
    return None, None


def _status_mems_allowed(fs: SysfsRoot) -> frozenset[int] | None:
    return fs.parsed("proc/self/status", _mems_allowed_line)


def _mems_allowed_line(status: str) -> frozenset[int] | None:
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "Mems_allowed_list":
            return parse_cpulist(value)
    return None
