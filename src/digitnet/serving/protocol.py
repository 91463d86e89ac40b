"""TensorFlow Serving's REST predict protocol: request bytes -> validated batch -> answer bytes.

Pure functions and small classes, no web framework: ``Predictor`` turns a request body into
``{"predictions": ...}`` or ``{"outputs": ...}`` bytes, and every client mistake raises
``RequestError`` with the status and the one-line message to answer.

Names (``MODEL_NAME`` is "digitnet", ``MODEL_VERSION`` is "1"):

    POST /v1/models/digitnet[/versions/1]:predict   row form  {"instances": [...]}
                                                    columnar  {"inputs": ...}
    an instance: 784 (or 28x28, 28x28x1) floats in [0, 1], {"b64": "<image>"}, or
                 {"images": <either>} (TF Serving's named-input form)
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from digitnet.errors import DigitnetError, ImageError, NoDigitFound

if TYPE_CHECKING:
    from digitnet.inference.model import Model

try:  # orjson parses a 784-float request about 5x faster than json and refuses NaN itself
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    orjson = None  # type: ignore[assignment]

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
NO_DIGIT_MESSAGE = "no digit found"


class RequestError(DigitnetError):
    """A request the client got wrong: answered ``{"error": message}`` with ``status``."""

    def __init__(
        self, message: str, status: int = 400, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class BodyTooLarge(RequestError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the limit of {_size(limit)}", 413)


def _size(count: int) -> str:
    return f"{count / 1024 / 1024:g} MB" if count >= 1024 * 1024 else f"{count:,} bytes"


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


# ---------------------------------------------------------------------------------------------
# The predict request -> a float32 batch


class InstanceShapes:
    """The nested-list shapes one instance may take for a model, e.g. (784,) and (28, 28)."""

    def __init__(self, model: Model) -> None:
        self.n_inputs = model.n_inputs
        shapes = {(self.n_inputs,), tuple(model.architecture["input_shape"])}
        if self.n_inputs == MNIST_SIDE * MNIST_SIDE:
            shapes |= {(MNIST_SIDE, MNIST_SIDE), (MNIST_SIDE, MNIST_SIDE, 1)}
        self.accepted: set[tuple[int, ...]] = shapes
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


def _flatten_numbers(value: Any, where: str, exact: bool) -> tuple[tuple[int, ...], list[Any]]:
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


class PredictRequest(NamedTuple):
    """A validated predict request, before its instances are turned into numbers."""

    instances: list[Any]
    #: "predictions" for the row form, "outputs" for the columnar form
    key: str
    #: the columnar input was one unbatched instance (answered unbatched)
    single: bool
    #: check every leaf's type (the body holds true/false, which numpy would take for numbers)
    exact: bool = True

    @property
    def has_images(self) -> bool:
        return any(isinstance(item, dict) for item in self.instances)


def parse_predict_request(payload: Any, shapes: InstanceShapes) -> tuple[list[Any], str, bool]:
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
    instances: list[Any], shapes: InstanceShapes, where: str, exact: bool = True
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
        batch: np.ndarray | None = np.array(rows)
    except (ValueError, OverflowError):
        batch = None
    if batch is None or batch.dtype.kind not in "fiu" or batch.ndim != 2:
        if not exact:
            return instances_to_batch(instances, shapes, where, exact=True)
        # Every leaf is an int or a float, yet no number array: an int beyond 64 bits.
        raise RequestError(f"{where} holds a number too large to be a pixel value")
    _check_range(batch, where)
    return batch.astype(np.float32)


class Predictor:
    """TF Serving's predict for one model: request body bytes -> answer bytes.

    ``parse`` is cheap; ``predict`` preprocesses images (tens of milliseconds a photo), so a
    server runs it off the event loop when ``PredictRequest.has_images``.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.shapes = InstanceShapes(model)

    def parse(self, body: bytes) -> PredictRequest:
        """RequestError for a malformed request."""
        instances, key, single = parse_predict_request(loads_json(body), self.shapes)
        # JSON booleans are the one non-number numpy would take for a number.
        exact = b"true" in body or b"false" in body
        return PredictRequest(instances, key, single, exact)

    def predict(self, request: PredictRequest) -> bytes:
        """The answer's JSON bytes; RequestError for a bad instance."""
        where = "inputs" if request.key == "outputs" else "instances"
        batch = instances_to_batch(request.instances, self.shapes, where, request.exact)
        probabilities = self.model.predict_proba(batch)
        return dumps_json({request.key: probabilities[0] if request.single else probabilities})
