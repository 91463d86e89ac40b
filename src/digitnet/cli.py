"""The ``digitnet`` command: a thin layer over the library.

Each subcommand lives in ``digitnet/commands/<name>.py`` with ``add_parser(subparsers)`` and
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

COMMANDS = ("train", "evaluate", "predict", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitnet",
        description="Recognise handwritten digits: train on MNIST, evaluate, predict on your "
                    "own images, serve a draw-a-digit page.")
    parser.add_argument("--version", action="version", version=f"digitnet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"digitnet.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"digitnet.commands.{name}":
                continue  # a command still being written is simply not offered
            raise
        module.add_parser(subparsers)
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
    except (DigitnetError, ValueError, FloatingPointError, OSError) as error:
        # User input is checked with ValueError throughout (keras-io's rule); the message
        # already says what was wrong and what to do.
        print(f"digitnet {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"digitnet {args.command}: interrupted", file=sys.stderr)
        return 130
