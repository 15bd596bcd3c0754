"""Reading /sys and /proc files under a root prefix (hwloc's HWLOC_FSROOT convention).

The same code reads the live machine (root "/") and a recorded dump (root = the dump's
top directory). A missing file is an ordinary answer (None): old kernels lack many of
them. A file that exists but cannot be read or parsed raises a one-line TopologyError
naming it, because guessing around a damaged dump would report a wrong machine.
"""

import os
import re
from collections.abc import Callable
from typing import TypeVar

from numallm.errors import TopologyError
from numallm.numa.cpulist import parse_cpulist, parse_cpumask

T = TypeVar("T")

CPU_DIR = "sys/devices/system/cpu"
NODE_DIR = "sys/devices/system/node"


class SysfsRoot:
    """Files of one Linux root (live or recorded), addressed by paths relative to it."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def isdir(self, rel: str) -> bool:
        return os.path.isdir(self.path(rel))

    def numbered_entries(self, rel: str, prefix: str) -> list[int]:
        """Numbers N of the PREFIXN directories in rel (cpu0, cpu1... or node0...)."""
        try:
            names = os.listdir(self.path(rel))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TopologyError(f"cannot list {self.path(rel)}: {exc.strerror}") from None
        pattern = re.compile(re.escape(prefix) + r"(\d+)")
        return sorted(int(m.group(1)) for name in names
                      if (m := pattern.fullmatch(name)) and self.isdir(os.path.join(rel, name)))

    def text(self, rel: str) -> str | None:
        """The file's text without NULs and surrounding blanks; None when it is absent."""
        path = self.path(rel)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise TopologyError(f"cannot read {path}: {exc.strerror or exc}; "
                                "check the file or point --root at an intact dump") from None
        return data.decode("utf-8", "replace").replace("\x00", "").strip()

    def parsed(self, rel: str, parse: Callable[[str], T]) -> T | None:
        """parse(text) of the file, None when absent; malformed text is a TopologyError."""
        text = self.text(rel)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            raise TopologyError(f"malformed {self.path(rel)}: {exc}; "
                                "check the file or point --root at an intact dump") from None

    def integer(self, rel: str) -> int | None:
        return self.parsed(rel, _int)

    def cpuset(self, list_rel: str, mask_rel: str) -> frozenset[int] | None:
        """A CPU set from its list file, else from its hex mask file (old kernels)."""
        found = self.parsed(list_rel, parse_cpulist)
        return found if found is not None else self.parsed(mask_rel, parse_cpumask)


def _int(text: str) -> int:
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        raise ValueError(f"not an integer: {text[:40]!r}") from None
