"""Read file ranges straight into destination buffers, from several threads at once.

Placement-agnostic: the caller gives a list of ReadJob (a file offset, the uint8 buffer
those bytes go to: a whole-model copy, one node's copy, a shard; and optionally pieces of
it to work on as soon as their bytes are in, e.g. repack them in place), and may give a
`setup` every reading thread runs first (e.g. bind its memory to a NUMA node, so the
pages it fills, and the scratch memory of a repack, land there). Requests are cut at
aligned file offsets whatever the pieces are: pieces that end anywhere (between rows of
a matrix) would otherwise cost O_DIRECT two small bounced requests each.

Every read loops until each byte is there: a read may return fewer bytes than asked
(signals, the 2 GiB cap of one read(2), O_DIRECT at the end of a file), and taking a
short read for a full one silently corrupts weights (llama.cpp #18504). The file ending
early is a ModelFormatError naming the bytes that are missing.

Direct mode (O_DIRECT) keeps the page cache clean: aligned requests go from the disk
straight into the destination; unaligned heads and tails go through a small aligned
bounce buffer, also with O_DIRECT. Chunks the page cache already holds in full are
copied from it instead (no new pages are cached, and RAM is faster than the disk).
A filesystem that refuses O_DIRECT (EINVAL), or tmpfs (whose files live in the page
cache anyway), gets buffered reads and one warning.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
from numallm.errors import BadInputError, ModelFormatError, NumallmError
from numallm.numa.pages import (
    PAGE,
    address,
    align_down,
    align_up,
    anonymous,
    libc,
    resident,
)
from numallm.progress import progress_bar

log = logging.getLogger(__name__)

ALIGN = max(4096, PAGE)  # O_DIRECT alignment of addresses, offsets and lengths
CHUNK = 4 << 20          # bytes per request: large, yet enough of them to keep many in flight
# O_DIRECT requests in flight at most: each reading thread also packs what it read before
# it takes the next request (SmolLM2 dio cold: 52 ms with 8, 48 ms with 16).
THREADS = 16
_TMPFS_MAGIC = 0x01021994


Piece = tuple[int, int, Callable[[np.ndarray], None]]  # (lo, hi, fn): fn(dest[lo:hi])


@dataclass(frozen=True, eq=False)
class ReadJob:
    """File bytes [offset, offset + dest.size) go into `dest` (flat uint8, contiguous). For
    each (lo, hi, fn) of `pieces` (sorted, not overlapping), fn(dest[lo:hi]) runs as soon
    as those bytes are all in, on the reading thread that completed them (so they are
    still in its cache)."""

    offset: int
    dest: np.ndarray
    pieces: Sequence[Piece] = ()


class _Truncated(Exception):
    def __init__(self, at: int) -> None:
        self.at = at


class _Source:
    """The open file: a buffered descriptor, and an O_DIRECT one while direct reads work."""

    def __init__(self, path: str, direct: bool) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise BadInputError(f"{path}: cannot open ({e.strerror})") from None
        self.size = os.fstat(self.fd).st_size
        self.dfd = -1
        self.direct = False  # cleared, never set again, when the filesystem refuses
        self._lock = threading.Lock()
        if not direct:
            return
        if on_tmpfs(self.fd):
            self._warn("it is on tmpfs, which keeps every file in the page cache anyway")
            return
        try:
            self.dfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
            self.direct = True
        except OSError as e:
            if e.errno != errno.EINVAL:
                os.close(self.fd)
                raise BadInputError(f"{path}: cannot open ({e.strerror})") from None
            self._warn("its filesystem refuses O_DIRECT (EINVAL at open)")

    def _warn(self, why: str) -> None:
        log.warning("--load-mode dio: %s: %s; reading it buffered instead (the page cache will "
                    "hold a copy)", self.path, why)

    def refuse_direct(self) -> None:
        """The filesystem took the O_DIRECT open but refuses the reads: go buffered. The
        descriptor stays open until close(): other threads may be reading with it."""
        with self._lock:
            if self.direct:
                self.direct = False
                self._warn("its filesystem refuses O_DIRECT reads (EINVAL)")

    def close(self) -> None:
        os.close(self.fd)
        if self.dfd >= 0:
            os.close(self.dfd)


def on_tmpfs(fd: int) -> bool:
    """Is the open file on tmpfs (where O_DIRECT, if taken at all, still goes through RAM)?"""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc().fstatfs(fd, buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value == _TMPFS_MAGIC


def _pread_full(src: _Source, view: memoryview, offset: int, required: int, direct: bool) -> None:
    """Fill view[:required] from file bytes at `offset`, looping over short reads.

    A direct request may ask for more (view is rounded up to ALIGN and may pass the end of
    the file); it stays direct while it is aligned, and a short read that leaves it
    unaligned finishes buffered.
    """
    got = 0
    while got < required:
        use_direct = direct and src.direct and got % ALIGN == 0
        try:
            n = os.preadv(src.dfd if use_direct else src.fd, [view[got:]], offset + got)
        except OSError as e:
            if use_direct and e.errno == errno.EINVAL:
                src.refuse_direct()
                continue
            raise
        if n == 0:
            raise _Truncated(offset + got)
        got += n


class _Bounce(threading.local):
    """Each thread's aligned scratch buffer for the unaligned edges of direct reads."""

    buf: np.ndarray | None = None

    def get(self, nbytes: int) -> np.ndarray:
        if self.buf is None or self.buf.size < nbytes:
            self.buf = anonymous(align_up(nbytes, ALIGN))[0]
        return self.buf


