"""POST /v1/embeddings, OpenAI's shape: one unit-length vector per input, pooled as
llama-server pools for the model (--pooling, else the GGUF's pooling type; a model with
none gets a 400 saying so, as llama-server answers). Each input is an EmbedJob of the
batching scheduler, which runs it in a free slot between decode steps."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from numallm.engine.batching import EmbedJob, QueueFullError
from numallm.engine.embedding import NO_POOLING
from numallm.errors import NumallmError
from numallm.serve.errors import ApiError, bad_request
from numallm.serve.limits import Deadline, queue_full
from numallm.serve.requests import parse_json

if TYPE_CHECKING:
    from numallm.engine.engine import Engine
    from numallm.serve.app import ServerState

MAX_INPUTS = 2048  # OpenAI's limit of inputs per request


def routes(state: ServerState, read_body: Callable[[Request], Any]) -> list[Route]:
    async def embeddings(request: Request) -> Response:
        arrived = time.perf_counter()
        engine, scheduler = state.ready()
        pooling = state.config.pooling or engine.pooling
        if pooling == "none":
            raise bad_request(NO_POOLING)
        body = parse_json(await read_body(request))
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise bad_request("'encoding_format' must be \"float\" or \"base64\"", "encoding_format")
        dims = body.get("dimensions")
        if dims is not None and dims != engine.hparams.n_embd:
            raise bad_request(f"'dimensions': this model's embeddings have {engine.hparams.n_embd}, "
                              "and shortening them is not supported", "dimensions")
        inputs = await run_in_threadpool(_input_ids, engine, body.get("input"))
        deadline = Deadline(state.metrics, state.config.timeout_s, arrived)
        vectors = await _embed_all(state, scheduler, inputs, pooling, deadline)
        n = sum(len(ids) for ids in inputs)
        state.metrics.prompt_tokens.inc(n)
        return JSONResponse({
            "object": "list", "model": engine.path.name, "usage": {"prompt_tokens": n, "total_tokens": n},
            "data": [{"object": "embedding", "index": i, "embedding": _encode(v, encoding)}
                     for i, v in enumerate(vectors)]})

    return [Route("/v1/embeddings", embeddings, methods=["POST"])]


async def _embed_all(state: ServerState, scheduler: Any, inputs: list[list[int]], pooling: str,
                     deadline: Deadline) -> list[np.ndarray]:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[np.ndarray]] = [loop.create_future() for _ in inputs]

    def settle(future: asyncio.Future[np.ndarray], vector: np.ndarray | None, error: str | None) -> None:
        if future.done():
            return
        if vector is None:
            future.set_exception(ApiError(500, f"embedding failed: {error}"))
        else:
            future.set_result(vector)

    jobs = [EmbedJob(ids, pooling, lambda v, e, f=f: loop.call_soon_threadsafe(settle, f, v, e))
            for ids, f in zip(inputs, futures)]
    try:
        for job in jobs:
            scheduler.submit_embedding(job)
        done, _ = await asyncio.wait(futures, timeout=deadline.left())
        if len(done) < len(futures):
            raise deadline.passed()
        return [f.result() for f in futures]
    except QueueFullError as e:
        raise queue_full(state.metrics, str(e)) from None
    except NumallmError as e:  # the scheduler is shutting down, or died
        raise ApiError(503, str(e)) from None
    finally:
        for job in jobs:
            scheduler.cancel(job)


def _input_ids(engine: Engine, given: Any) -> list[list[int]]:
    """OpenAI's `input`: a string, an array of strings, an array of token ids, or an
    array of arrays of token ids; each checked against the vocabulary and the context."""
    if isinstance(given, str) or (isinstance(given, list) and given and all(_is_id(t) for t in given)):
        given = [given]
    if not isinstance(given, list) or not given:
        raise bad_request("'input' must be a string or a non-empty array of strings or of token-id arrays", "input")
    if len(given) > MAX_INPUTS:
        raise bad_request(f"'input' holds {len(given)} inputs; at most {MAX_INPUTS} per request", "input")
    n_vocab = engine.hparams.n_vocab
    out = []
    for i, item in enumerate(given):
        if isinstance(item, str):
            ids = engine.tokenize(item)  # with BOS/EOS as the model wants, as llama-server does
        elif isinstance(item, list) and all(_is_id(t) for t in item):
            ids = item
            if any(not 0 <= t < n_vocab for t in ids):
                raise bad_request(f"token ids in 'input[{i}]' must be in [0, {n_vocab})", "input")
        else:
            raise bad_request(f"'input[{i}]' must be a string or an array of token ids", "input")
        if not ids:
            raise bad_request(f"'input[{i}]' is empty", "input")
        if len(ids) > engine.n_ctx:
            raise bad_request(f"'input[{i}]' has {len(ids)} tokens; this server's context per sequence is "
                              f"{engine.n_ctx} tokens", "input", code="context_length_exceeded")
        out.append(ids)
    return out


def _is_id(t: object) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _encode(v: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # the openai client asks for this: little-endian float32
        return base64.b64encode(v.astype("<f4").tobytes()).decode()
    return v.tolist()
