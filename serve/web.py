"""The web page at /: a chat view and a machine view, plain HTML, CSS and JavaScript
shipped in the package (serve/web_files/), nothing fetched from elsewhere."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FILES = Path(__file__).parent / "web_files"
_PAGES = {"/": ("index.html", "text/html; charset=utf-8"),
          "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/web/style.css": ("style.css", "text/css; charset=utf-8")}
PATHS = tuple(_PAGES)


def routes() -> list[Route]:
    def page(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
        body = (FILES / name).read_bytes()

        async def send(request: Request) -> Response:
            return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

        return send

    return [Route(path, page(*what)) for path, what in _PAGES.items()]
