"""`numallm serve` beyond the OpenAI routes, on the tiny synthetic model, over plain HTTP:
llama-server's /tokenize and /detokenize, the machine's JSON (/v1/numallm/topology and
/v1/numallm/placement), and what a full queue and --timeout do."""

from __future__ import annotations

import http.client
import subprocess
import sys
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from numallm.engine.gguf_file import read_gguf
from numallm.engine.tokenizer import Tokenizer
from numallm.numa.report import to_json
from numallm.numa.topology import detect
from synthetic import write_tiny_llama
from test_serve import Server

CTX = 8192  # long enough that an answer of CTX tokens outlasts TIMEOUT_S many times over
TIMEOUT_S = 2


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("long") / "tiny-long.gguf", n_ctx=CTX)


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[Server]:
    s = Server(model, "--parallel", "1", "-c", str(CTX), "--max-queue", "1", "--timeout", str(TIMEOUT_S),
               "--temp", "0")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tokenizer(model: Path) -> Tokenizer:
    return Tokenizer.from_metadata(read_gguf(model).metadata)


def _post(server: Server, path: str, body: object) -> tuple[int, dict]:
    return server.post(path, json.dumps(body).encode())


TEXTS = ["Hello world", "Grüße, 👍 and <|im_start|>user\n", " leading space"]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_and_detokenize_as_llama_server(server: Server, tokenizer: Tokenizer, text: str) -> None:
    status, reply = _post(server, "/tokenize", {"content": text})
    assert status == 200, reply
    ids = tokenizer.tokenize(text, add_special=False, parse_special=True)  # llama-server's defaults
    assert reply == {"tokens": ids}
    assert _post(server, "/detokenize", {"tokens": ids}) == (200, {"content": text})
    unparsed = _post(server, "/tokenize", {"content": text, "parse_special": False})[1]["tokens"]
    assert unparsed == tokenizer.tokenize(text, add_special=False, parse_special=False)


def test_tokenize_with_pieces_gives_bytes_where_a_piece_is_not_utf8(server: Server, tokenizer: Tokenizer) -> None:
    text = TEXTS[1]
    status, reply = _post(server, "/tokenize", {"content": text, "with_pieces": True})
    assert status == 200, reply
    pieces = reply["tokens"]
    assert [p["id"] for p in pieces] == tokenizer.tokenize(text, add_special=False)
    raw = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert raw.decode() == text
    assert any(isinstance(p["piece"], list) for p in pieces), "the emoji's bytes come in pieces of their own"
    assert {"id": 1, "piece": "<|im_start|>"} in pieces


def test_tokenize_mixed_content_and_add_special(server: Server, tokenizer: Tokenizer) -> None:
    reply = _post(server, "/tokenize", {"content": ["Hi", 5, " there"], "add_special": True})[1]
    assert reply["tokens"] == [*tokenizer.tokenize("Hi"), 5, *tokenizer.tokenize(" there", add_special=False)]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/tokenize", {}, "content"),
    ("/tokenize", {"content": 7}, "content"),
    ("/tokenize", {"content": "x", "with_pieces": "yes"}, "with_pieces"),
    ("/tokenize", {"content": ["x", 100000]}, "content"),
    ("/detokenize", {"tokens": "1 2"}, "tokens"),
    ("/detokenize", {"tokens": [1, -1]}, "tokens"),
])
def test_bad_utility_requests_get_a_400_naming_the_field(server: Server, path: str, body: dict,
                                                         param: str) -> None:
    status, reply = _post(server, path, body)
    assert status == 400 and reply["error"]["param"] == param, reply


def test_topology_is_the_topology_command_with_the_servers_workers(server: Server) -> None:
    status, reply = server.get("/v1/numallm/topology")
    assert status == 200, reply
    mine = to_json(detect("/"), [])
    for key in ("packages", "numa_nodes", "cores", "pus", "cpus", "package_list", "cores_list", "pu_map"):
        assert reply[key] == mine[key], key
    assert len(reply["workers"]) == 2  # -t 2
    assert {w["cpu"] for w in reply["workers"]} <= {int(c) for c in reply["pu_map"]}


def test_placement_reports_every_weight_byte_on_a_node(server: Server, model: Path) -> None:
    status, reply = server.get("/v1/numallm/placement")
    assert status == 200, reply
    assert (reply["model"], reply["n_ctx"], reply["n_slots"]) == (model.name, CTX, 1)
    assert {g["name"] for g in reply["groups"]} >= {"q", "k", "v", "o", "gate", "up", "down"}
    placed = sum(n for g in reply["groups"] for n in g["bytes_by_node"].values())
    assert placed == sum(n["weight_bytes"] for n in reply["nodes"]) > 0
    assert sum(n["workers"] for n in reply["nodes"]) == 2
    assert all(g["missing_bytes"] == 0 for g in reply["groups"])  # mapped and read by the warm-up


def _stream(server: Server, body: dict, first_line: threading.Event, out: list[str]) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    for line in resp:
        out.append(line.decode())
        first_line.set()
    conn.close()


def test_a_full_queue_gets_503_with_retry_after_and_timeouts_cut_requests(server: Server) -> None:
    long = {"prompt": "Once", "max_tokens": CTX - 8, "ignore_eos": True}
    started, events = threading.Event(), []
    running = threading.Thread(target=_stream, args=(server, long, started, events))
    running.start()
    assert started.wait(60), "the long request did not start streaming"
    waiting: list[tuple[int, dict]] = []
    queued = threading.Thread(target=lambda: waiting.append(_post(server, "/v1/completions", long)))
    queued.start()
    while server.metric("numallm_queue_depth") < 1:
        assert queued.is_alive()
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 2}),
                 {"Content-Type": "application/json"})
    full = conn.getresponse()
    assert full.status == 503 and full.getheader("Retry-After") == "1"
    assert json.loads(full.read())["error"]["code"] == "queue_full"
    running.join(60)
    queued.join(60)
    # The running stream ends with the timeout's error event; the queued one timed out waiting.
    last = json.loads([e for e in events if e.startswith("data: ")][-1].removeprefix("data: "))
    assert last["error"]["code"] == "timeout", events[-3:]
    status, reply = waiting[0]
    assert status == 504 and reply["error"]["code"] == "timeout"
    assert server.metric("numallm_queue_full_total") == 1
    assert server.metric("numallm_timeouts_total") == 2
    deadline = time.monotonic() + 30
    while server.metric("numallm_active_sequences") != 0:  # the cut sequence leaves its slot
        assert time.monotonic() < deadline, "the timed-out sequence still holds its slot"
        time.sleep(0.05)
    assert _post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})[0] == 200


def test_embeddings_need_a_pooling_when_the_model_names_none(server: Server) -> None:
    status, reply = _post(server, "/v1/embeddings", {"input": "Hello"})
    assert status == 400 and "--pooling" in reply["error"]["message"], reply


@pytest.mark.parametrize(("flags", "message"), [(["--max-queue", "-1"], "--max-queue -1"),
                                                (["--timeout", "0"], "--timeout 0"),
                                                (["--timeout", "nan"], "--timeout nan")])
def test_bad_overload_flags_exit_2_before_loading(flags: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "numallm", "serve", "--port", "0", *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
