"""llama-server's utility endpoints, same request and response shapes:
POST /tokenize {content, add_special, parse_special, with_pieces} -> {tokens}, and
POST /detokenize {tokens} -> {content}."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from numallm.serve.errors import bad_request
from numallm.serve.requests import parse_json

if TYPE_CHECKING:
    from numallm.engine.engine import Engine
    from numallm.engine.tokenizer import Tokenizer
    from numallm.serve.app import ServerState


def routes(state: ServerState, read_body: Callable[[Request], Any]) -> list[Route]:
    async def tokenize(request: Request) -> Response:
        engine, _ = state.ready()
        body = parse_json(await read_body(request))
        return JSONResponse({"tokens": await run_in_threadpool(_tokenize, engine, body)})

    async def detokenize(request: Request) -> Response:
        engine, _ = state.ready()
        body = parse_json(await read_body(request))
        ids = _token_ids(body, "tokens", engine.hparams.n_vocab)
        # as llama-server: every token's piece as it is, control tokens' texts included
        text = b"".join(engine.tokenizer.piece_bytes(t, special=True) for t in ids)
        return JSONResponse({"content": text.decode("utf-8", "replace")})

    return [Route("/tokenize", tokenize, methods=["POST"]), Route("/detokenize", detokenize, methods=["POST"])]


def _tokenize(engine: Engine, body: dict[str, Any]) -> list[int] | list[dict[str, Any]]:
    flags = {name: _flag(body, name, default) for name, default in
             (("add_special", False), ("parse_special", True), ("with_pieces", False))}
    content = body.get("content")
    if isinstance(content, str):
        content = [content]
    if not isinstance(content, list) or not all(isinstance(p, (str, int)) and not isinstance(p, bool)
                                                for p in content):
        raise bad_request("'content' must be a string, or an array of strings and token ids", "content")
    ids: list[int] = []
    for i, part in enumerate(content):  # as llama-server: add_special applies to a leading string only
        if isinstance(part, str):
            ids += engine.tokenizer.tokenize(part, add_special=flags["add_special"] and i == 0,
                                             parse_special=flags["parse_special"])
        else:
            ids.append(part)
    _in_vocab(ids, "content", engine.hparams.n_vocab)
    if flags["with_pieces"]:
        return [{"id": t, "piece": _piece(engine.tokenizer, t)} for t in ids]
    return ids


def _piece(tok: Tokenizer, token_id: int) -> str | list[int]:
    """A token's text, or its bytes as numbers where they are not UTF-8 on their own."""
    raw = tok.piece_bytes(token_id, special=True)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


def _token_ids(body: dict[str, Any], name: str, n_vocab: int) -> list[int]:
    v = body.get(name)
    if not isinstance(v, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        raise bad_request(f"'{name}' must be an array of token ids", name)
    _in_vocab(v, name, n_vocab)
    return v


def _in_vocab(ids: list[int], name: str, n_vocab: int) -> None:
    if any(not 0 <= t < n_vocab for t in ids):
        raise bad_request(f"token ids in '{name}' must be in [0, {n_vocab})", name)


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    v = body.get(name, default)
    if not isinstance(v, bool):
        raise bad_request(f"'{name}' must be a boolean", name)
    return v
