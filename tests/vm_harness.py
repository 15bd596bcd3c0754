"""Run Python in the NUMA VM (../shared/numa-vm), with Numba kernels that were compiled here.

Under TCG emulation a cold compile of the forward pass takes more than 10 minutes in
the guest (~25 s of CPU here), so the guest never compiles: both sides compile for one fixed CPU target that
the guest's emulated CPU also runs (Haswell: AVX2, FMA, F16C, BMI2; no AVX-512), and
share one Numba cache inside the checkout (the guest sees the checkout read-write at
the same path, while its /tmp, where numa-vm points NUMBA_CACHE_DIR, is fresh every
boot). Numba keys a cached function on (triple, CPU name, feature string), on its
source file and, through kernels/numba_cache.py, on a digest of every numallm source
with Numba code: all equal on both sides when the environment below is.

The recipe, which `run_here_and_in_vms` follows: run a script here, which compiles
whatever it calls into the cache (and gives the single-node answer), and the same script
in the VMs, which boot meanwhile, import Numba, wait for the run here to end, and then
load every function from the cache. A guest that would still have to compile something
fails at once, naming the function (see _NO_COMPILE), instead of running for many minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NUMA_VM = REPO.parent / "shared" / "numa-vm" / "numa-vm"  # ../shared beside the checkout
PYTHON = sys.executable  # the real interpreter, not a version-manager shim: seconds per call in the guest
# Gitignored (.numa-vm-*/) and kept between test sessions: the digest stamp of
# kernels/numba_cache.py invalidates what an edit makes stale.
CACHE_DIR = REPO / ".numa-vm-numba-cache"
# The x86-64-v3 level, which Zen 3, Zen 5 and QEMU's TCG CPU ("-cpu max") all have.
# Numba needs the list spelled out: with only NUMBA_CPU_NAME it would still add the
# host's own features (AVX-512 here), which the guest lacks. kernels/simd/cpu.py reads this
# same list, so the kernels take their AVX2 path on both sides.
CPU_NAME = "haswell"
CPU_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+crc32,+cx16,+cx8,+f16c,+fma,+fxsr,+lzcnt,"
                "+mmx,+movbe,+popcnt,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave")
# /proc/cpuinfo's names for the features above that code can use (the rest are implied
# by x86-64 itself): checked on both sides before anything runs.
CPUINFO_FLAGS = ("avx", "avx2", "bmi1", "bmi2", "fma", "f16c", "movbe", "popcnt", "abm",
                 "sse4_1", "sse4_2", "ssse3", "cx16", "xsave", "lahf_lm")

HERE_TIMEOUT = 900  # s; a cold compile of the forward pass is ~25 s of CPU, far more on a busy machine
VM_TIMEOUT = 600  # s; a guest run of the engine tests takes about 2 minutes
# From qemu's start to the guest's shell running the command: 5-14 s on an idle machine,
# but late in the suite some take over 60 s (a deadline of 60 s killed every 8-CPU
# placement guest three times in one run). A guest that has not got there in 150 s is
# stuck (an emulated boot can hang, its kernel's clock standing still; a CI run lost 25
# minutes to one waiting out its full timeout), so it is killed and booted again, under
# TCG. Guests run with --verbose, which costs no time here: the kernel's log in a
# failure's output tells where it stuck.
BOOT_DEADLINE = 150
BOOT_TRIES = 3
_BOOTED = "numa-vm guest: booted"
# Prepended on both sides: refuse a CPU that lacks a feature the compiled code uses
# (a clear message instead of an illegal instruction).
_CPU_CHECK = f"""
_flags = set(open("/proc/cpuinfo").read().split("flags", 1)[1].split("\\n", 1)[0].split())
_lacking = sorted(set({CPUINFO_FLAGS!r}) - _flags)
if _lacking:
    raise SystemExit(f"this CPU lacks {{_lacking}}, which the kernels compiled for {CPU_NAME} use")
"""
# Prepended in the guest: any Numba compile (a cache miss) is an immediate error.
_NO_COMPILE = """
import numba.core.event as _ev
class _NoCompile(_ev.Listener):
    def on_start(self, event):
        d = event.data
        raise RuntimeError(f"numa-vm guest: Numba had to compile {d['dispatcher'].py_func.__qualname__}"
                           f"({', '.join(map(str, d['args']))}): the run here did not put it in the cache "
                           "(or a numallm source changed since that run)")
    def on_end(self, event):
        pass
