"""The HTTP layer: OpenAI-compatible routes over a BatchScheduler, as a Starlette app.

The model loads on a thread after the server starts listening, so /health can say 503
until it is ready. Each generation request becomes a batching Job whose updates reach
the request's coroutine through an asyncio queue; a client that goes away (mid-stream
or while waiting for a whole answer) cancels its job, which frees the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from numallm.engine.batching import BatchScheduler, Job, QueueFullError, Update
from numallm.engine.grammar import Constraint, GrammarError, gbnf_grammar, grammar_tokenizer, json_schema_grammar
from numallm.errors import BadInputError, NumallmError
from numallm.serve import embeddings, llama_routes, machine_routes, shapes, web
from numallm.serve.errors import ApiError, bad_request
from numallm.serve.limits import Deadline, queue_full
from numallm.serve.metrics import Metrics
from numallm.serve.requests import Defaults, GenerationRequest, parse_chat, parse_completion, parse_json
from numallm.serve.tools import ToolPlan, ToolStream

if TYPE_CHECKING:
    from numallm.engine.engine import Engine

log = logging.getLogger("numallm.serve")

MAX_BODY_BYTES = 4 << 20  # far more text than any context holds; bounds tokenizer work
# Answered without the API key: load balancers probe /health; the web page's files hold
# no data (the page asks for the key and sends it with its API calls).
PUBLIC_PATHS = ("/health", *web.PATHS)


@dataclass(frozen=True)
class ServeConfig:
    engine_kwargs: dict[str, Any]  # open_engine(**engine_kwargs), n_slots included
    n_slots: int
    defaults: Defaults
    api_key: str | None = None
    max_queue: int = 64  # requests waiting for a slot; more get 503
    timeout_s: float = 600.0  # from arrival to the last byte; longer ones are cut
    pooling: str | None = None  # of /v1/embeddings; None: the model's


class ServerState:
    """The engine and scheduler once loaded, the metrics, and the load thread."""

    def __init__(self, config: ServeConfig, on_fatal: Callable[[], None]) -> None:
        self.config = config
        self.engine: Engine | None = None
        self.scheduler: BatchScheduler | None = None
        self.error: BaseException | None = None  # why loading failed
        self._on_fatal = on_fatal
        self._loader: threading.Thread | None = None
        self._deliveries: _Deliveries | None = None
        self.metrics = Metrics(config.n_slots, waiting=lambda: self.scheduler.waiting if self.scheduler else 0,
                               active=lambda: self.scheduler.active if self.scheduler else 0)

    def start_loading(self) -> None:
        self._loader = threading.Thread(target=self._load, name="numallm-load", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        from numallm.cluster import open_engine

        try:
            engine = open_engine(**self.config.engine_kwargs)
        except BaseException as e:
            self.error = e
            self._on_fatal()
            return
        self.scheduler = BatchScheduler(engine, max_waiting=self.config.max_queue, on_step=self.metrics.step,
                                        on_mask=self.metrics.mask)
        self.engine = engine
        # llguidance's view of the vocabulary, built now rather than by the first request
        # with a schema or tools (0.7 s for SmolLM2's 49152 tokens, several for Gemma's 262144)
        threading.Thread(target=grammar_tokenizer, args=(engine.tokenizer,), name="numallm-grammar-vocab",
                         daemon=True).start()
        log.info("serving %s with %d slots of %d tokens", engine.path.name, self.config.n_slots, engine.n_ctx)

    def ready(self) -> tuple[Engine, BatchScheduler]:
        if self.engine is None or self.scheduler is None:
            raise ApiError(503, "the model is still loading; retry when GET /health says ok")
        return self.engine, self.scheduler

    def deliveries(self, loop: asyncio.AbstractEventLoop) -> _Deliveries:
        """The scheduler thread's way to the requests' queues on `loop` (the server's one loop)."""
        if self._deliveries is None:
            self._deliveries = _Deliveries(loop)
        return self._deliveries

    def close(self) -> None:
        if self._loader is not None:
            self._loader.join()  # an Engine half-built cannot be abandoned: its workers are pinned threads
        if self.scheduler is not None:
            self.scheduler.close()
        if self.engine is not None:
            self.engine.close()


def create_app(config: ServeConfig, on_fatal: Callable[[], None] = lambda: None) -> Starlette:
    """The ASGI app; `on_fatal` is called (from the load thread) if the model fails to load."""
    state = ServerState(config, on_fatal)

    async def health(request: Request) -> Response:
        if state.engine is None or (state.scheduler is not None and state.scheduler.failure):
            failed = state.error or (state.scheduler is not None and state.scheduler.failure)
            return JSONResponse({"status": "error" if failed else "loading"}, status_code=503)
        down = state.engine.down()
        if down is not None:  # a pipeline stage restarting: back to ok once it is
            return JSONResponse({"status": "error", "down": down}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        engine, _ = state.ready()
        return JSONResponse({"object": "list", "data": [
            {"id": engine.path.name, "object": "model", "created": int(engine.path.stat().st_mtime),
             "owned_by": "numallm"}]})

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def chat(request: Request) -> Response:
        return await _generate(state, request, chat=True)

    async def completions(request: Request) -> Response:
        return await _generate(state, request, chat=False)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.start_loading()
        try:
            yield
        finally:
            await run_in_threadpool(state.close)

    app = Starlette(
        routes=[Route("/health", health), Route("/v1/models", models), Route("/metrics", metrics),
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/completions", completions, methods=["POST"]),
                *llama_routes.routes(state, _read_body), *embeddings.routes(state, _read_body),
                *machine_routes.routes(state), *web.routes()],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, BadInputError: _bad_input,
                            Exception: _internal_error},
        lifespan=lifespan)
    app.state.server = state
    app.add_middleware(_RequireKey, api_key=config.api_key)
    app.add_middleware(_CountRequests, metrics=state.metrics, paths={r.path for r in app.routes})
    return app


# -- generation -----------------------------------------------------------------------

class _Deliveries:
    """Updates from the scheduler thread into the requests' queues on the event loop,
    with one wake-up of the loop for all that arrive before it runs: a decode step emits
    one update per sequence, and a wake-up each (a self-pipe write, a turn of the loop)
    is CPU taken from the decoding workers on a small machine."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Update], Update]] = []

    def post(self, queue: asyncio.Queue[Update], update: Update) -> None:
        with self._lock:
            self._pending.append((queue, update))
            if len(self._pending) > 1:
                return  # the flush that the first of them scheduled takes this one too
        with contextlib.suppress(RuntimeError):  # the loop is gone: so are the clients
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, update in pending:
            queue.put_nowait(update)


async def _generate(state: ServerState, request: Request, chat: bool) -> Response:
    arrived = time.perf_counter()
    engine, scheduler = state.ready()
    body = parse_json(await _read_body(request))
    req = parse_chat(body, state.config.defaults) if chat else parse_completion(body, state.config.defaults)
    ids, constraint, plan = await run_in_threadpool(_prepare, engine, req)
    deliveries = state.deliveries(asyncio.get_running_loop())
    updates: asyncio.Queue[Update] = asyncio.Queue()

    def emit(update: Update) -> None:
        deliveries.post(updates, update)

    calls = plan.stream() if plan is not None and plan.tools else None
    job = Job(ids, req.params, req.max_tokens, req.stop, emit, ignore_eos=req.ignore_eos, constraint=constraint,
              special=calls is not None)
    try:
        scheduler.submit(job)
    except QueueFullError as e:
        raise queue_full(state.metrics, str(e)) from None
    except NumallmError as e:  # the scheduler is shutting down, or died
        raise ApiError(503, str(e)) from None
    state.metrics.prompt_tokens.inc(len(ids))
    shape = shapes.Completion(chat, engine.path.name)
    first = _FirstText(state.metrics, arrived)
    deadline = Deadline(state.metrics, state.config.timeout_s, arrived)
    if req.stream:
        return _JobStream(_events(updates, shape, req.include_usage, first, calls, deadline), scheduler, job)
    return await _whole(request, scheduler, job, updates, shape, first, calls, deadline)


class _FirstText:
    """Observes the time to first text of a request once."""

    def __init__(self, metrics: Metrics, arrived: float) -> None:
        self._metrics, self._arrived, self._seen = metrics, arrived, False

    def saw(self, update: Update) -> None:
        if not self._seen and (update.text or update.done):
            self._seen = True
            self._metrics.ttft.observe(time.perf_counter() - self._arrived)


class _JobStream(StreamingResponse):
    """A streamed answer that cancels its job however the response ends: finished, failed,
    or cut by a disconnect (even one before the first byte, when the body never starts)."""

    def __init__(self, body: AsyncIterator[str], scheduler: BatchScheduler, job: Job) -> None:
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._scheduler, self._job = scheduler, job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._scheduler.cancel(self._job)


async def _events(updates: asyncio.Queue[Update], shape: shapes.Completion, include_usage: bool,
                  first: _FirstText, calls: ToolStream | None, deadline: Deadline) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer; the updates that piled up while the
    client was being written to go out as one write. With tools, text that begins the
    calls is held back, and the calls go out whole at the end."""
    if shape.chat:
        yield shapes.sse(shape.chunk("", role=True))
    while True:
        try:
            batch = [await asyncio.wait_for(updates.get(), deadline.left())]
        except TimeoutError:
            yield shapes.sse(deadline.passed().body())  # _JobStream cancels the job
            return
        while not updates.empty():
            batch.append(updates.get_nowait())
        out = []
        for u in batch:
            first.saw(u)
            if u.finish_reason in ("error", "cancelled", "unavailable"):
                yield "".join(out) + shapes.sse(_failed(u).body())
                return
            text = calls.feed(u.text) if calls is not None and u.text else u.text
            if text:
                out.append(shapes.sse(shape.chunk(text)))
            if u.done:
                reason = u.finish_reason
                if calls is not None:
                    tail, found = calls.finish()
                    if tail:
                        out.append(shapes.sse(shape.chunk(tail)))
                    if found:
                        out.append(shapes.sse(shape.tool_calls_chunk([c.openai(i) for i, c in enumerate(found)])))
                        reason = "tool_calls"
                out.append(shapes.sse(shape.chunk(None, reason)))
                if include_usage:
                    out.append(shapes.sse(shape.usage_chunk(shapes.usage(u.n_prompt, u.n_generated))))
                yield "".join(out) + shapes.SSE_DONE
                return
        if out:
            yield "".join(out)


async def _whole(request: Request, scheduler: BatchScheduler, job: Job, updates: asyncio.Queue[Update],
                 shape: shapes.Completion, first: _FirstText, calls: ToolStream | None,
                 deadline: Deadline) -> Response:
    gone = asyncio.ensure_future(_disconnected(request))
    parts: list[str] = []
    try:
        while True:
            get = asyncio.ensure_future(updates.get())
            await asyncio.wait((get, gone), timeout=deadline.left(), return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                if not gone.done():
                    raise deadline.passed()
                return Response(status_code=499)  # nobody reads it; uvicorn drops it
            u = get.result()
            first.saw(u)
            if u.finish_reason in ("error", "cancelled", "unavailable"):
                raise _failed(u)
            parts.append(u.text)
            if u.done:
                text, reason, found = "".join(parts), u.finish_reason, []
                if calls is not None:
                    text, found = calls.whole(text)
                    reason = "tool_calls" if found else reason
                return JSONResponse(shape.whole(text, reason, shapes.usage(u.n_prompt, u.n_generated),
                                                [c.openai() for c in found] or None))
    finally:
        gone.cancel()
        scheduler.cancel(job)


def _failed(u: Update) -> ApiError:
    if u.finish_reason == "cancelled":
        return ApiError(503, "the server is shutting down")
    if u.finish_reason == "unavailable":
        return ApiError(503, f"generation failed: {u.error}")
    return ApiError(500, f"generation failed: {u.error}")


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _prepare(engine: Engine, req: GenerationRequest) -> tuple[list[int], Constraint | None, ToolPlan | None]:
    """The prompt's ids, the grammar the answer follows and how tools reach and leave the
    model (template work and grammar compiles: off the event loop)."""
    plan = _tool_plan(engine, req)
    return _prompt_ids(engine, req, plan), _constraint(engine, req, plan), plan


def _tool_plan(engine: Engine, req: GenerationRequest) -> ToolPlan | None:
    """How the request's tools (or only earlier calls and their results) reach the template."""
    if req.tools is not None:
        return ToolPlan.make(engine.chat_template, req.tools.tools, req.tools.choice, req.tools.parallel)
    if req.messages is not None and any(m["role"] == "tool" or "tool_calls" in m for m in req.messages):
        return ToolPlan.make(engine.chat_template, [], "auto", False)
    return None


def _prompt_ids(engine: Engine, req: GenerationRequest, plan: ToolPlan | None) -> list[int]:
    """The request's prompt as token ids, checked against the vocabulary and the context."""
    if req.messages is not None and plan is not None:
        ids = engine.chat_ids(plan.messages(req.messages), plan.template_tools)
    elif req.messages is not None:
        ids = engine.chat_ids(req.messages)
    elif isinstance(req.prompt, str):
        ids = engine.tokenize(req.prompt)
    else:
        ids = list(req.prompt or [])
        n_vocab = engine.hparams.n_vocab
        if any(not 0 <= t < n_vocab for t in ids):
            raise bad_request(f"token ids in 'prompt' must be in [0, {n_vocab})", "prompt")
    if not ids:
        raise bad_request("the prompt is empty", "prompt")
    if len(ids) >= engine.n_ctx:
        raise bad_request(f"the prompt has {len(ids)} tokens; this server's context per sequence is "
                          f"{engine.n_ctx} tokens, prompt and answer together",
                          "messages" if req.messages is not None else "prompt", code="context_length_exceeded")
    return ids


def _constraint(engine: Engine, req: GenerationRequest, plan: ToolPlan | None) -> Constraint | None:
    """The grammar the answer must follow (a response format, or tool calls), compiled."""
    param = "tool_choice"
    try:
        if req.output is not None:
            param = req.output.param
            grammar = (json_schema_grammar(req.output.spec) if req.output.kind == "json_schema"
                       else gbnf_grammar(req.output.spec))
        else:
            grammar = plan.grammar(engine.tokenizer) if plan is not None and plan.tools else None
        return None if grammar is None else Constraint(engine.tokenizer, grammar)
    except GrammarError as e:
        raise bad_request(f"'{param}': {e}", param) from None


# -- errors, auth and counting ----------------------------------------------------------

async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail))).response()


async def _bad_input(request: Request, exc: Exception) -> Response:
    return bad_request(str(exc)).response()  # e.g. a chat template refusing the conversation


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s", request.url.path)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}").response()


class _RequireKey:
    """401 unless `Authorization: Bearer <key>` (every path but PUBLIC_PATHS) when a key is set."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is not None and scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                err = ApiError(401, "invalid API key: send it as 'Authorization: Bearer <key>'",
                               code="invalid_api_key")
                await err.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _CountRequests:
    """numallm_requests{endpoint, status}: every response, its status as sent."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.paths else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