def _read_direct(src: _Source, bounce: _Bounce, offset: int, dest: np.ndarray) -> None:
    n = dest.size
    if (address(dest) - offset) % ALIGN:
        head_end = offset + n  # the buffer's alignment differs from the file's: bounce it all
    else:
        head_end = min(offset + n, align_up(offset, ALIGN))
    _read_bounced(src, bounce, offset, dest[:head_end - offset])
    body_end = max(head_end, align_down(offset + n, ALIGN))
    if body_end > head_end:
        _pread_full(src, memoryview(dest[head_end - offset:body_end - offset]), head_end,
                    body_end - head_end, True)
    _read_bounced(src, bounce, body_end, dest[body_end - offset:])


def _read_bounced(src: _Source, bounce: _Bounce, offset: int, dest: np.ndarray) -> None:
    """Read an arbitrary range with aligned O_DIRECT requests into scratch, then copy."""
    step = 1 << 20
    for start in range(0, dest.size, step):
        part = dest[start:start + step]
        lo = align_down(offset + start, ALIGN)
        hi = align_up(offset + start + part.size, ALIGN)
        scratch = bounce.get(hi - lo)[:hi - lo]
        _pread_full(src, memoryview(scratch), lo, offset + start + part.size - lo, True)
        part[:] = scratch[offset + start - lo:offset + start - lo + part.size]


def _read_chunk(src: _Source, bounce: _Bounce, offset: int, dest: np.ndarray, cached: bool) -> None:
    """Read one request: straight from the disk with O_DIRECT unless the page cache
    holds all of it (then a copy from it adds no page to the cache, and RAM is faster)."""
    if src.direct and not cached:
        _read_direct(src, bounce, offset, dest)
    else:
        _pread_full(src, memoryview(dest), offset, dest.size, False)


def _chunks(job: ReadJob) -> list[tuple[int, int]]:
    """The job's requests, (lo, hi) in dest: up to CHUNK bytes, cut at ALIGN multiples of
    the file offset, so every request but the job's first and last is aligned."""
    dest = job.dest
    if dest.dtype != np.uint8 or dest.ndim != 1 or not dest.flags.c_contiguous:
        raise ValueError("ReadJob.dest must be a flat, contiguous uint8 array")
    out, start = [], 0
    while start < dest.size:
        end = min(dest.size, align_down(job.offset + start + CHUNK, ALIGN) - job.offset)
        out.append((start, end))
        start = end
    return out


