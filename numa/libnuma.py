"""The one place that touches py-libnuma (`import numa`) and, through it, libnuma.so.

Topology facts come from sysfs (topology.py reads the same files libnuma does, and can
read a recorded root); libnuma is needed only to act on the live machine: bind a
thread's memory to a node and ask which node a page landed on. When libnuma.so is
missing, py-libnuma fails at import with AttributeError (CDLL(None) has no numa_*
symbols): we warn once and keep running; only a request that needs it fails.
"""

import ctypes
import functools
import logging
import os
import threading
from collections.abc import Sequence

from numallm.errors import TopologyError

log = logging.getLogger(__name__)

DEBIAN_PACKAGE = "libnuma1"


_load_lock = threading.Lock()  # workers may ask at once; warn only once


def _library() -> ctypes.CDLL | None:
    with _load_lock:
        return _load()


@functools.cache
def _load() -> ctypes.CDLL | None:
    try:
        import numa  # py-libnuma; a top-level module, hence numa/ has no __init__.py

        # our own handle on the library py-libnuma found: our prototypes and errno
        # handling must not change the ones py-libnuma declared on its handle
        lib = ctypes.CDLL(numa.LIBNUMA._name, use_errno=True)
        _declare(lib)
        usable = lib.numa_available() != -1
    except (ImportError, OSError, AttributeError) as exc:
        log.warning("libnuma is not usable (%s): install the Debian package %s; "
                    "running on plain sysfs without memory binding", exc, DEBIAN_PACKAGE)
        return None
    if not usable:
        log.warning("libnuma says this kernel has no NUMA support; running without memory binding")
        return None
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    """Prototypes of the functions used below."""
    mask = ctypes.c_void_p  # struct bitmask *, opaque here
    lib.numa_allocate_nodemask.restype = mask
    lib.numa_allocate_nodemask.argtypes = []
    lib.numa_bitmask_setbit.restype = mask
    lib.numa_bitmask_setbit.argtypes = [mask, ctypes.c_uint]
    lib.numa_bitmask_free.restype = None
    lib.numa_bitmask_free.argtypes = [mask]
    lib.numa_available.restype = ctypes.c_int
    lib.numa_available.argtypes = []
    lib.numa_set_membind.restype = None
    lib.numa_set_membind.argtypes = [mask]
    lib.numa_set_preferred.restype = None
    lib.numa_set_preferred.argtypes = [ctypes.c_int]
    lib.numa_set_localalloc.restype = None
    lib.numa_set_localalloc.argtypes = []
    lib.numa_node_size64.restype = ctypes.c_longlong
    lib.numa_node_size64.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_longlong)]
    lib.numa_move_pages.restype = ctypes.c_int
    lib.numa_move_pages.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.POINTER(ctypes.c_void_p),
                                    ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int),
                                    ctypes.c_int]


def available() -> bool:
    """True when libnuma can act on this machine (warns once, the first time, if not)."""
    return _library() is not None


def require(purpose: str) -> ctypes.CDLL:
    """libnuma for `purpose`, or a TopologyError naming the package that provides it."""
    lib = _library()
    if lib is None:
        raise TopologyError(f"{purpose} needs libnuma: install the Debian package {DEBIAN_PACKAGE} "
                            f"(apt-get install {DEBIAN_PACKAGE})")
    return lib


def node_memory(node: int) -> tuple[int, int]:
    """(total, free) bytes of a node's memory, as libnuma reports them now."""
    lib = require("reading node memory")
    free = ctypes.c_longlong()
    total = lib.numa_node_size64(node, ctypes.byref(free))
    if total < 0:
        raise TopologyError(f"libnuma knows no NUMA node {node}")
    return total, free.value


def bind_thread_memory(node: int, strict: bool = True) -> None:
    """Make the calling thread's new pages come from `node`.

    strict: only from that node (MPOL_BIND: allocation fails when it is full); otherwise
    preferably from it (MPOL_PREFERRED: falls back to other nodes).
    """
    lib = require(f"binding memory to node {node}")
    if not strict:
        lib.numa_set_preferred(node)
        return
    mask = lib.numa_allocate_nodemask()
    try:
        lib.numa_bitmask_setbit(mask, node)
        lib.numa_set_membind(mask)
    finally:
        lib.numa_bitmask_free(mask)


def unbind_thread_memory() -> None:
    """Back to the default policy: pages come from the node of the CPU that touches them."""
    require("resetting the memory policy").numa_set_localalloc()


def nodes_of_pages(addresses: Sequence[int]) -> list[int]:
    """The node holding each page (addresses inside the pages), or -errno for a page that
    is not there (-2 ENOENT: never touched, -14 EFAULT: not mapped). move_pages(2) query mode."""
    lib = require("querying the node of pages")
    count = len(addresses)
    pages = (ctypes.c_void_p * count)(*addresses)
    status = (ctypes.c_int * count)()
    if lib.numa_move_pages(0, count, pages, None, status, 0) != 0:
        raise TopologyError(f"move_pages could not query {count} pages: {os.strerror(ctypes.get_errno())}")
    return list(status)
