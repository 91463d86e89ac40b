"""TensorFlow Serving's REST API: model status, metadata, and the hot ``:predict``.

Status and metadata are ordinary FastAPI routes answering ``schemas`` models. ``:predict`` is
a plain ASGI app (``PredictEndpoint``) going around FastAPI's request and dependency machinery,
which saves about 70 of the 170 us an equivalent FastAPI route spends per single-digit request
(measured in-process); ``predict_paths`` describes it in /openapi.json by hand.

A small body of numbers (up to ``ServerLimits.inline_body_bytes``, 32 KB: one digit at full
float precision is 17 KB) is parsed and predicted on the event loop, in well under a
millisecond: handing it to another process would cost more than the work. A larger body, or
one holding images, goes to a work process: a small body whose images are all small by their
headers to the light lane, anything else to the heavy one (``work.WorkLanes``).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

from fastapi import APIRouter
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from digitnet.inference.model import Model
from digitnet.serving.asgi import header, read_body, send_bytes
from digitnet.serving.deps import ModelDep
from digitnet.serving.protocol import (
    MAX_IMAGES,
    MAX_INSTANCES,
    MODEL_NAME,
    MODEL_VERSION,
    SIGNATURE_NAME,
    Predictor,
    PredictRequest,
    RequestError,
    check_model,
    decode_b64,
    dumps_json,
)
from digitnet.serving.schemas import ErrorBody, ModelMetadata, ModelStatus
from digitnet.serving.work import WorkLanes, light_image, predict_body

TAGS: list[str | Enum] = ["TensorFlow Serving"]
NOT_FOUND_DESCRIPTION = "Unknown model or version"
CROSS_ORIGIN_DESCRIPTION = "Sent by a web page of another origin (see SECURITY.md)"
BUSY_DESCRIPTION = "Every work process stayed busy: try again after Retry-After seconds"
ERROR_CONTENT = {
    "application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}}
}

router = APIRouter(
    tags=TAGS, responses={404: {"model": ErrorBody, "description": NOT_FOUND_DESCRIPTION}}
)


@router.get("/v1/models/{model_name}", summary="Model status")
async def status(model_name: str) -> ModelStatus:
    """TensorFlow Serving's GetModelStatus: one version, AVAILABLE."""
    check_model(model_name)
    return ModelStatus()


@router.get("/v1/models/{model_name}/versions/{version}", summary="Model status of one version")
async def version_status(model_name: str, version: str) -> ModelStatus:
    check_model(model_name, version)
    return ModelStatus()


@router.get("/v1/models/{model_name}/metadata", summary="Model metadata")
async def metadata(model_name: str, model: ModelDep) -> ModelMetadata:
    """TensorFlow Serving's GetModelMetadata: the serving_default signature, input
    `images` float [-1, n_inputs], output `probabilities` float [-1, n_classes]."""
    check_model(model_name)
    return ModelMetadata.of(model)


@router.get(
    "/v1/models/{model_name}/versions/{version}/metadata",
    summary="Model metadata of one version",
)
async def version_metadata(model_name: str, version: str, model: ModelDep) -> ModelMetadata:
    check_model(model_name, version)
    return ModelMetadata.of(model)


# ---------------------------------------------------------------------------------------------
# :predict

_JSON_TYPES = re.compile(
    rb"^\s*(application/(json|[\w.+-]+\+json)|"
    rb"application/x-www-form-urlencoded)\s*(;.*)?$",
    re.IGNORECASE,
)


class PredictEndpoint:
    """POST /v1/models/{name}[/versions/{version}]:predict, as a plain ASGI app."""

    def __init__(self, predictor: Predictor, pool: WorkLanes, inline_body_bytes: int) -> None:
        self.predictor = predictor
        self.pool = pool
        self.inline_body_bytes = inline_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self._answer(scope, receive)
        except RequestError as error:
            extra = [(key.lower().encode(), value.encode()) for key, value in error.headers.items()]
            await send_bytes(
                send, error.status, dumps_json({"error": str(error)}), extra_headers=extra
            )
            return
        except ConnectionAbortedError:
            return
        await send_bytes(send, 200, body)

    async def _answer(self, scope: Scope, receive: Receive) -> bytes:
        params = scope.get("path_params", {})
        check_model(params.get("model_name", ""), params.get("version"))
        if params.get("method", "predict") != "predict":
            raise RequestError(
                f"no method {params['method']!r}: this server answers :predict "
                f"(/v1/models/{MODEL_NAME}:predict)",
                404,
            )
        if scope["method"] != "POST":
            raise RequestError(
                f"{scope['method']} is not allowed here: predict takes POST with a JSON body",
                405,
                {"Allow": "POST"},
            )
        content_type = header(scope, b"content-type")
        # curl -d sends x-www-form-urlencoded; TF Serving's own examples rely on that.
        if content_type is not None and not _JSON_TYPES.match(content_type):
            raise RequestError(
                f"the content type is {content_type.decode('latin-1')!r}; send "
                f"JSON (application/json)",
                415,
            )
        body = await read_body(receive)
        if len(body) <= self.inline_body_bytes:
            request = self.predictor.parse(body)
            if not request.has_images:
                return self.predictor.predict(request)
            return await self.pool.run(predict_body, body, light=_light_images(request))
        return await self.pool.run(predict_body, body)


