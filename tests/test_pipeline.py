"""--pipeline on one machine: two Ray stage actors of one worker thread each, against
one process running the whole model with one thread (the same kernels on the same
layers: the logits must be equal bit for bit), through the engine and through
`numallm serve --pipeline 2`, and a stage killed under a running request.

Ray is a test dependency (scripts/install.sh --test installs numallm[cluster]): without
it these tests fail at the import, they do not skip."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from test_serve import KEY, Server

pytestmark = pytest.mark.model
CTX = 256
PROMPT = "The capital of France is"
N_GREEDY = 24
RECOVER_S = 180  # Ray restarts the stage, which maps its layers and loads its compiled pass again


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """One local Ray cluster of 2 CPUs for this file; its address, for servers to join.
    Module-scoped: its daemons and object store are gone before the rest of the suite."""
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def one_process(smollm2: Path) -> Iterator[object]:
    from numallm.engine.engine import Engine

    with Engine(smollm2, threads=1, ctx_size=CTX, n_slots=2) as e:
        yield e


def test_two_stages_give_the_logits_and_greedy_text_of_one_process(ray_cluster: str, smollm2: Path,
                                                                   one_process: object) -> None:
    from numallm.cluster import open_engine

    with open_engine(2, model=str(smollm2), threads=1, ctx_size=CTX, n_slots=2) as pipe:
        assert pipe.stage_layers == [(0, 15), (15, 30)]  # SmolLM2's 30 layers, tied embeddings: halves
        assert [w["cpus"] for w in pipe.where] == [[0], [1]]  # one core each, never the same
        ids = one_process.tokenize(PROMPT + " Paris, and the capital of Italy is")
        assert np.array_equal(pipe.logits(ids), one_process.logits(ids))
        text = pipe.generate(PROMPT, max_tokens=N_GREEDY, temperature=0)
        assert text == one_process.generate(PROMPT, max_tokens=N_GREEDY, temperature=0)
        assert len(pipe.tokenize(text, add_special=False)) >= N_GREEDY // 2  # a real answer, not an early stop
        # A batch of two sequences, as the server's scheduler runs them
        n = len(ids)
        batch = [np.concatenate([ids, ids[:3]]), np.r_[[0] * n, [1] * 3], np.r_[np.arange(n), np.arange(3)]]
        rows = np.array([n - 1, n + 2])
        assert np.array_equal(pipe.eval_batch(*batch, rows), one_process.eval_batch(*batch, rows))


@pytest.fixture(scope="module")
def pipe_server(ray_cluster: str, smollm2: Path) -> Iterator[Server]:
    os.environ["RAY_ADDRESS"] = ray_cluster  # the server joins the session's cluster
    try:
        s = Server(smollm2, "--pipeline", "2", "-t", "1", "--parallel", "2", "-c", str(CTX), "--api-key", KEY,
                   "--temp", "0")
    finally:
        del os.environ["RAY_ADDRESS"]
    yield s
    s.stop()  # uvicorn ends by re-raising the SIGTERM
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2:  # the stages and their placement group are gone
        assert time.monotonic() < deadline, f"the stopped server left {ray.available_resources()}"
        time.sleep(0.2)


def _complete(server: Server, prompt: str, max_tokens: int) -> tuple[int, dict]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return server.post("/v1/completions", json.dumps(body).encode())


def test_server_answers_through_the_pipeline(pipe_server: Server, one_process: object) -> None:
    expected = one_process.generate(PROMPT, max_tokens=N_GREEDY, temperature=0)
    results: list[tuple[int, dict]] = []
    threads = [threading.Thread(target=lambda: results.append(_complete(pipe_server, PROMPT, N_GREEDY)))
               for _ in range(3)]  # one more than the slots: it waits for one
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(status, body["choices"][0]["text"]) for status, body in results] == [(200, expected)] * 3
    status, placement = pipe_server.get("/v1/numallm/placement")
    assert status == 200 and [s["layers"] for s in placement["stages"]] == [[0, 15], [15, 30]]


def test_a_killed_stage_fails_running_requests_with_503_and_serving_resumes(pipe_server: Server,
                                                                            one_process: object) -> None:
    pid = pipe_server.get("/v1/numallm/placement")[1]["stages"][1]["pid"]
    result: list[tuple[int, dict]] = []
    running = threading.Thread(target=lambda: result.append(_complete(pipe_server, "Once upon a time", 200)))
    running.start()
    time.sleep(0.5)  # under way
    os.kill(pid, signal.SIGKILL)
    running.join()
    status, body = result[0]
    assert status == 503, body
    assert "stage 1 of 2 (layers 15-29)" in body["error"]["message"]
    status, health = pipe_server.get("/health", key=None)
    assert status == 503 and "stage 1 of 2 (layers 15-29)" in health["down"]
    deadline = time.monotonic() + RECOVER_S
    while pipe_server.get("/health", key=None)[0] != 200:
        assert time.monotonic() < deadline, "the pipeline did not recover"
        time.sleep(0.5)
    assert pipe_server.get("/v1/numallm/placement")[1]["stages"][1]["pid"] != pid  # a new process
    expected = one_process.generate(PROMPT, max_tokens=N_GREEDY, temperature=0)
    status, body = _complete(pipe_server, PROMPT, N_GREEDY)
    assert (status, body["choices"][0]["text"]) == (200, expected)


@pytest.mark.parametrize("args, message", [
    (["generate", "--pipeline", "0", "hi"], "--pipeline 0: the number of stages must be 1 or more"),
    (["serve", "--pipeline", "-2"], "--pipeline -2: the number of stages must be 1 or more"),
    (["bench", "--pipeline", "0"], "--pipeline 0: the number of stages must be 1 or more"),
    (["generate", "--pipeline", "3", "hi"], "--pipeline 3: the model has 2 layers; use 1 to 2 stages"),
    (["placement", "--pipeline", "2"], "--pipeline does not apply"),
])
def test_bad_pipeline_values_are_one_line_and_exit_2(tiny_llama: Path, args: list[str], message: str) -> None:
    from test_cli import numallm, one_error_line

    done = numallm(*args[:1], "-m", str(tiny_llama), *args[1:])
    assert done.returncode == 2, done.stderr
    assert message in one_error_line(done)
