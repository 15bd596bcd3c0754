"""The measuring loop of `numallm bench`: every grid point, every test, repetitions
interleaved between the engines, one record per engine and test.

Per (model, numa, load mode, threads) one Engine is loaded (and, with --vs-llama-cpp,
one llama.cpp context with the same thread count, context size and KV type). Per test
each engine runs one warm-up as llama-bench does (the whole prompt for pp, one token
for tg), then the repetitions alternate between the engines, in alternating order, so
a noisy neighbour or a frequency change hits both alike. The memory read bandwidth is
measured at every grid point, before its tests, and gives their tg roofline.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from gguf import LlamaFileType

from numallm.bench.report import ModelInfo, timing_fields
from numallm.bench.roofline import tg_ceiling_ts, weight_bytes_per_token
from numallm.bench.runners import LlamaCppRunner, NumallmRunner, Runner
from numallm.engine import arch
from numallm.cluster import open_engine
from numallm.engine.engine import N_BATCH, Engine
from numallm.engine.gguf_file import GGUFFile, read_gguf
from numallm.engine.kv_cache import KV_ITEMSIZE
from numallm.engine.model_store import resolve_model
from numallm.kernels import memory_read_bandwidth, simd_path

log = logging.getLogger(__name__)  # shown with -v (cli.py sets the "numallm" logger up)

# The bandwidth probe reads as many bytes as a token reads weights: a ceiling must be
# measured on the working set the engine streams (here a 256 MiB probe read 19-30 GB/s
# and a 96 MiB one 36-49, SmolLM2's size, whose tg then beat the 256 MiB "ceiling"),
# but at least this much, so that tiny models still measure memory, not loop overhead.
MIN_PROBE_BYTES = 64 << 20


@dataclass(frozen=True)
class Grid:
    """What to measure: comma lists of the command line, parsed and checked."""

    models: tuple[str | None, ...]  # None: $NUMALLM_MODEL or the default model
    n_prompt: tuple[int, ...]
    n_gen: tuple[int, ...]
    threads: tuple[int, ...]
    numa: tuple[str, ...]
    load_modes: tuple[str, ...]
    repetitions: int
    ctx_size: int          # 0: n_prompt + n_gen, the largest of each, as llama-bench sizes it
    kv_type: str
    smt: bool
    seed: int
    verbose: bool
    pipeline: int = 1      # stages on Ray (--pipeline)

    def tests(self) -> list[tuple[int, int]]:
        """(n_prompt, n_gen) of each test: pp tests have n_gen 0, tg tests n_prompt 0."""
        return [(p, 0) for p in self.n_prompt if p > 0] + [(0, n) for n in self.n_gen if n > 0]


def cpu_info() -> str:
    """The CPU's model name, llama-bench's cpu_info ("" where /proc/cpuinfo has none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def model_info(gf: GGUFFile, path: Path, weight_bytes: int) -> ModelInfo:
    n_params = sum(math.prod(t.shape) for t in gf.tensors.values())
    try:
        ftype = LlamaFileType(int(gf.metadata["general.file_type"])).name.removeprefix("MOSTLY_")
    except (KeyError, ValueError):
        ftype = "?"
    short = (f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else
             f"{round(n_params / 1e6)}M" if n_params >= 1e6 else f"{round(n_params / 1e3)}K")
    return ModelInfo(filename=str(path), desc=f"{gf.architecture} {short} {ftype}",
                     size=sum(t.nbytes for t in gf.tensors.values()), n_params=n_params,
                     weight_bytes=weight_bytes)


class BenchRun:
    """One `numallm bench` invocation; records() yields each record as soon as it exists."""

    def __init__(self, grid: Grid, llama_cpp: ModuleType | None) -> None:
        self.grid = grid
        self.llama_cpp = llama_cpp
        self._rng = np.random.default_rng(grid.seed)
        self._cpu_info = cpu_info()

    def records(self) -> Iterator[dict[str, Any]]:
        g = self.grid
        tests = g.tests()
        n_ctx = g.ctx_size or max((p for p, _ in tests), default=0) + max((n for _, n in tests), default=0)
        for model in g.models:
            path = resolve_model(model)
            gf = read_gguf(path)
            held = arch.upgrade(gf)  # the file as the engine holds it (llama-bench's size is the file's)
            spec = arch.describe(held.metadata, str(path))
            info = model_info(gf, path, weight_bytes_per_token(held, spec))
            for numa in g.numa:
                for load_mode in g.load_modes:
                    for threads in g.threads:
                        yield from self._point(path, info, numa, load_mode, threads, n_ctx, tests)

    def _point(self, path: Path, info: ModelInfo, numa: str, load_mode: str, threads: int, n_ctx: int,
               tests: list[tuple[int, int]]) -> Iterator[dict[str, Any]]:
        g = self.grid
        # Probed at every grid point, next to the tests it bounds, with their thread count.
        gbps = memory_read_bandwidth(max(info.weight_bytes, MIN_PROBE_BYTES), threads)
        log.info(f"memory read bandwidth, {threads} thread(s): {gbps:.1f} GB/s")
        with open_engine(g.pipeline, model=str(path), numa=numa, load_mode=load_mode, threads=threads,
                         ctx_size=n_ctx, kv_type=g.kv_type, smt=g.smt, verbose=g.verbose) as eng:
            runners: list[Runner] = [NumallmRunner(eng, numa, load_mode)]
            # Weight bytes each token reads from its workers' own node and from others,
            # from the pages as the kernel reports them (issue 7's locality figure).
            # (Over every stage of a pipeline: each stage's workers and its own nodes.)
            locality = {k: sum(r["per_token"][k] for r in eng.page_reports()) for k in ("local_bytes", "remote_bytes")}
            theirs = None
            if self.llama_cpp is not None:
                theirs = LlamaCppRunner(self.llama_cpp, path, threads, n_ctx, g.kv_type, load_mode)
                runners.append(theirs)
            try:
                for n_prompt, n_gen in tests:
                    samples = self._measure(eng, runners, n_prompt, n_gen)
                    recs = [self._record(r, info, threads, n_prompt, n_gen, samples[r], eng, gbps)
                            for r in runners]
                    recs[0].update(numa_effective=eng.numa, **locality)
                    if theirs is not None:
                        recs[0]["speedup"] = recs[0]["avg_ts"] / recs[1]["avg_ts"]
                    yield from recs
            finally:
                if theirs is not None:
                    theirs.close()

    def _ids(self, eng: Engine, n: int) -> np.ndarray:
        # Random tokens after BOS, as llama-bench feeds them; both engines get the same.
        ids = self._rng.integers(0, eng.hparams.n_vocab, n, dtype=np.int32)
        if eng.tokenizer.add_bos and eng.tokenizer.bos_id is not None:
            ids[0] = eng.tokenizer.bos_id
        return ids

    def _measure(self, eng: Engine, runners: list[Runner], n_prompt: int,
                 n_gen: int) -> dict[Runner, list[float]]:
        def once(r: Runner, ids: np.ndarray) -> float:
            return r.prompt(ids) if n_prompt else r.generate(ids)

        warm = self._ids(eng, n_prompt or 1)
        for r in runners:
            once(r, warm)
        samples: dict[Runner, list[float]] = {r: [] for r in runners}
        for rep in range(self.grid.repetitions):
            ids = self._ids(eng, n_prompt or n_gen)
            for r in (runners if rep % 2 == 0 else runners[::-1]):
                samples[r].append(once(r, ids))
                log.info(f"{r.engine_name} {'pp' if n_prompt else 'tg'}{len(ids)} "
                         f"rep {rep + 1}/{self.grid.repetitions}: {len(ids) / samples[r][-1]:.2f} t/s")
        return samples

    def _record(self, r: Runner, info: ModelInfo, threads: int, n_prompt: int, n_gen: int,
                seconds: list[float], eng: Engine, gbps: float) -> dict[str, Any]:
        g = self.grid
        rec: dict[str, Any] = {
            "engine": r.engine_name, "cpu_info": self._cpu_info, "model_filename": info.filename, "model_type": info.desc,
            "model_size": info.size, "model_n_params": info.n_params, "n_batch": N_BATCH,
            "n_threads": threads, "type_k": g.kv_type, "type_v": g.kv_type, "numa": r.numa,
            "load_mode": r.load_mode, "n_prompt": n_prompt, "n_gen": n_gen,
            "test_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if isinstance(r, NumallmRunner):
            rec["simd"] = simd_path()  # which of our kernel builds ran (vnni, avx2, generic)
        rec.update(timing_fields(n_prompt or n_gen, seconds))
        ceiling = tg_ceiling_ts(info.weight_bytes, eng.hparams, KV_ITEMSIZE[g.kv_type], n_gen, gbps) if n_gen else None
        rec.update(weight_bytes=info.weight_bytes, mem_gbps=gbps, roofline_ts=ceiling,
                   roofline_frac=rec["avg_ts"] / ceiling if ceiling else None, load_avg=os.getloadavg()[0])
        return rec
