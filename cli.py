"""The `numallm` command line: a thin layer over numallm.engine and numallm.numa.

Flags follow llama.cpp's names and defaults, in one option group every subcommand
shares. Exit status: 0 ok, 2 bad input or usage, 1 failure at run time, 130 on Ctrl-C.
With --json, stdout holds only the JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from numallm import __version__
from numallm.engine.options import KV_TYPES, LOAD_MODE_ALIASES, LOAD_MODES, NUMA_MODES, engine_options
from numallm.errors import BadInputError, NumallmError, TopologyError



def _shared_options(lists: bool = False) -> argparse.ArgumentParser:
    """The option group every subcommand shares. With lists=True (bench), -n, -t, --numa
    and --load-mode take comma lists, checked by the subcommand itself."""
    p = argparse.ArgumentParser(add_help=False)
    int_or_list = str if lists else int

    def modes(values: tuple[str, ...]) -> tuple[str, ...] | None:
        return None if lists else values

    g = p.add_argument_group("common options (llama.cpp names)")
    g.add_argument("-m", "--model", help="GGUF file, or a known model name: smollm2 (default), gemma3; "
                   "also $NUMALLM_MODEL")
    g.add_argument("-n", "--n-predict", type=int_or_list, default=-1,
                   help="tokens to generate; -1 = until end of generation or a full context (default -1)")
    g.add_argument("-c", "--ctx-size", type=int, default=0,
                   help="context size; 0 = min(the model's context, 4096) (default 0)")
    g.add_argument("-t", "--threads", type=int_or_list, default=None,
                   help="worker threads (default: one per allowed physical core)")
    g.add_argument("--smt", action="store_true", help="also use SMT siblings (hyperthreads)")
    g.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="top-k sampling; 0 = off (default 40)")
    g.add_argument("--top-p", type=float, default=0.95, help="top-p sampling; 1.0 = off (default 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, help="min-p sampling; 0.0 = off (default 0.05)")
    g.add_argument("--repeat-penalty", type=float, default=1.0,
                   help="penalize repeated tokens; 1.0 = off (default 1.0)")
    g.add_argument("--repeat-last-n", type=int, default=64,
                   help="tokens the repeat penalty looks back over (default 64)")
    g.add_argument("--ignore-eos", action="store_true",
                   help="keep generating past end-of-generation tokens (for benchmarks)")
    g.add_argument("-s", "--seed", type=int, default=-1, help="RNG seed; -1 = random (default -1)")
    g.add_argument("-ctk", "--cache-type-k", default="f16", choices=KV_TYPES,
                   help="KV cache type for K (default f16)")
    g.add_argument("-ctv", "--cache-type-v", default="f16", choices=KV_TYPES,
                   help="KV cache type for V (default f16)")
    g.add_argument("--numa", default="auto", choices=modes(NUMA_MODES), help="weight placement (default auto)")
    g.add_argument("--numa-node", type=int, default=None, metavar="N",
                   help="with --numa isolate: the NUMA node for the weights and the workers "
                   "(default: the first worker's node)")
    g.add_argument("--no-hugepages", action="store_true",
                   help="do not ask for transparent huge pages for the placed weights and KV cache")
    g.add_argument("--load-mode", default=None, choices=modes(LOAD_MODES),
                   help="how weights are read: mmap = map the file, mlock = map and lock it in RAM, "
                   "dio = O_DIRECT reads, none = plain reads; auto = mmap unless the NUMA mode "
                   "copies (default auto)")
    for flag, mode in LOAD_MODE_ALIASES.items():
        g.add_argument(flag, dest="load_aliases", action="append_const", const=flag,
                       help=f"llama.cpp alias of --load-mode {mode}")
    g.add_argument("--root", default="/", help="read the topology from this sysfs root prefix (default /)")
    g.add_argument("--json", action="store_true", help="print one JSON document on stdout, nothing else")
    g.add_argument("-v", "--verbose", action="store_true", help="say what is being done on stderr")
    return p


def build_parser() -> argparse.ArgumentParser:
    shared = _shared_options()
    parser = argparse.ArgumentParser(prog="numallm", description="NUMA-aware CPU inference for GGUF models")
    parser.add_argument("--version", action="version", version=f"numallm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", parents=[shared], help="continue a prompt; text to stdout")
    gen.add_argument("prompt", nargs="?", help="the prompt; '-' reads stdin")
    gen.add_argument("-p", "--prompt", dest="prompt_opt", help="the prompt (llama.cpp style)")
    gen.add_argument("-f", "--file", help="read the prompt from this file")
    gen.add_argument("--chat-template", action="store_true",
                     help="wrap the prompt as one user message in the model's chat template")
    gen.set_defaults(func=_cmd_generate)

    chat = sub.add_parser("chat", parents=[shared], help="interactive chat with the model's template")
    chat.add_argument("-sys", "--system-prompt", default=None, help="system message")
    chat.set_defaults(func=_cmd_chat)

    from numallm import bench

    b = sub.add_parser("bench", parents=[_shared_options(lists=True)],
                       help="prompt and generation speed, llama-bench style")
    bench.add_arguments(b)
    b.set_defaults(func=bench.run)

    from numallm import serve

    srv = sub.add_parser("serve", parents=[shared], help="OpenAI-compatible HTTP server with continuous batching")
    serve.add_arguments(srv)
    srv.set_defaults(func=serve.run)

    topo = sub.add_parser("topology", parents=[shared],
                          help="show packages, NUMA nodes, cores and the worker plan")
    topo.set_defaults(func=_cmd_topology)

    place = sub.add_parser("placement", parents=[shared],
                           help="load and place the model, then show where its pages really are")
    place.set_defaults(func=_cmd_placement)
    return parser


def _prompt_text(args: argparse.Namespace) -> str:
    given = [x for x in (args.prompt, args.prompt_opt, args.file) if x is not None]
    if len(given) != 1:
        raise BadInputError("give exactly one prompt: an argument, -p TEXT, -f FILE, or '-' for stdin")
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise BadInputError(f"{args.file}: cannot read the prompt file ({e.strerror})") from None
        except UnicodeDecodeError:
            raise BadInputError(f"{args.file}: the prompt file is not UTF-8 text") from None
    text = args.prompt if args.prompt is not None else args.prompt_opt
    return sys.stdin.read() if text == "-" else text


def _engine(args: argparse.Namespace) -> Any:
    from numallm.engine import Engine

    return Engine(**engine_options(args))


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_tokens=args.n_predict, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                seed=None if args.seed < 0 else args.seed, ignore_eos=args.ignore_eos)


def _cmd_generate(args: argparse.Namespace) -> int:
    prompt = _prompt_text(args)
    with _engine(args) as eng:
        if args.chat_template:
            prompt = eng.chat_template.render([{"role": "user", "content": prompt}])
        pieces = eng.generate(prompt, stream=True, **_sampling(args))
        if args.json:
            text = "".join(pieces)
            st = eng.stats
            print(json.dumps({"text": text, "prompt_tokens": st.prompt_tokens, "gen_tokens": st.gen_tokens,
                              "load_s": st.load_s, "prompt_s": st.prompt_s, "gen_s": st.gen_s}))
        else:
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        print(f"numallm: {eng.stats.line()}", file=sys.stderr)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    messages: list[dict[str, str]] = []
    if args.system_prompt:
        messages.append({"role": "system", "content": args.system_prompt})
    interactive = sys.stdin.isatty()
    with _engine(args) as eng:
        if interactive:
            print("numallm chat: type a message, Ctrl-D to quit.", file=sys.stderr)
        while True:
            if interactive:
                print("> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                return 0
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line.rstrip("\n")})
            reply = []
            for piece in eng.chat(messages, stream=True, **_sampling(args)):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
            messages.append({"role": "assistant", "content": "".join(reply)})
            if args.verbose:
                print(f"numallm: {eng.stats.line()}", file=sys.stderr)


def _cmd_topology(args: argparse.Namespace) -> int:
    from numallm.numa.report import render_text, to_json
    from numallm.numa.topology import detect
    from numallm.numa.workers import plan_workers

    try:
        topo = detect(args.root)
    except TopologyError as e:
        if args.root == "/":
            raise
        raise BadInputError(str(e)) from None  # a recorded root the user gave us is input
    plan = plan_workers(topo, args.threads, args.smt)
    print(json.dumps(to_json(topo, plan), indent=2) if args.json else render_text(topo, plan))
    return 0


def _cmd_placement(args: argparse.Namespace) -> int:
    from numallm.engine.placement_command import run

    return run(args)


class _StderrLines(logging.Handler):
    """numallm's warnings as `numallm: warning: ...` lines on whatever stderr is now."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"numallm: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _setup_logging(verbose: bool) -> None:
    log = logging.getLogger("numallm")
    log.handlers[:] = [_StderrLines()]
    log.setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("\nnumallm: interrupted", file=sys.stderr)
        return 130
    except BadInputError as e:
        print(f"numallm: error: {e}", file=sys.stderr)
        return 2
    except NumallmError as e:
        print(f"numallm: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into a line
        if args.verbose:
            traceback.print_exc()
        print(f"numallm: internal error: {type(e).__name__}: {e} (run with --verbose for details)",
              file=sys.stderr)
        return 1
