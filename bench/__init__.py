"""`numallm bench`: prompt processing and generation speed in the style of llama-bench.

    numallm bench [-m MODEL,...] [-p 512,...] [-n 128,...] [-t 1,2] [--numa mirror,...]
                  [--load-mode mmap,...] [-r 5] [--vs-llama-cpp] [--json | --csv]

Tests, as llama-bench runs them:
- `pp N`: one prefill of N random tokens from an empty context (batches of 512);
  t/s = N / its time. A pp record has n_gen 0.
- `tg N`: N single-token decodes at positions 0..N-1 from an empty context;
  t/s = N / their time. A tg record has n_prompt 0.
Every comma list is a grid axis (models x numa x load modes x threads, each with every
test); -p 0 or -n 0 leaves that kind of test out. Each test runs once as a warm-up,
then -r times; t/s is the mean over the repetitions ± their sample standard deviation.

--vs-llama-cpp (needs the `llama-cpp` extra: pip install -e '.[llama-cpp]') loads the
same GGUF in llama.cpp with the same thread count, context size and KV type and
alternates its repetitions with ours, so both see the same machine; our rows gain a
speedup column (ours / llama.cpp's t/s). llama.cpp maps the file unless our load mode
reads it (none, dio: its --no-mmap) or locks it (mlock: its --mlock); it runs without a
NUMA strategy. Shared machines are noisy: only ratios from one run are evidence, and
with more runnable threads than cores (see the load average line) multi-threaded
numbers fall, llama.cpp's most (its workers spin at every barrier).

The roofline column of tg rows: the read bandwidth (numallm.kernels.bandwidth) of as
many bytes as a token reads weights, measured at each grid point with its thread count,
divided by the bytes one token reads (every weight incl. the output projection, one
embedding row, and the KV cache up to that position), is the most t/s any engine can
reach; "0.45 of 180" means 45% of a 180 t/s ceiling.

Output: a markdown table (rows printed as they finish), or with --json a list of
records with llama-bench's field names (cpu_info, model_filename, model_type,
model_size, model_n_params, n_batch, n_threads, type_k, type_v, n_prompt, n_gen,
test_time, avg_ns, stddev_ns, avg_ts, stddev_ts, samples_ns, samples_ts) plus engine
("numallm" or "llama.cpp"), numa, load_mode, weight_bytes, mem_gbps, roofline_ts and
roofline_frac (null for pp) and load_avg; our records add simd (the kernel build:
vnni, avx2, generic) and, when compared, speedup. --csv prints the same fields.
Under the table: the bandwidths, the tg speed ratio between thread counts beside the
bandwidth ratio, the CPU, and the machine's load average during the run.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from numallm.cli.options import load_mode_from_flags
from numallm.engine.options import LOAD_MODES, NUMA_MODES
from numallm.errors import BadInputError

if TYPE_CHECKING:  # the measuring modules import Numba: only run() loads them
    from numallm.bench.measure import Grid

DEFAULT_PROMPT = "512"
DEFAULT_GEN = "128"
DEFAULT_REPETITIONS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """bench's own options. The shared -m, -n, -t, --numa and --load-mode are read as
    comma lists; -n's shared default (-1) means llama-bench's 128 here."""
    g = parser.add_argument_group("bench options (llama-bench names)")
    g.add_argument("-p", "--n-prompt", default=DEFAULT_PROMPT,
                   help=f"prompt sizes to test as pp N, comma list; 0 = none (default {DEFAULT_PROMPT})")
    g.add_argument("-r", "--repetitions", type=int, default=DEFAULT_REPETITIONS,
                   help=f"timed runs of each test after one warm-up (default {DEFAULT_REPETITIONS})")
    g.add_argument("--csv", action="store_true", help="print CSV with the --json fields instead of a table")
    g.add_argument("--vs-llama-cpp", action="store_true",
                   help="run every test in llama.cpp too (llama-cpp-python), interleaved, and add a speedup column")


def _items(flag: str, value: object) -> list[str]:
    items = [s.strip() for s in str(value).split(",")]
    if any(not s for s in items):
        raise BadInputError(f"{flag} {value!r}: expected a comma list without empty items")
    return items


def _ints(flag: str, value: object, minimum: int) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in _items(flag, value))
    except ValueError:
        raise BadInputError(f"{flag} {value!r}: expected whole numbers separated by commas") from None
    if min(out) < minimum:
        raise BadInputError(f"{flag} {value!r}: every value must be at least {minimum}")
    return out


def _names(flag: str, value: object, allowed: tuple[str, ...]) -> tuple[str, ...]:
    out = tuple(_items(flag, value))
    bad = [s for s in out if s not in allowed]
    if bad:
        raise BadInputError(f"{flag}: {', '.join(bad)} not supported (use one of {', '.join(allowed)})")
    return out


def _load_modes(args: argparse.Namespace) -> tuple[str, ...]:
    """--load-mode's list, with llama.cpp's --mmap/--no-mmap/--mlock/--direct-io applied
    as the other commands apply them (None: neither given, which means auto)."""
    aliases = args.load_aliases or []
    given = _names("--load-mode", args.load_mode, LOAD_MODES) if args.load_mode is not None else (None,)
    modes = [load_mode_from_flags(m, aliases) for m in given]
    if modes[0][1]:
        print(f"numallm: note: {modes[0][1]}", file=sys.stderr)
    return tuple(dict.fromkeys(m for m, _ in modes))


def parse_grid(args: argparse.Namespace) -> Grid:
    """The checked grid of a parsed command line (light: no model is touched)."""
    from numallm.bench.measure import Grid
    from numallm.numa.topology import detect
    from numallm.numa.workers import plan_workers

    if args.pipeline < 1:
        raise BadInputError(f"--pipeline {args.pipeline}: the number of stages must be 1 or more")
    if args.repetitions < 1:
        raise BadInputError(f"-r {args.repetitions}: at least one repetition is needed")
    if args.json and args.csv:
        raise BadInputError("give at most one of --json and --csv")
    if args.cache_type_k != args.cache_type_v:
        raise BadInputError("-ctk and -ctv must be the same type (numallm stores K and V alike)")
    n_gen = DEFAULT_GEN if args.n_predict in (None, -1, "-1") else args.n_predict  # unset: 128
    if args.threads is None:
        # The engine's default, resolved here so llama.cpp gets the same count.
        threads: tuple[int, ...] = (len(plan_workers(detect("/"), None, args.smt)),)
    else:
        threads = _ints("-t", args.threads, 1)
    grid = Grid(
        models=tuple(_items("-m", args.model)) if args.model else (None,),
        n_prompt=_ints("-p", args.n_prompt, 0), n_gen=_ints("-n", n_gen, 0), threads=threads,
        numa=_names("--numa", args.numa or "auto", NUMA_MODES), load_modes=_load_modes(args),
        repetitions=args.repetitions, ctx_size=args.ctx_size, kv_type=args.cache_type_k, smt=args.smt,
        seed=max(args.seed, 0), verbose=args.verbose, pipeline=args.pipeline)
    tests = grid.tests()
    if not tests:
        raise BadInputError("nothing to measure: -p and -n are both 0")
    longest = max(p + n for p, n in tests)
    if grid.ctx_size and grid.ctx_size < longest:
        raise BadInputError(f"-c {grid.ctx_size} is too small for a {longest}-token test; "
                            "raise it or leave it 0 (sized to the tests)")
    return grid


def run(args: argparse.Namespace) -> int:
    """Measure the grid and print the table, JSON or CSV on stdout; 0 on success."""
    from numallm.bench.measure import BenchRun
    from numallm.bench.report import render_csv, render_json, table_header, table_note, table_row
    from numallm.bench.runners import import_llama_cpp

    grid = parse_grid(args)
    llama_cpp = import_llama_cpp() if args.vs_llama_cpp else None  # fail before loading anything
    bench = BenchRun(grid, llama_cpp)
    table = not (args.json or args.csv)
    if table:
        print(table_header(args.vs_llama_cpp), flush=True)
    records = []
    for rec in bench.records():
        records.append(rec)
        if table:
            print(table_row(rec, args.vs_llama_cpp), flush=True)
    if table:
        print(table_note(records))
    else:
        print(render_json(records) if args.json else render_csv(records))
    return 0
