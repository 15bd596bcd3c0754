"""Running the app: the listening socket, uvicorn, shutdown on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import math
import socket
import sys

import uvicorn

from numallm.cli.options import engine_options
from numallm.engine.sampling import SamplingParams
from numallm.errors import BadInputError, NumallmError
from numallm.serve.app import ServeConfig, create_app
from numallm.serve.requests import Defaults

GRACE_S = 5.0  # how long running requests may finish after Ctrl-C/SIGTERM before they are cut


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The server's settings from the command line, checked before anything loads."""
    if args.parallel < 1:
        raise BadInputError(f"--parallel {args.parallel}: at least one sequence slot is needed")
    if args.max_queue < 0:
        raise BadInputError(f"--max-queue {args.max_queue}: must be 0 or more (0: no request waits)")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise BadInputError(f"--timeout {args.timeout:g}: must be a positive number of seconds")
    engine_kwargs = dict(engine_options(args), n_slots=args.parallel)
    params = SamplingParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                            repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                            seed=args.seed).validate()
    return ServeConfig(engine_kwargs, args.parallel, Defaults(params, args.n_predict, args.ignore_eos),
                       api_key=args.api_key or None, max_queue=args.max_queue, timeout_s=args.timeout,
                       pooling=args.pooling)


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: object) -> None:
        if not self.should_exit:
            print(f"numallm: stopping; running requests get {GRACE_S:g} s to finish (Ctrl-C again cuts them)",
                  file=sys.stderr, flush=True)
        super().handle_exit(sig, frame)


def serve(config: ServeConfig, host: str, port: int, verbose: bool = False) -> int:
    """Listen, load the model, serve until a signal; re-raises a failure to load."""
    sock = _listen(host, port)
    server: _Server | None = None

    def stop() -> None:  # the model failed to load: shut down, then re-raise below
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_fatal=stop)
    bound_host, bound_port = sock.getsockname()[:2]
    print(f"numallm: listening on http://{bound_host}:{bound_port} (loading the model)", file=sys.stderr, flush=True)
    server = _Server(uvicorn.Config(app, log_level="info" if verbose else "warning", access_log=verbose,
                                    timeout_graceful_shutdown=GRACE_S))
    server.run(sockets=[sock])
    error = app.state.server.error
    if error is not None:
        raise error
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything loads so a taken port fails at once."""
    if not 0 <= port <= 65535:
        raise BadInputError(f"--port {port}: not a TCP port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BadInputError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise NumallmError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from None
    return sock
