"""The option group every subcommand shares (llama.cpp's names and defaults), and what
it means for the Engine: its keyword arguments, with llama.cpp's loading aliases read."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from numallm.engine.options import KV_TYPES, LOAD_MODES, NUMA_MODES
from numallm.errors import BadInputError
from numallm.numa.sizes import parse_size

# llama.cpp's loading flags and the --load-mode each one means.
LOAD_MODE_ALIASES = {"--mmap": "mmap", "--no-mmap": "none", "--mlock": "mlock", "--direct-io": "dio"}
# Alias pairs that agree: locking implies a mapping, direct I/O implies no mapping.
_IMPLIED = {frozenset({"mmap", "mlock"}): "mlock", frozenset({"none", "dio"}): "dio"}


def shared_options(lists: bool = False) -> argparse.ArgumentParser:
    """The option group every subcommand shares. With lists=True (bench), -n, -t, --numa
    and --load-mode take comma lists, checked by the subcommand itself."""
    p = argparse.ArgumentParser(add_help=False)
    int_or_list = str if lists else int

    def modes(values: tuple[str, ...]) -> tuple[str, ...] | None:
        return None if lists else values

    g = p.add_argument_group("common options (llama.cpp names)")
    g.add_argument("-m", "--model", help="GGUF file, or a known model name: smollm2 (default), gemma3; "
                   "also $NUMALLM_MODEL")
    g.add_argument("-n", "--n-predict", type=int_or_list, default=-1,
                   help="tokens to generate; -1 = until end of generation or a full context (default -1)")
    g.add_argument("-c", "--ctx-size", type=int, default=0,
                   help="context size; 0 = min(the model's context, 4096) (default 0)")
    g.add_argument("-t", "--threads", type=int_or_list, default=None,
                   help="worker threads (default: one per allowed physical core)")
    g.add_argument("--smt", action="store_true", help="also use SMT siblings (hyperthreads)")
    g.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="top-k sampling; 0 = off (default 40)")
    g.add_argument("--top-p", type=float, default=0.95, help="top-p sampling; 1.0 = off (default 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, help="min-p sampling; 0.0 = off (default 0.05)")
    g.add_argument("--repeat-penalty", type=float, default=1.0,
                   help="penalize repeated tokens; 1.0 = off (default 1.0)")
    g.add_argument("--repeat-last-n", type=int, default=64,
                   help="tokens the repeat penalty looks back over (default 64)")
    g.add_argument("--ignore-eos", action="store_true",
                   help="keep generating past end-of-generation tokens (for benchmarks)")
    g.add_argument("-s", "--seed", type=int, default=-1, help="RNG seed; -1 = random (default -1)")
    g.add_argument("-ctk", "--cache-type-k", default="f16", choices=KV_TYPES,
                   help="KV cache type for K (default f16)")
    g.add_argument("-ctv", "--cache-type-v", default="f16", choices=KV_TYPES,
                   help="KV cache type for V (default f16)")
    g.add_argument("--numa", default="auto", choices=modes(NUMA_MODES), help="weight placement (default auto)")
    if not lists:
        g.add_argument("--mirror-budget", default=None, metavar="SIZE",
                       help="with --numa mirror: mirror at most SIZE bytes (e.g. 200G, 512M) of the tensors read "
                       "most per byte (attention, router, output) and distribute the rest (the experts)")
    g.add_argument("--numa-node", type=int, default=None, metavar="N",
                   help="with --numa isolate: the NUMA node for the weights and the workers "
                   "(default: the first worker's node)")
    g.add_argument("--no-hugepages", action="store_true",
                   help="do not ask for transparent huge pages for the weights' copy and a placed KV cache "
                   "(a one-node KV cache is on 4 KiB pages either way)")
    g.add_argument("--load-mode", default=None, choices=modes(LOAD_MODES),
                   help="how weights are read: mmap = map the file, mlock = map and lock it in RAM, "
                   "dio = O_DIRECT reads, none = plain reads; auto = mmap unless the NUMA mode "
                   "copies (default auto)")
    for flag, mode in LOAD_MODE_ALIASES.items():
        g.add_argument(flag, dest="load_aliases", action="append_const", const=flag,
                       help=f"llama.cpp alias of --load-mode {mode}")
    g.add_argument("--pipeline", type=int, default=1, metavar="N",
                   help="cut the model's layers into N stages, one Ray actor each (one per machine of a Ray "
                   "cluster: `ray start`), for models larger than one machine's memory; needs numallm[cluster] "
                   "(default 1: this process)")
    g.add_argument("--root", default="/", help="read the topology from this sysfs root prefix (default /)")
    g.add_argument("--json", action="store_true", help="print one JSON document on stdout, nothing else")
    g.add_argument("-v", "--verbose", action="store_true", help="say what is being done on stderr")
    return p


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
    """open_engine's keyword arguments from the shared option group (every subcommand that
    loads a model), checked; the note on llama.cpp's loading aliases goes to stderr."""
    if args.cache_type_k != args.cache_type_v:
        raise BadInputError("-ctk and -ctv must be the same type (numallm stores K and V alike)")
    if args.pipeline < 1:
        raise BadInputError(f"--pipeline {args.pipeline}: the number of stages must be 1 or more")
    load_mode, note = load_mode_from_flags(args.load_mode, args.load_aliases or [])
    if note:
        print(f"numallm: note: {note}", file=sys.stderr)
    budget = None if args.mirror_budget is None else parse_size(args.mirror_budget, "--mirror-budget")
    return dict(model=args.model, numa=args.numa, numa_node=args.numa_node, mirror_budget=budget,
                hugepages=not args.no_hugepages,
                load_mode=load_mode, threads=args.threads, ctx_size=args.ctx_size, kv_type=args.cache_type_k,
                smt=args.smt, verbose=args.verbose, pipeline=args.pipeline)
