"""Compiling only a model's types: kernels.jit.kernel_set + matvec_in & co., and
kernels_for (kernels/drivers/by_type.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_kernels as tk
from gguf import GGMLQuantizationType as T
from numallm import kernels as K
from numallm.kernels import jit
from numallm.kernels.jit import get_rows_in, kernel_set, matmul_in, matvec_in
from numba import njit


@njit(nogil=True)
def _through_set(ks, qcode, w, rows, cols, X, ids):  # type: ignore[no-untyped-def]
    """What a forward pass does with a KernelSet: all three entry points."""
    one = np.empty(rows, np.float32)
    matvec_in(ks, qcode, w, rows, cols, X[0], one, 0, rows)
    many = np.empty((X.shape[0], rows), np.float32)
    matmul_in(ks, qcode, w, rows, cols, X, many, 0, rows)
    emb = np.empty((ids.shape[0], cols), np.float32)
    get_rows_in(ks, qcode, w, rows, cols, ids, emb)
    return one, many, emb


def test_kernel_set_runs_the_same_kernels_as_the_generic_dispatch() -> None:
    """Each type of a set gives exactly what matvec/matmul/get_rows give (same kernels:
    a few tokens through the row kernels, 33 through the tile GEMM); a type outside
    the set is an error, not a silent wrong kernel."""
    ks = kernel_set([T.Q4_K, T.F16])  # a quantized and a float type: both paths
    rng = np.random.default_rng(8)
    ids = np.array([2, 0, 4])
    for qtype in (T.Q4_K, T.F16):
        rows, cols = 5, 512
        w = K.pack(qtype, tk.make_weight(qtype, rows, cols), rows, cols)
        for n in (3, jit.GEMM_MIN_TOKENS + 1):
            X = rng.standard_normal((n, cols)).astype(np.float32)
            one, many, emb = _through_set(ks, int(qtype), w, rows, cols, X, ids)
            want = np.empty(rows, np.float32)
            K.matvec(qtype, w, rows, cols, X[0], want, 0, rows)
            assert np.array_equal(one, want)
            want_many = np.empty((n, rows), np.float32)
            K.matmul(qtype, w, rows, cols, X, want_many, 0, rows)
            assert np.array_equal(many, want_many)
            assert np.array_equal(emb, K.dequantize(qtype, w, rows, cols)[ids])
    w = K.pack(T.Q8_0, tk.make_weight(T.Q8_0, 5, 512), 5, 512)
    with pytest.raises(ValueError, match="not in the kernel set"):
        _through_set(ks, int(T.Q8_0), w, 5, 512, np.zeros((1, 512), np.float32), ids)
    with pytest.raises(ValueError, match="no kernels"):
        kernel_set([T.Q8_1])


def test_kernels_for_one_type_matches_the_generic_dispatch() -> None:
    qtype, rows, cols = T.Q6_K, 7, 256
    w = K.pack(qtype, tk.make_weight(qtype, rows, cols), rows, cols)
    x = np.random.default_rng(9).standard_normal(cols).astype(np.float32)
    got, want = np.empty(rows, np.float32), np.empty(rows, np.float32)
    jit.kernels_for(int(qtype)).matvec(w, rows, cols, x, got, 0, rows)
    K.matvec(qtype, w, rows, cols, x, want, 0, rows)
    assert np.array_equal(got, want)


# In a fresh process and cache: a cached caller of a one-type set compiles that type's
# kernels and none of the others, then loads from the cache without compiling.
ONLY = """
import json, sys
import numpy as np
from numba import njit
from numba.core.dispatcher import Dispatcher
from numallm.kernels import jit
from numallm.kernels.families.kquants import rows as fastdot
from numallm.kernels.families.q4_q8 import rows as fastdot_grouped
from numallm.kernels.families.iquants import rows as iquants
from numallm.kernels.jit import kernel_set, matvec_in

@njit(nogil=True, cache=True)
def caller(ks, qcode, w, x, out):
    matvec_in(ks, qcode, w, 2, 256, x, out, 0, 2)

w = np.zeros(2 * 144, np.uint8)
out = np.full(2, np.nan, np.float32)
caller(kernel_set([12]), 12, w, np.ones(256, np.float32), out)  # Q4_K, all-zero weight
compiled = lambda d: len(d.signatures) > 0
print(json.dumps({
    "out": out.tolist(),
    "q4_k": compiled(fastdot.rows_q45_k),
    "others": [d.py_func.__name__ for d in (fastdot.rows_q23_k, fastdot.rows_q6_k,
               fastdot_grouped.rows_q45, fastdot_grouped.rows_q8_0, iquants.rows_iq4_nl,
               iquants.rows_iq2_xxs, iquants.rows_iq1_m) if compiled(d)],
    "hits": sum(caller.stats.cache_hits.values()),
    "misses": sum(caller.stats.cache_misses.values()),
}))
"""


def run_only(tmp: Path) -> dict[str, object]:
    script = tmp / "only_q4_k.py"  # a file: Numba caches only functions with a source file
    script.write_text(ONLY)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp / "cache"))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_kernel_set_compiles_only_its_types_and_caches(tmp_path: Path) -> None:
    cold = run_only(tmp_path)
    assert cold["out"] == [0.0, 0.0]
    assert cold["q4_k"] and cold["others"] == []
    assert cold["misses"] == 1 and cold["hits"] == 0
    warm = run_only(tmp_path)
    assert warm["out"] == [0.0, 0.0]
    assert warm["hits"] == 1 and warm["misses"] == 0
    assert not warm["q4_k"]  # nothing below the caller was compiled: all from its cache entry