_ev.register("numba:compile", _NoCompile())
"""
# Prepended everywhere: where the script's answer goes.
_SAVE = """
import json as _json
def save_result(obj):
    with open("result.json", "w") as f:
        _json.dump(obj, f)
"""


@dataclass(frozen=True)
class Machine:
    """A VM shape. CPUs = sockets x cores x threads, split evenly over the nodes in order."""

    nodes: int
    sockets: int
    cores: int
    threads: int = 1
    mem_mib: int = 2048
    distance: int = 21

    def args(self) -> list[str]:
        return ["--nodes", str(self.nodes), "--sockets", str(self.sockets), "--cores", str(self.cores),
                "--threads", str(self.threads), "--mem", f"{self.mem_mib}M", "--dist", str(self.distance)]


def vm_available() -> bool:
    return NUMA_VM.exists()


def portable_env() -> dict[str, str]:
    """This process's environment with the fixed CPU target and the shared Numba cache."""
    return {**os.environ, "NUMBA_CPU_NAME": CPU_NAME, "NUMBA_CPU_FEATURES": CPU_FEATURES,
            "NUMBA_CACHE_DIR": str(CACHE_DIR)}


@contextmanager
def workdir() -> Iterator[Path]:
    """A scratch folder inside the checkout (the one place both sides can write), removed after."""
    path = Path(tempfile.mkdtemp(prefix=".numa-vm-", dir=REPO))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Outcome:
    """One run: its result.json (None if it wrote none or half of one), console output, exit
    status, and seconds from its start (for VMs booted together, from their common start)."""

    where: str
    returncode: int
    output: str
    seconds: float
    result: Any

    def check(self) -> Any:
        """The result, or an AssertionError carrying the tail of the console output."""
        assert self.returncode == 0 and self.result is not None, (
            f"{self.where}: exit {self.returncode} after {self.seconds:.0f} s:\n{self.output[-4000:]}")
        return self.result


def _outcome(where: str, folder: Path, returncode: int, output: str, t0: float) -> Outcome:
    try:
        result = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        result = None
    return Outcome(where, returncode, output, time.perf_counter() - t0, result)


def run_here(script: str, folder: Path, timeout: float = HERE_TIMEOUT) -> Outcome:
    """Run `script` in this machine under the portable target, compiling into the shared cache."""
    t0 = time.perf_counter()
    run = subprocess.run([PYTHON, "-c", _CPU_CHECK + _SAVE + script], cwd=folder, env=portable_env(),
                         capture_output=True, text=True, timeout=timeout, check=False)
    return _outcome("here", folder, run.returncode, run.stdout + run.stderr, t0)


def guest_code(script: str, folder: Path, after: Path | None = None, imports: Sequence[str] = ()) -> str:
    """What the guest's Python runs: `script` in `folder`, after the guard; with `after`,
    only once that file exists (and reads "ok"), importing Numba and `imports` meanwhile
    (modules that compile or call nothing on import)."""
    # numa-vm runs the command from the caller's directory, the checkout (mounted
    # read-write), so the script first moves to its folder there
    code = f"import os; os.chdir({str(folder)!r})\n" + _NO_COMPILE + _CPU_CHECK
    code += "".join(f"import {m}\n" for m in imports)
    if after is not None:
        code += _AWAIT.format(path=str(after))
    return code + _SAVE + script


_AWAIT = """
import time as _time
while not os.path.exists({path!r}):
    _time.sleep(0.5)
if open({path!r}).read() != "ok":
    raise SystemExit("numa-vm guest: the run here failed, so there is nothing to load")
"""


def run_here_and_in_vms(script: str, machines: Sequence[Machine],
                        imports: Sequence[str] = ()) -> tuple[Outcome, list[Outcome]]:
    """The recipe: `script` here (the single-node answer, and the compile), then in one VM
    per machine, each in its own folder. The guests boot at once (each spends most of its
    time in a single-threaded Python start, so they overlap well on two cores) and import
    Numba and `imports` while the compile runs here, then wait for it to end."""
    with workdir() as base:
        folders = [base / name for name in ["here", *(f"vm{i}" for i in range(len(machines)))]]
        for f in folders:
            f.mkdir()
        gate = base / "here-done"
        codes = [guest_code(script, f, gate, imports) for f in folders[1:]]
        guests = _start(codes, machines, HERE_TIMEOUT + VM_TIMEOUT)
        ok = False
        try:
            here = run_here(script, folders[0])
            ok = here.returncode == 0
        finally:
            gate.write_text("ok" if ok else "failed")
            vms = _collect(guests, machines, folders[1:])
        here.check()
        return here, vms


