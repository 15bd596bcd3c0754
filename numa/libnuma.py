"""The one place that touches py-libnuma (`import numa`) and, through it, libnuma.so.

Topology facts come from sysfs (topology.py reads the same files libnuma does, and can
read a recorded root); libnuma is needed only to act on the live machine: bind a
thread's memory or an address range to nodes, and ask which node a page landed on. When libnuma.so is
missing, py-libnuma fails at import with AttributeError (CDLL(None) has no numa_*
symbols): we warn once and keep running; only a request that needs it fails.
"""

import ctypes
import functools
import logging
import os
import threading
from collections.abc import Sequence

import numpy as np
from numallm.errors import ResourceError, TopologyError

log = logging.getLogger(__name__)

DEBIAN_PACKAGE = "libnuma1"

# linux/mempolicy.h
RANGE_POLICIES = {"default": 0, "bind": 2, "interleave": 3}
_QUERY_BATCH = 1 << 16  # pages per move_pages(2) call


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
    lib.mbind.restype = ctypes.c_long
    lib.mbind.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_void_p,
                          ctypes.c_ulong, ctypes.c_uint]
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


def bind_range(address: int, nbytes: int, policy: str, nodes: Sequence[int] = ()) -> None:
    """Set the memory policy of a page-aligned address range (mbind(2)): pages touched there
    later come from `nodes` ("bind": only those, "interleave": round-robin over them),
    or as the touching thread's own policy says ("default"). Whoever faults a page in,
    the range's policy wins over the thread's."""
    lib = require(f"placing memory with policy {policy}")
    words = (max(nodes, default=0) // 64) + 1
    mask = (ctypes.c_ulong * words)()
    for n in nodes:
        mask[n // 64] |= 1 << (n % 64)
    # maxnode counts one more bit than the mask holds (the kernel drops the last one)
    if lib.mbind(address, nbytes, RANGE_POLICIES[policy], ctypes.addressof(mask) if nodes else None,
                 words * 64 + 1 if nodes else 0, 0) != 0:
        err = ctypes.get_errno()
        raise ResourceError(f"mbind({policy} on nodes {list(nodes)}) of {nbytes} bytes failed: "
                            f"{os.strerror(err)}; check that those NUMA nodes exist and this "
                            "process may use them")


def page_nodes(start: int, n_pages: int, page: int) -> np.ndarray:
    """The node holding each of `n_pages` pages from page-aligned `start` (int32), or -errno
    for a page that is not there (-2 ENOENT: never touched, -14 EFAULT: not mapped)."""
    return _query(start + np.arange(n_pages, dtype=np.uint64) * np.uint64(page))


def nodes_of_pages(addresses: Sequence[int]) -> list[int]:
    """The node holding each page (addresses inside the pages), or -errno as page_nodes."""
    return _query(np.asarray(addresses, dtype=np.uint64)).tolist()


def _query(pages: np.ndarray) -> np.ndarray:
    """move_pages(2) in query mode (nodes=NULL), in batches of _QUERY_BATCH pages."""
    lib = require("querying the node of pages")
    status = np.empty(len(pages), np.int32)
    for lo in range(0, len(pages), _QUERY_BATCH):
        batch = np.ascontiguousarray(pages[lo:lo + _QUERY_BATCH])
        out = status[lo:lo + len(batch)]
        rc = lib.numa_move_pages(0, len(batch), batch.ctypes.data_as(ctypes.POINTER(ctypes.c_void_p)), None,
                                 out.ctypes.data_as(ctypes.POINTER(ctypes.c_int)), 0)
        if rc != 0:
            raise TopologyError(f"move_pages could not query {len(batch)} pages: "
                                f"{os.strerror(ctypes.get_errno())}")
    return status
