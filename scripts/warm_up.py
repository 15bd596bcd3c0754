"""install.sh's warm-up: fetch the default model and compile its forward pass, from this
source tree whether or not `pip install -e` has made it importable yet.

install.sh runs this beside `pip install -e .` (4-5 s of a 45 s start-up), so the fetch
and the compile need not wait for it. Numba caches the machine code beside the sources,
and an editable install runs these same files, so the first `numallm generate` finds it.
The download (network-bound, in a pip subprocess) runs while this process imports
Numba and compiles the repacking kernels, which need no model file. The forward pass's
compile is split in two (compile_plan.py): a second process compiles half of the
functions it calls into a Numba cache of its own while this one compiles the other half;
its cache is merged into this one, then the forward pass finds them all compiled.
Exits 3 where numallm's dependencies are not installed yet (after the download):
install.sh then runs it again after pip has installed them.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import compile_plan

EXIT_NO_DEPENDENCIES = 3
_ROOT = Path(__file__).resolve().parent.parent


def import_source_tree(root: Path) -> None:
    """Make `numallm` this tree (the repository root is the package), not any installed copy."""
    spec = importlib.util.spec_from_file_location("numallm", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["numallm"] = package
    spec.loader.exec_module(package)


def compile_repacking() -> None:
    """Compile the load's repacking kernels (one compiled function serves every type) on
    one tile of zeros, as the load calls them."""
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from numallm import kernels

    rows, cols = kernels.row_group(T.Q8_0), 32
    tile = np.zeros(kernels.packed_nbytes(T.Q8_0, rows, cols), np.uint8)
    kernels.pack(T.Q8_0, tile, rows, cols, out=tile)


def warm_up(private_cache: Path) -> int:
    """The default model fetched and its forward pass compiled (or found in Numba's cache)."""
    from numallm.engine.model_store import DEFAULT_MODEL, fetch_known_model  # the standard library only

    repacking_seconds, entries = compile_plan.load()
    mine, theirs = compile_plan.split(repacking_seconds, entries)
    other = subprocess.Popen([sys.executable, __file__, "--compile", *map(str, theirs)],
                             env=dict(os.environ, NUMBA_CACHE_DIR=str(private_cache)))
    try:
        with ThreadPoolExecutor(1) as pool:
            fetched = pool.submit(fetch_known_model, DEFAULT_MODEL)
            try:
                from numallm.engine.engine import Engine
                from numallm.kernels.numba_cache import merge_cache
                compile_repacking()
                compile_plan.compile_all([entries[i] for i in mine])
            except ModuleNotFoundError as e:
                if e.name and e.name.split(".")[0] != "numallm":  # a dependency pip has yet to install
                    fetched.exception()  # the download finished, done or not: the rerun retries it
                    return EXIT_NO_DEPENDENCIES
                raise
            path = fetched.result()
        if other.wait() == 0:  # else the forward pass compiles its share itself
            merge_cache(private_cache)
    finally:
        other.kill()  # gone already, unless this one failed or was stopped
        other.wait()
    Engine(path).close()
    return 0


def compile_entries(numbers: list[str]) -> int:
    """The second process: compile these entries of the plan into its own cache."""
    entries = compile_plan.load()[1]
    try:
        compile_plan.compile_all([entries[int(n)] for n in numbers])
    except ModuleNotFoundError:  # pip has yet to install Numba: the rerun after it does this
        return EXIT_NO_DEPENDENCIES
    return 0


def main() -> int:
    import_source_tree(_ROOT)
    from numallm.errors import NumallmError

    # install.sh stops this with SIGTERM (pip failed, or Ctrl-C): unwind, stopping the other
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if sys.argv[1:2] == ["--compile"]:
            return compile_entries(sys.argv[2:])
        with tempfile.TemporaryDirectory(prefix="numallm-warm-up-") as private_cache:
            return warm_up(Path(private_cache))
    except NumallmError as e:  # a failed download, say: one line, as the CLI gives it
        print(f"numallm: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
