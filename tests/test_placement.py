"""place_model on this machine (one NUMA node): every --numa mode really places the
weights and KV cache, gives each worker the same bytes the plain load gives, reads its
pages back on node 0, frees everything on close, and `numallm placement --json` reports
it. Multi-node page locations are checked in the NUMA VM (test_placement_vm.py).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numallm import kernels
from numallm.engine import arch
from numallm.engine.arch.slots import MatrixTable
from numallm.engine.gguf_file import GGUFFile, read_gguf
from numallm.engine.load_lock import locked_bytes
from numallm.engine.placement_inputs import forward_matrices, matrix_offsets
from numallm.engine.placing import PlacedModel, place_model
from numallm.engine.weights import Weights, check_model, fill_image, load_weights, matrix_tables
from numallm.errors import BadInputError, ResourceError
from numallm.numa import libnuma
from numallm.numa.memory import Region, thp_setting
from numallm.numa.split import part
from numallm.numa.topology import Topology, detect
from numallm.numa.workers import WorkerSlot, plan_workers
from synthetic import Q, write_tiny_llama

pytestmark = pytest.mark.skipif(not libnuma.available(), reason="libnuma is not usable here")

# (--numa, --load-mode): every mode, and the load modes that change how placed buffers fill
MODES = (("none", "auto"), ("mirror", "auto"), ("mirror", "dio"), ("distribute", "auto"), ("interleave", "auto"),
         ("isolate", "auto"))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def topo() -> Topology:
    t = detect("/")
    if len(t.nodes) != 1:
        pytest.skip("these tests are for a one-node machine (the VM tests cover several)")
    return t


@pytest.fixture(scope="module")
def workers(topo: Topology) -> list[WorkerSlot]:
    return plan_workers(topo)


@pytest.fixture(scope="module")
def untied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untied model whose layer matrices the kernels repack (Q4_K) and whose rows are
    shorter than a page, so shards cut pages."""
    return write_tiny_llama(tmp_path_factory.mktemp("untied") / "untied.gguf", n_embd=256, n_head=4,
                            n_head_kv=2, n_ff=512, weight_type=Q.Q4_K, embd_type=Q.Q8_0, tied_output=False)


def _model(path: Path) -> tuple[GGUFFile, arch.ArchSpec]:
    gf = read_gguf(path)
    return gf, arch.describe(gf.metadata, str(path))


def _read_rows(layer: MatrixTable, model: MatrixTable, worker: int, n_workers: int) -> list[tuple[str, int, int, int]]:
    """(matrix, its offset in the buffer, byte_lo, byte_hi within it) of every byte range
    worker `worker` reads: its rows of every matrix (forward.py's split) and, for worker 0,
    the whole token-embedding matrix."""
    offsets = matrix_offsets(layer, model)
    out = []
    for m in forward_matrices(layer, model):
        if m.matmul:
            lo, hi = part(m.rows, m.row_group, worker, n_workers)
            out.append((m.name, offsets[m.name], lo * m.row_bytes, hi * m.row_bytes))
        if m.lookup and worker == 0:
            out.append((m.name, offsets[m.name], 0, m.nbytes))
    return out


def _packed_file_bytes(gf: GGUFFile, spec: arch.ArchSpec) -> dict[str, np.ndarray]:
    """Each matrix as the kernels read it, packed straight from the file's raw bytes
    (independent of the loader), by forward_matrices' names."""
    names = {f"blk.{il}.{slot.name.lower()}": name for il in range(spec.hparams.n_layer)
             for slot, name in spec.matrix_names(il).items()}
    tied = spec.output not in gf.tensors
    names |= {"output": spec.token_embd if tied else spec.output, "token_embd": spec.token_embd}
    raw = np.fromfile(gf.path, np.uint8)
    out = {}
    for name, tensor in names.items():
        t = gf.tensors[tensor]
        out[name] = kernels.pack(t.qtype, raw[t.offset:t.offset + t.nbytes].copy(), t.rows, t.cols)
    return out


def _check_same_bytes(placed: PlacedModel, ref: Weights, packed: dict[str, np.ndarray]) -> None:
    w, r = placed.weights.tables, ref.tables
    assert np.array_equal(w.vecs, r.vecs)
    for a, b in ((w.model, r.model), (w.layer_vec, r.layer_vec), (w.model_vec, r.model_vec)):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(np.array_equal(x, y) for f, x, y in zip(w.layer._fields, w.layer, r.layer) if f != "offset")
    n = len(placed.plan.workers)
    for worker in range(n):
        wbuf, _, _ = placed.buffers(worker)
        for name, off, lo, hi in _read_rows(w.layer, w.model, worker, n):
            assert np.array_equal(wbuf[off + lo:off + hi], packed[name][lo:hi]), (worker, name, lo, hi)


