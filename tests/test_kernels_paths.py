"""The AVX2-only and the portable (generic LLVM) kernel paths, and Numba's cache.

This machine has AVX-512 and VNNI, so the default run tests the VNNI path; here a
subprocess tells Numba to compile for Haswell (AVX2, no AVX-512) or for a generic
x86-64 (no SIMD beyond SSE2, no F16C, as a stand-in for every other CPU), and checks
every quantized type there; the two cold compiles run side by side. The generic one
runs twice on one fresh cache directory: cold (compiles, writes the cache) and warm
(must load every kernel from the cache, not recompile, and still be right).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

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


def start_check(cpu_name: str, features: str, cache_dir: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, NUMBA_CPU_NAME=cpu_name, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(cache_dir))
    return subprocess.Popen([sys.executable, "-c", CHECK.format(tests=str(TESTS))], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_check(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


X86_64 = sys.platform.startswith("linux") and os.uname().machine == "x86_64"


class ColdRuns(NamedTuple):
    avx2: dict[str, object]
    generic: dict[str, object]
    generic_cache: Path


@pytest.fixture(scope="module")
def cold() -> Iterator[ColdRuns]:
    """Both cold compiles at once: each is one single-threaded compile, and CI has two cores."""
    with tempfile.TemporaryDirectory() as avx2_cache, tempfile.TemporaryDirectory() as generic_cache:
        avx2 = start_check("haswell", HASWELL_FEATURES, Path(avx2_cache))
        generic = start_check("x86-64", "", Path(generic_cache))
        yield ColdRuns(finish_check(avx2), finish_check(generic), Path(generic_cache))


@pytest.mark.skipif(not X86_64, reason="compiles x86 targets")
def test_avx2_only_path(cold: ColdRuns) -> None:
    assert cold.avx2["path"] == "avx2"
    assert cold.avx2["bad"] == []


@pytest.mark.skipif(not X86_64, reason="compiles x86 targets")
def test_generic_path_cold_then_warm_cache(cold: ColdRuns) -> None:
    assert cold.generic["path"] == "generic"
    assert cold.generic["bad"] == []
    assert cold.generic["misses"] > 0
    warm = finish_check(start_check("x86-64", "", cold.generic_cache))
    assert warm["bad"] == []
    assert warm["hits"] > 0 and warm["misses"] == 0
