"""install.sh's warm-up compiles the default model's forward pass in two processes: its
plan (scripts/compile_plan.json) must name what that pass compiles, and the second
process's Numba cache must merge into the first's without losing or mixing entries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from numallm.kernels.numba_cache import merge_cache

ROOT = Path(__file__).resolve().parent.parent

_MODULE = textwrap.dedent("""
    from numba import njit

    @njit(cache=True)
    def f(x):
        return x * 2 + 1
""")


def _run(folder: Path, code: str, cache: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    if cache is not None:
        env["NUMBA_CACHE_DIR"] = str(cache)
    done = subprocess.run([sys.executable, "-c", f"import mod, json\n{code}"], cwd=folder, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_a_private_cache_merges_without_overwriting(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text(_MODULE)
    # This cache (beside the source) gets f(int64) first; the other process's cache holds
    # f(float64) and f(int64), each in its data file number 1 or 2 there.
    _run(tmp_path, "print(json.dumps(mod.f(3)))")
    private = tmp_path / "private"
    _run(tmp_path, "print(json.dumps([mod.f(2.5), mod.f(3)]))", cache=private)
    assert merge_cache(private, [tmp_path]) == 1  # f(float64): the int64 entry is there already
    assert merge_cache(private, [tmp_path]) == 0
    got = _run(tmp_path, "r = [mod.f(3), mod.f(2.5)]\n"
                         "print(json.dumps([r, sum(mod.f.stats.cache_hits.values()), "
                         "sum(mod.f.stats.cache_misses.values())]))")
    assert got == [[7, 6.0], 2, 0]  # both loaded, each with its own machine code
    cached = sorted(p.name.split(".", 3)[-1] for p in (tmp_path / "__pycache__").glob("mod.f-*.nb*"))
    assert cached == ["1.nbc", "2.nbc", "nbi"], cached


def test_the_plan_names_what_the_forward_pass_compiles(tmp_path: Path) -> None:
    # A cold compile of the default model's forward pass (an empty cache) must compile
    # every entry of the plan, with its argument types (else the plan is stale).
    code = textwrap.dedent(f"""
        import base64, json, pickle, sys
        sys.path.insert(0, {str(ROOT / "scripts")!r})
        import compile_plan
        from numallm.engine.engine import Engine
        from numallm.engine.model_store import DEFAULT_MODEL, fetch_known_model

        seen = set()
        compile_plan.listen(lambda: None, lambda ev, _, took, depth:
                            seen.add((compile_plan.name_of(ev), tuple(ev.data["args"]))))
        Engine(fetch_known_model(DEFAULT_MODEL)).close()
        entries = compile_plan.load()[1]
        print(json.dumps([e.function for e in entries
                          if (e.function, pickle.loads(base64.b64decode(e.signature))) not in seen]))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [], "stale: run python3 scripts/compile_plan.py"