@pytest.mark.parametrize("model", ["smollm2", "untied"])
def test_every_mode_gives_each_worker_the_plain_loads_bytes_on_node_0(
        request: pytest.FixtureRequest, topo: Topology, workers: list[WorkerSlot], model: str) -> None:
    gf, spec = _model(request.getfixturevalue(model))
    ref = load_weights(gf, spec, "none")
    packed = _packed_file_bytes(gf, spec)
    node = topo.nodes[0].os_index
    hp = spec.hparams
    try:
        for mode, load_mode in MODES:
            placed = place_model(gf, spec, topo, workers, numa=mode, load_mode=load_mode, n_ctx=64, n_slots=2)
            try:
                assert placed.plan.mode == mode and f"--numa {mode}" in placed.why
                assert placed.weights.load_mode == ("mmap" if mode == "none" else "none" if load_mode == "auto"
                                                    else load_mode)
                _check_same_bytes(placed, ref, packed)
                report = placed.page_report()
                assert [n["os_index"] for n in report["nodes"]] == [node]
                assert report["nodes"][0]["weight_bytes"] == ref.matrix_bytes
                assert all(e["missing_bytes"] == 0 and set(e["bytes_by_node"]) == {str(node)}
                           for e in report["extents"])
                pt = report["per_token"]
                assert pt["remote_bytes"] == 0 and pt["matmul_local_bytes"] == sum(
                    m.nbytes for m in placed.plan.matrices if m.matmul)
                _, k, v = placed.buffers(len(workers) - 1)
                assert k.shape == v.shape == (2, hp.n_layer, hp.n_head_kv, 64, hp.head_dim)
                assert k.dtype == np.uint16 and not k.any() and not v.any()
                assert placed.kv_nbytes == k.nbytes + v.nbytes
                if mode != "none":  # placed KV is faulted in on its node; none's comes as used
                    assert report["nodes"][0]["kv_bytes"] == placed.kv_nbytes
                    assert all(h["bytes_by_node"] == {str(node): placed.kv_nbytes // hp.n_head_kv}
                               for h in report["kv"])
            finally:
                placed.close()
                placed.close()
    finally:
        ref.close()


def test_distribute_shards_cut_inside_matrices_read_and_repack_exactly(untied: Path) -> None:
    """A shard's rows (one of three workers' share of every matrix, as distribute places
    on a multi-node machine) filled alone into a fresh buffer equal the plain load there."""
    gf, spec = _model(untied)
    packed = _packed_file_bytes(gf, spec)
    layout = check_model(gf, spec)
    base, size = layout.read_span()
    layer, model = matrix_tables(layout, spec.hparams.n_layer, base)
    region = Region(size, noreserve=True)
    try:
        rows = _read_rows(layer, model, 1, 3)
        fill_image(gf, layout, region.array, base, [(off + lo, off + hi) for _, off, lo, hi in rows], direct=False)
        for name, off, lo, hi in rows:
            assert np.array_equal(region.array[off + lo:off + hi], packed[name][lo:hi]), name
        assert sum(hi - lo for _, _, lo, hi in rows) < size / 2  # most of the range was never filled
    finally:
        region.close()


def test_memory_check_fails_before_allocating_with_the_numbers(topo: Topology, workers: list[WorkerSlot],
                                                               smollm2: Path, tmp_path: Path) -> None:
    """A machine (a root with its node meminfo) with 30 MiB free and 20 MiB of page cache."""
    gf, spec = _model(smollm2)
    node = topo.nodes[0].os_index
    meminfo = tmp_path / f"sys/devices/system/node/node{node}/meminfo"
    meminfo.parent.mkdir(parents=True)
    meminfo.write_text(f"Node {node} MemFree: 30720 kB\nNode {node} Active(file): 10240 kB\n"
                       f"Node {node} Inactive(file): 10240 kB\nNode {node} SReclaimable: 0 kB\n")
    tight = dataclasses.replace(topo, root=str(tmp_path))
    before = _rss()
    with pytest.raises(ResourceError, match=rf"--numa mirror needs .* MiB on NUMA node {node} \(.* MiB weights \+ "
                       r".* MiB KV cache\) but it has 50.0 MiB free; no --numa mode fits"):
        place_model(gf, spec, tight, workers, numa="mirror", n_ctx=64)
    assert _rss() - before < 16 << 20  # refused before the 92 MiB of weights were read
    with pytest.raises(BadInputError, match=f"--numa-node {node} goes with --numa isolate"):
        place_model(gf, spec, topo, workers, numa="mirror", numa_node=node, n_ctx=64)


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


def test_placing_and_closing_twenty_times_leaves_rss_flat(topo: Topology, workers: list[WorkerSlot],
                                                          smollm2: Path) -> None:
    gf, spec = _model(smollm2)
    samples = []
    for i in range(20):
        placed = place_model(gf, spec, topo, workers, numa=("mirror", "distribute")[i % 2], n_ctx=1024)
        assert placed.weights.matrix_bytes > 90e6 and placed.kv_nbytes > 20e6
        placed.close()
        del placed
        gc.collect()
        samples.append(_rss())
    # one placement holds about 115 MB: a leak of even one per round would add up to GBs
    assert max(samples[4:]) - samples[4] < 16 << 20, [s >> 20 for s in samples]


def test_hugepages_are_asked_for_and_reported(topo: Topology, workers: list[WorkerSlot], smollm2: Path) -> None:
    if thp_setting() in ("never", "absent"):
        pytest.skip(f"transparent huge pages are {thp_setting()} on this kernel")
    gf, spec = _model(smollm2)
    for hugepages in (True, False):
        placed = place_model(gf, spec, topo, workers, numa="mirror", hugepages=hugepages, n_ctx=1024)
        try:
            hp = placed.page_report()["hugepages"]
        finally:
            placed.close()
        assert hp["requested"] is hugepages and hp["weights"]["resident_bytes"] >= placed.weights.matrix_bytes
        if hugepages:
            assert hp["weights"]["huge_bytes"] > hp["weights"]["resident_bytes"] // 2
        else:
            assert hp["weights"]["huge_bytes"] == hp["kv"]["huge_bytes"] == 0


def test_mlock_locks_the_copies_and_close_unlocks(topo: Topology, workers: list[WorkerSlot], smollm2: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    gf, spec = _model(smollm2)
    before = locked_bytes()
    placed = place_model(gf, spec, topo, workers, numa="mirror", load_mode="mlock", n_ctx=64)
    try:
        assert placed.weights.load_mode == "mlock"
        assert locked_bytes() - before >= placed.weights.matrix_bytes
    finally:
        placed.close()
    assert locked_bytes() == before
    with caplog.at_level(logging.WARNING, logger="numallm"):
        placed = place_model(gf, spec, topo, workers, numa="isolate", load_mode="mmap", n_ctx=64)
        placed.close()
    assert "--load-mode mmap with --numa isolate: the node buffers are filled by buffered reads" in caplog.text
    assert placed.weights.load_mode == "none"


def test_placement_command_prints_one_json_object(smollm2: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "numallm", "placement", "-m", str(smollm2), "--numa", "distribute",
                          "-c", "128", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)  # the whole of stdout is one object
    assert report["mode"] == "distribute" and report["n_ctx"] == 128
    assert set(report) >= {"nodes", "per_token", "groups", "hugepages"}
    (node,) = report["nodes"]
    assert set(node) == {"os_index", "weight_bytes", "kv_bytes", "workers"}
    assert node["weight_bytes"] == sum(sum(g["bytes_by_node"].values()) for g in report["groups"])
    assert node["kv_bytes"] == 2 * 30 * 3 * 128 * 64 * 2  # K and V, every layer and KV head, f16
    assert {g["name"] for g in report["groups"]} == {"q", "k", "v", "o", "gate", "up", "down", "output"}
    pt = report["per_token"]
    assert pt["remote_bytes"] == pt["embedding_remote_bytes"] == 0 and pt["embedding_local_bytes"] == 612  # Q8_0 row
    text = subprocess.run([sys.executable, "-m", "numallm", "placement", "-m", str(smollm2), "--numa", "isolate",
                           "--numa-node", str(node["os_index"]), "-c", "128"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert text.returncode == 0 and "numa isolate" in text.stdout and "Per generated token" in text.stdout


def test_numa_balancing_is_warned_about_once_and_only_for_unplaced_memory(topo: Topology, workers: list[WorkerSlot], tiny_llama: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from numallm.engine import placing

    # this machine has balancing off: give placing the warning a machine with it on would
    monkeypatch.setattr(placing, "numa_balancing_warning", lambda: "kernel.numa_balancing is 1: ...")
    monkeypatch.setattr(placing, "_warned_balancing", False)
    gf, spec = _model(tiny_llama)
    with caplog.at_level(logging.WARNING, logger="numallm"):
        place_model(gf, spec, topo, workers, numa="mirror", n_ctx=32).close()
        assert "numa_balancing" not in caplog.text  # placed pages are bound: balancing leaves them
        for _ in range(2):
            place_model(gf, spec, topo, workers, numa="none", n_ctx=32).close()
    assert caplog.text.count("kernel.numa_balancing is 1") == 1


def test_placement_command_reports_experts_as_their_own_groups(fixture_model: Callable[[str], Path]) -> None:
    """The router and the expert tensors are groups of their own, and a token reads
    expert_used_count / expert_count of the experts' bytes (2 of 8 here)."""
    path = fixture_model("tiny-llama-moe")
    run = subprocess.run([sys.executable, "-m", "numallm", "placement", "-m", str(path), "--numa", "distribute",
                          "-c", "64", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    groups = {g["name"]: sum(g["bytes_by_node"].values()) for g in report["groups"]}
    assert set(groups) == {"q", "k", "v", "o", "router", "gate_exps", "up_exps", "down_exps", "output"}
    tensors = read_gguf(path).tensors.values()
    experts = sum(t.nbytes for t in tensors if t.name.endswith("_exps.weight"))
    assert groups["gate_exps"] + groups["up_exps"] + groups["down_exps"] == experts
    always = sum(t.nbytes for t in tensors if len(t.shape) == 2)  # router, attention, tied output
    assert report["per_token"]["matmul_local_bytes"] == always + experts * 2 // 8
