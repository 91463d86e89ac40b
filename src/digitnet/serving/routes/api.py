"""The JSON API the page uses: ``POST /api/predict`` (one image) and ``GET /api/health``."""

from __future__ import annotations

from enum import Enum
from typing import Any

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from digitnet.serving.deps import ModelDep, PoolDep
from digitnet.serving.protocol import RequestError
from digitnet.serving.routes.tf_serving import BUSY_DESCRIPTION, CROSS_ORIGIN_DESCRIPTION
from digitnet.serving.schemas import (
    DigitAnswer,
    ErrorBody,
    Health,
    ModelSummary,
    NoDigitAnswer,
    NotADigitAnswer,
    SeveralDigitsAnswer,
    image_answer,
)
from digitnet.serving.work import light_image, predict_image_bytes

TAGS: list[str | Enum] = ["image"]

router = APIRouter(tags=TAGS)

# The body is read by hand (``read_upload``) because a raw image/* body is allowed too.
_IMAGE_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The prediction; `not_a_digit: true` for an image a reader model "
        "refuses; `no_digit: true` for an image without a digit; `several_digits: true` and "
        "the `number` for an image holding several",
        "content": {
            "application/json": {
                "example": {
                    "digit": 7,
                    "confidence": 0.98,
                    "low_confidence": False,
                    "probabilities": [0.0, 0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.98, 0.0, 0.01],
                    "image": "[[28 rows of 28 floats in [0, 1], white ink on black]]",
                    "no_digit": False,
                    "not_a_digit": False,
                }
            }
        },
    },
    400: {"description": "Not an image, or a malformed form", "model": ErrorBody},
    403: {"description": CROSS_ORIGIN_DESCRIPTION, "model": ErrorBody},
    413: {"description": "Body over the size limit", "model": ErrorBody},
    415: {"description": "Neither multipart nor image/*", "model": ErrorBody},
    503: {"description": BUSY_DESCRIPTION, "model": ErrorBody},
}


async def read_upload(request: Request, other_forms: str = "") -> tuple[bytes, str]:
    """(bytes, name) of the image in a multipart ``file`` field or a raw image body.

    ``other_forms`` names what else the route accepts, for the message refusing other content
    types (", or ..." )."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        try:
            form = await request.form(max_files=4, max_fields=16)
        except RequestError:
            raise
        except StarletteHTTPException as error:  # Starlette's wrapping of a multipart error
            raise RequestError(f"the multipart body is malformed: {error.detail}") from None
        except Exception as error:  # python-multipart's errors have no common base class
            raise RequestError(f"the multipart body is malformed: {error}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            fields = ", ".join(sorted(form.keys())) or "none"
            raise RequestError(
                f"the multipart form has no file in a field named 'file' "
                f"(fields: {fields}); send -F file=@digit.png"
            )
        return await upload.read(), upload.filename or "the upload"
    if media_type.startswith("image/") or media_type == "application/octet-stream":
        return await request.body(), "the upload"
    raise RequestError(
        f"the content type is {content_type or 'missing'!r}; send the image as "
        f"multipart/form-data (field 'file') or as a raw image/* body{other_forms}",
        415,
    )


@router.post(
    "/api/predict",
    summary="Predict the digit in one image",
    responses=_IMAGE_RESPONSES,
    openapi_extra=_IMAGE_REQUEST,
)
async def api_predict(
    request: Request, pool: PoolDep
) -> DigitAnswer | NotADigitAnswer | NoDigitAnswer | SeveralDigitsAnswer:
    """Any image `digitnet predict` reads (PNG, JPEG, ...: a photo, scan or drawing of one
    digit, dark on light or light on dark, transparency allowed), as multipart field `file`
    or as a raw `image/*` body. It is preprocessed into MNIST form (28x28, white ink on
    black) and predicted.

    An image with no digit in it answers **200** with `"digit": null, "no_digit": true,
    "message": "no digit found"`: an empty drawing is a normal state, not an error. A model
    with a "not a digit" class (the reader) answers a letter, symbol, shape or scribble with
    `"digit": null, "not_a_digit": true`, a `reason`, the probability of "not a digit" as
    `confidence` and the ten digits' `probabilities`. An image holding several digits answers
    `"digit": null, "several_digits": true` with the `number` they read (`/api/read` reads
    numbers). An unreadable image answers 400."""
    data, name = await read_upload(request)
    if not data:
        raise RequestError("the image is empty (0 bytes)")
    prediction = await pool.run(predict_image_bytes, data, name, light=light_image(data))
    if not prediction.ok and not prediction.no_digit:
        raise RequestError(prediction.error or "the image cannot be read")
    return image_answer(prediction)


@router.get("/api/health", summary="Liveness and the model served")
async def api_health(model: ModelDep) -> Health:
    return Health(model=ModelSummary.of(model))
