"""``digitnet serve``: a draw-a-digit page and a TensorFlow-Serving-compatible REST API.

Routes (``MODEL_NAME`` is "digitnet", ``MODEL_VERSION`` is "1"):

    GET  /                                        the draw-a-digit page (static/index.html)
    GET  /docs                                    API reference rendered from /openapi.json,
                                                  self-hosted (FastAPI's Swagger UI needs a CDN)
    POST /api/predict                             one image (multipart field ``file``, or a raw
                                                  image/* body) -> digit, confidence,
                                                  probabilities, the 28x28 image the model saw
    GET  /api/health                              {"status": "ok", "model": {...}}
    POST /v1/models/digitnet[/versions/1]:predict TF Serving's predict, row or columnar form
    GET  /v1/models/digitnet[/versions/1]         TF Serving's model status
    GET  /v1/models/digitnet[/versions/1]/metadata  TF Serving's signature metadata

Every error answers ``{"error": "<what was wrong>"}`` with a 4xx status (404 unknown model,
version or route; 405 wrong method; 413 body too large; 415 wrong content type; 400 anything
else the client sent wrong). 500 is reserved for bugs, and still answers JSON.

Prediction runs the model's NumPy forward pass: this module never imports TensorFlow, so the
server starts in about a second.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from digitnet import __version__
from digitnet.errors import DigitnetError, ImageError, NoDigitFound
from digitnet.models import architectures

try:  # orjson parses a 784-float request about 5x faster than json and refuses NaN itself
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    orjson = None

MODEL_NAME = "digitnet"
MODEL_VERSION = "1"
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
# A client batching the whole MNIST test set should split it. 1,000 instances predict in a few
# milliseconds; written with 4 decimals they are about 4 MB of JSON, within the body limit.
MAX_INSTANCES = 1000
# Enough for a typical phone photo (a 12-megapixel JPEG is 3 to 5 MB); far below what would
# strain memory. `digitnet serve --max-request-mb` changes it.
MAX_BODY_BYTES = 5 * 1024 * 1024
MNIST_SIDE = 28
STATIC_DIR = Path(__file__).with_name("static")
NO_DIGIT_MESSAGE = "no digit found"

log = logging.getLogger("digitnet.serving.server")

# Pages may load only what digitnet itself serves: the page works offline, and nothing a user
# draws leaves the machine except to this server.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class RequestError(DigitnetError):
    """A request the client got wrong: answered ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class BodyTooLarge(RequestError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the limit of {_size(limit)}", 413)


def _size(count: int) -> str:
    return f"{count / 1024 / 1024:g} MB" if count >= 1024 * 1024 else f"{count:,} bytes"


# ---------------------------------------------------------------------------------------------
# JSON


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def loads_json(body: bytes) -> Any:
    """Parse strict JSON (no NaN/Infinity); RequestError(400) saying where it is malformed."""
    if not body.strip():
        raise RequestError(
            "the request body is empty: send a JSON object such as "
            '{"instances": [[...784 floats in [0, 1]...]]}'
        )
    try:
        if orjson is not None:
            return orjson.loads(body)
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:  # orjson.JSONDecodeError is a ValueError
        raise RequestError(f"the request body is not valid JSON: {error}") from None


def dumps_json(value: Any) -> bytes:
    """JSON bytes; NumPy arrays and scalars allowed."""
    if orjson is not None:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(value, default=_numpy_default, separators=(",", ":")).encode("utf-8")


def _numpy_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_response(value: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(dumps_json(value), status, headers=headers, media_type="application/json")


def error_response(message: str, status: int, headers: dict | None = None) -> Response:
    return json_response({"error": message}, status, headers)


# ---------------------------------------------------------------------------------------------
# TF Serving's predict request -> arrays


class InstanceShapes:
    """The nested-list shapes one instance may take for a model, e.g. (784,) and (28, 28)."""

    def __init__(self, model) -> None:
        self.n_inputs = model.n_inputs
        shapes = {(self.n_inputs,), tuple(model.architecture["input_shape"])}
        if self.n_inputs == MNIST_SIDE * MNIST_SIDE:
            shapes |= {(MNIST_SIDE, MNIST_SIDE), (MNIST_SIDE, MNIST_SIDE, 1)}
        self.accepted = shapes
        self.images_fit = self.n_inputs == MNIST_SIDE * MNIST_SIDE

    def describe(self) -> str:
        return " or ".join(
            "x".join(map(str, shape)) if len(shape) > 1 else f"{shape[0]} flat values"
            for shape in sorted(self.accepted)
        )


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _flatten_numbers(value: Any, where: str, exact: bool) -> tuple[tuple[int, ...], list]:
    """(shape, flat list) of a rectangular nested list of JSON numbers.

    With ``exact`` every leaf must be an int or float (bool is a subclass of int, and numpy
    would quietly turn "0.5" into 0.5); without it leaves are left for ``instances_to_batch``
    to check through the array's dtype, which is 20 us cheaper per 784 values.
    """
    if not isinstance(value, list):
        raise RequestError(f"{where} is {_type_name(value)}, expected a list of numbers")
    if not value:
        raise RequestError(f"{where} is an empty list")
    if not isinstance(value[0], list):
        if exact and not set(map(type, value)) <= {float, int}:
            index, bad = next((i, v) for i, v in enumerate(value) if type(v) not in (float, int))
            raise RequestError(
                f"{where}[{index}] is {_type_name(bad)} ({json.dumps(bad)}), not a number"
            )
        return (len(value),), value
    parts = [_flatten_numbers(item, f"{where}[{index}]", exact) for index, item in enumerate(value)]
    first_shape = parts[0][0]
    for index, (shape, _) in enumerate(parts):
        if shape != first_shape:
            raise RequestError(
                f"{where} is ragged: {where}[0] has shape {list(first_shape)} "
                f"but {where}[{index}] has shape {list(shape)}"
            )
    flat = [number for _, numbers in parts for number in numbers]
    return (len(value),) + first_shape, flat


def decode_b64(text: Any, where: str) -> bytes:
    """Standard or URL-safe base64, padding optional, a ``data:...;base64,`` prefix allowed."""
    if not isinstance(text, str):
        raise RequestError(f'{where}["b64"] is {_type_name(text)}, expected a base64 string')
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f'{where}["b64"] is not valid base64') from None
    if not data:
        raise RequestError(f'{where}["b64"] is empty')
    return data


def _image_instance(data: bytes, where: str, shapes: InstanceShapes) -> np.ndarray:
    """Encoded image bytes -> MNIST form (784,), through the shared preprocessing."""
    from digitnet.inference.preprocess import preprocess_image

    if not shapes.images_fit:
        raise RequestError(
            f"{where} is an image, but this model takes {shapes.n_inputs} "
            f"values per instance, not a 28x28 image"
        )
    try:
        return preprocess_image(data, name=where).reshape(-1)
    except NoDigitFound as error:
        raise RequestError(f"{NO_DIGIT_MESSAGE}: {error}") from None
    except ImageError as error:
        raise RequestError(str(error)) from None


def _instance_values(instance: Any, where: str, shapes: InstanceShapes, exact: bool) -> Any:
    """One instance -> a flat list of numbers or a float32 (n_inputs,) array, validated (leaf
    types only if ``exact``)."""
    if isinstance(instance, dict):
        if set(instance) == {"b64"}:
            return _image_instance(decode_b64(instance["b64"], where), where, shapes)
        if set(instance) == {INPUT_NAME}:  # TF Serving's named-input form
            return _instance_values(instance[INPUT_NAME], f"{where}.{INPUT_NAME}", shapes, exact)
        raise RequestError(
            f"{where} is an object with keys {sorted(instance)}; an instance is "
            f'a list of numbers, {{"b64": "<base64 image>"}} or '
            f'{{"{INPUT_NAME}": [...]}}'
        )
    shape, numbers = _flatten_numbers(instance, where, exact)
    if shape not in shapes.accepted:
        detail = f"{shape[0]} values" if len(shape) == 1 else "shape " + "x".join(map(str, shape))
        raise RequestError(
            f"{where} has {detail}; this model takes {shapes.describe()} per instance"
        )
    return numbers


def _check_range(batch: np.ndarray, where: str) -> None:
    # NaN compares false both ways, so test finiteness first.
    if not np.isfinite(batch).all():
        row = int(np.nonzero(~np.isfinite(batch).all(axis=1))[0][0])
        raise RequestError(f"{where}[{row}] holds a value that is not finite")
    low, high = batch.min(axis=1), batch.max(axis=1)
    bad = np.nonzero((low < 0.0) | (high > 1.0))[0]
    if len(bad):
        row = int(bad[0])
        raise RequestError(
            f"{where}[{row}] has values outside [0, 1] (from {low[row]:g} to {high[row]:g}): "
            f"instances are MNIST form, floats in [0, 1], white ink on black; scale 0..255 "
            f'pixels by 1/255, or send the image itself as {{"b64": "..."}}'
        )


def _is_single_instance(value: Any, shapes: InstanceShapes) -> bool:
    """Whether the columnar ``inputs`` value is one instance rather than a list of them."""
    if isinstance(value, dict):
        return True
    if not isinstance(value, list) or not value:
        return False
    leading: list[int] = []
    item = value
    while isinstance(item, list) and item:
        leading.append(len(item))
        item = item[0]
    return not isinstance(value[0], (list, dict)) or tuple(leading) in shapes.accepted


def parse_predict_request(payload: Any, shapes: InstanceShapes) -> tuple[list, str, bool]:
    """Validate a decoded TF Serving predict request.

    Returns (instances, answer key, single): the instances as given, "predictions" for the row
    form or "outputs" for the columnar form, and whether the columnar input was one unbatched
    instance (answered unbatched).
    """
    if not isinstance(payload, dict):
        raise RequestError(
            f"the request is {_type_name(payload)}; send a JSON object such "
            f'as {{"instances": [...]}}'
        )
    unknown = sorted(set(payload) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise RequestError(
            f'unknown field(s) {unknown}: a request holds "instances" (row '
            f'form) or "inputs" (columnar form), and optionally '
            f'"signature_name"'
        )
    signature = payload.get("signature_name", SIGNATURE_NAME)
    if signature != SIGNATURE_NAME:
        raise RequestError(
            f"unknown signature_name {json.dumps(signature)}: this model has "
            f'only "{SIGNATURE_NAME}"'
        )
    if "instances" in payload and "inputs" in payload:
        raise RequestError(
            'give either "instances" (row form) or "inputs" (columnar form), not both'
        )
    if "instances" in payload:
        instances, key, where, single = payload["instances"], "predictions", "instances", False
    elif "inputs" in payload:
        instances, key, where = payload["inputs"], "outputs", "inputs"
        if isinstance(instances, dict) and set(instances) == {INPUT_NAME}:
            instances, where = instances[INPUT_NAME], f"inputs.{INPUT_NAME}"
        single = _is_single_instance(instances, shapes)
        if single:
            instances = [instances]
    else:
        raise RequestError(
            'the request has no "instances" (row form) or "inputs" (columnar '
            'form): send {"instances": [[...784 floats in [0, 1]...]]}'
        )
    if not isinstance(instances, list):
        raise RequestError(f"{where} is {_type_name(instances)}, expected a list of instances")
    if not instances:
        raise RequestError(f"{where} is an empty list: send at least one instance")
    if len(instances) > MAX_INSTANCES:
        raise RequestError(
            f"{where} holds {len(instances):,} instances; at most "
            f"{MAX_INSTANCES:,} per request: split the batch"
        )
    return instances, key, single


def instances_to_batch(
    instances: list, shapes: InstanceShapes, where: str, exact: bool = True
) -> np.ndarray:
    """Validated instances -> float32 (n, n_inputs) in [0, 1].

    ``exact=False`` is for bodies without ``true``/``false`` in them: leaf types are then
    checked by the dtype numpy infers (strings, null and objects do not give a number dtype),
    and only a failure is examined leaf by leaf for its message.
    """
    rows = [
        _instance_values(item, f"{where}[{index}]", shapes, exact)
        for index, item in enumerate(instances)
    ]
    try:
        batch = np.array(rows)
    except (ValueError, OverflowError):
        batch = None
    if batch is None or batch.dtype.kind not in "fiu" or batch.ndim != 2:
        if not exact:
            return instances_to_batch(instances, shapes, where, exact=True)
        # Every leaf is an int or a float, yet no number array: an int beyond 64 bits.
        raise RequestError(f"{where} holds a number too large to be a pixel value")
    _check_range(batch, where)
    return batch.astype(np.float32)


def _has_images(instances: list) -> bool:
    return any(isinstance(item, dict) for item in instances)


class Predictor:
    """TF Serving's predict for one model: request body bytes -> answer bytes."""

    def __init__(self, model) -> None:
        self.model = model
        self.shapes = InstanceShapes(model)

    def parse(self, body: bytes) -> tuple[list, str, bool]:
        return parse_predict_request(loads_json(body), self.shapes)

    def predict(self, instances: list, key: str, single: bool, exact: bool = True) -> bytes:
        where = "inputs" if key == "outputs" else "instances"
        batch = instances_to_batch(instances, self.shapes, where, exact)
        probabilities = self.model.predict_proba(batch)
        return dumps_json({key: probabilities[0] if single else probabilities})

    async def answer(self, body: bytes) -> bytes:
        """Answer bytes; RequestError for a bad request."""
        instances, key, single = self.parse(body)
        # JSON booleans are the one non-number numpy would take for a number.
        exact = b"true" in body or b"false" in body
        if _has_images(instances):
            # Preprocessing a photo takes tens of milliseconds: keep the event loop free.
            return await run_in_threadpool(self.predict, instances, key, single, exact)
        return self.predict(instances, key, single, exact)


# ---------------------------------------------------------------------------------------------
# Raw ASGI pieces: the request-size limit and log middleware, and the hot predict endpoint.


async def read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("the client went away")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_bytes(
    send: Callable,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    extra_headers: list | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + (extra_headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class LimitAndLogMiddleware:
    """Refuse bodies over ``max_body_bytes`` (413) and log one line per request.

    The limit is checked on Content-Length before reading anything, and again while the body
    arrives (chunked uploads declare no length). Pure ASGI: Starlette's BaseHTTPMiddleware
    would cost more than the whole prediction.
    """

    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_logged(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._limited(scope, receive, send_logged)
        except BaseException:
            status = status or 500
            raise
        finally:
            client = scope.get("client")
            log.info(
                "%s %s %s %d %.1f ms",
                client[0] if client else "-",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000.0,
            )

    async def _limited(self, scope, receive, send) -> None:
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                await send_bytes(
                    send, 400, dumps_json({"error": "Content-Length is not a whole number"})
                )
                return
            if length > limit:
                await send_bytes(
                    send,
                    413,
                    dumps_json({"error": str(BodyTooLarge(limit))}),
                    extra_headers=[(b"connection", b"close")],
                )
                return
        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, receive_limited, send)


_JSON_TYPES = re.compile(
    rb"^\s*(application/(json|[\w.+-]+\+json)|"
    rb"application/x-www-form-urlencoded)\s*(;.*)?$",
    re.IGNORECASE,
)


class PredictEndpoint:
    """POST /v1/models/{name}[/versions/{version}]:predict, as a plain ASGI app.

    Going around FastAPI's request and dependency machinery saves about 70 of the 170 us an
    equivalent FastAPI route spends per single-digit request (measured in-process); the route
    is still described in /openapi.json (see ``_document_predict``).
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    async def __call__(self, scope, receive, send) -> None:
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

    async def _answer(self, scope, receive) -> bytes:
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
        content_type = _header(scope, b"content-type")
        # curl -d sends x-www-form-urlencoded; TF Serving's own examples rely on that.
        if content_type is not None and not _JSON_TYPES.match(content_type):
            raise RequestError(
                f"the content type is {content_type.decode('latin-1')!r}; send "
                f"JSON (application/json)",
                415,
            )
        return await self.predictor.answer(await read_body(receive))


# ---------------------------------------------------------------------------------------------
# The app


def check_model(name: str, version: str | None = None) -> None:
    """RequestError(404) unless the URL names this server's model (and version)."""
    if ":" in name:  # e.g. TF Serving's :classify and :regress, which a digit model lacks
        method = name.split(":", 1)[1]
        raise RequestError(
            f"no method {method!r}: this server answers :predict (/v1/models/{MODEL_NAME}:predict)",
            404,
        )
    if name != MODEL_NAME:
        raise RequestError(
            f"model {name!r} not found: this server serves "
            f"{MODEL_NAME!r} (/v1/models/{MODEL_NAME})",
            404,
        )
    if version is not None and version != MODEL_VERSION:
        raise RequestError(
            f"version {version!r} of model {MODEL_NAME!r} not found: this "
            f"server has version {MODEL_VERSION}",
            404,
        )


def model_status() -> dict:
    return {
        "model_version_status": [
            {
                "version": MODEL_VERSION,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def _tensor_info(size: int, tensor_name: str) -> dict:
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": str(size), "name": ""}],
            "unknown_rank": False,
        },
        "name": tensor_name,
    }


def model_metadata(model) -> dict:
    """TF Serving's GetModelMetadata answer, plus a "digitnet" block describing the model."""
    signature = {
        "inputs": {INPUT_NAME: _tensor_info(model.n_inputs, f"{SIGNATURE_NAME}_{INPUT_NAME}:0")},
        "outputs": {OUTPUT_NAME: _tensor_info(model.n_classes, "StatefulPartitionedCall:0")},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": MODEL_NAME, "signature_name": "", "version": MODEL_VERSION},
        "metadata": {
            "signature_def": {"signature_def": {SIGNATURE_NAME: signature}},
            "digitnet": model_summary(model),
        },
    }


def model_summary(model) -> dict:
    return {
        "name": model.name,
        "architecture": architectures.describe(model.architecture),
        "inputs": model.n_inputs,
        "classes": model.n_classes,
        "digitnet_version": __version__,
    }


def image_answer(prediction) -> dict:
    """The /api/predict answer for a digitnet.images.ImagePrediction."""
    if prediction.no_digit:
        return {
            "digit": None,
            "confidence": None,
            "low_confidence": False,
            "probabilities": None,
            "image": None,
            "no_digit": True,
            "message": NO_DIGIT_MESSAGE,
            "detail": prediction.error,
        }
    return {
        "digit": prediction.digit,
        "confidence": prediction.confidence,
        "low_confidence": prediction.low_confidence,
        "probabilities": prediction.probabilities,
        # Four decimals: 0.0001 is far below one grey level, and it keeps the answer small.
        "image": np.round(prediction.image.astype(np.float64), 4),
        "no_digit": False,
    }


async def read_upload(request: Request) -> tuple[bytes, str]:
    """(bytes, name) of the image in a multipart ``file`` field or a raw image body."""
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
        f"multipart/form-data (field 'file') or as a raw image/* body",
        415,
    )


def create_app(model, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving ``model`` (a ``digitnet.Model``): page, API, docs."""
    import digitnet.inference.preprocess  # noqa: F401 - imported now so the first drawing answers quickly
    from digitnet.inference.predict import predict_image

    app = FastAPI(
        title="digitnet",
        version=__version__,
        description="Handwritten-digit recognition. TensorFlow Serving's REST API at "
        f"/v1/models/{MODEL_NAME}, and a simpler image API at /api/predict.",
        docs_url=None,
        redoc_url=None,  # both load from a CDN; /docs below is self-hosted
    )
    app.state.model = model
    predictor = Predictor(model)
    predict_endpoint = PredictEndpoint(predictor)
    # Plain ASGI routes match any HTTP method, and any ":method" so that TF Serving's :classify
    # gets a clear 404; PredictEndpoint answers those itself. They come first so that
    # "digitnet:predict" is never read as a model name by the status route.
    app.router.routes.insert(
        0, Route("/v1/models/{model_name}:{method}", predict_endpoint, include_in_schema=False)
    )
    app.router.routes.insert(
        1,
        Route(
            "/v1/models/{model_name}/versions/{version}:{method}",
            predict_endpoint,
            include_in_schema=False,
        ),
    )

    _add_error_handlers(app)
    _add_page_routes(app)
    _add_tf_serving_routes(app, model)

    @app.post(
        "/api/predict",
        tags=["image"],
        summary="Predict the digit in one image",
        responses=_IMAGE_RESPONSES,
        openapi_extra=_IMAGE_REQUEST,
    )
    async def api_predict(request: Request) -> Response:
        """Any image `digitnet predict` reads (PNG, JPEG, ...: a photo, scan or drawing of one
        digit, dark on light or light on dark, transparency allowed), as multipart field `file`
        or as a raw `image/*` body. It is preprocessed into MNIST form (28x28, white ink on
        black) and predicted.

        An image with no digit in it answers **200** with `"digit": null, "no_digit": true,
        "message": "no digit found"`: an empty drawing is a normal state, not an error. An
        unreadable image answers 400."""
        data, name = await read_upload(request)
        if not data:
            raise RequestError("the image is empty (0 bytes)")
        prediction = await run_in_threadpool(predict_image, model, data, name)
        if not prediction.ok and not prediction.no_digit:
            raise RequestError(prediction.error)
        return json_response(image_answer(prediction))

    @app.get("/api/health", tags=["image"], summary="Liveness and the model served")
    async def api_health() -> Response:
        return json_response({"status": "ok", "model": model_summary(model)})

    app.add_middleware(LimitAndLogMiddleware, max_body_bytes=max_body_bytes)
    _document_predict(app, model)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def request_error(request: Request, error: RequestError) -> Response:
        return error_response(str(error), error.status, error.headers)

    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        message = {
            404: f"no such route: {request.method} {request.url.path} (see /docs)",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(error.status_code, str(error.detail))
        return error_response(message, error.status_code, getattr(error, "headers", None))

    async def validation_error(request: Request, error: RequestValidationError) -> Response:
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


def _add_page_routes(app: FastAPI) -> None:
    def page(name: str) -> Callable:
        async def serve_page() -> FileResponse:
            return FileResponse(STATIC_DIR / name, media_type="text/html", headers=_PAGE_HEADERS)

        return serve_page

    app.get("/", include_in_schema=False)(page("index.html"))
    app.get("/docs", include_in_schema=False)(page("docs.html"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _add_tf_serving_routes(app: FastAPI, model) -> None:
    tags = ["TensorFlow Serving"]

    @app.get("/v1/models/{model_name}", tags=tags, summary="Model status")
    async def status(model_name: str) -> Response:
        """TensorFlow Serving's GetModelStatus: one version, AVAILABLE."""
        check_model(model_name)
        return json_response(model_status())

    @app.get(
        "/v1/models/{model_name}/versions/{version}",
        tags=tags,
        summary="Model status of one version",
    )
    async def version_status(model_name: str, version: str) -> Response:
        check_model(model_name, version)
        return json_response(model_status())

    @app.get("/v1/models/{model_name}/metadata", tags=tags, summary="Model metadata")
    async def metadata(model_name: str) -> Response:
        """TensorFlow Serving's GetModelMetadata: the serving_default signature, input
        `images` float [-1, n_inputs], output `probabilities` float [-1, n_classes]."""
        check_model(model_name)
        return json_response(model_metadata(model))

    @app.get(
        "/v1/models/{model_name}/versions/{version}/metadata",
        tags=tags,
        summary="Model metadata of one version",
    )
    async def version_metadata(model_name: str, version: str) -> Response:
        check_model(model_name, version)
        return json_response(model_metadata(model))


_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_ERROR_CONTENT = {"application/json": {"schema": _ERROR_SCHEMA}}

_IMAGE_REQUEST = {
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

_IMAGE_RESPONSES = {
    200: {
        "description": "The prediction, or `no_digit: true` for an image without a digit",
        "content": {
            "application/json": {
                "example": {
                    "digit": 7,
                    "confidence": 0.98,
                    "low_confidence": False,
                    "probabilities": [0.0, 0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.98, 0.0, 0.01],
                    "image": "[[28 rows of 28 floats in [0, 1], white ink on black]]",
                    "no_digit": False,
                }
            }
        },
    },
    400: {"description": "Not an image, or a malformed form", "content": _ERROR_CONTENT},
    413: {"description": "Body over the size limit", "content": _ERROR_CONTENT},
    415: {"description": "Neither multipart nor image/*", "content": _ERROR_CONTENT},
}


def _document_predict(app: FastAPI, model) -> None:
    """Describe the plain-ASGI predict routes in /openapi.json, which only sees FastAPI's."""
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
        "tags": ["TensorFlow Serving"],
        "summary": "Predict (TensorFlow Serving REST)",
        "description": (
            'Row form `{"instances": [...]}` answers `{"predictions": [[p0..p9], ...]}`; '
            'columnar form `{"inputs": ...}` answers `{"outputs": ...}`. At most '
            f"{MAX_INSTANCES:,} instances per request. Values outside [0, 1], NaN, "
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
            "400": {"description": "Bad request", "content": _ERROR_CONTENT},
            "404": {"description": "Unknown model or version", "content": _ERROR_CONTENT},
            "413": {"description": "Body over the size limit", "content": _ERROR_CONTENT},
            "415": {"description": "Not JSON", "content": _ERROR_CONTENT},
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

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            predict_paths = {
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
            schema["paths"] = {**predict_paths, **_without_validation_errors(schema["paths"])}
            schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
            schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _without_validation_errors(paths: dict) -> dict:
    """FastAPI documents a 422 for every route with parameters; here path parameters are plain
    strings that cannot fail validation, and a wrong model name or version is a 404."""
    for path, operations in paths.items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if path.startswith("/v1/models/"):
                responses["404"] = {
                    "description": "Unknown model or version",
                    "content": _ERROR_CONTENT,
                }
    return paths


# ---------------------------------------------------------------------------------------------
# Running it


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


def build_server(app: FastAPI, log_requests: bool = True):
    """A uvicorn Server for ``app``: httptools and uvloop when installed, uvicorn's own access
    log off (``LimitAndLogMiddleware`` writes one cheaper line per request)."""
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
        log.setLevel(logging.WARNING)
        return
    log.setLevel(logging.INFO)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False


def serve(
    model_path,
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
