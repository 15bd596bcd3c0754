"""The command line contract: stdout holds only the output, errors are one line with
the right exit status (2 bad input, 1 run-time failure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def numallm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NUMALLM_PROGRESS="0")
    return subprocess.run([sys.executable, "-m", "numallm", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, env=env, timeout=300)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_generate_prints_only_the_text(tiny_llama: Path) -> None:
    done = numallm("generate", "-m", str(tiny_llama), "-n", "8", "--temp", "0", "Hello world")
    assert done.returncode == 0, done.stderr
    from numallm.engine import Engine

    with Engine(tiny_llama, threads=1) as e:
        expected = e.generate("Hello world", max_tokens=8, temperature=0)
    assert done.stdout == expected + "\n"
    assert "generation" in done.stderr and "t/s" in done.stderr


def test_generate_json_and_prompt_sources(tiny_llama: Path, tmp_path: Path) -> None:
    a = numallm("generate", "-m", str(tiny_llama), "-n", "6", "--temp", "0", "--json", "Hi there")
    assert a.returncode == 0, a.stderr
    doc = json.loads(a.stdout)
    assert doc["gen_tokens"] <= 6 and isinstance(doc["text"], str)
    f = tmp_path / "prompt.txt"
    f.write_text("Hi there", encoding="utf-8")
    b = numallm("generate", "-m", str(tiny_llama), "-n", "6", "--temp", "0", "--json", "-f", str(f))
    c = numallm("generate", "-m", str(tiny_llama), "-n", "6", "--temp", "0", "--json", "-", stdin="Hi there")
    assert json.loads(b.stdout)["text"] == json.loads(c.stdout)["text"] == doc["text"]


@pytest.mark.parametrize("make, expect", [
    (lambda d: d / "missing.gguf", "no such file"),
    (lambda d: d, "directory"),
    (lambda d: _write(d / "text.gguf", b"this is not a model at all, just text\n"), "not a GGUF file"),
])
def test_bad_model_path_is_exit_2(tmp_path: Path, make, expect: str) -> None:
    path = make(tmp_path)
    done = numallm("generate", "-m", str(path), "hello")
    assert done.returncode == 2
    line = one_error_line(done)
    assert expect in line and str(path) in line


def test_truncated_model_is_exit_2(tiny_llama: Path, tmp_path: Path) -> None:
    cut = _write(tmp_path / "cut.gguf", tiny_llama.read_bytes()[: tiny_llama.stat().st_size // 2])
    done = numallm("generate", "-m", str(cut), "hello")
    assert done.returncode == 2
    assert "truncated" in one_error_line(done)


@pytest.mark.parametrize("args", [["-t", "0"], ["-t", "100000"], ["-c", "-3"], ["--temp", "-1"]])
def test_impossible_flags_are_exit_2(tiny_llama: Path, args: list[str]) -> None:
    done = numallm("generate", "-m", str(tiny_llama), *args, "hello")
    assert done.returncode == 2
    one_error_line(done)


def test_usage_errors_are_exit_2() -> None:
    assert numallm("generate", "--numa", "sideways", "x").returncode == 2
    assert numallm("no-such-command").returncode == 2
    assert numallm("generate").returncode == 2


def test_topology_json_describes_this_machine() -> None:
    done = numallm("topology", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["pus"] == len(os.sched_getaffinity(0)) or doc["pus"] >= len(os.sched_getaffinity(0))
    assert len(doc["workers"]) == doc["cores"] if doc["allowed"] is None else len(doc["workers"]) >= 1


def test_chat_reads_messages_from_stdin(tiny_llama: Path) -> None:
    done = numallm("chat", "-m", str(tiny_llama), "-n", "4", "--temp", "0", stdin="hello\nagain\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") >= 2


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _sigint_default() -> None:
    # A suite started in the background by a shell without job control (`pytest &` in a
    # script) inherits SIGINT ignored, and so would the child: Python then keeps it
    # ignored, as `nohup`/`&` ask. The test is about a terminal's Ctrl-C, so the child
    # starts with the default disposition.
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_generation_exits_130_promptly(smollm2: Path) -> None:
    import signal
    import time

    env = dict(os.environ, NUMALLM_PROGRESS="0")
    proc = subprocess.Popen([sys.executable, "-m", "numallm", "generate", "-m", str(smollm2), "-n", "4000",
                             "--ignore-eos", "Once upon a time"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)
    assert proc.stdout is not None
    proc.stdout.read(1)  # generating now
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"still running 60 s after SIGINT; stderr: {err[-2000:]}")
    assert proc.returncode == 130, err
    assert time.monotonic() - start < 10  # measured 0.3-0.5 s; a token takes milliseconds
    assert "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["generate", "placement"])
def test_numa_node_reaches_the_placement(tiny_llama: Path, command: str) -> None:
    # --numa-node is in the shared group: every command that loads a model must honour
    # it (a node this machine lacks is a clear error, not silently ignored).
    extra = ["hello"] if command == "generate" else []
    done = numallm(command, "-m", str(tiny_llama), "--numa", "isolate", "--numa-node", "97", *extra)
    assert done.returncode == 2
    assert "--numa-node 97" in one_error_line(done)


@pytest.mark.parametrize("command", ["generate", "placement"])
def test_mirror_budget_reaches_the_placement(tiny_llama: Path, command: str) -> None:
    # parsed in the shared group, checked where the mode is chosen: a budget for a mode
    # that mirrors nothing is a clear error in every command that loads a model
    extra = ["hello"] if command == "generate" else []
    done = numallm(command, "-m", str(tiny_llama), "--numa", "distribute", "--mirror-budget", "1G", *extra)
    assert done.returncode == 2
    assert "--mirror-budget goes with --numa mirror, not --numa distribute" in one_error_line(done)
    done = numallm(command, "-m", str(tiny_llama), "--numa", "mirror", "--mirror-budget", "lots", *extra)
    assert done.returncode == 2 and "--mirror-budget 'lots' is not a size" in one_error_line(done)
