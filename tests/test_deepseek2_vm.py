"""Where mirror and distribute put a deepseek2 model's pages on a 2-node machine, in the
NUMA VM (tests/vm/placement_probe.py, as tests/test_placement_vm.py for SmolLM2): the
latent KV cache, one KV head every query head reads, kept whole on each node and
written there; every weight row a worker reads (the per-head attn_k_b / attn_v_b
blocks of its heads included) on its own node."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from synthetic_arch import FIXTURE_MODELS
from test_placement_vm import GUEST_NUMBA_CACHE, PROBE, on
from test_topology_vm import SHAPES
from vm_harness import NUMA_VM, PYTHON, REPO, run_in_vm

SHAPE = SHAPES["2 sockets, 2 nodes, SMT2"]
N_CTX = 256
LATENT_BYTES_PER_TOKEN = 3 * (32 + 16) * 2  # tiny-deepseek-v3: 3 layers of latent + rotated key, f16

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(not NUMA_VM.exists(), reason=f"the NUMA VM script {NUMA_VM} is absent")]


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=".numa-vm-", dir=REPO))  # the guest sees the checkout
    try:
        model = FIXTURE_MODELS["tiny-deepseek-v3"](workdir / "tiny-deepseek-v3.gguf")
        returncode, output = run_in_vm(
            [*SHAPE.args(), "--mem", "2048M"],
            ["env", f"NUMBA_CACHE_DIR={GUEST_NUMBA_CACHE}", PYTHON, str(PROBE.resolve()),
             str(workdir / "probe.json"), str(model), str(N_CTX)], timeout=540)
        assert returncode == 0, f"probe failed in the VM (exit {returncode}):\n{output[-4000:]}"
        return json.loads((workdir / "probe.json").read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("mode", ["mirror", "distribute"])
def test_latent_cache_is_local_on_each_node_and_no_weight_byte_is_remote(seen: dict[str, Any], mode: str) -> None:
    r = seen["modes"][mode]
    rep = r["report"]
    assert rep["mode"] == mode and r["plan_nodes"] == [0, 1]
    assert r["kv_heads"] == [[0, [0]], [1, [0]]]  # the one latent head, on both nodes
    assert rep["kv_bytes_per_token"] == LATENT_BYTES_PER_TOKEN
    for h in rep["kv"]:
        assert h["head"] == 0 and h["kept"] and h["missing_bytes"] == 0, h
        assert h["bytes_by_node"] == on(h["buffer"], N_CTX * LATENT_BYTES_PER_TOKEN), h
    assert [n["kv_bytes"] for n in rep["nodes"]] == [N_CTX * LATENT_BYTES_PER_TOKEN] * 2
    for e in rep["extents"]:
        assert e["missing_bytes"] == 0 and e["bytes_by_node"] == on(e["planned_node"], e["bytes"]), e
    assert rep["per_token"]["remote_bytes"] == 0
