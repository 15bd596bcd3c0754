"""`numallm serve` as a client sees it: a real server process on 127.0.0.1, driven with the
official openai client (and raw HTTP where the client would refuse to send bad input)."""

from __future__ import annotations

import ctypes
import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai  # a test dependency (pip install -e '.[test]')
import pytest

pytestmark = pytest.mark.model
KEY = "test-key-123"
PARALLEL = 8
CTX = 384  # per slot: the prompts and answers here are short, and a small cache loads fast
READY_S = 600  # a cold Numba compile of the kernels on a busy 2-core machine


def _die_with_parent() -> None:
    # A killed test run must not leave a server behind (prctl PR_SET_PDEATHSIG = 1).
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


class Server:
    """`python -m numallm serve` on a free port; `url` once /health says ok."""

    def __init__(self, model: Path, *flags: str) -> None:
        cmd = [sys.executable, "-m", "numallm", "serve", "-m", str(model), "--port", "0", "-t", "2", *flags]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
        self.log: list[str] = []
        line = self._line()
        while "listening on" not in line:
            line = self._line()
        self.url = re.search(r"http://\S+", line).group(0)
        threading.Thread(target=self._drain, daemon=True).start()  # a full stderr pipe would block it
        deadline = time.monotonic() + READY_S
        while self.get("/health")[0] != 200:
            assert self.proc.poll() is None, f"the server exited while loading: {self.log}"
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.2)

    def _line(self) -> str:
        line = self.proc.stderr.readline()
        assert line, f"the server exited before listening: {self.log}"
        self.log.append(line)
        return line

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict]:
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if resp.getheader("content-type", "").startswith(
                "application/json") else {"text": data.decode()}
        finally:
            conn.close()

    def get(self, path: str, key: str | None = KEY) -> tuple[int, dict]:
        try:
            return self.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        except ConnectionError:
            return 0, {}

    def post(self, path: str, body: bytes, key: str = KEY) -> tuple[int, dict]:
        return self.request("POST", path, body, {"Authorization": f"Bearer {key}",
                                                 "Content-Type": "application/json"})

    def metric(self, name: str) -> float:
        text = self.get("/metrics")[1]["text"]
        return sum(float(m) for m in re.findall(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(smollm2: Path) -> Iterator[Server]:
    s = Server(smollm2, "--parallel", str(PARALLEL), "-c", str(CTX), "--api-key", KEY, "--temp", "0")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "To bake bread, you first", "import numpy as np\n",
           "My favourite animal is the", "In 1969, the first humans",
           # Two more than the slots: they wait in the queue. The long one (over 32 tokens)
           # is prefilled by the GEMM kernels, the others by the row kernels.
           "Water boils at", "Here is a long list of fruits, vegetables and grains that people eat around "
           "the world every day: apples, bananas, rice, wheat, maize, potatoes, carrots, beans, and"]


def _complete(client: openai.OpenAI, prompt: str, **kw: object) -> openai.types.Completion:
    return client.completions.create(model="any", prompt=prompt, **kw)


def _stream_text(client: openai.OpenAI, prompt: str, **kw: object) -> str:
    chunks = client.completions.create(model="any", prompt=prompt, stream=True, **kw)
    return "".join(c.choices[0].text for c in chunks if c.choices)


def test_health_models_and_metrics(server: Server, client: openai.OpenAI) -> None:
    assert server.get("/health", key=None) == (200, {"status": "ok"})  # public: no key needed
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    _complete(client, "Hello", max_tokens=3)
    for name in ("numallm_generated_tokens_total", "numallm_prompt_tokens_total", "numallm_slots"):
        assert server.metric(name) > 0, name
    assert server.metric('numallm_requests_total{endpoint="/v1/completions",status="200"}') >= 1
    assert server.metric("numallm_queue_depth") == 0


def test_completion_matches_the_engine_and_streams_the_same_text(server: Server, client: openai.OpenAI,
                                                                 smollm2: Path) -> None:
    from numallm.engine import Engine

    with Engine(smollm2, threads=1, ctx_size=CTX) as e:
        expected = e.generate(PROMPTS[0], max_tokens=20, temperature=0)
        n_prompt = len(e.tokenize(PROMPTS[0]))
    whole = _complete(client, PROMPTS[0], max_tokens=20, temperature=0)
    assert whole.choices[0].text == expected
    assert whole.usage.prompt_tokens == n_prompt
    assert _stream_text(client, PROMPTS[0], max_tokens=20, temperature=0) == expected


def test_chat_whole_and_streamed_with_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]
    whole = client.chat.completions.create(model="any", messages=messages, max_tokens=12, temperature=0)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    u = whole.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and 0 < u.completion_tokens <= 12
    assert u.prompt_tokens > 10  # the chat template's own tokens came along
    chunks = list(client.chat.completions.create(model="any", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == u


def test_max_tokens_counts_and_length_finish(client: openai.OpenAI) -> None:
    r = _complete(client, PROMPTS[2], max_tokens=7, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7


def test_stop_string_cuts_the_text(client: openai.OpenAI) -> None:
    full = _complete(client, PROMPTS[2], max_tokens=24, temperature=0).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = full[:full.index(stop)]
    for text, finish in [((r := _complete(client, PROMPTS[2], max_tokens=24, temperature=0, stop=[stop])
                           ).choices[0].text, r.choices[0].finish_reason),
                         (_stream_text(client, PROMPTS[2], max_tokens=24, temperature=0, stop=stop), "stop")]:
        assert (text, finish) == (cut, "stop")


def test_seed_repeats_a_sampled_answer(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return _complete(client, PROMPTS[6], max_tokens=16, temperature=1.0, top_p=1.0, seed=seed,
                         extra_body={"top_k": 0, "min_p": 0.0}).choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1  # sampling does happen


def test_ten_concurrent_streams_on_eight_slots_equal_their_solo_greedy_output(server: Server,
                                                                             client: openai.OpenAI) -> None:
    kw = dict(max_tokens=24, temperature=0)
    solo = [_stream_text(client, p, **kw) for p in PROMPTS]
    steps_before = server.metric("numallm_step_tokens_count")
    single_before = server.metric('numallm_step_tokens_bucket{le="1.0"}')
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: _stream_text(client, p, **kw), PROMPTS))
    assert together == solo
    steps = server.metric("numallm_step_tokens_count") - steps_before
    single = server.metric('numallm_step_tokens_bucket{le="1.0"}') - single_before
    assert single < steps / 2, "most steps should decode several sequences at once"


def test_disconnect_mid_stream_frees_the_slot(server: Server, client: openai.OpenAI) -> None:
    stream = client.completions.create(model="any", prompt=PROMPTS[2], max_tokens=CTX, stream=True,
                                       extra_body={"ignore_eos": True})
    next(iter(stream))
    assert server.metric("numallm_active_sequences") == 1
    stream.close()
    deadline = time.monotonic() + 30
    while server.metric("numallm_active_sequences") != 0:
        assert time.monotonic() < deadline, "the cancelled sequence still holds its slot"
        time.sleep(0.05)
    generated = server.metric("numallm_generated_tokens_total")
    time.sleep(0.3)
    assert server.metric("numallm_generated_tokens_total") == generated  # nothing decodes for nobody
    assert _complete(client, "Hello", max_tokens=2).usage.completion_tokens == 2


BAD_BODIES = [
    (b'{"prompt": "Hi", "max_tokens": ', None),  # malformed JSON
    (b'["prompt"]', None),
    (b'{"prompt": 42}', "prompt"),
    (b'{"prompt": "Hi", "max_tokens": "ten"}', "max_tokens"),
    (b'{"prompt": "Hi", "max_tokens": 0}', "max_tokens"),
    (b'{"prompt": "Hi", "temperature": -1}', "temperature"),
    (b'{"prompt": "Hi", "temperature": 1e308}', "temperature"),
    (b'{"prompt": "Hi", "top_p": 7}', "top_p"),
    (b'{"prompt": "Hi", "seed": "x"}', "seed"),
    (b'{"prompt": "Hi", "stop": [1, 2]}', "stop"),
    (b'{"prompt": "Hi", "stream": "yes"}', "stream"),
    (b'{"prompt": "Hi", "n": 3}', "n"),
    (b'{"prompt": [1, 99999999]}', "prompt"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
def test_bad_requests_get_an_openai_style_400(server: Server, body: bytes, param: str | None) -> None:
    status, reply = server.post("/v1/completions", body)
    assert status == 400, reply
    err = reply["error"]
    assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param


def test_errors_through_the_client_and_the_server_keeps_serving(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        _complete(client, "word " * (CTX + 10), max_tokens=4)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}], top_p=-0.5)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="any", messages=[{"role": "wizard", "content": "Hi"}])
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert server.get("/metrics", key="wrong")[0] == 401
    assert server.get("/v1/nothing")[0] == 404
    assert server.proc.poll() is None
    assert _complete(client, "Hello", max_tokens=2).usage.completion_tokens == 2


def test_sigterm_mid_stream_lets_it_finish_and_exits_cleanly(smollm2: Path) -> None:
    s = Server(smollm2, "--parallel", "1", "-c", "128")
    c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0)
    stream = c.completions.create(model="any", prompt="Hi", max_tokens=16, stream=True, temperature=0,
                                  extra_body={"ignore_eos": True})
    first = next(iter(stream))
    s.proc.send_signal(signal.SIGTERM)
    rest = list(stream)  # the running request drains
    assert rest[-1].choices[0].finish_reason == "length"
    assert len([first, *rest]) >= 16
    assert s.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert not any("Traceback" in line for line in s.log), "".join(s.log)


def test_a_model_that_fails_to_load_stops_the_server_with_its_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    done = subprocess.run([sys.executable, "-m", "numallm", "serve", "-m", str(bad), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "listening on" in done.stderr and "not a GGUF file" in done.stderr


def test_a_port_in_use_fails_before_loading() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "numallm", "serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
