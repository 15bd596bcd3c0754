"""The AVX2-only and the portable (generic LLVM) kernel paths, and Numba's cache.

This machine has AVX-512 and VNNI, so the default run tests the VNNI path; here a
subprocess tells Numba to compile for Haswell (AVX2, no AVX-512) or for a generic
x86-64 (no SIMD beyond SSE2, no F16C, as a stand-in for every other CPU), and checks
every quantized type there. The generic one runs twice on one fresh cache
directory: cold (compiles, writes the cache) and warm (must load every kernel from
the cache, not recompile, and still be right).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CHECK = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_kernels as tk
from numallm import kernels as K
from numallm.kernels import jit
from numallm.kernels.simd import cpu
report = {{"path": cpu.simd_path(), "bad": []}}
rng = np.random.default_rng(0)
for qtype in tk.ALL_TYPES:
    for rows, cols in tk.shapes(qtype)[1:]:
        raw = tk.make_weight(qtype, rows, cols)
        W = tk.reference(qtype, raw, rows, cols)
        X = rng.standard_normal((jit.GEMM_MIN_TOKENS + 1, cols)).astype(np.float32)
        w = K.pack(qtype, raw, rows, cols)
        out = np.empty(rows, np.float32)
        K.matvec(qtype, w, rows, cols, X[0], out, 0, rows)
        ok = np.all(np.abs(out - W @ X[0]) <= tk.error_bound(qtype, W, X[0]))
        for n in (3, X.shape[0]):  # the int8 row kernels, then the tile GEMM
            outs = np.empty((n, rows), np.float32)
            K.matmul(qtype, w, rows, cols, X[:n], outs, 0, rows)
            ok &= all(np.all(np.abs(outs[t] - W @ X[t]) <= tk.error_bound(qtype, W, X[t])) for t in range(n))
            if K.row_group(qtype) > 1:  # tiled: any batch gives matvec's bits
                ok &= bool(np.array_equal(outs[0], out))
        if not ok:
            report["bad"].append([qtype.name, rows, cols])
report["hits"] = sum(jit.matvec.stats.cache_hits.values())
report["misses"] = sum(jit.matvec.stats.cache_misses.values())
print(json.dumps(report))
"""

HASWELL_FEATURES = "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+lzcnt,+movbe,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave"


def run_check(cpu_name: str, features: str | None, cache_dir: Path) -> dict[str, object]:
    env = dict(os.environ, NUMBA_CPU_NAME=cpu_name, NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("NUMBA_CPU_FEATURES", None)
    if features is not None:
        env["NUMBA_CPU_FEATURES"] = features
    proc = subprocess.run([sys.executable, "-c", CHECK.format(tests=str(TESTS))],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="compiles x86 targets")
def test_avx2_only_path(tmp_path: Path) -> None:
    report = run_check("haswell", HASWELL_FEATURES, tmp_path)
    assert report["path"] == "avx2"
    assert report["bad"] == []


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="compiles x86 targets")
def test_generic_path_cold_then_warm_cache(tmp_path: Path) -> None:
    cold = run_check("x86-64", "", tmp_path)
    assert cold["path"] == "generic"
    assert cold["bad"] == []
    assert cold["misses"] > 0
    warm = run_check("x86-64", "", tmp_path)
    assert warm["bad"] == []
    assert warm["hits"] > 0 and warm["misses"] == 0
