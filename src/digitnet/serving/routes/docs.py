"""``/docs``: a self-hosted reader of /openapi.json (FastAPI's Swagger UI and ReDoc load from a
CDN), and the OpenAPI document itself, completed with the routes FastAPI cannot see."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse

from digitnet.serving.routes.pages import page

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs() -> FileResponse:
    return page("docs.html")


def install_openapi(app: FastAPI, extra_paths: dict[str, Any]) -> None:
    """Make ``app.openapi()`` (served at /openapi.json) list ``extra_paths`` first, before
    FastAPI's own, and drop the 422 answers FastAPI documents for every route with parameters:
    here those are plain strings that cannot fail validation (a wrong model name or version is
    a 404, which the routes document)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schema["paths"] = {**extra_paths, **schema["paths"]}
            schemas = schema.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    # FastAPI's documented way to extend the generated document.
    app.openapi = openapi  # type: ignore[method-assign]
