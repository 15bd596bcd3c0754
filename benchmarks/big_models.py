"""Big-model speed: numallm against llama.cpp on random-weight files of real shapes.

    python3 benchmarks/big_models.py                                  # every shape and mix
    python3 benchmarks/big_models.py --shapes llama-7b --mixes Q4_0,Q4_K -p 128 -n 64 -t 2
    python3 benchmarks/big_models.py --layers 2 -r 1                  # a quick check of the set-up
    python3 benchmarks/big_models.py --shapes llama-7b --mixes IQ2_XXS,IQ3_XXS,IQ1_S --layers 4 -p 0 -n 16 -t 1,2
                                                                      # the grid i-quants (issue 21)

For each shape and mix (benchmarks/random_models.py writes the file into
~/.cache/numallm/bench-models/ the first time: 4-11 GB each at full size) this runs
`numallm bench -m FILE -p P -n N -t T -r R --vs-llama-cpp --json` in a child process
(one model in memory at a time) and prints one table: numallm's and llama.cpp's pp and
tg t/s, their ratios (numallm / llama.cpp), and the fraction of the memory roofline
each engine's tg reaches (bench/roofline.py; the ceiling is the same for both).

A shape whose architecture numallm does not run gets "unsupported architecture" in
numallm's columns, and llama.cpp is timed alone by the same protocol
as `numallm bench` (bench/runners.py: one warm-up, then R runs of pp P and tg N from an
empty context); without llama-cpp-python the llama.cpp columns say "not installed".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from random_models import MIXES, SHAPES, ensure_model

from numallm.bench.measure import cpu_info
from numallm.bench.runners import LlamaCppRunner, import_llama_cpp
from numallm.engine import arch
from numallm.engine.gguf_file import read_gguf
from numallm.errors import NumallmError
from numallm.numa.topology import detect
from numallm.numa.workers import plan_workers


COMMON_MIXES = ("Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_K_M")


@dataclass
class Row:
    shape: str
    mix: str
    size: int                # bytes of the file
    threads: int
    ours: dict[str, float]   # "pp", "tg", "tg_frac", "gbps" -> value; absent: not measured
    theirs: dict[str, float]
    note: str = ""           # why a side has no figures


def _supported(shape: str) -> bool:
    return SHAPES[shape].arch in arch.ARCHITECTURES


def _llama_cpp_available() -> bool:
    try:
        import_llama_cpp()
    except NumallmError:
        return False
    return True


def _figures(records: list[dict[str, Any]], engine: str, threads: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in records:
        if r["engine"] == engine and r["n_threads"] == threads:
            if r["n_prompt"]:
                out["pp"] = r["avg_ts"]
            else:
                out["tg"] = r["avg_ts"]
                out["tg_frac"] = r["roofline_frac"]
                out["gbps"] = r["mem_gbps"]
    return out


def bench_both(path: Path, args: argparse.Namespace, vs: bool) -> list[dict[str, Any]] | None:
    """`numallm bench --json` of one file in a child process: its records, None if it failed
    (its error is on stderr)."""
    cmd = [sys.executable, "-m", "numallm", "bench", "-m", str(path), "-p", str(args.n_prompt),
           "-n", str(args.n_gen), "-t", args.threads, "-r", str(args.repetitions), "--json"]
    done = subprocess.run(cmd + (["--vs-llama-cpp"] if vs else []), stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def bench_llama_cpp_alone(path: Path, args: argparse.Namespace, threads: int) -> dict[str, float]:
    """pp and tg t/s of llama.cpp alone, by numallm bench's protocol (bench/runners.py)."""
    n_prompt, n_gen = args.n_prompt, args.n_gen
    md = read_gguf(path).metadata
    n_vocab = len(md["tokenizer.ggml.tokens"])
    rng = np.random.default_rng(0)
    runner = LlamaCppRunner(import_llama_cpp(), path, threads, n_prompt + n_gen, "f16", "mmap")
    out = {}
    try:
        for test, n, run in (("pp", n_prompt, runner.prompt), ("tg", n_gen, runner.generate)):
            if n <= 0:
                continue
            run(rng.integers(0, n_vocab, n if test == "pp" else 1, dtype=np.int32))  # warm-up
            secs = [run(rng.integers(0, n_vocab, n, dtype=np.int32)) for _ in range(args.repetitions)]
            out[test] = statistics.fmean(n / s for s in secs)
    finally:
        runner.close()
    return out


