"""install.sh's warm-up: fetch the default model and compile its forward pass, from this
source tree whether or not `pip install -e` has made it importable yet.

install.sh runs this beside `pip install -e .` (4-5 s of a 45 s start-up), so the fetch
and the compile need not wait for it. Numba caches the machine code beside the sources,
and an editable install runs these same files, so the first `numallm generate` finds it.
The download (network-bound, in a pip subprocess) runs while this process imports
Numba and compiles the repacking kernels, which need no model file.
Exits 3 where numallm's dependencies are not installed yet (after the download):
install.sh then runs it again after pip has installed them.
"""

from __future__ import annotations

import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EXIT_NO_DEPENDENCIES = 3


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


def warm_up() -> int:
    """The default model fetched and its forward pass compiled (or found in Numba's cache)."""
    from numallm.engine.model_store import DEFAULT_MODEL, fetch_known_model  # the standard library only

    with ThreadPoolExecutor(1) as pool:
        fetched = pool.submit(fetch_known_model, DEFAULT_MODEL)
        try:
            from numallm.engine.engine import Engine
            compile_repacking()
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] != "numallm":  # a dependency pip has yet to install
                fetched.exception()  # the download finished, done or not: the rerun retries it
                return EXIT_NO_DEPENDENCIES
            raise
        path = fetched.result()
    Engine(path).close()
    return 0


def main() -> int:
    import_source_tree(Path(__file__).resolve().parent.parent)
    from numallm.errors import NumallmError

    try:
        return warm_up()
    except NumallmError as e:  # a failed download, say: one line, as the CLI gives it
        print(f"numallm: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
