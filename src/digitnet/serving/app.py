"""``create_app(model)``: the FastAPI app serving a model, assembled from its parts.

Routes (``routes/``): the draw-a-digit page at ``/``, TensorFlow Serving's REST API under
``/v1/models/digitnet``, the image API under ``/api``, the reference at ``/docs``, the model's
report at ``/report``.

Every error answers ``{"error": "<what was wrong>"}`` with a 4xx status (404 unknown model,
version or route; 405 wrong method; 413 body too large; 415 wrong content type; 400 anything
else the client sent wrong). 500 is reserved for bugs, and still answers JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from digitnet import __version__
from digitnet.serving.asgi import LimitAndLogMiddleware
from digitnet.serving.protocol import MAX_BODY_BYTES, MODEL_NAME, RequestError, dumps_json
from digitnet.serving.routes import api, docs, pages, report, tf_serving

if TYPE_CHECKING:
    from digitnet.inference.model import Model


def create_app(model: Model, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving ``model`` (a ``digitnet.Model``): page, API, docs."""
    import digitnet.inference.preprocess  # noqa: F401 - imported now so the first drawing answers quickly

    app = FastAPI(
        title="digitnet",
        version=__version__,
        description="Handwritten-digit recognition. TensorFlow Serving's REST API at "
        f"/v1/models/{MODEL_NAME}, and a simpler image API at /api/predict.",
        docs_url=None,
        redoc_url=None,  # both load from a CDN; routes.docs serves /docs itself
    )
    app.state.model = model
    app.router.routes[:0] = tf_serving.predict_routes(model)
    _add_error_handlers(app)
    app.include_router(pages.router)
    app.include_router(docs.router)
    app.mount("/static", pages.static_files(), name="static")
    app.include_router(tf_serving.router)
    app.include_router(api.router)
    app.include_router(report.router)
    app.add_middleware(LimitAndLogMiddleware, max_body_bytes=max_body_bytes)
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

    async def bug(request: Request, error: Exception) -> Response:
        # Reached only through a bug; the traceback goes to the log via uvicorn.
        return error_response(f"internal error: {type(error).__name__}", 500)

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, bug)
