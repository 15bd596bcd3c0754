"""`numallm bench`: the grid, the statistics, the roofline and the three output formats,
on the tiny synthetic model. Only structure and consistency are asserted here, never
speed (the machine is shared); speed is what the command itself prints."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import pytest

from numallm import bench
from numallm.bench.report import scaling_lines
from numallm.bench.roofline import kv_bytes_read, weight_bytes_per_token
from numallm.cli.options import shared_options
from numallm.engine.arch import describe
from numallm.engine.arch.spec import HParams
from numallm.engine.gguf_file import read_gguf
from numallm.errors import BadInputError

LLAMA_BENCH_FIELDS = ("cpu_info", "model_filename", "model_type", "model_size", "model_n_params", "n_batch", "n_threads",
                      "type_k", "type_v", "n_prompt", "n_gen", "test_time", "avg_ns", "stddev_ns", "avg_ts",
                      "stddev_ts", "samples_ns", "samples_ts")
OUR_FIELDS = ("engine", "simd", "numa", "load_mode", "weight_bytes", "mem_gbps", "roofline_ts", "roofline_frac", "load_avg")


def parser() -> argparse.ArgumentParser:
    """The bench subcommand's parser as cli/commands.py builds it: the shared options,
    with -n, -t, --numa and --load-mode as comma lists, then bench's."""
    p = argparse.ArgumentParser(parents=[shared_options(lists=True)])
    bench.add_arguments(p)
    return p


