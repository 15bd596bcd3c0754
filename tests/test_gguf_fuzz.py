"""Fuzzing the GGUF front door: `read_gguf` followed by `check_architecture`.

Inputs are the real SmolLM2 and Gemma 3 headers, mutated by hypothesis (fixed seeds):
bit flips and extreme values in every structural field (counts, lengths, value and
tensor types, dimensions, offsets), random byte overwrites, inserted or deleted bytes,
truncation at or next to every field boundary and inside the data section, and sparse
extension. Untruncated inputs keep the original file size as a sparse file, so the
tensor table's offsets still fit and mutations reach the deepest checks.

Each input is parsed in a long-lived worker process under RLIMIT_AS (bounded memory);
the parent treats no answer within HANG_SECONDS as a hang and a dead worker as a
crash. The property: a successful parse or a BadInputError (exit status 2) whose
message is one line starting with the path; never another exception, a hang, a crash
or a MemoryError. Failing inputs are saved (see NUMALLM_FUZZ_CRASH_DIR) for the
regression corpus in fixtures/gguf_crashers/, which every run replays first.

NUMALLM_FUZZ_SECONDS sets the fuzzing budget (default 45 s, after a few seconds of
setup) and NUMALLM_FUZZ_SEED the first round's seed. A long run:
NUMALLM_FUZZ_SECONDS=1800 NUMALLM_FUZZ_SEED=7 python3 -m pytest tests/test_gguf_fuzz.py -s
"""

from __future__ import annotations

import json
import mmap
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from numallm.engine.gguf_file import _Cursor, _parse
from numallm.engine.model_store import fetch_known_model

FUZZ_SECONDS = float(os.environ.get("NUMALLM_FUZZ_SECONDS", "45"))
FUZZ_SEED = int(os.environ.get("NUMALLM_FUZZ_SEED", "20261124"))
# Far above the slowest legitimate parse (Gemma 3: ~0.3 s), so only a real hang trips it.
HANG_SECONDS = 30.0
# Address space the worker may add to what it has after its imports: the mapping of
# the largest input (Gemma 3, 253 MB, plus sparse extension) and the parsed header.
MEMORY_HEADROOM = 1 << 30
MAX_EXTENSION = 256 << 20
MODELS = ("smollm2", "gemma3")
CORPUS = Path(__file__).parent / "fixtures" / "gguf_crashers"

_WORKER = r"""
import json, resource, sys, time, traceback
from numallm.engine.gguf_file import read_gguf
from numallm.engine.model_checks import check_architecture
from numallm.errors import BadInputError

def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

limit = status_kib("VmSize") * 1024 + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    path = line.rstrip("\n")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # restart the peak-RSS count (VmHWM) for this input alone
    rss_before = status_kib("VmRSS")
    t0 = time.perf_counter()
    try:
        check_architecture(read_gguf(path))
        out = {"outcome": "ok"}
    except BadInputError as e:
        out = {"outcome": "clean", "type": type(e).__name__, "message": str(e)}
    except BaseException as e:  # anything else (MemoryError included) is what we hunt
        out = {"outcome": "bug", "type": type(e).__name__, "message": traceback.format_exc()}
    out["seconds"] = time.perf_counter() - t0
    out["rss_growth_kib"] = status_kib("VmHWM") - rss_before
    print(json.dumps(out), flush=True)
"""


class ParseWorker:
    """A subprocess that parses one path per request under a memory limit."""

    def __init__(self) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - outlives this call; close() shuts it
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(MEMORY_HEADROOM)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self.stderr, text=True)
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.strip() == '{"ready": true}', f"parse worker failed to start: {self._stderr_tail()}"
        return proc

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-2000:].decode(errors="replace")

    def parse(self, path: str) -> dict[str, Any]:
        """The worker's report on `path`, or outcome "hang" / "crash"."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(path + "\n")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], HANG_SECONDS)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            self.proc = self._start()
            return {"outcome": "hang", "message": f"no answer within {HANG_SECONDS} s"}
        line = stdout.readline()
        if not line:
            status = self.proc.wait()
            tail = self._stderr_tail()
            self.proc = self._start()
            return {"outcome": "crash", "message": f"worker died with status {status}: {tail}"}
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        self.stderr.close()


def problem_with(result: dict[str, Any], path: str) -> str | None:
    """Why `result` breaks the front door's contract, or None when it keeps it."""
    if result["outcome"] == "ok":
        return None
    if result["outcome"] != "clean":
        return f"{result['outcome']}: {result.get('type', '')} {result['message']}"
    msg = result["message"]
    if "\n" in msg or "\r" in msg:
        return f"error message is not one line: {msg!r}"
    if not msg.startswith(f"{path}: "):
        return f"error message does not start with the path: {msg!r}"
    if len(msg) > 600:
        return f"error message is {len(msg)} characters long: {msg[:200]!r}..."
    return None


