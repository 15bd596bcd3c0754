"""The `numallm` command line: a thin layer over numallm.engine and numallm.numa.

Flags follow llama.cpp's names and defaults, in one option group every subcommand
shares (cli/options.py); cli/commands.py lists the subcommands. Exit status: 0 ok, 2 bad
input or usage, 1 failure at run time, 130 on Ctrl-C. With --json, stdout holds only
the JSON document.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence

from numallm.errors import BadInputError, NumallmError


class _StderrLines(logging.Handler):
    """numallm's warnings as `numallm: warning: ...` lines on whatever stderr is now."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"numallm: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _setup_logging(verbose: bool) -> None:
    log = logging.getLogger("numallm")
    log.handlers[:] = [_StderrLines()]
    log.setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    # Imported here: bench and serve, which the command table names, use cli.options,
    # so importing this package must not import the table.
    from numallm.cli.commands import build_parser

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
