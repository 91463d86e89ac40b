"""``create_app(model)``: the FastAPI app serving a model, assembled from its parts.

Routes (``routes/``): the draw-a-digit page at ``/``, TensorFlow Serving's REST API under
``/v1/models/digitnet``, the image API under ``/api``, the reference at ``/docs``, the model's
report at ``/report``.

Every error answers ``{"error": "<what was wrong>"}`` with a 4xx status (400 a Host the
server does not answer to, or anything else the client sent wrong; 403 a cross-origin POST;
404 unknown model, version or route; 405 wrong method; 408 a request that did not arrive in
time; 413 body too large; 415 wrong content type; 431 headers too large), or 503 with
Retry-After when the server is at capacity. 500 is reserved for bugs: a generic message to the
client, the traceback in the server's log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from digitnet import __version__
from digitnet.serving.asgi import LimitAndLogMiddleware
from digitnet.serving.limits import ServerLimits
from digitnet.serving.protocol import MODEL_NAME, RequestError, dumps_json
from digitnet.serving.routes import api, docs, pages, read, report, tf_serving
from digitnet.serving.trust import allowed_host_names
from digitnet.serving.work import WorkLanes

if TYPE_CHECKING:
    from digitnet.inference.model import Model


def create_app(
    model: Model,
    limits: ServerLimits | None = None,
    *,
    bound_host: str | None = None,
    max_body_bytes: int | None = None,
    warm_up: bool = False,
) -> FastAPI:
    """The FastAPI app serving ``model`` (a ``digitnet.Model``): page, API, docs.

    ``limits`` defaults to ``ServerLimits()``; ``max_body_bytes`` overrides its body limit.
    Host headers naming ``bound_host`` (the address the server listens on) are accepted
    besides the loopback names and ``limits.allowed_hosts``. ``warm_up`` starts the work
    processes when the server starts rather than at the first request that needs one.
    """
    import digitnet.inference.preprocess  # noqa: F401 - imported now so the first drawing answers quickly

    limits = limits or ServerLimits()
    if max_body_bytes is not None:
        limits = dataclasses.replace(limits, max_body_bytes=max_body_bytes)
    pool = WorkLanes(model, limits.lanes(), limits.max_queue_wait)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            await pool.warm_up()
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(
        title="digitnet",
        version=__version__,
        description="Handwritten-digit recognition. TensorFlow Serving's REST API at "
        f"/v1/models/{MODEL_NAME}, and a simpler image API: /api/predict reads a digit, "
        "/api/read a number.",
        docs_url=None,
        redoc_url=None,  # both load from a CDN; routes.docs serves /docs itself
        lifespan=lifespan,
    )
    app.state.model = model
    app.state.pool = pool
    app.state.limits = limits
    app.router.routes[:0] = tf_serving.predict_routes(model, pool, limits.inline_body_bytes)
    _add_error_handlers(app)
    app.include_router(pages.router)
    app.include_router(docs.router)
    app.mount("/static", pages.static_files(), name="static")
    app.include_router(tf_serving.router)
    app.include_router(api.router)
    app.include_router(read.router)
    app.include_router(report.router)
    app.add_middleware(
        LimitAndLogMiddleware,
        max_body_bytes=limits.max_body_bytes,
        allowed_hosts=allowed_host_names(bound_host, limits.allowed_hosts),
    )
    docs.install_openapi(app, tf_serving.predict_paths(model))
    return app


def error_response(message: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        dumps_json({"error": message}), status, headers=headers, media_type="application/json"
    )


def _add_error_handlers(app: FastAPI) -> None:
    async def request_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestError)
        return error_response(str(error), error.status, error.headers)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        message = {
            404: f"no such route: {request.method} {request.url.path} (see /docs)",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(error.status_code, str(error.detail))
        return error_response(message, error.status_code, error.headers)

    async def validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(map(str, item.get('loc', ())))}: {item.get('msg')}"
            for item in error.errors()
        )
        return error_response(f"invalid request: {problems}", 400)

    async def client_left(request: Request, error: Exception) -> Response:
        # Nobody reads this answer; it keeps a client that hung up out of the 500s in the log.
        return error_response("the client closed the connection before the request arrived", 400)

    async def bug(request: Request, error: Exception) -> Response:
        # Reached only through a bug; the traceback goes to the log via uvicorn.
        return error_response("internal error: the server hit a bug; its log has the details", 500)

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ClientDisconnect, client_left)
    app.add_exception_handler(Exception, bug)