def run_bench(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bench.run(parser().parse_args(list(argv))) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def records(tiny_llama: Path) -> list[dict[str, Any]]:
    return json.loads(run_bench("-m", str(tiny_llama), "-p", "8", "-n", "4", "-r", "2", "-t", "1,2", "--json"))


def test_json_covers_the_grid_with_llama_bench_fields(records: list[dict[str, Any]], tiny_llama: Path) -> None:
    assert [(r["n_threads"], r["n_prompt"], r["n_gen"]) for r in records] == [(1, 8, 0), (1, 0, 4), (2, 8, 0),
                                                                              (2, 0, 4)]
    for r in records:
        assert set(LLAMA_BENCH_FIELDS + OUR_FIELDS) <= set(r), set(LLAMA_BENCH_FIELDS + OUR_FIELDS) - set(r)
        assert r["engine"] == "numallm" and "speedup" not in r
        assert r["model_filename"] == str(tiny_llama)
        assert (r["numa"], r["load_mode"], r["type_k"], r["n_batch"]) == ("auto", "auto", "f16", 512)
        assert r["model_type"].startswith("llama ") and r["model_type"].endswith(" Q4_1")


def test_timings_are_the_mean_and_stddev_of_the_repetitions(records: list[dict[str, Any]]) -> None:
    for r in records:
        n = r["n_prompt"] or r["n_gen"]
        assert len(r["samples_ns"]) == len(r["samples_ts"]) == 2
        assert all(ns > 0 for ns in r["samples_ns"])
        for ns, ts in zip(r["samples_ns"], r["samples_ts"]):
            assert ts == pytest.approx(n * 1e9 / ns)
        assert r["avg_ts"] == pytest.approx(statistics.fmean(r["samples_ts"]))
        assert r["stddev_ts"] == pytest.approx(statistics.stdev(r["samples_ts"]))
        assert r["avg_ns"] == pytest.approx(statistics.fmean(r["samples_ns"]), abs=1)
        assert r["stddev_ns"] == pytest.approx(statistics.stdev(r["samples_ns"]), abs=1)


def test_roofline_is_bandwidth_over_bytes_read_per_token(records: list[dict[str, Any]], tiny_llama: Path) -> None:
    # The bytes from gguf's own reader: every tensor, but of the token embedding one row
    # plus (the output projection being tied to it here) the whole table once more.
    reader = gguf.GGUFReader(tiny_llama)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    assert "output.weight" not in sizes  # tied: the formula below relies on it
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    weights = sum(sizes.values()) + sizes["token_embd.weight"] // n_vocab

    def meta(key: str) -> int:
        f = reader.fields[f"llama.{key}"]
        return int(f.parts[f.data[0]][0])

    n_layer, n_embd, n_head, n_kv = (meta(k) for k in ("block_count", "embedding_length", "attention.head_count",
                                                        "attention.head_count_kv"))
    kv_per_position = n_layer * 2 * n_kv * (n_embd // n_head) * 2  # K and V, f16
    for r in records:
        assert r["mem_gbps"] > 0 and r["weight_bytes"] == weights
        if r["n_gen"] == 0:
            assert r["roofline_ts"] is None and r["roofline_frac"] is None
            continue
        n = r["n_gen"]
        seconds = sum(weights + kv_per_position * (p + 1) for p in range(n)) / (r["mem_gbps"] * 1e9)
        assert r["roofline_ts"] == pytest.approx(n / seconds)
        assert r["roofline_frac"] == pytest.approx(r["avg_ts"] / r["roofline_ts"])
    by_threads = {r["n_threads"]: r["mem_gbps"] for r in records}
    assert all(r["mem_gbps"] == by_threads[r["n_threads"]] for r in records)  # one probe per grid point


def test_scaling_line_compares_thread_counts(records: list[dict[str, Any]]) -> None:
    (line,) = scaling_lines(records)  # one tg test, thread counts 1 and 2
    one, two = (r for r in records if r["n_gen"])
    assert f"2 threads {two['avg_ts'] / one['avg_ts']:.2f}x the t/s of 1" in line
    speed, memory = two["avg_ts"] / one["avg_ts"], two["mem_gbps"] / one["mem_gbps"]
    assert f"read bandwidth {memory:.2f}x: {speed / memory:.2f} of the scaling memory allows" in line


def test_sliding_window_layers_read_only_the_window() -> None:
    hp = HParams(n_layer=6, n_embd=64, n_head=4, n_head_kv=1, head_dim=16, n_ff=128, n_vocab=10, n_ctx_train=64,
                 rms_eps=1e-6, rope_base=1e6, rope_base_local=1e4, n_rot=16, rope_neox=True, attn_scale=0.25,
                 embd_scale=8.0, act=1, sliding_window=4, swa_period=3, final_softcap=0.0)
    row = 2 * 16 * 2  # K and V of one head and position, f16
    assert kv_bytes_read(hp, 2, 0) == 6 * row
    # At position 9: 4 sliding-window layers see the last 4 positions, 2 global ones all 10.
    assert kv_bytes_read(hp, 2, 9) == (4 * 4 + 2 * 10) * row


def test_table_and_csv(tiny_llama: Path) -> None:
    table = run_bench("-m", str(tiny_llama), "-p", "8", "-n", "4", "-r", "1", "-t", "1").splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["model", "size", "params", "numa", "load mode", "threads", "test", "t/s", "roofline"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:4]]
    assert [r[6] for r in rows] == ["pp8", "tg4"]
    for r in rows:
        avg, sd = (float(x) for x in r[7].split(" ± "))
        assert avg > 0 and sd == 0  # one repetition: no spread
    frac, ceiling = rows[1][8].split(" of ")
    assert float(frac) > 0 and float(ceiling) > 0 and rows[0][8] == ""
    assert any("GB/s" in line for line in table[4:]) and "load average" in table[-1]
    assert table[-1].startswith("machine: ")

    text = run_bench("-m", str(tiny_llama), "-p", "8,16", "-n", "0", "-r", "2", "-t", "1", "--csv")
    got = list(csv.DictReader(io.StringIO(text)))
    assert [(r["n_prompt"], r["n_gen"]) for r in got] == [("8", "0"), ("16", "0")]
    for r in got:
        samples = [float(x) for x in r["samples_ts"].split()]
        assert float(r["avg_ts"]) == pytest.approx(statistics.fmean(samples))
        assert r["roofline_ts"] == ""


@pytest.mark.parametrize("argv, message", [
    (["-p", "8,x"], "whole numbers"),
    (["-t", "0"], "at least 1"),
    (["-n", "4,,8"], "empty items"),
    (["--numa", "mirror,bogus"], "bogus not supported"),
    (["--load-mode", "tape"], "tape not supported"),
    (["-r", "0"], "repetition"),
    (["--json", "--csv"], "at most one"),
    (["-p", "0", "-n", "0"], "nothing to measure"),
    (["-p", "64", "-n", "8", "-c", "32"], "too small"),
])
def test_bad_grid_is_bad_input(argv: list[str], message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        bench.run(parser().parse_args(argv))


def test_vs_llama_cpp_without_it_names_the_extra(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now raises ImportError
    with pytest.raises(BadInputError, match=r"pip install -e '\.\[llama-cpp\]'"):
        bench.run(parser().parse_args(["-m", str(tiny_llama), "-p", "8", "-n", "4", "--vs-llama-cpp"]))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_vs_llama_cpp_interleaves_and_adds_the_speedup(tiny_llama: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is an opt-in extra: pip install -e '.[llama-cpp]'")
    # The per-repetition log lines show the order the engines really ran in (a handler
    # on the module's own logger: the CLI may have stopped "numallm" propagating).
    logger, seen = logging.getLogger("numallm.bench.measure"), _Lines()
    logger.addHandler(seen)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        recs = json.loads(run_bench("-m", str(tiny_llama), "-p", "8", "-n", "4", "-r", "2", "-t", "1",
                                    "--vs-llama-cpp", "--json"))
    finally:
        logger.removeHandler(seen)
        logger.setLevel(old_level)
    runs = [line.split()[:2] for line in seen.lines if " rep " in line]
    assert runs == [["numallm", "pp8"], ["llama.cpp", "pp8"], ["llama.cpp", "pp8"], ["numallm", "pp8"],
                    ["numallm", "tg4"], ["llama.cpp", "tg4"], ["llama.cpp", "tg4"], ["numallm", "tg4"]]
    assert [(r["engine"], r["n_prompt"], r["n_gen"]) for r in recs] == [
        ("numallm", 8, 0), ("llama.cpp", 8, 0), ("numallm", 0, 4), ("llama.cpp", 0, 4)]
    for ours, theirs in (recs[0:2], recs[2:4]):
        assert ours["speedup"] == pytest.approx(ours["avg_ts"] / theirs["avg_ts"])
        assert "speedup" not in theirs and "simd" not in theirs
        assert theirs["n_threads"] == ours["n_threads"] == 1
        assert theirs["model_filename"] == ours["model_filename"]
        assert len(theirs["samples_ts"]) == 2 and theirs["avg_ts"] > 0
        assert theirs["mem_gbps"] == ours["mem_gbps"] and theirs["roofline_ts"] == ours["roofline_ts"]


def test_roofline_reads_the_routed_share_of_the_experts(fixture_model: Callable[[str], Path]) -> None:
    """A decode step of tiny-llama-moe reads 2 of its 8 experts: a quarter of their bytes."""
    path = fixture_model("tiny-llama-moe")
    gf = read_gguf(path)
    sizes = {name: t.nbytes for name, t in gf.tensors.items()}
    experts = sum(n for name, n in sizes.items() if name.endswith("_exps.weight"))
    embd_row = sizes["token_embd.weight"] // gf.tensors["token_embd.weight"].rows
    expected = sum(sizes.values()) - experts + experts // 4 + embd_row  # tied: the table read whole too
    assert weight_bytes_per_token(gf, describe(gf.metadata, str(path))) == expected


def test_roofline_leaves_out_the_nextn_layer_and_reads_the_shared_expert_whole(
        fixture_model: Callable[[str], Path]) -> None:
    """tiny-glm4moe: 3 layers, then a NextN layer (blk.3) the forward pass skips; 2 of 8
    experts routed, the router, shared expert and attention read whole, output untied."""
    path = fixture_model("tiny-glm4moe")
    gf = read_gguf(path)
    read = {name: t.nbytes for name, t in gf.tensors.items() if not name.startswith("blk.3.")}
    experts = sum(n for name, n in read.items() if name.endswith("_exps.weight"))
    embd = gf.tensors["token_embd.weight"]
    expected = sum(read.values()) - experts + experts // 4 - embd.nbytes + embd.row_bytes
    assert weight_bytes_per_token(gf, describe(gf.metadata, str(path))) == expected
