"""Kernel benchmark: weight bytes streamed per second by matvec, against memory bandwidth.

    python benchmarks/kernels.py [--json] [--types Q4_1,Q8_0] [--mib 256]

For each type: matvec over a weight larger than the L3 cache with 1 thread and with
one pinned thread per physical core (each computing its share of the rows), beside
kernels.bandwidth.memory_read_bandwidth on an array of the same size measured in the
same run (interleaved, best of a few passes each, so a noisy neighbour hurts both),
and their ratio. Then matmul on a 512-token batch against 512 separate matvecs of
the same weight, in tokens/s. Timings go here, never into tests.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from numallm import kernels as K
from numallm.kernels import TypeKernels, kernels_for, memory_read_bandwidth, run_pinned, simd_path

ALL = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
       "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
       "MXFP4")
# Byte offsets of the float16 scales in each block: random bytes there could be
# NaN or subnormal, which no real file has and which may run at other speeds.
F16_FIELDS = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
              T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
              T.IQ1_S: (0,), T.IQ2_XXS: (0,), T.IQ2_XS: (0,), T.IQ2_S: (0,), T.IQ3_XXS: (0,), T.IQ3_S: (0,),
              T.IQ4_NL: (0,), T.IQ4_XS: (0,), T.TQ1_0: (52,), T.TQ2_0: (64,), T.IQ1_M: (), T.MXFP4: ()}
COLS = 4096
BATCH = 512


def warmup_one(k: TypeKernels, qtype: T) -> None:
    """Compile (or load from Numba's cache) matvec and both matmul paths of one type."""
    cols = max(GGML_QUANT_SIZES[qtype][0], 32)
    w = np.zeros(K.packed_nbytes(qtype, 2, cols), np.uint8)
    for n in (1, 40):  # 40: the tile GEMM (kernels/jit.py's GEMM_MIN_TOKENS)
        X = np.zeros((n, cols), np.float32)
        k.matvec(w, 2, cols, X[0], np.zeros(2, np.float32), 0, 2)
        k.matmul(w, 2, cols, X, np.zeros((n, 2), np.float32), 0, 2)


def physical_cores() -> int:
    """Physical cores among the CPUs we may run on (SMT siblings counted once)."""
    cores = set()
    for cpu in os.sched_getaffinity(0):
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list")
        cores.add(path.read_text().strip() if path.exists() else str(cpu))
    return len(cores)


def random_weight(qtype: T, nbytes: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(packed weight of about nbytes, rows) with COLS columns and realistic scales."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    rows = max(1, nbytes // (COLS // bs * ts))
    if qtype in (T.F32, T.F16, T.BF16):
        data = rng.standard_normal((rows, COLS), dtype=np.float32)
        raw = {T.F32: data.view(np.uint8), T.F16: data.astype(np.float16).view(np.uint8),
               T.BF16: (data.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)}[qtype]
    else:
        raw = rng.integers(0, 256, (rows, COLS // bs, ts), dtype=np.uint8)
        scale = np.full((rows, COLS // bs, 1), 0.01, np.float16).view(np.uint8)
        for off in F16_FIELDS[qtype]:
            raw[:, :, off:off + 2] = scale
        if qtype == T.IQ1_M:  # its float16 d: the top nibbles of the 4 scale words at byte 48
            bits = int(np.float16(0.01).view(np.uint16))
            for i in range(4):
                raw[:, :, 49 + 2 * i] = (raw[:, :, 49 + 2 * i] & 0x0F) | (((bits >> (4 * i)) & 0xF) << 4)
        if qtype == T.MXFP4:  # an e8m0 exponent byte: 2**(121 - 128)
            raw[:, :, 0] = 121
    return K.pack(qtype, np.ascontiguousarray(raw).reshape(-1), rows, COLS), rows


def best_matvec_seconds(qtype: T, w: np.ndarray, rows: int, x: np.ndarray, threads: int, passes: int) -> float:
    out = np.empty(rows, np.float32)
    cuts = np.linspace(0, rows, threads + 1).astype(np.int64)
    matvec = kernels_for(int(qtype)).matvec
    matvec(w, rows, COLS, x, out, 0, min(rows, 4))  # compile or load outside timing
    return min(run_pinned(lambda i: matvec(w, rows, COLS, x, out, cuts[i], cuts[i + 1]),
                          threads, passes))


def bench_matvec(qtype: T, nbytes: int, threads: int, rng: np.random.Generator) -> dict[str, object]:
    w, rows = random_weight(qtype, nbytes, rng)
    x = rng.standard_normal(COLS, dtype=np.float32)
    kernel, mem = 0.0, 0.0
    for _ in range(5):  # interleaved, so both see the same neighbours
        mem = max(mem, memory_read_bandwidth(w.nbytes, threads))
        kernel = max(kernel, w.nbytes / best_matvec_seconds(qtype, w, rows, x, threads, 3) / 1e9)
    return {"op": "matvec", "type": qtype.name, "threads": threads, "gbps": round(kernel, 2),
            "mem_gbps": round(mem, 2), "ratio": round(kernel / mem, 3)}


def bench_matmul(qtype: T, threads: int, rng: np.random.Generator) -> dict[str, object]:
    """512 tokens through a 2048 x 4096 weight (in L3, as a layer's weight is between
    the tokens of a batch): one matmul vs 512 matvecs, all cores."""
    w, rows = random_weight(qtype, 2048 * K.packed_nbytes(qtype, 1, COLS), rng)
    X = rng.standard_normal((BATCH, COLS), dtype=np.float32)
    out = np.empty((BATCH, rows), np.float32)
    cuts = np.linspace(0, rows, threads + 1).astype(np.int64)
    k = kernels_for(int(qtype))
    k.matmul(w, rows, COLS, X[:2], out[:2], 0, min(rows, 4))
    t_mm = min(run_pinned(lambda i: k.matmul(w, rows, COLS, X, out, cuts[i], cuts[i + 1]), threads, 2))

    def matvecs(i: int) -> None:
        for t in range(BATCH):
            k.matvec(w, rows, COLS, X[t], out[t], cuts[i], cuts[i + 1])

    t_mv = min(run_pinned(matvecs, threads, 2))
    mem = memory_read_bandwidth(w.nbytes, threads)
    # gbps here is the weight traffic 512 matvecs would need per second of matmul:
    # above mem_gbps whenever reusing each weight block across the batch pays off.
    gbps = w.nbytes * BATCH / t_mm / 1e9
    return {"op": "matmul", "type": qtype.name, "threads": threads, "gbps": round(gbps, 2),
            "mem_gbps": round(mem, 2), "ratio": round(gbps / mem, 3),
            "tps": round(BATCH / t_mm, 1), "speedup_vs_matvec": round(t_mv / t_mm, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print a JSON list of result rows")
    ap.add_argument("--types", default=",".join(ALL), help="comma-separated GGML type names")
    ap.add_argument("--mib", type=int, default=256, help="matvec weight size in MiB (default 256, above L3)")
    ap.add_argument("--no-matmul", action="store_true", help="skip the 512-token matmul rows")
    args = ap.parse_args()
    qtypes = [T[name.strip().upper()] for name in args.types.split(",")]
    rng = np.random.default_rng(0)
    cores = physical_cores()
    t0 = time.perf_counter()
    for qtype in qtypes:  # each type's own entry points: --types compiles only those
        warmup_one(kernels_for(int(qtype)), qtype)
    warm = time.perf_counter() - t0
    rows: list[dict[str, object]] = []
    for qtype in qtypes:
        for threads in sorted({1, cores}):
            rows.append(bench_matvec(qtype, args.mib << 20, threads, rng))
            if not args.json:
                _print_row(rows[-1])
        if not args.no_matmul:
            rows.append(bench_matmul(qtype, cores, rng))
            if not args.json:
                _print_row(rows[-1])
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"simd path {simd_path()}, {cores} physical cores, warmup (compile or cache load) {warm:.1f} s")


def _print_row(r: dict[str, object]) -> None:
    line = f"{r['op']:7s} {r['type']:5s} threads={r['threads']}  {r['gbps']:7.2f} GB/s  mem {r['mem_gbps']:6.2f} GB/s  ratio {r['ratio']:.2f}"
    if r["op"] == "matmul":
        line += f"  {r['tps']:9.1f} tok/s  x{r['speedup_vs_matvec']} vs matvec"
    print(line, flush=True)


if __name__ == "__main__":
    main()
