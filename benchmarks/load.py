"""Load benchmark: seconds and GB/s per --load-mode, warm and cold, beside dd and llama.cpp.

    python3 benchmarks/load.py [--model smollm2|gemma3|PATH] [--repeat 5] [--drop-caches] [--profile]

Every figure is measured in a fresh child process (imports excluded unless a row says
otherwise), so no run inherits another's memory, Numba functions or allocator state;
"warm" is the best of --repeat runs with the file in the page cache, "cold" the median
of --repeat runs, each after dropping it:
posix_fadvise DONTNEED on the file (other processes' caches stay warm), or with
--drop-caches echo 1 > /proc/sys/vm/drop_caches (needs root; the output says which,
and how much of the file a mapping elsewhere kept cached). Rows:

- raw read: one thread read(2)s the whole file into fresh memory (what any loader
  must at least do), and dd bs=4M to /dev/null, buffered and iflag=direct;
- read_jobs: the read path alone, buffered and O_DIRECT, into fresh memory (no repack);
- numba start-up: a process's first call of a cached kernel (Numba's one-time set-up,
  which every engine start pays once);
- weights, per mode: load_weights after read_gguf (the bytes ready for the kernels),
  Numba started before the timer (the row above);
- engine, per mode: Engine(...) ready to generate (tokenizer, kernels from the cache),
  and for mmap also with `import numallm.engine` included;
- llama.cpp (llama-cpp-python): Llama(...) with use_mmap on and off, and with
  `import llama_cpp` included.

Beside the wall time of each row, the CPU time of the child over the same span (all its
threads): on a busy shared machine it varies much less, and a ratio of CPU times shows
what a quiet machine's ratio of single-threaded work would be. Then the issue's targets
as ratios of figures from this same run. --profile adds where an mmap Engine start
spends its time: the functions Engine.__init__ calls, by cumulative time under cProfile
(which inflates Python-heavy parts).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from numallm.numa.pages import resident

PYTHON = sys.executable
MODES = ("mmap", "mlock", "dio", "none")
Timing = tuple[float, float | None]  # (wall seconds, CPU seconds of the process or None)

# Every child times its span with start() ... stop(), which sets `seconds`. start()
# first collects the garbage of the child's set-up (Numba's start, read_gguf): else a
# full collection it made due can land inside the span (40 ms in a 20 ms load).
_TIMER = """
import gc, resource, time
def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
def start():
    global _t0, _c0
    gc.collect()
    _t0, _c0 = time.perf_counter(), _cpu()
def stop():
    global seconds
    seconds = (time.perf_counter() - _t0, _cpu() - _c0)
"""
# A process's first call of a cached kernel: Numba sets itself up (imports its
# implementation registries, builds its runtime) once per process.
_START_NUMBA = """
import numpy as np
from gguf import GGMLQuantizationType
from numallm import kernels
def start_numba():
    kernels.pack(GGMLQuantizationType.Q4_0, np.zeros(18, np.uint8), 1, 32)
