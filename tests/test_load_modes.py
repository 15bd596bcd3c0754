"""--load-mode auto | mmap | mlock | dio | none: same bytes, clean page cache, real locks.

Every mode must give the kernels the very same bytes (checked against kernels.pack of
the file's raw bytes) and the same greedy text; dio must leave the page cache as it
found it and fall back, with one warning, where O_DIRECT is refused or pointless;
mlock must really lock (VmLck), fail clearly under a low RLIMIT_MEMLOCK without
CAP_IPC_LOCK, and leave nothing locked once the engine is closed; a truncated file
must be a clean ModelFormatError in every mode.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from numallm import kernels
from numallm.cli import main as cli_main
from numallm.engine import Engine, arch, load_reads
from numallm.engine.arch.slots import MatrixEntry, ModelMatrix
from numallm.engine.gguf_file import GGUFFile, read_gguf
from numallm.engine.load_lock import locked_bytes
from numallm.engine.load_reads import ReadJob, on_tmpfs, read_jobs
from numallm.engine.weights import Weights, load_weights
from numallm.errors import ModelFormatError
from numallm.numa.memory import smaps_bytes, thp_setting
from numallm.numa.pages import address, resident
from synthetic import write_tiny_llama
from vm_harness import REPO, run_in_vm, vm_available

MODES = ("mmap", "mlock", "dio", "none")
PYTHON = sys.executable
WARNING_LOGGER = "numallm.engine.load_reads"


@pytest.fixture(scope="module")
def tiny_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model of types the kernels read in file layout: mmap uses it in place."""
    return write_tiny_llama(tmp_path_factory.mktemp("f16") / "tiny-f16.gguf",
                            weight_type=Q.F16, embd_type=Q.F16)


@pytest.fixture
def disk_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a filesystem with real O_DIRECT (not tmpfs), for dio tests."""
    fd = os.open(tmp_path, os.O_RDONLY)
    tmpfs = on_tmpfs(fd)
    os.close(fd)
    if not tmpfs:
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="numallm-dio-", dir="/var/tmp"))
    fd = os.open(d, os.O_RDONLY)
    tmpfs = on_tmpfs(fd)
    os.close(fd)
    try:
        assert not tmpfs, "no directory on a disk filesystem: tmp_path and /var/tmp are both tmpfs"
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _load(path: Path, mode: str, cold: bool = False) -> tuple[GGUFFile, Weights]:
    """Read the header, then load; cold: drop the file from the page cache in between
    (reading the header of a tiny file reads all of it ahead, and dio copies what the
    page cache holds instead of reading it with O_DIRECT)."""
    gf = read_gguf(path)
    if cold:
        _drop_from_page_cache(path)
    return gf, load_weights(gf, arch.describe(gf.metadata, str(path)), mode)


def _matrix_entries(gf: GGUFFile, w: Weights) -> list[tuple[str, MatrixEntry]]:
    """(tensor name, table entry) of every matrix in the weights' tables."""
    spec = arch.describe(gf.metadata, gf.path)
    tabs = w.tables
    out = [(name, tabs.layer.entry((il, slot))) for il in range(spec.hparams.n_layer)
           for slot, name in spec.matrix_names(il).items()]
    out.append((spec.token_embd, tabs.model.entry(ModelMatrix.TOKEN_EMBD)))
    output = spec.output if spec.output in gf.tensors else spec.token_embd
    return out + [(output, tabs.model.entry(ModelMatrix.OUTPUT))]


def _expected_matrices(gf: GGUFFile, w: Weights) -> list[tuple[np.ndarray, np.ndarray]]:
    """(bytes the kernels will read, kernels.pack of the file's raw bytes) per matrix."""
    raw = np.fromfile(gf.path, np.uint8)
    out = []
    for name, e in _matrix_entries(gf, w):
        t = gf.tensors[name]
        assert (int(t.qtype), t.rows, t.cols, t.nbytes) == (e.qtype, e.rows, e.cols, e.nbytes)
        out.append((w.buf[e.offset:e.offset + e.nbytes],
                    kernels.pack(t.qtype, raw[t.offset:t.offset + e.nbytes].copy(), e.rows, e.cols)))
    return out


def _digest(w: Weights) -> list[bytes]:
    entries = [t.entry(i) for t in (w.tables.layer, w.tables.model) for i in np.ndindex(t.nbytes.shape)]
    return [w.buf[e.offset:e.offset + e.nbytes].tobytes() for e in entries] + [w.tables.vecs.tobytes()]


