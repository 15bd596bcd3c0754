"""`numallm bench` results: llama-bench's records and its three outputs (markdown, JSON, CSV).

A record is a plain dict with llama-bench's field names (model_filename, n_threads,
n_prompt, n_gen, avg_ts, stddev_ts, samples_ts, cpu_info, ...) plus engine, numa,
load_mode,
weight_bytes, mem_gbps, roofline_ts, roofline_frac, load_avg (the 1-minute load average
when the record was made) and, on our records, simd (which kernel build ran) and, beside
llama.cpp's, speedup.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    filename: str
    desc: str          # llama-bench's model column: "llama 135M Q4_1"
    size: int          # bytes of all tensors
    n_params: int
    weight_bytes: int  # bytes of weights one decode step reads (see bench/roofline.py)


def timing_fields(n_tokens: int, seconds: Sequence[float]) -> dict[str, Any]:
    """llama-bench's timing fields: per-repetition ns and t/s, their mean and sample stddev."""
    ns = [round(s * 1e9) for s in seconds]
    ts = [n_tokens * 1e9 / t for t in ns]  # from the recorded ns, as llama-bench does
    return {
        "avg_ns": round(statistics.fmean(ns)),
        "stddev_ns": round(statistics.stdev(ns)) if len(ns) > 1 else 0,
        "avg_ts": statistics.fmean(ts),
        "stddev_ts": statistics.stdev(ts) if len(ts) > 1 else 0.0,
        "samples_ns": ns,
        "samples_ts": ts,
    }


def label(rec: dict[str, Any]) -> str:
    return f"pp{rec['n_prompt']}" if rec["n_prompt"] else f"tg{rec['n_gen']}"


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


@dataclass(frozen=True)
class _Col:
    title: str
    width: int
    right: bool


def _columns(vs: bool) -> list[_Col]:
    cols = [_Col("model", 24, False), _Col("size", 10, True), _Col("params", 10, True)]
    if vs:
        cols.append(_Col("engine", 9, False))
    cols += [_Col("numa", 10, False), _Col("load mode", 9, False), _Col("threads", 7, True),
             _Col("test", 7, True), _Col("t/s", 20, True)]
    if vs:
        cols.append(_Col("speedup", 7, True))
    cols.append(_Col("roofline", 16, True))
    return cols


def _line(cols: list[_Col], cells: list[str]) -> str:
    return "| " + " | ".join(c.rjust(col.width) if col.right else c.ljust(col.width)
                             for col, c in zip(cols, cells)) + " |"


def table_header(vs: bool) -> str:
    cols = _columns(vs)
    rule = "|" + "|".join("-" * (c.width + 1) + (":" if c.right else "-") for c in cols) + "|"
    return _line(cols, [c.title for c in cols]) + "\n" + rule


def table_row(rec: dict[str, Any], vs: bool) -> str:
    cells = [rec["model_type"], _size(rec["model_size"]), _params(rec["model_n_params"])]
    if vs:
        cells.append(rec["engine"])
    cells += [rec["numa"], rec["load_mode"], str(rec["n_threads"]), label(rec),
              f"{rec['avg_ts']:.2f} ± {rec['stddev_ts']:.2f}"]
    if vs:
        cells.append(f"{rec['speedup']:.2f}x" if rec.get("speedup") is not None else "")
    roof = rec.get("roofline_ts")
    # two significant digits: a tiny model's fraction can be 0.004 and must not print as 0.00
    cells.append(f"{rec['roofline_frac']:.2g} of {roof:.0f}" if roof is not None else "")
    return _line(_columns(vs), cells)


def scaling_lines(records: list[dict[str, Any]]) -> list[str]:
    """tg speed at each thread count against the fewest threads of the same setup, beside
    the read bandwidth's ratio: generation should scale as far as the memory allows."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        if r["n_gen"]:
            key = (r["engine"], r["model_filename"], r["numa"], r["load_mode"], r["n_gen"])
            groups.setdefault(key, []).append(r)
    lines = []
    for (engine, model, numa, load_mode, n_gen), recs in groups.items():
        base = min(recs, key=lambda r: r["n_threads"])
        for r in sorted(recs, key=lambda r: r["n_threads"]):
            if r["n_threads"] != base["n_threads"]:
                speed, memory = r["avg_ts"] / base["avg_ts"], r["mem_gbps"] / base["mem_gbps"]
                lines.append(f"  {engine} tg{n_gen} ({Path(model).name}, numa {numa}, load {load_mode}): "
                             f"{r['n_threads']} threads {speed:.2f}x the t/s of {base['n_threads']}, "
                             f"read bandwidth {memory:.2f}x: {speed / memory:.2f} of the scaling memory allows")
    return lines


def table_note(records: list[dict[str, Any]]) -> str:
    """The lines under the table: where the roofline column comes from, thread scaling,
    and how busy the machine was (ratios from a loaded machine are weaker evidence)."""
    probes: dict[tuple[str, int], list[float]] = {}
    for r in records:
        probes.setdefault((r["model_filename"], r["n_threads"]), []).append(r["mem_gbps"])
    lines = ["", ("roofline (tg rows): fraction reached of the ceiling t/s = memory read bandwidth / bytes read "
                  "per token (weights incl. the output projection + the KV cache read at each position)")]
    weights = {r["model_filename"]: r["weight_bytes"] for r in records}
    for model, nbytes in weights.items():
        bw = ", ".join(f"{t} thread{'s' if t > 1 else ''} " + _span(gb) + " GB/s"
                       for (m, t), gb in sorted(probes.items()) if m == model)
        lines.append(f"  {Path(model).name}: {nbytes / 1e6:.2f} MB of weights per token; "
                     f"read bandwidth of that many bytes, measured in this run: {bw}")
    placed = {(Path(r["model_filename"]).name, r["numa"], r["numa_effective"], r["n_threads"]): r
              for r in records if "local_bytes" in r}
    if placed:
        lines.append("locality (numallm, from the pages read back): weight bytes read per token")
        for (model, numa, effective, threads), r in placed.items():
            total = r["local_bytes"] + r["remote_bytes"]
            lines.append(f"  {model}, numa {numa} ({effective}), {threads} thread{'s' if threads > 1 else ''}: "
                         f"{r['local_bytes'] / 1e6:.2f} MB local, {r['remote_bytes'] / 1e6:.2f} MB remote "
                         f"({r['remote_bytes'] / total if total else 0:.0%})")
    scaling = scaling_lines(records)
    if scaling:
        lines += ["thread scaling:"] + scaling
    loads = [r["load_avg"] for r in records]
    lines.append(f"machine: {records[0]['cpu_info'] or 'unknown CPU'}, numallm kernels {records[0]['simd']}; "
                 f"load average (1 min) during the run {_span(loads)} on {os.cpu_count()} CPUs")
    return "\n".join(lines)


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.1f}" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f}"


def render_json(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, indent=2)


def render_csv(records: list[dict[str, Any]]) -> str:
    fields: list[str] = []
    for rec in records:
        fields += [k for k in rec if k not in fields]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in rec.items()})
    return out.getvalue().rstrip("\n")
