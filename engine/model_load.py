"""The one load pipeline, for the Engine and `numallm placement` alike: the workers for
this machine, then the file (found, read, checked), its architecture, the context size,
and the weights and KV cache placed on the NUMA nodes.

The workers come first so that an impossible -t or --numa-node fails before the file
is read; everything that needs only the file is checked before anything is placed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from numallm.engine import arch
from numallm.engine.arch.spec import ArchSpec
from numallm.engine.gguf_file import GGUFFile, read_gguf
from numallm.engine.model_checks import check_architecture
from numallm.engine.model_store import resolve_model
from numallm.engine.options import LOAD_MODES, NUMA_MODES
from numallm.engine.placing import PlacedModel, place_model, placed_workers
from numallm.errors import BadInputError
from numallm.numa.sizes import parse_size
from numallm.numa.topology import detect
from numallm.numa.workers import WorkerSlot

DEFAULT_CTX = 4096  # the context size when none is given, if the model was trained on as many

# A caller's own checks of the file, run before anything is placed (the Engine reads
# the tokenizer there): the model's path, the file and its architecture.
FileCheck = Callable[[Path, GGUFFile, ArchSpec], None]


@dataclass
class OpenedModel:
    """A model file read and checked, nothing placed yet."""

    path: Path
    gf: GGUFFile
    spec: ArchSpec
    n_ctx: int


@dataclass
class LoadedModel(OpenedModel):
    """A model file placed for its workers. placed.close() frees the memory."""

    workers: list[WorkerSlot]
    placed: PlacedModel


def open_model(model: str | os.PathLike[str] | None, *, ctx_size: int | None = None, n_slots: int = 1,
               layers: tuple[int, int] | None = None, check_file: FileCheck | None = None) -> OpenedModel:
    """Find, read and check `model` (a path, a known name, or None for the default);
    ctx_size None or 0: min(the model's trained context, DEFAULT_CTX); layers (first,
    last): only those layers, as a pipeline stage (ArchSpec.stage)."""
    path = resolve_model(model)
    gf = arch.upgrade(read_gguf(path))
    check_architecture(gf)
    spec = arch.describe(gf.metadata, str(path))
    if layers is not None:
        spec = spec.stage(*layers)
    if check_file is not None:
        check_file(path, gf, spec)
    n_ctx = int(ctx_size) if ctx_size else min(spec.hparams.n_ctx_train, DEFAULT_CTX)
    if n_ctx <= 0:
        raise BadInputError(f"--ctx-size must be positive, got {n_ctx}")
    if isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots <= 0:
        raise BadInputError(f"the number of sequence slots must be a positive whole number, not {n_slots!r}")
    return OpenedModel(path, gf, spec, n_ctx)


def load_model(model: str | os.PathLike[str] | None, *, numa: str = "auto", numa_node: int | None = None,
               mirror_budget: int | str | None = None, load_mode: str = "auto", hugepages: bool = True,
               threads: int | None = None, smt: bool = False, ctx_size: int | None = None, kv_type: str = "f16",
               n_slots: int = 1, layers: tuple[int, int] | None = None, verbose: bool = False,
               check_file: FileCheck | None = None) -> LoadedModel:
    """open_model, then the model placed for this machine's workers; mirror_budget: with
    numa "mirror", the most bytes to mirror (a number, or a size such as "200G")."""
    if load_mode not in LOAD_MODES:
        raise BadInputError(f"--load-mode {load_mode!r} is not supported (use one of {', '.join(LOAD_MODES)})")
    if numa not in NUMA_MODES:
        raise BadInputError(f"--numa {numa!r} is not a placement mode (use one of {', '.join(NUMA_MODES)})")
    if isinstance(mirror_budget, str):
        mirror_budget = parse_size(mirror_budget, "--mirror-budget")
    topo = detect("/")
    workers = placed_workers(topo, numa, numa_node, threads, smt)
    m = open_model(model, ctx_size=ctx_size, n_slots=n_slots, layers=layers, check_file=check_file)
    placed = place_model(m.gf, m.spec, topo, workers, numa=numa, numa_node=numa_node, mirror_budget=mirror_budget,
                         load_mode=load_mode, hugepages=hugepages, n_ctx=m.n_ctx, n_slots=n_slots, kv_type=kv_type,
                         verbose=verbose)
    return LoadedModel(m.path, m.gf, m.spec, m.n_ctx, workers, placed)
