"""Embeddings against llama.cpp's (tests/fixtures/llama_cpp/embeddings_*.json, recorded
by scripts/record_llama_cpp_embeddings.py): Engine.embed for each pooling on both known
models, POST /v1/embeddings through the openai client, and embedding jobs beside
generation in the batching scheduler (tiny model)."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from numallm.engine import Engine
from numallm.engine.batching import BatchScheduler, EmbedJob, Job
from numallm.engine.sampling import SamplingParams
from numallm.errors import BadInputError
from test_serve import Server

FIXTURES = Path(__file__).parent / "fixtures" / "llama_cpp"
MIN_COSINE = 0.99


def _fixture(model: str) -> dict:
    return json.loads((FIXTURES / f"embeddings_{model}.json").read_text(encoding="utf-8"))


def _cosine(a: np.ndarray, b: list[float]) -> float:
    b = np.asarray(b)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.model
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_engine_embeddings_match_llama_cpp(model: str) -> None:
    from numallm.engine.model_store import fetch_known_model

    fixture = _fixture(model)
    path = fetch_known_model(model, quiet=True)
    assert path.name == fixture["model"]
    with Engine(path, threads=2, ctx_size=1024) as e:
        assert e.pooling == "none"  # neither GGUF names one: llama-server would refuse
        with pytest.raises(BadInputError, match="--pooling"):
            e.embed("Hello")
        for entry in fixture["texts"]:
            assert e.tokenize(entry["text"]) == entry["tokens"]
            for pooling, ref in entry["embeddings"].items():
                v = e.embed(entry["text"], pooling)
                assert v.shape == (e.hparams.n_embd,) and abs(np.linalg.norm(v) - 1) < 1e-5
                assert _cosine(v, ref) >= MIN_COSINE, (entry["text"][:30], pooling)


@pytest.fixture(scope="module")
def server(smollm2: Path) -> Iterator[Server]:
    s = Server(smollm2, "--parallel", "2", "-c", "1024", "--pooling", "mean")
    yield s
    s.stop()


@pytest.mark.model
def test_v1_embeddings_through_the_openai_client(server: Server) -> None:
    fixture = _fixture("smollm2")
    texts = [t["text"] for t in fixture["texts"]]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
    reply = client.embeddings.create(model="any", input=texts)  # the client asks for base64
    assert [d.index for d in reply.data] == list(range(len(texts)))
    for d, entry in zip(reply.data, fixture["texts"]):
        assert _cosine(np.asarray(d.embedding), entry["embeddings"]["mean"]) >= MIN_COSINE
    n_tokens = sum(len(t["tokens"]) for t in fixture["texts"])
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == n_tokens
    as_floats = client.embeddings.create(model="any", input=texts[0], encoding_format="float")
    as_ids = client.embeddings.create(model="any", input=fixture["texts"][0]["tokens"])
    assert as_floats.data[0].embedding == reply.data[0].embedding == as_ids.data[0].embedding
    with pytest.raises(openai.BadRequestError, match="input"):
        client.embeddings.create(model="any", input=[])
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="any", input="Hi", dimensions=8)


def test_embedding_jobs_run_beside_generation(tiny_llama: Path) -> None:
    greedy = SamplingParams(temperature=0)
    with Engine(tiny_llama, threads=2, ctx_size=64, n_slots=2) as e:
        texts = ["Hello", "Once upon a time", "def f(x):"]
        alone = [e.embed(t, "mean") for t in texts]
        solo = e.generate("1, 2, 3,", max_tokens=12, temperature=0, ignore_eos=True)
        s = BatchScheduler(e)
        try:
            updates: queue.Queue = queue.Queue()
            results: dict[int, np.ndarray] = {}
            finished = threading.Event()

            def done(i: int):  # noqa: ANN202
                def record(vector: np.ndarray | None, error: str | None) -> None:
                    assert error is None, error
                    results[i] = vector
                    if len(results) == len(texts):
                        finished.set()
                return record

            s.submit(Job(e.tokenize("1, 2, 3,"), greedy, 12, (), updates.put, ignore_eos=True))
            for i, t in enumerate(texts):
                s.submit_embedding(EmbedJob(e.tokenize(t), "mean", done(i)))
            parts = []
            while not (u := updates.get(timeout=60)).done:
                parts.append(u.text)
            parts.append(u.text)
            assert finished.wait(60)
        finally:
            s.close()
    assert "".join(parts) == solo  # the embeddings did not disturb the running sequence
    for i, v in enumerate(alone):
        np.testing.assert_array_equal(results[i], v)
