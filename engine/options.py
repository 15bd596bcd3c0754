"""The choices of the options every entry point shares (kept import-light for the CLI)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from numallm.errors import BadInputError
from numallm.numa.modes import NUMA_MODES

LOAD_MODES = ("auto", "mmap", "mlock", "dio", "none")
KV_TYPES = ("f16", "f32")

# llama.cpp's loading flags and the --load-mode each one means.
LOAD_MODE_ALIASES = {"--mmap": "mmap", "--no-mmap": "none", "--mlock": "mlock", "--direct-io": "dio"}
# Alias pairs that agree: locking implies a mapping, direct I/O implies no mapping.
_IMPLIED = {frozenset({"mmap", "mlock"}): "mlock", frozenset({"none", "dio"}): "dio"}


def load_mode_from_flags(load_mode: str | None, aliases: list[str]) -> tuple[str, str | None]:
    """(the load mode, a one-line note on the aliases or None) given --load-mode (None when
    not given) and the llama.cpp alias flags used; BadInputError when they contradict."""
    modes = {LOAD_MODE_ALIASES[a] for a in aliases}
    if len(modes) > 1:
        modes = {_IMPLIED[frozenset(modes)]} if frozenset(modes) in _IMPLIED else modes
    if len(modes) > 1:
        raise BadInputError(f"{' and '.join(sorted(set(aliases)))} contradict each other; "
                            f"choose one --load-mode ({', '.join(LOAD_MODES)})")
    if not modes:
        return load_mode or "auto", None
    mode = modes.pop()
    used = " ".join(dict.fromkeys(aliases))
    if load_mode not in (None, "auto", mode):
        raise BadInputError(f"--load-mode {load_mode} contradicts {used} "
                            f"(which means --load-mode {mode}); give only one of them")
    return mode, f"{used} is llama.cpp's spelling of --load-mode {mode}"


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Engine's keyword arguments from the shared option group (every subcommand that
    loads a model), checked; the note on llama.cpp's loading aliases goes to stderr."""
    if args.cache_type_k != args.cache_type_v:
        raise BadInputError("-ctk and -ctv must be the same type (numallm stores K and V alike)")
    load_mode, note = load_mode_from_flags(args.load_mode, args.load_aliases or [])
    if note:
        print(f"numallm: note: {note}", file=sys.stderr)
    return dict(model=args.model, numa=args.numa, numa_node=args.numa_node, hugepages=not args.no_hugepages,
                load_mode=load_mode, threads=args.threads, ctx_size=args.ctx_size, kv_type=args.cache_type_k,
                smt=args.smt, verbose=args.verbose)
