"""Numba's on-disk cache for the kernels, invalidated by a change to any kernel source.

Numba stamps a cached function with its own source file only, so a cached caller
(jit.matvec) keeps running the old machine code of a callee edited in another file
(a changed fastdot.py kernel went unnoticed until the cache was cleared). These
locators stamp every function defined in kernels/ with a digest of all kernels/*.py
instead; functions elsewhere keep Numba's usual locators.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from numba.core import caching

_KERNELS_DIR = Path(__file__).resolve().parent


@cache
def tree_digest() -> str:
    """sha256 over the names and contents of kernels/*.py."""
    h = hashlib.sha256()
    for path in sorted(_KERNELS_DIR.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class _TreeStamped:
    @classmethod
    def from_function(cls, py_func, py_file):  # type: ignore[no-untyped-def]
        if Path(py_file).resolve().parent != _KERNELS_DIR:
            return None
        return super().from_function(py_func, py_file)  # type: ignore[misc]

    def get_source_stamp(self) -> str:
        return tree_digest()


class _UserProvided(_TreeStamped, caching.UserProvidedCacheLocator):
    pass


class _InTree(_TreeStamped, caching.InTreeCacheLocator):
    pass


class _UserWide(_TreeStamped, caching.UserWideCacheLocator):
    pass


def install() -> None:
    """Put the kernel locators before Numba's own (idempotent)."""
    classes = caching.CacheImpl._locator_classes
    for locator in (_UserWide, _InTree, _UserProvided):
        if locator not in classes:
            classes.insert(0, locator)
