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
    # A pipeline's driver has no workers: its stages' are in the placement reports.
    return to_json(detect("/"), list(engine.placed.plan.workers) if engine.placed is not None else [])


def _placement(engine: Engine) -> dict[str, Any]:
    reports = engine.page_reports()
    where = reports[0] if len(reports) == 1 else {"stages": reports}
    return {"model": engine.path.name, "n_ctx": engine.n_ctx, "n_slots": engine.n_slots, **where}
