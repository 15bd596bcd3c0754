"""--load-mode mlock: keep the weights' pages in RAM (never swapped or dropped).

The RLIMIT_MEMLOCK check comes first so a too-low limit is one clear error naming
`ulimit -l` and the bytes needed, not a bare ENOMEM from mlock(2) after a slow fault-in.
"""

from __future__ import annotations

import resource

import numpy as np
from numallm.errors import ResourceError
from numallm.numa.pages import (
    PAGE,
    address,
    align_down,
    align_up,
    libc,
    os_error,
)
from numallm.progress import progress_bar

_CAP_IPC_LOCK = 14  # linux/capability.h: lets a process lock memory beyond RLIMIT_MEMLOCK
_STEP = 64 << 20    # bytes locked per mlock call, between progress bar updates


def _status_field(name: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return ""


def locked_bytes() -> int:
    """Bytes this process has locked now (VmLck)."""
    value = _status_field("VmLck").split()
    return int(value[0]) * 1024 if value else 0


def _may_exceed_limit() -> bool:
    caps = _status_field("CapEff")
    return bool(caps) and bool(int(caps, 16) >> _CAP_IPC_LOCK & 1)


def _kib(n: int) -> str:
    return f"{align_up(n, 1024) // 1024} KiB"


def check_lock_limit(nbytes: int) -> None:
    """Raise ResourceError unless `nbytes` more can be locked under RLIMIT_MEMLOCK."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or _may_exceed_limit():
        return
    need = locked_bytes() + nbytes
    if need > soft:
        raise ResourceError(
            f"--load-mode mlock needs {nbytes} bytes ({nbytes / 2**20:.1f} MiB) of locked memory but "
            f"RLIMIT_MEMLOCK allows {soft} bytes ({_kib(soft)}) and {locked_bytes()} are locked already: "
            f"raise it with `ulimit -l {align_up(need, 1024) // 1024}` (KiB; or unlimited, or "
            f"memlock in /etc/security/limits.conf), or use --load-mode mmap")


class PageLock:
    """The pages of one buffer, locked; unlock() releases them (idempotent)."""

    def __init__(self, buf: np.ndarray) -> None:
        start = align_down(address(buf), PAGE)
        self._span = (start, align_up(address(buf) + buf.nbytes, PAGE) - start)
        check_lock_limit(self._span[1])
        self._buf: np.ndarray | None = buf  # keeps the memory mapped while it is locked
        # mlock faults every page in (reading the file, for a mapping): in steps, for the bar.
        bar = progress_bar(self._span[1], "locking weights")
        try:
            for pos in range(0, self._span[1], _STEP):
                n = min(_STEP, self._span[1] - pos)
                if libc().mlock(start + pos, n) != 0:
                    err = os_error("mlock")
                    self.unlock()
                    raise ResourceError(f"--load-mode mlock: locking {self._span[1]} bytes failed "
                                        f"({err.strerror}); check `ulimit -l` and free memory, "
                                        "or use --load-mode mmap")
                bar.update(n)
        finally:
            bar.close()

    def unlock(self) -> None:
        if self._buf is not None:
            libc().munlock(*self._span)
            self._buf = None
