"""Numba's on-disk cache for numallm, invalidated by a change to any compiled source.

Numba stamps a cached function with its own source file only, so a cached caller
keeps running the old machine code of a callee edited in another file (a changed
kquants/rows.py kernel went unnoticed by the cached jit.matvec, and would be by the
engine's cached forward pass, until the cache was cleared). These locators stamp
every cached function of the numallm package with a digest of every numallm source
file that holds Numba code (the kernels, the forward pass, the barrier, the work
split) besides its own file; functions outside the package keep Numba's usual locators.

It also keeps scipy and cffi out of Numba's start-up: the first compile or cache load
of a process imports Numba's array math, which imports scipy.linalg (when installed)
only to note whether a BLAS exists (0.2 s of CPU, most of a warm start's Numba cost,
for the BLAS path of np.correlate/np.convolve), and its typing, which builds a cffi
parser for calls to cffi functions (10 ms). numallm compiles neither.

And it makes a cache hit of numallm's functions cheaper (an Engine start loads a few
of them; together these took about 70 ms of a 260 ms start):
- Numba refreshes its typing and lowering registries before every cache load, which
  the first time installs thousands of implementations. Loaded machine code needs
  none of them, only the runtime (NRT) it links against; a compile still refreshes
  them itself (numba.core.compiler.CompilerBase).
- Numba times every call into LLVM with Python callbacks around the LLVM lock (its
  "numba:llvm_lock" event, read only by its compile-time profiling): a large cached
  function makes 1600 such calls as it is loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import llvmlite.binding as llvm
from numba.core import caching
from numba.core.runtime import rtsys

_KERNELS_DIR = Path(__file__).resolve().parent
_PACKAGE_DIR = _KERNELS_DIR.parent
_COMPILED_FOLDERS = ("engine", "kernels", "numa")  # where numallm keeps Numba code


@cache
def compiled_sources_digest() -> str:
    """sha256 over the paths and contents of the package's .py files that use Numba."""
    h = hashlib.sha256()
    # rglob: kernels/ keeps its modules in subfolders (simd/, families/, drivers/, ...)
    for path in sorted(p for sub in _COMPILED_FOLDERS for p in (_PACKAGE_DIR / sub).rglob("*.py")):
        text = path.read_bytes()
        if b"numba" in text:
            h.update(path.relative_to(_PACKAGE_DIR).as_posix().encode())
            h.update(text)
    return h.hexdigest()


class _KernelStamped:
    @classmethod
    def from_function(cls, py_func, py_file):  # type: ignore[no-untyped-def]
        if not Path(py_file).resolve().is_relative_to(_PACKAGE_DIR):
            return None
        return super().from_function(py_func, py_file)  # type: ignore[misc]

    def get_source_stamp(self):  # type: ignore[no-untyped-def]
        return (compiled_sources_digest(), super().get_source_stamp())  # type: ignore[misc]


class _UserProvided(_KernelStamped, caching.UserProvidedCacheLocator):
    pass


class _InTree(_KernelStamped, caching.InTreeCacheLocator):
    pass


class _UserWide(_KernelStamped, caching.UserWideCacheLocator):
    pass


def install() -> None:
    """Put these locators before Numba's own (idempotent), import Numba's array math
    without scipy and its typing without cffi, and take the cost out of cache hits (see
    above). numallm.kernels does it on import; a module defining cached functions that
    call kernels must import numallm.kernels before it defines them."""
    classes = caching.CacheImpl._locator_classes
    for locator in (_UserWide, _InTree, _UserProvided):
        if locator not in classes:
            classes.insert(0, locator)
    # Numba's array math imports scipy.linalg only to note whether a BLAS exists (np.dot
    # and np.linalg in compiled code still import it when they are compiled), and its
    # typing imports cffi and parses C declarations for cffi calls: 0.2 s and 10 ms of
    # every process's first compile or cache load, for features numallm never compiles.
    _import_without("numba.np.arraymath", "scipy.linalg")
    _import_without("numba.core.typing.cffi_utils", "cffi")
    caching.Cache.load_overload = _load_overload
    lock = llvm.ffi.lib._lock  # llvmlite keeps its callbacks there (register_lock_callback)
    lock._cblist[:] = [cb for cb in lock._cblist if "_initialize_llvm_lock_event" not in cb[0].__qualname__]


