"""The ``digitnet`` command: a thin layer over the library.

Each subcommand lives in ``digitnet/cli/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; they import TensorFlow only inside ``run`` and only when they train or
export, so ``digitnet --help``, ``predict``, ``evaluate`` and ``serve`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from digitnet import __version__
from digitnet.errors import DigitnetError

COMMANDS = ("train", "evaluate", "calibrate", "predict", "read", "report", "serve", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitnet",
        description="Recognise handwritten digits: train on MNIST, evaluate, predict on your "
        "own images, serve a draw-a-digit page.",
    )
    parser.add_argument("--version", action="version", version=f"digitnet {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of every error, not only of unexpected ones",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"digitnet.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:
        # The reader went away (`digitnet ... | head`): not an error worth a traceback. Point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (DigitnetError, OSError) as error:
        # Only the errors digitnet means for the user (bad input, files that cannot be read or
        # written): their message says what was wrong and what to do. Anything else is a bug
        # and keeps its traceback, so it can be reported.
        if args.debug:
            raise
        print(f"digitnet {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"digitnet {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    from digitnet.cli.common import printable

    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return printable(f"{error.filename}: {error.strerror}")
    return printable(" ".join(str(error).split())) or type(error).__name__
