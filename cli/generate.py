"""`numallm generate` and `numallm chat`: text to stdout, timings to stderr."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from numallm.cli.options import engine_options
from numallm.errors import BadInputError


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help="the prompt; '-' reads stdin")
    parser.add_argument("-p", "--prompt", dest="prompt_opt", help="the prompt (llama.cpp style)")
    parser.add_argument("-f", "--file", help="read the prompt from this file")
    parser.add_argument("--chat-template", action="store_true",
                        help="wrap the prompt as one user message in the model's chat template")


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-sys", "--system-prompt", default=None, help="system message")


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
    from numallm.cluster import open_engine

    return open_engine(**engine_options(args))


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_tokens=args.n_predict, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                seed=None if args.seed < 0 else args.seed, ignore_eos=args.ignore_eos)


def run_generate(args: argparse.Namespace) -> int:
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


def run_chat(args: argparse.Namespace) -> int:
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
