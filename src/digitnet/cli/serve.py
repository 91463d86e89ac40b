"""``digitnet serve MODEL``: the draw-a-digit page and the TensorFlow-Serving REST API."""

from __future__ import annotations

import argparse

from digitnet.cli.common import positive_int as _positive_int
from digitnet.serving.limits import ServerLimits

DEFAULTS = ServerLimits()


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a draw-a-digit web page and a TensorFlow-Serving REST API",
        description="Serve MODEL over HTTP: a page to draw digits on at /, TensorFlow "
        "Serving's REST API at /v1/models/digitnet (predict, status, metadata), "
        "an image upload API at /api/predict, and API docs at /docs. Works "
        "offline; never imports TensorFlow.",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="model file written by `digitnet train --save-model` (.safetensors)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; "
        "0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--port", type=_port, default=8000, help="TCP port (default: 8000; 0 picks a free one)"
    )
    parser.add_argument(
        "--max-request-mb",
        type=_megabytes,
        default=DEFAULTS.max_body_bytes / 1024 / 1024,
        metavar="MB",
        help="largest request body accepted, in MB "
        f"(default: {DEFAULTS.max_body_bytes / 1024 / 1024:g})",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header names NAME (repeatable; '*' for any). "
        "By default only localhost, 127.0.0.1, [::1] and the --host address are answered, "
        "which stops web pages from reaching the server through DNS rebinding",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="serve from N processes sharing the port, each with its own copy of the model "
        "(default: 1)",
    )
    parser.add_argument(
        "--read-timeout",
        type=_seconds,
        default=DEFAULTS.read_timeout,
        metavar="SECONDS",
        help="a request must arrive whole within this long of its first byte, or it answers "
        f"408 and the connection is closed (default: {DEFAULTS.read_timeout:g})",
    )
    parser.add_argument(
        "--keep-alive",
        type=_seconds,
        default=DEFAULTS.keep_alive_timeout,
        metavar="SECONDS",
        help=f"close a connection idle for this long (default: {DEFAULTS.keep_alive_timeout:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=DEFAULTS.max_connections,
        metavar="N",
        help="open connections per worker; requests on any beyond answer 503 "
        f"(default: {DEFAULTS.max_connections})",
    )
    parser.add_argument(
        "--work-processes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="images decoded and large JSON bodies parsed at once, per worker, each in its own "
        "process; more waiting requests answer 503 after a while "
        "(default: two per CPU, shared among the workers)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    parser.set_defaults(run=run)


def _seconds(text: str) -> float:
    value = _megabytes(text)  # the same rule: a positive number
    if value > 3600:
        raise argparse.ArgumentTypeError(f"at most 3600 seconds, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from digitnet.serving.server import serve

    limits = ServerLimits(
        max_body_bytes=int(args.max_request_mb * 1024 * 1024),
        read_timeout=args.read_timeout,
        keep_alive_timeout=args.keep_alive,
        max_connections=args.max_connections,
        allowed_hosts=tuple(args.allowed_host),
        work_processes=args.work_processes or 0,
    )
    serve(
        args.model,
        args.host,
        args.port,
        log_requests=not args.quiet,
        limits=limits,
        workers=args.workers,
    )
    return 0
