"""Load benchmark: seconds and GB/s per --load-mode, warm and cold, beside dd and llama.cpp.

    python3 benchmarks/load.py [--model smollm2|gemma3|PATH] [--repeat 3]

Every figure is measured in a fresh child process (imports excluded), so no run
inherits another's memory, Numba functions or allocator state; "warm" is the best of
--repeat runs with the file in the page cache, "cold" the median of --repeat runs, each
after dropping it:
posix_fadvise DONTNEED on the file (other processes' caches stay warm), or with
--drop-caches echo 1 > /proc/sys/vm/drop_caches (needs root; the output says which,
and how much of the file a mapping elsewhere kept cached). Rows:

- raw read: one thread read(2)s the whole file into fresh memory (what any loader
  must at least do), and dd bs=4M to /dev/null, buffered and iflag=direct;
- read_jobs: the read path alone, buffered and O_DIRECT, into fresh memory (no repack);
- weights, per mode: load_weights after read_gguf (the bytes ready for the kernels);
- engine, per mode: Engine(...) ready to generate (tokenizer, kernels from the cache);
- llama.cpp (llama-cpp-python): Llama(...) with use_mmap on and off.

Then the issue's targets as ratios of figures from this same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from numallm.engine.load_pages import resident

PYTHON = sys.executable
MODES = ("mmap", "mlock", "dio", "none")


def _child(code: str) -> float:
    """Run `code` (which sets `seconds`) in a fresh interpreter; return `seconds`."""
    script = textwrap.dedent(code) + "\nimport json; print(json.dumps(seconds))"
    r = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=900, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {r.stderr.strip()[-1500:]}")
    return float(json.loads(r.stdout.strip().splitlines()[-1]))


def raw_read(path: str) -> float:
    return _child(f"""
        import os, time, numpy as np
        size = os.path.getsize({path!r})
        t = time.perf_counter()
        buf = np.empty(size, np.uint8)
        view, fd, got = memoryview(buf), os.open({path!r}, os.O_RDONLY), 0
        while got < size:
            got += os.preadv(fd, [view[got:]], got)
        seconds = time.perf_counter() - t
    """)


def dd(path: str, direct: bool) -> float:
    cmd = ["dd", f"if={path}", "of=/dev/null", "bs=4M"] + (["iflag=direct"] if direct else [])
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"copied, ([0-9.eE+-]+) s", r.stderr)
    if m is None:
        raise RuntimeError(f"cannot parse dd's output: {r.stderr}")
    return float(m.group(1))


def weights(path: str, mode: str) -> float:
    return _child(f"""
        import time
        from numallm.engine import arch
        from numallm.engine.gguf_file import read_gguf
        from numallm.engine.weights import load_weights
        gf = read_gguf({path!r})
        t = time.perf_counter()
        w = load_weights(gf, arch.describe(gf.metadata, {path!r}), {mode!r})
        seconds = time.perf_counter() - t
        w.close()
    """)


def reads(path: str, direct: bool) -> float:
    """The read path alone (no repacking): the tensor data into fresh anonymous memory."""
    return _child(f"""
        import time
        from numallm.engine.gguf_file import read_gguf
        from numallm.engine.load_pages import align_down, anonymous
        from numallm.engine.load_reads import ALIGN, ReadJob, read_jobs
        gf = read_gguf({path!r})
        base = align_down(min(t.offset for t in gf.tensors.values()), ALIGN)
        t = time.perf_counter()
        image, _ = anonymous(gf.file_size - base)
        read_jobs({path!r}, [ReadJob(base, image)], direct={direct})
        seconds = time.perf_counter() - t
    """)


def engine(path: str, mode: str) -> float:
    return _child(f"""
        import time
        from numallm.engine import Engine
        t = time.perf_counter()
        e = Engine({path!r}, load_mode={mode!r})
        seconds = time.perf_counter() - t
        e.close()
    """)


def llama_load(path: str, use_mmap: bool) -> float:
    return _child(f"""
        import os, time
        import llama_cpp
        t = time.perf_counter()
        m = llama_cpp.Llama({path!r}, use_mmap={use_mmap}, n_ctx=4096, n_threads=os.cpu_count(), verbose=False)
        seconds = time.perf_counter() - t
        m.close()
    """)


def drop_cache(path: str, system: bool) -> str:
    """Drop the file from the page cache; return how."""
    os.sync()
    how = "posix_fadvise DONTNEED"
    if system:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
            how = "drop_caches"
        except OSError:
            how = "posix_fadvise DONTNEED (drop_caches refused)"
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        left = resident(fd, 0, os.fstat(fd).st_size).mean()
    finally:
        os.close(fd)
    return how if left == 0 else f"{how}, {left:.0%} of the file still cached (mapped elsewhere?)"


def warm_up(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


def measure(run: Callable[[], float], path: str, repeat: int, cold: bool,
            system: bool) -> tuple[float, float | None]:
    """(best of `repeat` warm seconds, median of `repeat` cold seconds or None): the disk
    of a shared machine is noisy, one cold run says little."""
    cold_runs = []
    for _ in range(repeat if cold else 0):
        drop_cache(path, system)
        cold_runs.append(run())
    warm_up(path)
    return min(run() for _ in range(repeat)), statistics.median(cold_runs) if cold_runs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2, gemma3 or a GGUF path (default smollm2)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="warm runs per row (best kept) and cold runs (median kept) (default 3)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="cold runs after dropping every clean page cache of the machine (root)")
    args = ap.parse_args()
    from numallm.engine.model_store import resolve_model

    path = str(resolve_model(args.model))
    size = os.path.getsize(path)
    how = drop_cache(path, args.drop_caches)
    print(f"model {Path(path).name}: {size / 1e6:.1f} MB; warm = best of {args.repeat}; "
          f"cold = median of {args.repeat}, each after {how}")
    print(f"{'row':34} {'warm s':>8} {'GB/s':>6} {'cold s':>8} {'GB/s':>6}")
    res: dict[str, tuple[float, float | None]] = {}

    def row(name: str, run: Callable[[], float], cold: bool = True) -> None:
        warm, cold_s = measure(run, path, args.repeat, cold, args.drop_caches)
        res[name] = (warm, cold_s)
        cold_txt = f"{cold_s:8.3f} {size / cold_s / 1e9:6.2f}" if cold_s is not None else f"{'-':>8} {'-':>6}"
        print(f"{name:34} {warm:8.3f} {size / warm / 1e9:6.2f} {cold_txt}", flush=True)

    row("raw read (1 thread, fresh memory)", lambda: raw_read(path))
    row("dd bs=4M", lambda: dd(path, False))
    row("dd bs=4M iflag=direct", lambda: dd(path, True))
    row("read_jobs buffered (no repack)", lambda: reads(path, False))
    row("read_jobs O_DIRECT (no repack)", lambda: reads(path, True))
    for mode in MODES:
        row(f"weights --load-mode {mode}", lambda mode=mode: weights(path, mode))
    for mode in MODES:
        row(f"engine --load-mode {mode}", lambda mode=mode: engine(path, mode), cold=False)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama.cpp: llama-cpp-python not installed (pip install llama-cpp-python)")
    else:
        row("llama.cpp use_mmap=True", lambda: llama_load(path, True))
        row("llama.cpp use_mmap=False", lambda: llama_load(path, False))

    print("\ntargets (ratios from this run; lower is better for the first, <= limit for the rest):")
    dd_direct = res["dd bs=4M iflag=direct"][1]
    for name in ("weights --load-mode dio", "read_jobs O_DIRECT (no repack)"):
        print(f"  {name} cold / dd iflag=direct  {res[name][1] / dd_direct:5.2f}  (target < 1)")
    print(f"  (buffered cold dd / dd iflag=direct: {res['dd bs=4M'][1] / dd_direct:5.2f})")
    if "llama.cpp use_mmap=True" in res:
        ratio = res["engine --load-mode mmap"][0] / res["llama.cpp use_mmap=True"][0]
        print(f"  engine mmap warm / llama.cpp mmap  {ratio:5.2f}  (target <= 2)")
    raw = res["raw read (1 thread, fresh memory)"][0]
    for mode in ("none", "dio"):
        print(f"  weights {mode} warm / raw read     {res[f'weights --load-mode {mode}'][0] / raw:5.2f}  (target <= 1.5)")
    for name in ("buffered", "O_DIRECT"):
        print(f"  read_jobs {name} warm / raw read {res[f'read_jobs {name} (no repack)'][0] / raw:5.2f}  "
              "(the same without the kernels' repack)")


if __name__ == "__main__":
    main()
