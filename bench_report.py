"""`numallm bench` results: llama-bench's records and its three outputs (markdown, JSON, CSV).

A record is a plain dict with llama-bench's field names (model_filename, n_threads,
n_prompt, n_gen, avg_ts, stddev_ts, samples_ts, ...) plus engine, numa, load_mode,
mem_gbps, roofline_ts, roofline_frac and, on our records beside llama.cpp's, speedup.
"""

from __future__ import annotations

import csv
import io
import json
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


def timing_fields(n_tokens: int, seconds: Sequence[float]) -> dict[str, Any]:
    """llama-bench's timing fields: per-repetition ns and t/s, their mean and sample stddev."""
    ns = [int(round(s * 1e9)) for s in seconds]
    ts = [n_tokens * 1e9 / t for t in ns]  # from the recorded ns, as llama-bench does
    return {
        "avg_ns": int(round(statistics.fmean(ns))),
        "stddev_ns": int(round(statistics.stdev(ns))) if len(ns) > 1 else 0,
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
    cells.append(f"{rec['roofline_frac']:.2f} of {roof:.0f}" if roof is not None else "")
    return _line(_columns(vs), cells)


def roofline_note(per_token: dict[str, int], bandwidth: dict[int, float]) -> str:
    """The lines under the table that say where the roofline column comes from."""
    bw = ", ".join(f"{t} thread{'s' if t > 1 else ''} {g:.1f} GB/s" for t, g in sorted(bandwidth.items()))
    models = "; ".join(f"{Path(m).name} {b / 1e6:.2f} MB" for m, b in per_token.items())
    return (f"\nroofline (tg rows): fraction reached of the ceiling t/s = memory read bandwidth / bytes "
            f"read per token.\n  read bandwidth, measured in this run: {bw}\n"
            f"  bytes per token: weights incl. the output projection ({models}) "
            "+ the KV cache read at each position")


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