class _Completion:
    """Counts each piece's requests down; the thread whose request completes a piece runs it."""

    def __init__(self, jobs: Sequence[ReadJob], chunks: list[list[tuple[int, int]]]) -> None:
        self._jobs = jobs
        self._left: dict[tuple[int, int], int] = {}      # (job, piece) -> requests still out
        self._covers: dict[tuple[int, int], list[int]] = {}  # (job, request) -> its pieces
        self._lock = threading.Lock()
        for j, (job, cs) in enumerate(zip(jobs, chunks)):
            c = 0
            for k, (lo, hi, _) in enumerate(job.pieces):
                while c < len(cs) and cs[c][1] <= lo:
                    c += 1
                last = c
                while last < len(cs) and cs[last][0] < hi:
                    self._covers.setdefault((j, last), []).append(k)
                    last += 1
                self._left[j, k] = last - c

    def empty_pieces(self) -> list[tuple[int, int]]:
        """(job, piece) of pieces without bytes: done already."""
        return [key for key, n in self._left.items() if n == 0]

    def run(self, j: int, k: int) -> None:
        lo, hi, fn = self._jobs[j].pieces[k]
        fn(self._jobs[j].dest[lo:hi])

    def chunk_done(self, j: int, c: int) -> None:
        done = []
        with self._lock:
            for k in self._covers.get((j, c), ()):
                self._left[j, k] -= 1
                if self._left[j, k] == 0:
                    done.append(k)
        for k in done:
            self.run(j, k)


def _plan_threads(src: _Source, requests: list[tuple[int, np.ndarray]],
                  threads: int) -> tuple[list[bool], int]:
    """Per request, does the page cache hold all of it (asked only in direct mode, where
    it decides how to read); and how many threads to read with.

    Copies from the page cache are bound by CPU: more threads than CPUs only add start-up
    and switching (SmolLM2 warm on 2 CPUs: 15 ms with 2 threads, 18-20 ms with 8).
    O_DIRECT reads from the disk want many requests in flight: a thread per CPU, plus
    one per request the disk serves, up to `threads`. Buffered reads from the disk have
    the kernel's readahead for that, which more threads only disturb (SmolLM2 cold on 2
    CPUs: 52 ms with 2 threads, 63 ms with 8, `dd` 52 ms): a thread per CPU."""
    cpus = len(os.sched_getaffinity(0))
    if not requests:
        return [], 1
    if not src.direct:
        return [True] * len(requests), max(1, min(threads, cpus))
    lo = align_down(min(off for off, _ in requests), PAGE)
    hi = min(src.size, max(off + d.size for off, d in requests))
    pages = resident(src.fd, lo, hi - lo)
    cached = [bool(pages[(off - lo) // PAGE:(min(off + d.size, hi) - lo + PAGE - 1) // PAGE].all())
              for off, d in requests]
    return cached, max(1, min(threads, cpus + cached.count(False)))


def read_jobs(path: str, jobs: Sequence[ReadJob], *, direct: bool = False, threads: int = THREADS,
              setup: Callable[[], None] | None = None, desc: str = "loading weights") -> bool:
    """Fill every job's buffer from the file; True when O_DIRECT was used to the end.

    Requests of up to CHUNK bytes are issued from up to `threads` threads (see
    _plan_threads), each of which runs `setup` first. Raises ModelFormatError when the
    file ends before a job's last byte.
    """
    chunks = [_chunks(job) for job in jobs]
    done = _Completion(jobs, chunks)
    for j, k in done.empty_pieces():
        done.run(j, k)
    src = _Source(path, direct)
    bounce = _Bounce()
    bar = progress_bar(sum(j.dest.size for j in jobs), desc)

    requests = [(j, c, jobs[j].offset + lo, jobs[j].dest[lo:hi])
                for j, cs in enumerate(chunks) for c, (lo, hi) in enumerate(cs)]

    def work(j: int, c: int, offset: int, dest: np.ndarray, in_cache: bool) -> int:
        _read_chunk(src, bounce, offset, dest, in_cache)
        done.chunk_done(j, c)
        return dest.size

    try:
        cached, n_threads = _plan_threads(src, [(off, dest) for _, _, off, dest in requests], threads)
        with ThreadPoolExecutor(max_workers=n_threads, initializer=setup) as pool:
            futures = [pool.submit(work, *r, c) for r, c in zip(requests, cached)]
            try:
                for fut in as_completed(futures):
                    bar.update(fut.result())
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        return src.direct
    except _Truncated as e:
        need = max(j.offset + j.dest.size for j in jobs)
        raise ModelFormatError(f"{path}: the file ends at byte {min(e.at, os.fstat(src.fd).st_size)} but "
                               f"the weights need bytes up to {need}: it is truncated (re-download it)") from None
    except OSError as e:
        raise NumallmError(f"{path}: reading the weights failed ({e.strerror}); check the disk "
                           f"and the file") from None
    finally:
        bar.close()
        src.close()