def _light_images(request: PredictRequest) -> bool:
    """Whether every instance of a (small, parsed) request is an image known to be cheap."""
    for instance in request.instances:
        try:
            data = decode_b64(instance.get("b64"), "instance")
        except (AttributeError, RequestError):
            return False  # the work process gives the error
        if not light_image(data):
            return False
    return True


def predict_routes(model: Model, pool: WorkLanes, inline_body_bytes: int) -> list[Route]:
    """The two ``:predict`` routes, to go first in the app: "digitnet:predict" must never be
    read as a model name by the status route.

    They match any HTTP method, and any ":method" so that TF Serving's :classify gets a clear
    404; ``PredictEndpoint`` answers those itself.
    """
    endpoint = PredictEndpoint(Predictor(model), pool, inline_body_bytes)
    return [
        Route("/v1/models/{model_name}:{method}", endpoint, include_in_schema=False),
        Route(
            "/v1/models/{model_name}/versions/{version}:{method}",
            endpoint,
            include_in_schema=False,
        ),
    ]


def predict_paths(model: Model) -> dict[str, Any]:
    """The OpenAPI path items of the ``:predict`` routes, which FastAPI does not see."""
    instance = {
        "oneOf": [
            {
                "type": "array",
                "items": {"type": "number", "minimum": 0, "maximum": 1},
                "minItems": model.n_inputs,
                "maxItems": model.n_inputs,
                "description": f"{model.n_inputs} floats in [0, 1] (MNIST form: white ink on "
                "black, "
                f"row by row); not preprocessed again",
            },
            {
                "type": "array",
                "items": {"type": "array", "items": {"type": "number"}},
                "description": "28 rows of 28 floats in [0, 1]",
            },
            {
                "type": "object",
                "required": ["b64"],
                "properties": {"b64": {"type": "string"}},
                "description": "A base64 image file (PNG, JPEG, ...), preprocessed like "
                "/api/predict",
            },
        ]
    }
    request_schema = {
        "type": "object",
        "properties": {
            "signature_name": {"type": "string", "enum": [SIGNATURE_NAME]},
            "instances": {
                "type": "array",
                "items": instance,
                "minItems": 1,
                "maxItems": MAX_INSTANCES,
                "description": "Row form",
            },
            "inputs": {
                "description": "Columnar form: a list of instances, or one instance "
                "(answered unbatched)"
            },
        },
    }
    row = {
        "type": "array",
        "items": {"type": "number"},
        "minItems": model.n_classes,
        "maxItems": model.n_classes,
    }
    operation = {
        "tags": TAGS,
        "summary": "Predict (TensorFlow Serving REST)",
        "description": (
            'Row form `{"instances": [...]}` answers `{"predictions": [[p0..p9], ...]}` '
            '(a reader model adds p10, the probability of "not a digit"; see /api/health); '
            'columnar form `{"inputs": ...}` answers `{"outputs": ...}`. At most '
            f"{MAX_INSTANCES:,} instances per request, of which at most {MAX_IMAGES} images. "
            "Values outside [0, 1], NaN, "
            "non-numbers, wrong shapes and undecodable images answer 400."
        ),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": request_schema,
                    "example": {"instances": [[0.0] * 4 + ["...780 more floats in [0, 1]"]]},
                }
            },
        },
        "responses": {
            "200": {
                "description": "Class probabilities per instance",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "predictions": {"type": "array", "items": row},
                                "outputs": {"type": "array"},
                            },
                        }
                    }
                },
            },
            "400": {"description": "Bad request", "content": ERROR_CONTENT},
            "403": {"description": CROSS_ORIGIN_DESCRIPTION, "content": ERROR_CONTENT},
            "404": {"description": NOT_FOUND_DESCRIPTION, "content": ERROR_CONTENT},
            "413": {"description": "Body over the size limit", "content": ERROR_CONTENT},
            "415": {"description": "Not JSON", "content": ERROR_CONTENT},
            "503": {"description": BUSY_DESCRIPTION, "content": ERROR_CONTENT},
        },
    }
    path_parameters = [
        {
            "name": "model_name",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": [MODEL_NAME]},
        }
    ]
    version_parameter = [
        {
            "name": "version",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": [MODEL_VERSION]},
        }
    ]
    return {
        "/v1/models/{model_name}:predict": {
            "post": dict(operation, operationId="predict", parameters=path_parameters)
        },
        "/v1/models/{model_name}/versions/{version}:predict": {
            "post": dict(
                operation,
                operationId="predict_version",
                summary="Predict with one version",
                parameters=path_parameters + version_parameter,
            )
        },
    }
