"""Page-level memory through libc (ctypes): the page size and alignment, guarded
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
HUGE = 2 << 20           # x86-64 and arm64 (4 KiB pages) transparent huge page size
MAP_NORESERVE = 0x4000   # linux/mman.h; Python's mmap module does not name it
_PROT_NONE = 0


@functools.cache
def libc() -> ctypes.CDLL:
    try:  # find_library runs a compiler or ldconfig: 5 ms, so only when the usual name fails
        lib = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    for name in ("mincore", "mlock", "munlock", "fstatfs", "mprotect"):
        getattr(lib, name).restype = ctypes.c_int
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
    lib.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
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


def guarded_map(nbytes: int, noreserve: bool = False) -> tuple[mmap.mmap, np.ndarray, int]:
    """A private anonymous mapping with room for a body of `nbytes` that starts on a 2 MiB
    boundary (so transparent huge pages can back it) between two PROT_NONE guard pages
    (so the kernel never merges the body's VMAs with a neighbour's, and /proc/self/smaps
    figures for the body are its own): (the mapping, a view of all of it, the body's
    offset in it). Nothing is touched; the slack costs address space only.
    noreserve: reserve no swap for the whole range."""
    body = align_up(max(nbytes, 1), PAGE)
    span = PAGE + HUGE + body + PAGE  # guard, alignment slack, body, guard
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (MAP_NORESERVE if noreserve else 0)
    m = mmap.mmap(-1, span, flags=flags)
    whole = np.frombuffer(m, np.uint8)
    base = address(whole)
    start = align_up(base + PAGE, HUGE) - base
    for guard in (base + start - PAGE, base + start + body):
        if libc().mprotect(guard, PAGE, _PROT_NONE) != 0:
            err = os_error("mprotect")
            del whole
            m.close()
            raise err
    return m, whole, start


def anonymous(nbytes: int, hugepages: bool = True) -> tuple[np.ndarray, mmap.mmap]:
    """A zeroed uint8 buffer of private anonymous memory, 2 MiB-aligned between guard
    pages (guarded_map), and its mapping.

    Pages are not touched here: each lands on the NUMA node of the thread that first
    writes it (the reader), and O_DIRECT needs the page alignment. hugepages: transparent
    huge pages are asked for: filling fresh memory is about 3x faster with them (a fault
    per 2 MiB instead of per 4 KiB), and the kernels' reads miss the TLB less. Without,
    they are refused (even where THP is "always"), so that a write faults in 4 KiB only:
    for memory written sparsely, as a KV cache's first positions are.
    """
    m, whole, start = guarded_map(nbytes)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE if hugepages else mmap.MADV_NOHUGEPAGE, start, align_up(max(nbytes, 1), PAGE))
    return whole[start:start + nbytes], m


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