@pytest.fixture(scope="module")
def worker() -> Iterator[ParseWorker]:
    w = ParseWorker()
    yield w
    w.close()


# -- the regression corpus ---------------------------------------------------------------

def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.gguf"))


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_input_is_refused_cleanly(worker: ParseWorker, path: Path) -> None:
    result = worker.parse(str(path))
    assert problem_with(result, str(path)) is None
    assert result["outcome"] == "clean"  # each corpus file is malformed: it must not load


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_cli_refuses_corpus_input_with_status_2(path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "numallm", "generate", "-m", str(path), "x"],
                          check=False, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and str(path) in lines[0], proc.stderr


# -- the fuzzer --------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class Original:
    """One real model's header and where its fields are."""

    name: str
    header: bytes            # bytes [0, data_offset) of the real file
    file_size: int
    fields: tuple[tuple[int, int], ...]   # (offset, size) of each number the parser reads
    boundaries: tuple[int, ...]           # where each of those numbers starts

    def __repr__(self) -> str:  # hypothesis prints failing cases: not 6 MB of header
        return f"<{self.name} header>"


class _FieldRecorder(_Cursor):
    """A parser cursor that notes where each number of the header is.

    GGUFReader could locate the fields independently but takes 10 to 30 s on Gemma 3; test_gguf_file cross-checks this parser against it instead. String
    arrays are read by an inner loop that is not recorded: a 262k-token vocabulary
    would drown the structural fields (its count and element type are recorded).
    """

    def __init__(self, buf: mmap.mmap, path: str) -> None:
        super().__init__(buf, path)
        self.fields: list[tuple[int, int]] = []

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        self.fields.append((self.pos, fmt.size))
        return super().unpack(fmt, what)


def _original(name: str) -> Original:
    path = str(fetch_known_model(name))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        recorder = _FieldRecorder(buf, path)
        gf = _parse(recorder, len(buf))
        header = bytes(buf[:gf.data_offset])
    fields = [(0, 4)] + recorder.fields  # the magic is compared, not unpacked
    return Original(name=name, header=header, file_size=gf.file_size, fields=tuple(fields),
                    boundaries=tuple(sorted({off for off, _ in fields} | {gf.data_offset})))


@pytest.fixture(scope="module")
def originals() -> list[Original]:
    return [_original(name) for name in MODELS]


def _interesting(orig: Original) -> list[int]:
    sizes = [orig.file_size, len(orig.header)]
    return sorted({0, 1, 2, 3, 4, 5, 7, 8, 12, 13, 31, 32, 33, 63, 64, 65, 255, 256,
                   0x7FFF, 0xFFFF, 0x10000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
                   1 << 32, 1 << 40, (1 << 62), (1 << 63) - 1, 1 << 63, (1 << 64) - 1}
                  | {s + d for s in sizes for d in (-8, -1, 0, 1)})


@dataclass
class Case:
    orig: Original
    edits: list[tuple[Any, ...]] = field(default_factory=list)  # applied in order
    size: int = 0  # final file size; beyond the (edited) header the file is sparse


