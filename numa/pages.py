"""Page-level memory through libc (ctypes): the page size and alignment, aligned
anonymous buffers, and which pages of a file the page cache holds (mincore). Below
both numa/memory.py and the engine's loader, which build on it."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os

import numpy as np

PAGE = mmap.PAGESIZE


@functools.cache
def libc() -> ctypes.CDLL:
    try:  # find_library runs a compiler or ldconfig: 5 ms, so only when the usual name fails
        lib = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    for name in ("mincore", "mlock", "munlock", "fstatfs"):
        getattr(lib, name).restype = ctypes.c_int
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return lib


def os_error(call: str) -> OSError:
    """The OSError for the errno a failed libc call left."""
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


def address(arr: np.ndarray) -> int:
    return int(arr.__array_interface__["data"][0])


def align_down(x: int, a: int) -> int:
    return x // a * a


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def anonymous(nbytes: int, hugepages: bool = True) -> tuple[np.ndarray, mmap.mmap]:
    """A zeroed, page-aligned uint8 buffer of private anonymous memory and its mapping.

    Pages are not touched here: each lands on the NUMA node of the thread that first
    writes it (the reader), and O_DIRECT needs the page alignment. hugepages: transparent
    huge pages are asked for: filling fresh memory is about 3x faster with them (a fault
    per 2 MiB instead of per 4 KiB), and the kernels' reads miss the TLB less. Without,
    they are refused (even where THP is "always"), so that a write faults in 4 KiB only:
    for memory written sparsely, as a KV cache's first positions are.
    """
    m = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE if hugepages else mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(m, np.uint8, count=nbytes), m


def resident(fd: int, offset: int, length: int) -> np.ndarray:
    """For each page of file bytes [offset, offset+length) (offset page-aligned): is it in
    the page cache? Maps the range without touching it, so nothing is read."""
    if length <= 0:
        return np.zeros(0, bool)
    m = mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=offset)
    try:
        view = np.frombuffer(m, np.uint8)
        vec = np.zeros(align_up(length, PAGE) // PAGE, np.uint8)
        rc = libc().mincore(address(view), length, address(vec))
        del view
        if rc != 0:
            raise os_error("mincore")
        return (vec & 1).astype(bool)
    finally:
        m.close()