@pytest.mark.parametrize("chunk", [None, 8192], ids=["one piece", "many pieces"])
@pytest.mark.parametrize("model", ["tiny_llama", "tiny_f16"])
def test_every_mode_gives_the_packed_file_bytes(model: str, chunk: int | None, request: pytest.FixtureRequest,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # With many pieces, matrices span several reads: each is repacked once, after its last.
    if chunk is not None:
        monkeypatch.setattr(load_reads, "CHUNK", chunk)
    path = request.getfixturevalue(model)
    digests = {}
    for mode in MODES:
        gf, w = _load(path, mode)
        try:
            # mmap uses the file in place exactly when no matrix needs repacking.
            assert w.mapped == (mode in ("mmap", "mlock") and model == "tiny_f16")
            for got, want in _expected_matrices(gf, w):
                np.testing.assert_array_equal(got, want)
            digests[mode] = _digest(w)
        finally:
            w.close()
    assert all(d == digests["mmap"] for d in digests.values())


def _resident_tensor_pages(gf: GGUFFile) -> np.ndarray:
    start = min(t.offset for t in gf.tensors.values()) // 4096 * 4096
    fd = os.open(gf.path, os.O_RDONLY)
    try:
        return resident(fd, start, gf.file_size - start)
    finally:
        os.close(fd)


def _drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_dio_leaves_the_page_cache_clean(smollm2: Path, disk_dir: Path) -> None:
    # A private copy: other processes on this machine read the shared model file.
    path = disk_dir / "dio-copy.gguf"
    shutil.copyfile(smollm2, path)
    try:
        gf = read_gguf(path)
        spec = arch.describe(gf.metadata, str(path))
        _drop_from_page_cache(path)
        assert not _resident_tensor_pages(gf).any(), "posix_fadvise did not empty the page cache"
        w = load_weights(gf, spec, "dio")
        assert w.direct
        after_dio = _resident_tensor_pages(gf)
        w.close()
        assert after_dio.sum() == 0, f"dio left {after_dio.sum()} of {after_dio.size} pages in the page cache"
        # The check can fail: a buffered load fills the cache.
        w = load_weights(gf, spec, "none")
        w.close()
        assert _resident_tensor_pages(gf).mean() > 0.9
    finally:
        path.unlink()


def test_a_copy_asks_for_huge_pages_only_when_told(smollm2: Path) -> None:
    # --no-hugepages reaches the one-node load too, not only the placed one.
    gf = read_gguf(smollm2)
    spec = arch.describe(gf.metadata, str(smollm2))
    for hugepages in (True, False):
        w = load_weights(gf, spec, "none", hugepages=hugepages)
        try:
            (s,) = smaps_bytes([(address(w.buf), w.buf.nbytes)])
        finally:
            w.close()
        assert s["Rss"] >= w.matrix_bytes
        if not hugepages:
            assert s["AnonHugePages"] == 0
        elif thp_setting() in ("always", "madvise"):
            assert s["AnonHugePages"] > w.matrix_bytes // 2


def test_dio_on_tmpfs_falls_back_with_one_warning(tiny_llama: Path, caplog: pytest.LogCaptureFixture) -> None:
    shm = Path("/dev/shm")
    fd = os.open(shm, os.O_RDONLY)
    is_tmpfs = on_tmpfs(fd)
    os.close(fd)
    assert is_tmpfs, "/dev/shm is not a tmpfs here: this test needs one"
    path = shm / f"numallm-test-{os.getpid()}.gguf"
    shutil.copyfile(tiny_llama, path)
    try:
        _, ref = _load(tiny_llama, "none")
        with caplog.at_level(logging.WARNING, logger=WARNING_LOGGER):
            _, w = _load(path, "dio")
        warnings = [r.getMessage() for r in caplog.records if r.name == WARNING_LOGGER]
        assert len(warnings) == 1 and "tmpfs" in warnings[0] and "buffered" in warnings[0]
        assert not w.direct
        assert _digest(w) == _digest(ref)
        w.close()
        ref.close()
    finally:
        path.unlink()


def test_dio_on_a_filesystem_refusing_o_direct_falls_back(tiny_llama: Path, tmp_path: Path) -> None:
    # ramfs refuses O_DIRECT with EINVAL: mount one in a private mount namespace.
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed for this test: apt-get install util-linux"
    _, ref = _load(tiny_llama, "none")
    want = [d.hex() for d in _digest(ref)]
    ref.close()
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    child = textwrap.dedent(f"""
        import json, logging, shutil, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_load_modes import _load, _digest
        logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
        shutil.copyfile({str(tiny_llama)!r}, {str(mnt / "m.gguf")!r})
        _, w = _load({str(mnt / "m.gguf")!r}, "dio")
        print(json.dumps({{"direct": w.direct, "digest": [d.hex() for d in _digest(w)]}}))
    """)
    ns = [unshare, "--mount", "--propagation", "private"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    script = f"mount -t ramfs ramfs {mnt} && exec {PYTHON} -c \"$0\""
    r = subprocess.run(ns + ["sh", "-c", script, child], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, f"could not run the ramfs check: {r.stderr[-2000:]}"
    *log_lines, result = r.stdout.strip().splitlines()
    got = json.loads(result)
    assert [line for line in log_lines if "refuses O_DIRECT" in line] == log_lines and len(log_lines) == 1
    assert got["direct"] is False and got["digest"] == want


def _is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def test_short_reads_and_refused_direct_reads_are_completed(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture, disk_dir: Path) -> None:
    path = disk_dir / "short.gguf"
    shutil.copyfile(tiny_llama, path)
    _, ref = _load(path, "none")
    want = _digest(ref)
    ref.close()
    real = os.preadv
    calls = {"short": 0}

    def short_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        # Return fewer bytes than asked, as signals and the kernel may: unaligned for
        # buffered reads, whole blocks for O_DIRECT.
        cap = 8192 if _is_direct(fd) else 1000
        view = buffers[0]
        if len(view) > cap:
            calls["short"] += 1
            view = view[:cap]
        return real(fd, [view], offset)

    monkeypatch.setattr(load_reads.os, "preadv", short_preadv)
    monkeypatch.setattr(load_reads, "CHUNK", 16384)  # many chunks, each split by short reads
    for mode in ("none", "dio"):
        _, w = _load(path, mode, cold=True)
        assert _digest(w) == want
        assert w.direct == (mode == "dio")
        w.close()
    assert calls["short"] > 10

    def refusing_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if _is_direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset)

    monkeypatch.setattr(load_reads.os, "preadv", refusing_preadv)
    with caplog.at_level(logging.WARNING, logger=WARNING_LOGGER):
        _, w = _load(path, "dio", cold=True)
    warnings = [r.getMessage() for r in caplog.records if r.name == WARNING_LOGGER]
    assert len(warnings) == 1 and "refuses O_DIRECT reads" in warnings[0]
    assert not w.direct and _digest(w) == want
    w.close()


def test_read_jobs_fills_any_range_and_runs_setup_and_pieces(disk_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = disk_dir / "jobs.bin"
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 300_000, dtype=np.uint8)
    data.tofile(path)
    monkeypatch.setattr(load_reads, "CHUNK", 3 * 4096)

    for direct in (False, True):
        _drop_from_page_cache(path)
        threads: set[int] = set()
        seen: list[tuple[int, int, bytes]] = []
        backing = np.zeros(400_000, np.uint8)
        # Unaligned offsets and lengths, a buffer offset unlike the file's (all bounced
        # in dio), a job ending exactly at the end of the file, a 1-byte job.
        spans = [(0, 5000, 0), (4095, 70_001, 8000), (123_457, 40_000, 90_001),
                 (200_000, 100_000, 140_000 + 4096 - 200_000 % 4096), (299_999, 1, 399_000)]
        # Pieces anywhere in a job: across requests, inside one, a whole job, an empty one;
        # each must see all of its bytes already read.
        cuts = [[(0, 5000)], [(0, 1), (1, 12_289), (20_000, 20_000), (30_000, 70_001)],
                [(7, 39_993)], [(0, 0), (4096, 99_999)], [(0, 1)]]

        def piece(i: int, lo: int) -> Callable[[np.ndarray], None]:
            return lambda d: seen.append((i, lo, d.tobytes()))
        jobs = [ReadJob(off, backing[at:at + n], [(lo, hi, piece(i, lo)) for lo, hi in cuts[i]])
                for i, (off, n, at) in enumerate(spans)]
        used = read_jobs(str(path), jobs, direct=direct, threads=3,
                         setup=lambda threads=threads: threads.add(threading.get_ident()))
        assert used == direct
        for off, n, at in spans:
            np.testing.assert_array_equal(backing[at:at + n], data[off:off + n])
        assert sorted((i, lo) for i, lo, _ in seen) == sorted((i, lo) for i in range(len(spans)) for lo, _ in cuts[i])
        for i, lo, got in seen:
            hi = next(h for low, h in cuts[i] if low == lo)
            assert got == data[spans[i][0] + lo:spans[i][0] + hi].tobytes(), (i, lo)
        assert 1 <= len(threads) <= 3
    with pytest.raises(ModelFormatError, match="truncated"):
        read_jobs(str(path), [ReadJob(299_000, np.zeros(2000, np.uint8))], direct=True)


@pytest.mark.parametrize("mode", MODES)
def test_truncated_file_fails_cleanly(mode: str, tiny_llama: Path, tiny_f16: Path, tmp_path: Path) -> None:
    for src in (tiny_llama, tiny_f16):
        path = tmp_path / src.name
        shutil.copyfile(src, path)
        gf = read_gguf(path)
        size = path.stat().st_size
        # Cut after the header was read (a file shrinking under us): the loader's own checks.
        os.truncate(path, size - 5000)
        with pytest.raises(ModelFormatError, match="truncated"):
            load_weights(gf, arch.describe(gf.metadata, str(path)), mode)
        assert locked_bytes() == 0
        # Cut before: the CLI's usual path, exit status 2.
        assert cli_main(["generate", "-m", str(path), "--load-mode", mode, "hi"]) == 2


def test_mlock_locks_and_close_unlocks(tiny_llama: Path) -> None:
    before = locked_bytes()
    with Engine(tiny_llama, load_mode="mlock", threads=1) as e:
        locked = locked_bytes() - before
        assert locked >= e.weights.buf.nbytes
        text = e.generate("Hello", max_tokens=5, temperature=0)
    assert locked_bytes() == before
    with Engine(tiny_llama, load_mode="none", threads=1) as e:
        assert e.generate("Hello", max_tokens=5, temperature=0) == text


def _drop_ipc_lock() -> list[str]:
    """A command prefix that runs a program without CAP_IPC_LOCK."""
    with open("/proc/self/status") as f:
        caps = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
    if not caps >> 14 & 1:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock"]
    if shutil.which("capsh"):
        return ["capsh", "--drop=cap_ipc_lock", "--"]
    pytest.fail("dropping CAP_IPC_LOCK needs setpriv (util-linux) or capsh (libcap2-bin): "
                "apt-get install util-linux")


def test_mlock_over_rlimit_memlock_is_a_clear_error(tiny_llama: Path) -> None:
    child = textwrap.dedent(f"""
        import ctypes, json, mmap, resource, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_load_modes import _load
        from numallm.engine.load_lock import locked_bytes
        from numallm.numa.pages import libc
        from numallm.errors import ResourceError
        caps = int(open("/proc/self/status").read().split("CapEff:")[1].split()[0], 16)
        _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (16384, hard))
        big = mmap.mmap(-1, 1 << 20)
        raw_ok = libc().mlock(ctypes.addressof(ctypes.c_char.from_buffer(big)), 1 << 20) == 0
        try:
            _load({str(tiny_llama)!r}, "mlock")
            error = None
        except ResourceError as e:
            error = str(e)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
        _, w = _load({str(tiny_llama)!r}, "mlock")
        print(json.dumps({{"cap": bool(caps >> 14 & 1), "raw_mlock_ok": raw_ok, "error": error,
                          "locked": locked_bytes(), "size": w.buf.nbytes, "hard": hard}}))
    """)
    r = subprocess.run(_drop_ipc_lock() + [PYTHON, "-c", child], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert not got["cap"] and not got["raw_mlock_ok"], "the child still may lock past RLIMIT_MEMLOCK"
    assert got["error"] is not None and "ulimit -l" in got["error"] and "RLIMIT_MEMLOCK" in got["error"]
    needed = int(got["error"].split(" needs ")[1].split()[0])  # its pages: the buffer, rounded out
    assert got["size"] <= needed <= got["size"] + 2 * 4096
    assert got["hard"] == -1 or got["locked"] >= got["size"]


@pytest.mark.model
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_every_mode_same_greedy_text_on_real_models(model: str) -> None:
    from numallm.engine.model_store import fetch_known_model

    path = fetch_known_model(model, quiet=True)
    texts, digests = {}, {}
    for mode in ("auto",) + MODES:
        with Engine(path, load_mode=mode) as e:
            texts[mode] = e.generate("The capital of France is", max_tokens=8, temperature=0)
            digests[mode] = _digest(e.weights)
            assert e.weights.load_mode == ("mmap" if mode == "auto" else mode)
    assert len(set(texts.values())) == 1, texts
    assert all(d == digests["none"] for d in digests.values())


def test_cli_aliases(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["generate", "-m", str(tiny_llama), "--mmap", "--no-mmap", "hi"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert cli_main(["generate", "-m", str(tiny_llama), "--load-mode", "none", "--mlock", "hi"]) == 2
    assert "contradicts" in capsys.readouterr().err
    assert cli_main(["generate", "-m", str(tiny_llama), "--mlock", "--mmap", "-n", "2", "--temp", "0", "hi"]) == 0
    err = capsys.readouterr().err
    assert "--mlock --mmap is llama.cpp's spelling of --load-mode mlock" in err


def test_numba_start_up_leaves_scipy_out() -> None:
    """Numba's first cached call would import scipy.linalg (0.2 s of every load); numallm keeps
    it out, and a later `import scipy.linalg` by the user still works."""
    pytest.importorskip("scipy.linalg", reason="scipy is not installed: Numba cannot import it anyway")
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from gguf import GGMLQuantizationType
        from numallm import kernels
        kernels.pack(GGMLQuantizationType.Q4_0, np.zeros(18, np.uint8), 1, 32)
        print("scipy.linalg" in sys.modules, "numba.np.arraymath" in sys.modules)
        import scipy.linalg
        print(scipy.linalg.norm(np.ones(4)))
    """)
    r = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "True", "2.0"], r.stdout + r.stderr


def test_cache_hits_skip_numba_registries_and_compiling_still_works() -> None:
    """A cache hit of a numallm function loads its machine code without Numba's registry
    refresh (kernels/numba_cache.py); a function compiled afterwards in the same process
    still gets the full registries and runs right."""
    script = textwrap.dedent("""
        import math
        import numba
        import numpy as np
        from gguf import GGMLQuantizationType
        from numba.core.registry import cpu_target
        from numallm import kernels
        packed = kernels.pack(GGMLQuantizationType.Q4_0, np.arange(18, dtype=np.uint8), 1, 32)
        print(len(cpu_target.typing_context._registries), len(cpu_target.target_context._registries))

        @numba.njit
        def fresh(a):
            seen = set()
            for x in a:
                seen.add(int(x))
            return np.sqrt(a).sum() + math.exp(0.0) + len(seen)
        print(fresh(np.array([4.0, 9.0, 9.0])))
        again = kernels.pack(GGMLQuantizationType.Q4_0, np.arange(18, dtype=np.uint8), 1, 32)
        print(bool((packed == again).all()), len(cpu_target.typing_context._registries) > 0)
    """)
    for _ in range(2):  # the first run may compile the packer (a cold cache); the second loads it
        r = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0", "11.0", "True", "True"], r.stdout + r.stderr


@pytest.mark.vm
@pytest.mark.skipif(not vm_available(), reason="the NUMA VM (../shared/numa-vm) is absent")
def test_reading_threads_bound_to_a_node_fill_it() -> None:
    # What the copying NUMA modes rely on: read_jobs with a `setup` that binds each reading
    # thread's memory to node N puts every page of the destination on node N.
    # The guest sees the current directory read-write at its own path (and a fresh /tmp):
    # run from the checkout, so the editable install resolves, and work in a folder in it.
    # These buffers have only the reading threads' policy, no range policy of their own
    # (the engine's Regions are mbind-ed): automatic NUMA balancing would migrate them
    # toward the main thread that compares them, so it is turned off in the guest.
    workdir = Path(tempfile.mkdtemp(prefix=".numa-vm-", dir=REPO))
    child = textwrap.dedent("""
        import json, os
        open("/proc/sys/kernel/numa_balancing", "w").write("0")
        import numpy as np
        from numallm.numa.pages import PAGE, address, anonymous
        from numallm.engine.load_reads import ReadJob, read_jobs
        from numallm.numa.libnuma import bind_thread_memory, nodes_of_pages
        np.random.default_rng(0).integers(0, 256, 6 << 20, dtype=np.uint8).tofile("data.bin")
        want = np.fromfile("data.bin", np.uint8)
        out = []
        for direct in (False, True):
            for node in (1, 0):
                buf, _ = anonymous(want.size)
                read_jobs("data.bin", [ReadJob(0, buf)], direct=direct, threads=3,
                          setup=lambda node=node: bind_thread_memory(node))
                pages = nodes_of_pages(range(address(buf), address(buf) + buf.size, PAGE))
                out.append({"node": node, "equal": bool((buf == want).all()), "pages": sorted(set(pages))})
        json.dump(out, open("load_vm.json", "w"))
    """)
    try:
        returncode, output = run_in_vm(["--nodes", "2", "--sockets", "2", "--cores", "1", "--mem", "1024M"],
                                       [PYTHON, "-c", f"import os; os.chdir({str(workdir)!r})\n" + child], timeout=300)
        assert returncode == 0, f"the VM run failed (exit {returncode}):\n{output[-3000:]}"
        for r in json.loads((workdir / "load_vm.json").read_text()):
            assert r["equal"] and r["pages"] == [r["node"]], r
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
