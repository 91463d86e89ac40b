"""The draw-a-digit page and the files it loads, all served by digitnet itself."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent.parent / "static"

# Pages may load only what digitnet itself serves: the page works offline, and nothing a user
# draws leaves the machine except to this server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


def page(name: str) -> FileResponse:
    """The HTML file ``static/name`` with the pages' security headers."""
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=PAGE_HEADERS)


@router.get("/")
async def index() -> FileResponse:
    return page("index.html")


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


def static_files() -> StaticFiles:
    """The app mounts this at /static (a router cannot carry a mount)."""
    return StaticFiles(directory=STATIC_DIR)