@st.composite
def cases(draw: Any, originals: list[Original]) -> Case:
    orig = draw(st.sampled_from(originals))
    n_fields, n_bounds, n_header = len(orig.fields), len(orig.boundaries), len(orig.header)
    edit = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, n_fields - 1), st.integers(0, 63)),
        st.tuples(st.just("set"), st.integers(0, n_fields - 1),
                  st.sampled_from(_interesting(orig)) | st.integers(0, (1 << 64) - 1)),
        st.tuples(st.just("bytes"), st.integers(0, n_header - 1), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("splice"), st.integers(0, n_bounds - 1), st.integers(-16, 16).filter(bool)),
    )
    case = Case(orig=orig, edits=draw(st.lists(edit, min_size=0, max_size=3)), size=orig.file_size)
    cut = draw(st.sampled_from(["keep", "at_boundary", "in_data", "extend"]))
    if cut == "at_boundary":
        case.size = max(0, orig.boundaries[draw(st.integers(0, n_bounds - 1))] + draw(st.integers(-3, 3)))
    elif cut == "in_data":
        case.size = draw(st.integers(n_header, orig.file_size - 1))
    elif cut == "extend":
        case.size = orig.file_size + draw(st.integers(1, MAX_EXTENSION))
    if cut == "keep" and not case.edits:
        case.edits.append(draw(edit))  # the unmodified file is tested elsewhere
    return case


def write_case(case: Case, path: Path) -> None:
    data = bytearray(case.orig.header)
    for kind, where, what in case.edits:
        if kind in ("flip", "set"):
            off, size = case.orig.fields[where]
            if off + size > len(data):  # a deletion earlier in the list moved the end
                continue
            if kind == "flip":
                bit = what % (size * 8)
                data[off + bit // 8] ^= 1 << (bit % 8)
            else:
                data[off:off + size] = (what & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        elif kind == "bytes":
            data[where:where + len(what)] = what[:max(0, len(data) - where)]
        else:  # splice: insert zero bytes (what > 0) or delete bytes at a boundary
            at = case.orig.boundaries[where]
            if what > 0:
                data[at:at] = bytes(what)
            else:
                del data[at:at - what]
    with open(path, "wb") as f:
        f.write(data[:case.size])
        f.truncate(case.size)  # sparse beyond the header: no disk, no page cache


@pytest.mark.model
def test_fuzzed_headers_load_or_fail_cleanly(originals: list[Original], worker: ParseWorker,
                                             tmp_path: Path) -> None:
    crash_dir = Path(os.environ.get("NUMALLM_FUZZ_CRASH_DIR") or tmp_path / "crashers")
    stats: Counter[str] = Counter()
    slowest, max_growth_kib, peak_case = [0.0], [0], [""]

    def check(case: Case) -> None:
        path = tmp_path / f"{case.orig.name}.gguf"
        write_case(case, path)
        result = worker.parse(str(path))
        stats[result["outcome"]] += 1
        slowest[0] = max(slowest[0], result.get("seconds", 0.0))
        if result.get("rss_growth_kib", 0) > max_growth_kib[0]:
            max_growth_kib[0], peak_case[0] = result["rss_growth_kib"], f"{case.orig.name} {case.edits} {case.size}"
        problem = problem_with(result, str(path))
        if problem is not None:
            crash_dir.mkdir(parents=True, exist_ok=True)
            kept = crash_dir / f"{case.orig.name}-{sum(stats.values())}.gguf"
            shutil.copyfile(path, kept)
            raise AssertionError(f"{problem}\n(edits {case.edits}, size {case.size}; input kept as {kept})")

    # Hypothesis has no time budget, so run seeded rounds (seeds FUZZ_SEED, +1, ...)
    # sized to the time left: the inputs are fixed for a given budget and speed.
    t0 = time.monotonic()
    rounds, examples = 0, 0
    while (left := FUZZ_SECONDS - (time.monotonic() - t0)) > 0:
        per_example = (time.monotonic() - t0) / examples if examples else 0.2
        n = max(10, min(200, int(left / per_example)))
        run = seed(FUZZ_SEED + rounds)(settings(
            database=None, deadline=None, max_examples=n, suppress_health_check=list(HealthCheck),
        )(given(case=cases(originals))(check)))
        run()
        rounds, examples = rounds + 1, examples + n
    print(f"\nfuzzed {sum(stats.values())} inputs in {rounds} rounds, "
          f"{time.monotonic() - t0:.0f} s: {dict(stats)}; slowest parse {slowest[0]:.2f} s, "
          f"largest RSS growth in one parse {max_growth_kib[0] / 1024:.0f} MiB, on {peak_case[0]}")
    # A budget too small to reach past the first few inputs is no fuzzing at all.
    assert sum(stats.values()) >= 20
    assert stats["ok"] > 0 and stats["clean"] > 0
