"""``digitnet serve``: bind the socket, run the app under uvicorn until Ctrl-C.

The app itself is ``digitnet.serving.app.create_app``. Prediction runs the model's NumPy
forward pass: nothing here imports TensorFlow, so the server starts in about a second.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from digitnet.errors import DigitnetError
from digitnet.models import architectures
from digitnet.serving.app import create_app
from digitnet.serving.asgi import log as request_log
from digitnet.serving.protocol import MAX_BODY_BYTES, MODEL_NAME

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; DigitnetError with a one-line reason if it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise DigitnetError(f"cannot resolve host {host!r}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        hint = f" (try --port {port + 1})" if error.errno == 98 else ""
        raise DigitnetError(f"cannot listen on {host}:{port}: {error.strerror}{hint}") from None
    sock.set_inheritable(True)
    return sock


def build_server(app: ASGIApp, log_requests: bool = True) -> uvicorn.Server:
    """A uvicorn Server for ``app``: httptools and uvloop when installed, uvicorn's own access
    log off (``asgi.LimitAndLogMiddleware`` writes one cheaper line per request)."""
    import uvicorn

    _configure_request_log(log_requests)
    config = uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        lifespan="off",
        http="auto",
        loop="auto",
        server_header=False,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


def _configure_request_log(enabled: bool) -> None:
    if not enabled:
        request_log.setLevel(logging.WARNING)
        return
    request_log.setLevel(logging.INFO)
    if not request_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        request_log.addHandler(handler)
        request_log.propagate = False


def serve(
    model_path: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    log_requests: bool = True,
    announce: Callable[[str], None] = print,
) -> None:
    """Load the model at ``model_path`` and serve it until interrupted (Ctrl-C).

    Raises ``ModelFileError`` for a bad model file and ``DigitnetError`` if the address cannot
    be bound, before anything is served.
    """
    from digitnet.inference.modelfile import load_model

    model = load_model(model_path)
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    server = build_server(create_app(model, max_body_bytes=max_body_bytes), log_requests)
    shown_host = f"[{host}]" if ":" in host else host
    base = f"http://{shown_host}:{bound_port}"
    announce(
        f"digitnet: serving the {model.name} model, "
        f"{architectures.describe(model.architecture)}\n"
        f"  draw:  {base}/\n"
        f"  API:   {base}/v1/models/{MODEL_NAME}:predict (TensorFlow Serving REST), "
        f"{base}/api/predict (image upload)\n"
        f"  docs:  {base}/docs\n"
        f"Ctrl-C stops."
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        announce(
            f"digitnet: listening on {host}, not only this machine: anyone who can reach "
            f"it can use the model"
        )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled; for a server it is the normal stop
    finally:
        sock.close()
