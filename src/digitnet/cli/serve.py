"""``digitnet serve MODEL``: the draw-a-digit page and the TensorFlow-Serving REST API."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
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
        default=5.0,
        metavar="MB",
        help="largest request body accepted, in MB (default: 5)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    parser.set_defaults(run=run)


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


def run(args) -> int:
    from digitnet.serving.server import serve

    serve(
        args.model,
        args.host,
        args.port,
        max_body_bytes=int(args.max_request_mb * 1024 * 1024),
        log_requests=not args.quiet,
    )
    return 0
