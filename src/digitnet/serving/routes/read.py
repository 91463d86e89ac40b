"""``POST /api/read``: the number written in one image, digit by digit, with each digit's box."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from digitnet.serving.deps import PoolDep
from digitnet.serving.protocol import RequestError
from digitnet.serving.routes.api import _IMAGE_REQUEST, TAGS, read_upload
from digitnet.serving.routes.tf_serving import BUSY_DESCRIPTION, CROSS_ORIGIN_DESCRIPTION
from digitnet.serving.schemas import (
    ErrorBody,
    NoNumberAnswer,
    NotANumberAnswer,
    NumberAnswer,
    number_answer,
)
from digitnet.serving.work import read_number_bytes, read_number_json

router = APIRouter(tags=TAGS)

_B64_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["b64"],
    "additionalProperties": False,
    "properties": {
        "b64": {
            "type": "string",
            "description": "The image file in base64 (standard or URL-safe; a data: URL too)",
        }
    },
}

_READ_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            **_IMAGE_REQUEST["requestBody"]["content"],
            "application/json": {"schema": _B64_BODY},
        },
    }
}

_READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The number; `not_a_digit: true` with a reason for marks that are not "
        "digits; `no_digit: true` for an image without a digit",
        "content": {
            "application/json": {
                "example": {
                    "number": "42",
                    "confidence": 0.99878,
                    "digits": [
                        {"digit": 4, "confidence": 0.99926, "box": [201, 51, 285, 158]},
                        {"digit": 2, "confidence": 0.99951, "box": [302, 39, 399, 150]},
                    ],
                }
            }
        },
    },
    400: {"description": "Not an image, bad base64, or a malformed form", "model": ErrorBody},
    403: {"description": CROSS_ORIGIN_DESCRIPTION, "model": ErrorBody},
    413: {"description": "Body over the size limit", "model": ErrorBody},
    415: {"description": "Neither multipart, image/* nor JSON", "model": ErrorBody},
    503: {"description": BUSY_DESCRIPTION, "model": ErrorBody},
}


@router.post(
    "/api/read",
    summary="Read the number written in one image",
    responses=_READ_RESPONSES,
    openapi_extra=_READ_REQUEST,
)
async def api_read(
    request: Request, pool: PoolDep
) -> NumberAnswer | NotANumberAnswer | NoNumberAnswer:
    """The number written on one line in an image (1 to 12 digits), as `digitnet read` reads
    it: any image `/api/predict` takes, as multipart field `file`, a raw `image/*` body, or
    JSON `{"b64": "<base64 image>"}`. Each digit comes with its probability and its box in the
    image's pixels (`x0, y0, x1, y1`), left to right; `confidence` is their product.

    Marks that are not digits answer **200** with `"number": null, "not_a_digit": true` and a
    `reason`; an image with no digit in it answers **200** with `"number": null,
    "no_digit": true`. An unreadable image answers 400."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        # Parsed and decoded in the work process: a JSON body may be megabytes of base64.
        reading = await pool.run(read_number_json, await request.body())
    else:
        data, name = await read_upload(request, ', or as JSON {"b64": "<base64 image>"}')
        if not data:
            raise RequestError("the image is empty (0 bytes)")
        reading = await pool.run(read_number_bytes, data, name)
    return number_answer(reading)
