"""The subcommands, in one table: name, help line, handler, and the options each takes
(the shared group, then its own). Handlers import what is heavy when they run, so
`numallm --help` and usage errors stay quick."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from numallm import __version__, bench, serve
from numallm.cli import generate, placement, topology
from numallm.cli.options import shared_options


@dataclass(frozen=True)
class Command:
    """`numallm NAME` runs run(args); its options: the shared group, then own_options'."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    own_options: Callable[[argparse.ArgumentParser], None] | None = None
    lists: bool = False  # the shared -n, -t, --numa and --load-mode take comma lists


COMMANDS = (
    Command("generate", "continue a prompt; text to stdout", generate.run_generate, generate.add_generate_arguments),
    Command("chat", "interactive chat with the model's template", generate.run_chat, generate.add_chat_arguments),
    Command("bench", "prompt and generation speed, llama-bench style", bench.run, bench.add_arguments, lists=True),
    Command("serve", "OpenAI-compatible HTTP server with continuous batching", serve.run, serve.add_arguments),
    Command("topology", "show packages, NUMA nodes, cores and the worker plan", topology.run),
    Command("placement", "load and place the model, then show where its pages really are (--dry-run: plan "
            "only)", placement.run, placement.add_arguments),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numallm", description="NUMA-aware CPU inference for GGUF models")
    parser.add_argument("--version", action="version", version=f"numallm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = {lists: shared_options(lists) for lists in (False, True)}
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, parents=[shared[cmd.lists]], help=cmd.help)
        if cmd.own_options is not None:
            cmd.own_options(p)
        p.set_defaults(func=cmd.run)
    return parser