def measure(shape: str, mix: str, args: argparse.Namespace, vs: bool) -> list[Row]:
    threads = [int(t) for t in args.threads.split(",")]
    if not _supported(shape) and not vs:  # nothing could run the file: do not write it
        return [Row(shape, mix, 0, t, {}, {}, "numallm: unsupported architecture; llama.cpp: not installed")
                for t in threads]
    path = ensure_model(shape, mix, args.layers)
    size = path.stat().st_size
    if _supported(shape):
        recs = bench_both(path, args, vs)
        if recs is None:
            return [Row(shape, mix, size, t, {}, {}, "numallm bench failed (see above)") for t in threads]
        note = "" if vs else "llama.cpp: not installed"
        return [Row(shape, mix, size, t, _figures(recs, "numallm", t), _figures(recs, "llama.cpp", t), note)
                for t in threads]
    return [Row(shape, mix, size, t, {}, bench_llama_cpp_alone(path, args, t), "numallm: unsupported architecture")
            for t in threads]


def _ts(figs: dict[str, float], key: str) -> str:
    return f"{figs[key]:.2f}" if key in figs else "-"


def _ratio(row: Row, key: str) -> str:
    if key in row.ours and key in row.theirs:
        return f"{row.ours[key] / row.theirs[key]:.2f}x"
    return "-"


def _frac(figs: dict[str, float], key: str = "tg_frac") -> str:
    return f"{figs[key]:.2f}" if figs.get(key) is not None else "-"


def table(rows: list[Row], args: argparse.Namespace) -> str:
    pp, tg = f"pp{args.n_prompt}", f"tg{args.n_gen}"
    head = ["shape", "type", "size", "threads", f"numallm {pp}", f"llama.cpp {pp}", "ratio",
            f"numallm {tg}", f"llama.cpp {tg}", "ratio", "roofline numallm", "roofline llama.cpp", "read GB/s", "note"]
    numeric = range(2, len(head) - 1)  # right-aligned: all but the names and the note
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(head))) + "|"]
    for r in rows:
        shape = r.shape if args.layers is None else f"{r.shape} ({args.layers} layers)"
        cells = [shape, r.mix, f"{r.size / 2**30:.2f} GiB" if r.size else "-", str(r.threads),
                 _ts(r.ours, "pp"), _ts(r.theirs, "pp"), _ratio(r, "pp"),
                 _ts(r.ours, "tg"), _ts(r.theirs, "tg"), _ratio(r, "tg"),
                 _frac(r.ours), _frac(r.theirs), _ts(r.ours, "gbps"), r.note]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"t/s: mean of {args.repetitions} runs after a warm-up; ratio: numallm / llama.cpp; roofline: "
                 "fraction of the tg ceiling (read bandwidth / bytes a token reads) reached; "
                 "read GB/s: that bandwidth, measured in the run")
    lines.append(f"machine: {cpu_info() or 'unknown CPU'}, {os.cpu_count()} CPUs, "
                 f"load average (1 min) at the end {os.getloadavg()[0]:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--mixes", default=",".join(COMMON_MIXES),
                    help=f"comma list of {', '.join(MIXES)} (default {','.join(COMMON_MIXES)})")
    ap.add_argument("--layers", type=int, help="cut every model to this many layers (a quick check)")
    ap.add_argument("-p", "--n-prompt", type=int, default=128, help="prompt size of the pp test; 0: none (default 128)")
    ap.add_argument("-n", "--n-gen", type=int, default=64, help="tokens of the tg test; 0: none (default 64)")
    ap.add_argument("-t", "--threads", default=str(len(plan_workers(detect("/"), None, False))),
                    help="thread counts, comma list (default: one per physical core, numallm's default)")
    ap.add_argument("-r", "--repetitions", type=int, default=3, help="timed runs per test (default 3)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="numallm alone")
    args = ap.parse_args(argv)
    shapes, mixes = args.shapes.split(","), args.mixes.split(",")
    for name, given, known in (("shape", shapes, SHAPES), ("type", mixes, MIXES)):
        bad = [g for g in given if g not in known]
        if bad:
            ap.error(f"unknown {name} {', '.join(bad)} (use {', '.join(known)})")
    vs = not args.no_llama_cpp and _llama_cpp_available()
    rows = []
    for shape in shapes:
        for mix in mixes:
            rows += measure(shape, mix, args, vs)
            print(f"big_models: {shape} {mix} done", file=sys.stderr, flush=True)
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