"""


def _run_child(code: str) -> str:
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=900, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {r.stderr.strip()[-1500:]}")
    return r.stdout


def _child(code: str, prelude: str = "") -> Timing:
    """Run the timer, `prelude`, then `code` (which calls start() and stop()) in a fresh
    interpreter; return its (wall, CPU) seconds."""
    script = _TIMER + textwrap.dedent(prelude) + textwrap.dedent(code) + "\nimport json; print(json.dumps(seconds))"
    wall, cpu = json.loads(_run_child(script).strip().splitlines()[-1])
    return float(wall), float(cpu)


def raw_read(path: str) -> Timing:
    return _child(f"""
        import os, numpy as np
        size = os.path.getsize({path!r})
        start()
        buf = np.empty(size, np.uint8)
        view, fd, got = memoryview(buf), os.open({path!r}, os.O_RDONLY), 0
        while got < size:
            got += os.preadv(fd, [view[got:]], got)
        stop()
    """)


def dd(path: str, direct: bool) -> Timing:
    cmd = ["dd", f"if={path}", "of=/dev/null", "bs=4M"] + (["iflag=direct"] if direct else [])
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"copied, ([0-9.eE+-]+) s", r.stderr)
    if m is None:
        raise RuntimeError(f"cannot parse dd's output: {r.stderr}")
    return float(m.group(1)), None


def reads(path: str, direct: bool) -> Timing:
    """The read path alone (no repacking): the tensor data into fresh anonymous memory."""
    return _child(f"""
        from numallm.engine.gguf_file import read_gguf
        from numallm.numa.pages import align_down, anonymous
        from numallm.engine.load_reads import ALIGN, ReadJob, read_jobs
        gf = read_gguf({path!r})
        base = align_down(min(t.offset for t in gf.tensors.values()), ALIGN)
        start()
        image, _ = anonymous(gf.file_size - base)
        read_jobs({path!r}, [ReadJob(base, image)], direct={direct})
        stop()
    """)


def numba_start() -> Timing:
    return _child("""
        start()
        start_numba()
        stop()
    """, _START_NUMBA)


def weights(path: str, mode: str) -> Timing:
    return _child(f"""
        from numallm.engine import arch
        from numallm.engine.gguf_file import read_gguf
        from numallm.engine.weights import load_weights
        start_numba()
        gf = read_gguf({path!r})
        start()
        w = load_weights(gf, arch.describe(gf.metadata, {path!r}), {mode!r})
        stop()
        w.close()
    """, _START_NUMBA)


def engine(path: str, mode: str, with_import: bool = False) -> Timing:
    imp = "from numallm.engine import Engine"
    return _child(f"""
        {"" if with_import else imp}
        start()
        {imp if with_import else ""}
        e = Engine({path!r}, load_mode={mode!r})
        stop()
        e.close()
    """)


def llama_load(path: str, use_mmap: bool, with_import: bool = False) -> Timing:
    return _child(f"""
        import os
        {"" if with_import else "import llama_cpp"}
        start()
        {"import llama_cpp" if with_import else ""}
        m = llama_cpp.Llama({path!r}, use_mmap={use_mmap}, n_ctx=4096, n_threads=os.cpu_count(), verbose=False)
        stop()
        m.close()
    """)


def engine_profile(path: str) -> str:
    """Where an mmap Engine start spends its time: cumulative seconds of each function
    Engine.__init__ calls (and those its warm-up calls), under cProfile."""
    return _run_child(textwrap.dedent(f"""
        import cProfile, pstats, time
        from numallm.engine import Engine
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        e = Engine({path!r}, load_mode="mmap")
        prof.disable()
        total = time.perf_counter() - t
        e.close()
        stats = pstats.Stats(prof).stats
        def callees(parent_name):
            parents = [k for k in stats if k[2] == parent_name and k[0].endswith("engine.py")]
            rows = []
            for key, (_, _, _, _, callers) in stats.items():
                for parent in parents:
                    if parent in callers and callers[parent][3] >= 0.002:
                        rows.append((callers[parent][3], f"{{key[2]}} ({{key[0].rsplit('/', 1)[-1]}}:{{key[1]}})"))
            return sorted(rows, reverse=True)
        print(f"  Engine(): {{total:.3f}} s under cProfile; the calls it makes, by cumulative time:")
        for sec, name in callees("__init__"):
            print(f"    {{sec:7.3f}}  {{name}}")
            if name.startswith("_warmup "):
                for sub, subname in callees("_warmup"):
                    print(f"      {{sub:7.3f}}  {{subname}}")
    """))


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


def measure(run: Callable[[], Timing], path: str, repeat: int, cold: bool,
            system: bool) -> tuple[Timing, float | None]:
    """(the warm run of least wall time, the median wall seconds of `repeat` cold runs or
    None): the disk of a shared machine is noisy, one cold run says little."""
    cold_runs = []
    for _ in range(repeat if cold else 0):
        drop_cache(path, system)
        cold_runs.append(run()[0])
    warm_up(path)
    return min(run() for _ in range(repeat)), statistics.median(cold_runs) if cold_runs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2, gemma3 or a GGUF path (default smollm2)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="warm runs per row (best kept) and cold runs (median kept) "
                         "(default 5: the machines are shared and noisy)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="cold runs after dropping every clean page cache of the machine (root)")
    ap.add_argument("--profile", action="store_true", help="also show where an mmap Engine start spends its time")
    args = ap.parse_args()
    from numallm.engine.model_store import resolve_model

    path = str(resolve_model(args.model))
    size = os.path.getsize(path)
    how = drop_cache(path, args.drop_caches)
    print(f"model {Path(path).name}: {size / 1e6:.1f} MB; warm = best of {args.repeat}; "
          f"cold = median of {args.repeat}, each after {how}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'row':40} {'warm s':>8} {'GB/s':>6} {'cpu s':>7} {'cold s':>8} {'GB/s':>6}")
    res: dict[str, tuple[Timing, float | None]] = {}

    def row(name: str, run: Callable[[], Timing], cold: bool = True) -> None:
        (warm, cpu), cold_s = res[name] = measure(run, path, args.repeat, cold, args.drop_caches)
        cpu_txt = f"{cpu:7.3f}" if cpu is not None else f"{'-':>7}"
        cold_txt = f"{cold_s:8.3f} {size / cold_s / 1e9:6.2f}" if cold_s is not None else f"{'-':>8} {'-':>6}"
        print(f"{name:40} {warm:8.3f} {size / warm / 1e9:6.2f} {cpu_txt} {cold_txt}", flush=True)

    row("raw read (1 thread, fresh memory)", lambda: raw_read(path))
    row("dd bs=4M", lambda: dd(path, False))
    row("dd bs=4M iflag=direct", lambda: dd(path, True))
    row("read_jobs buffered (no repack)", lambda: reads(path, False))
    row("read_jobs O_DIRECT (no repack)", lambda: reads(path, True))
    row("numba start-up (first cached call)", numba_start, cold=False)
    for mode in MODES:
        row(f"weights --load-mode {mode}", functools.partial(weights, path, mode))
    for mode in MODES:
        row(f"engine --load-mode {mode}", functools.partial(engine, path, mode), cold=False)
    row("engine --load-mode mmap, with import", lambda: engine(path, "mmap", with_import=True), cold=False)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama.cpp: llama-cpp-python not installed (pip install llama-cpp-python)")
    else:
        row("llama.cpp use_mmap=True", lambda: llama_load(path, True))
        row("llama.cpp use_mmap=False", lambda: llama_load(path, False))
        row("llama.cpp use_mmap=True, with import", lambda: llama_load(path, True, with_import=True), cold=False)

    def ratio(name: str, ref: str, target: str) -> str:
        (wall, cpu), _ = res[name]
        (ref_wall, ref_cpu), _ = res[ref]
        cpus = f"   CPU time ratio {cpu / ref_cpu:5.2f}" if cpu is not None and ref_cpu else ""
        return f"  {name} warm / {ref}: {wall / ref_wall:5.2f}  ({target}){cpus}"

    print(f"\ntargets (ratios from this run; load average now {os.getloadavg()[0]:.1f}):")
    def cold(name: str) -> float:
        seconds = res[name][1]
        assert seconds is not None, name
        return seconds

    dd_direct = cold("dd bs=4M iflag=direct")
    for name in ("weights --load-mode dio", "read_jobs O_DIRECT (no repack)"):
        print(f"  {name} cold / dd iflag=direct cold: {cold(name) / dd_direct:5.2f}  (target < 1)")
    print(f"  (buffered cold dd / dd iflag=direct: {cold('dd bs=4M') / dd_direct:5.2f})")
    if "llama.cpp use_mmap=True" in res:
        print(ratio("engine --load-mode mmap", "llama.cpp use_mmap=True", "target <= 2"))
        print(ratio("engine --load-mode mmap, with import", "llama.cpp use_mmap=True, with import", "imports included"))
    raw = "raw read (1 thread, fresh memory)"
    for mode in ("none", "dio"):
        print(ratio(f"weights --load-mode {mode}", raw, "target <= 1.5"))
    for name in ("buffered", "O_DIRECT"):
        print(ratio(f"read_jobs {name} (no repack)", raw, "the read path without the kernels' repack"))
    if args.profile:
        print("\nprofile of an mmap engine start (warm):")
        print(engine_profile(path), end="")


if __name__ == "__main__":
    main()
