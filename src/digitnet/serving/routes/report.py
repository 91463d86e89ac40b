"""``/report``: the served model's report (``digitnet report``), built on first request.

The report needs the MNIST test set and tens of seconds of CPU, so it is built once, in a
worker thread, behind a lock, into the cache (``$XDG_CACHE_HOME/digitnet/reports/<model
digest>-<version>/``), where it survives restarts. Only the files the report lists are served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from digitnet import __version__
from digitnet.data.mnist import default_cache_dir
from digitnet.errors import DataError
from digitnet.inference.model import Model
from digitnet.serving.protocol import RequestError

router = APIRouter(include_in_schema=False)

# The report is a plain page of figures and tables with its styles inline; it runs no script.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_MEDIA_TYPES = {".html": "text/html", ".json": "application/json", ".png": "image/png"}


def model_digest(model: Model) -> str:
    """16 hex characters over the model's architecture, metadata and parameters."""
    digest = hashlib.sha256(
        json.dumps([model.architecture, model.metadata], sort_keys=True, default=str).encode()
    )
    for name in sorted(model.parameters):
        digest.update(name.encode())
        digest.update(model.parameters[name].tobytes())
    return digest.hexdigest()[:16]


def report_directory(model: Model) -> Path:
    """Where the report of ``model`` is cached: beside the MNIST download cache."""
    return default_cache_dir().parent / "reports" / f"{model_digest(model)}-{__version__}"


async def _built_report(request: Request) -> Path:
    """The report's folder, building it first if this is the first request."""
    state = request.app.state
    if not hasattr(state, "report_lock"):
        state.report_lock = asyncio.Lock()
    model: Model = state.model
    directory = report_directory(model)
    async with state.report_lock:
        # index.html is written last: its presence means the report is complete.
        if not (directory / "index.html").is_file():
            from digitnet.inference.report import build_report

            try:
                await run_in_threadpool(build_report, model, directory)
            except DataError as error:
                raise RequestError(
                    f"the report needs the MNIST test set, which this server cannot read: {error}",
                    status=503,
                ) from None
    return directory


@router.get("/report")
async def report_root() -> Response:
    # The page links its figures relative to itself, so it must be served from /report/.
    return RedirectResponse("/report/", status_code=307)


@router.get("/report/")
async def report_index(request: Request) -> FileResponse:
    return await report_file("index.html", request)


@router.get("/report/{name}")
async def report_file(name: str, request: Request) -> FileResponse:
    directory = await _built_report(request)
    listing = json.loads((directory / "report.json").read_text())
    served = {"index.html", "report.json"} | {
        figure["file"] for figure in listing.get("figures", {}).values()
    }
    if name not in served:
        raise RequestError(f"the report has no file {name!r}", status=404)
    return FileResponse(
        directory / name, media_type=_MEDIA_TYPES[Path(name).suffix], headers=REPORT_HEADERS
    )
