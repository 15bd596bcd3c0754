"""What no other server shows: the machine the model runs on, as JSON for the web page
and for scripts. GET /v1/numallm/topology is `numallm topology --json` with this
server's workers; GET /v1/numallm/placement is `numallm placement --json` of the
loaded model (where its pages are now, read back from the kernel on each request)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from numallm.numa.report import to_json
from numallm.numa.topology import detect

if TYPE_CHECKING:
    from numallm.engine.engine import Engine
    from numallm.serve.app import ServerState


def routes(state: ServerState) -> list[Route]:
    async def topology(request: Request) -> Response:
        engine, _ = state.ready()
        return JSONResponse(await run_in_threadpool(_topology, engine))

    async def placement(request: Request) -> Response:
        engine, _ = state.ready()
        return JSONResponse(await run_in_threadpool(_placement, engine))

    return [Route("/v1/numallm/topology", topology), Route("/v1/numallm/placement", placement)]


def _topology(engine: Engine) -> dict[str, Any]:
    return to_json(detect("/"), list(engine.placed.plan.workers))


def _placement(engine: Engine) -> dict[str, Any]:
    return {"model": engine.path.name, "n_ctx": engine.n_ctx, "n_slots": engine.n_slots,
            **engine.placed.page_report()}
