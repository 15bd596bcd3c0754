"""`numallm serve`: an OpenAI-compatible HTTP server with continuous batching.

    numallm serve [-m MODEL] [--host 127.0.0.1] [--port 8080] [--parallel 4] [-c N]
                  [-t N] [--numa MODE] [--load-mode MODE] [--api-key KEY]
                  [--max-queue 64] [-to/--timeout 600] [--pooling mean|cls|last|none]

Endpoints: POST /v1/chat/completions and /v1/completions (streamed as server-sent
events with "stream": true; JSON-schema response formats, GBNF grammars and tool calls
by constrained decoding), GET /v1/models, GET /health (503 until the model is
loaded), GET /metrics (Prometheus), POST /v1/embeddings, llama-server's POST /tokenize and /detokenize,
the machine as JSON (GET /v1/numallm/topology, /v1/numallm/placement) and a web page
at / (a chat and a view of the machine). Up to --parallel requests decode together, each
in its own slot of -c tokens (prompt and answer); up to --max-queue more wait in a
queue, and beyond that a request gets 503 with Retry-After. A request that has not
finished --timeout seconds after it arrived is cut (504, or a last error event). The sampling
flags (--temp, --top-k, --top-p, --min-p, --repeat-penalty, -s, -n, --ignore-eos) are
the defaults of requests that leave those fields out.
"""

from __future__ import annotations

import argparse
import os

from numallm.engine.options import POOLINGS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_PARALLEL = 4
DEFAULT_MAX_QUEUE = 64  # past this a client is better told to come back than left waiting
DEFAULT_TIMEOUT_S = 600.0  # llama-server's -to default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("serve options (llama-server names)")
    g.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    g.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to listen on; 0 = any free port, printed at start (default {DEFAULT_PORT})")
    g.add_argument("-np", "--parallel", type=int, default=DEFAULT_PARALLEL,
                   help=f"sequences decoded together, each with its own -c context (default {DEFAULT_PARALLEL})")
    g.add_argument("--api-key", default=os.environ.get("NUMALLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $NUMALLM_API_KEY, else no key)")
    g.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                   help=f"requests that may wait for a slot; more get 503 (default {DEFAULT_MAX_QUEUE})")
    g.add_argument("-to", "--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"cut a request this many seconds after it arrived, waiting included "
                   f"(default {DEFAULT_TIMEOUT_S:g})")
    g.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="how /v1/embeddings pools the tokens' hidden states (default: the model's; "
                   "none, as for most chat models, refuses embeddings)")


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; 0 after a clean shutdown."""
    from numallm.serve.server import config_from_args, serve  # Starlette, uvicorn, the engine

    return serve(config_from_args(args), args.host, args.port, args.verbose)