_numba_load_overload = caching.Cache.load_overload  # Numba's own, for everyone else's functions


def _load_overload(self, sig, target_context):  # type: ignore[no-untyped-def]
    """Cache.load_overload without the registry refresh, for numallm's functions."""
    if not isinstance(self._impl.locator, _KernelStamped):
        return _numba_load_overload(self, sig, target_context)
    rtsys.initialize(target_context)  # idempotent; the loaded code links against the NRT
    with self._guard_against_spurious_io_errors():
        return self._load_overload(sig, target_context)


def merge_cache(private: Path, source_dirs: Iterable[Path] | None = None) -> int:
    """Bring what another process compiled into a Numba cache of its own (its
    NUMBA_CACHE_DIR was `private`) into this process's cache, for the functions of the
    .py files in `source_dirs` (numallm's compiled folders by default); returns the
    entries added. Entries this cache has already stay; the others get data files of
    numbers free here, so nothing of either cache is overwritten: two processes compiling
    into one cache at once can pair one's index entry with the other's machine code, as
    Numba's index update (read, add, write) is not atomic between processes. Call it
    while this process compiles nothing."""
    added = 0
    for folder in source_dirs or (_PACKAGE_DIR / sub for sub in _COMPILED_FOLDERS):
        for directory in {p.parent for p in Path(folder).rglob("*.py")}:
            theirs = Path(private) / caching.UserProvidedCacheLocator.get_suitable_cache_subpath(
                str(directory / "_.py"))
            for index in theirs.glob("*.nbi"):
                added += _merge_index(theirs, index.name[:-len(".nbi")], directory)
    return added


def _merge_index(theirs: Path, base: str, directory: Path) -> int:
    """One function's entries (its index `base`.nbi in `theirs`) merged into this
    process's cache of it, as Numba's locators place it for the source file."""
    source = directory / f"{base.split('.', 1)[0]}.py"  # the name starts with the file's
    if not source.is_file():
        return 0
    for cls in caching.CacheImpl._locator_classes:
        locator = cls.from_function(merge_cache, str(source))  # any function: the file decides
        if locator is not None:
            break
    else:
        return 0
    stamp = locator.get_source_stamp()  # an entry of other sources stays out (_load_index)
    src = caching.IndexDataCacheFile(str(theirs), base, stamp)
    dst = caching.IndexDataCacheFile(locator.get_cache_path(), base, stamp)
    ours = dst._load_index()
    new = {key: name for key, name in src._load_index().items() if key not in ours}
    taken = set(ours.values())
    numbers = itertools.count(1)
    for key, name in new.items():
        ours[key] = next(n for n in map(dst._data_name, numbers) if n not in taken)
        taken.add(ours[key])
        data = (theirs / name).read_bytes()
        with dst._open_for_write(dst._data_path(ours[key])) as f:  # written whole, then renamed
            f.write(data)
    if new:
        dst._save_index(ours)  # after the data: the index never names a file not yet there
    return len(new)


def _import_without(module: str, optional: str) -> None:
    """Import Numba's `module` while `import optional` fails, unless either is loaded
    already (then it costs nothing). Done once, at import: another thread importing
    `optional` in that instant would get an ImportError."""
    if module in sys.modules or optional in sys.modules:
        return
    sys.modules[optional] = None  # type: ignore[assignment]  # its import raises ImportError
    try:
        importlib.import_module(module)
    finally:
        del sys.modules[optional]
