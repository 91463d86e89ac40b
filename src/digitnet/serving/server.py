"""``digitnet serve``: bind the socket, run the app under uvicorn until Ctrl-C or SIGTERM.

The app itself is ``digitnet.serving.app.create_app``; the connection limits uvicorn lacks are
in ``connection.py``. Prediction runs the model's NumPy forward pass: nothing here imports
TensorFlow, so the server starts in about a second.

With ``workers`` > 1 the socket is bound once here and shared by that many worker processes
(uvicorn's ``Multiprocess`` supervisor: it restarts a worker that dies), each loading the
model once; the kernel spreads connections among them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from digitnet.errors import DigitnetError
from digitnet.inference.batch import usable_cpus
from digitnet.models import architectures
from digitnet.serving.app import create_app
from digitnet.serving.asgi import log as request_log
from digitnet.serving.limits import WORK_PROCESSES_PER_CPU, ServerLimits
from digitnet.serving.protocol import MAX_BODY_BYTES, MODEL_NAME

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI
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


def server_config(
    app: ASGIApp | Callable[[], ASGIApp],
    limits: ServerLimits | None = None,
    **options: Any,
) -> uvicorn.Config:
    """uvicorn's Config for ``app`` with ``limits``' connection limits: httptools hardened by
    ``connection.HardenedHttpToolsProtocol``, uvloop when installed, uvicorn's own access
    log off (``asgi.LimitAndLogMiddleware`` writes one cheaper line per request)."""
    from digitnet.serving.connection import HardenedConfig

    return HardenedConfig(
        app,
        limits or ServerLimits(),
        access_log=False,
        log_level="warning",
        lifespan="on",  # starts and stops the app's work processes
        loop="auto",
        server_header=False,
        # The client address is the peer's: no proxy is trusted to rewrite it.
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        **options,
    )


def build_server(
    app: ASGIApp, log_requests: bool = True, limits: ServerLimits | None = None
) -> uvicorn.Server:
    """A uvicorn Server for ``app`` (see ``server_config``)."""
    import uvicorn

    _configure_request_log(log_requests)
    return uvicorn.Server(server_config(app, limits))


@dataclasses.dataclass(frozen=True)
class WorkerApp:
    """The app factory each worker process calls (picklable: uvicorn spawns the workers)."""

    model_path: str
    limits: ServerLimits
    bound_host: str
    log_requests: bool

    def __call__(self) -> FastAPI:
        from digitnet.inference.modelfile import load_model

        _configure_request_log(self.log_requests)
        return create_app(
            load_model(self.model_path), self.limits, bound_host=self.bound_host, warm_up=True
        )


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


class _Stop(Exception):
    """SIGTERM, after uvicorn's graceful shutdown: a normal stop, like Ctrl-C."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def serve(
    model_path: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    log_requests: bool = True,
    announce: Callable[[str], None] = print,
    limits: ServerLimits | None = None,
    workers: int = 1,
) -> None:
    """Load the model at ``model_path`` and serve it from ``workers`` processes until
    interrupted (Ctrl-C or SIGTERM, which end it cleanly).

    ``limits`` defaults to ``ServerLimits()`` with ``max_body_bytes``. Raises
    ``ModelFileError`` for a bad model file and ``DigitnetError`` if the address cannot be
    bound, before anything is served.
    """
    from digitnet.inference.modelfile import load_model

    if workers < 1:
        raise DigitnetError(f"--workers must be at least 1, got {workers}")
    limits = limits or ServerLimits(max_body_bytes=max_body_bytes)
    if workers > 1 and not limits.work_processes:
        # The CPUs are shared among the workers' pools of work processes.
        shared = max(1, WORK_PROCESSES_PER_CPU * usable_cpus() // workers)
        limits = dataclasses.replace(limits, work_processes=shared)
    model = load_model(model_path)  # here too: a bad file is refused before any worker starts
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
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
    # Signal handlers can only be set from the main thread; serve() run from another thread
    # (an embedding program, a test) is stopped by its owner instead.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if in_main_thread else None
    try:
        if workers == 1:
            app = create_app(model, limits, bound_host=host, warm_up=True)
            build_server(app, log_requests, limits).run(sockets=[sock])
        else:
            from uvicorn.supervisors import Multiprocess

            del model  # each worker loads its own
            announce(f"digitnet: {workers} worker processes")
            factory = WorkerApp(str(model_path), limits, host, log_requests)
            _configure_request_log(log_requests)
            Multiprocess(
                server_config(factory, limits, factory=True, workers=workers), sockets=[sock]
            ).run()
    except (KeyboardInterrupt, _Stop):
        pass  # uvicorn re-raises the signal it handled; for a server it is the normal stop
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        sock.close()