class Guest:
    """One numa-vm run, started at once; result() waits for it. Its console is read as it
    comes, so a guest that does not boot within BOOT_DEADLINE is killed then (not when its
    whole timeout is over) and booted again, up to BOOT_TRIES times."""

    def __init__(self, vm_args: Sequence[str], command: Sequence[str], timeout: float,
                 env: dict[str, str] | None = None, boot_deadline: float = BOOT_DEADLINE) -> None:
        self.vm_args, self.command, self.timeout = list(vm_args), list(command), timeout
        self.env = dict(os.environ if env is None else env)
        self.boot_deadline = boot_deadline
        self.t0 = time.perf_counter()
        self.tries = 0
        self._start()

    def _start(self) -> None:
        self.tries += 1
        env = {**self.env, "NUMA_VM_ACCEL": "tcg"} if self.tries > 1 else self.env
        # the shell's first line tells that the kernel booted and mounted the host's files
        cmd = [str(NUMA_VM), *self.vm_args, "--verbose", "--timeout", str(int(self.timeout)),
               "--", "/bin/sh", "-c", f'echo "{_BOOTED}"; exec "$@"', "sh", *self.command]
        # a session of its own, so that a hung run can be killed with its qemu
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.booted = threading.Event()
        self.hung = False
        self._reader = threading.Thread(target=self._read, args=(self.proc, self.lines, self.booted), daemon=True)
        self._reader.start()
        self._watchdog = threading.Timer(self.boot_deadline, self._kill_unless_booted)
        self._watchdog.daemon = True
        self._watchdog.start()

    @staticmethod
    def _read(proc: subprocess.Popen[str], lines: list[str], booted: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(_BOOTED):
                booted.set()

    def _kill_unless_booted(self) -> None:
        if not self.booted.is_set() and self.proc.poll() is None:
            self.hung = True
            self._kill()

    def _kill(self) -> None:
        # TERM first, so that numa-vm removes its run folder; KILL what is left
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, None)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def result(self) -> tuple[int, str]:
        """numa-vm's exit status and the console output of the last boot."""
        while True:
            try:
                self.proc.wait(timeout=self.timeout + 60)  # numa-vm's own timeout comes first
            except subprocess.TimeoutExpired:
                self._kill()
            self._watchdog.cancel()
            self._reader.join()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            output = "".join(self.lines)
            if self.booted.is_set() or self.tries >= BOOT_TRIES:
                return self.proc.returncode, output
            why = f"did not boot in {self.boot_deadline:g} s" if self.hung else f"died while booting (exit {self.proc.returncode})"
            warnings.warn(f"numa-vm {' '.join(self.vm_args)}: the guest {why}; booting it again "
                          f"(try {self.tries + 1} of {BOOT_TRIES}):\n{output[-1500:]}", stacklevel=2)
            self._start()


def run_in_vm(vm_args: Sequence[str], command: Sequence[str], timeout: float,
              boot_deadline: float = BOOT_DEADLINE) -> tuple[int, str]:
    """Run `command` in a VM of numa-vm's shape `vm_args`: its exit status and console output."""
    return Guest(vm_args, command, timeout, boot_deadline=boot_deadline).result()


def _start(codes: Sequence[str], machines: Sequence[Machine], timeout: float) -> list[Guest]:
    return [Guest(m.args(), [PYTHON, "-c", code], timeout, portable_env()) for m, code in zip(machines, codes, strict=True)]


def _collect(guests: list[Guest], machines: Sequence[Machine], folders: Sequence[Path]) -> list[Outcome]:
    outs = []
    for g, m, f in zip(guests, machines, folders, strict=True):
        returncode, output = g.result()
        outs.append(_outcome(f"VM with {m.nodes} nodes", f, returncode, output, g.t0))
    return outs
