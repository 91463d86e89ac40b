"""Model and checkpoint files: safetensors with a JSON header, a checksum, and no code in them.

A digitnet file is a standard safetensors file. Its tensors are the parameters (and, in a
checkpoint, the optimiser state); its string metadata holds::

    format          "digitnet-model" or "digitnet-checkpoint"
    format_version  "1"
    header          JSON: architecture, training settings, metrics, history, data fingerprint,
                    digitnet version (and for checkpoints: epoch, step, early-stopping state)
    sha256          over the header and every tensor's name, dtype, shape and bytes
    hmac_sha256     only when written with DIGITNET_MODEL_KEY set: HMAC-SHA256 of sha256 with
                    that key

Loading parses JSON and raw little-endian arrays only, so a file can never execute code. Any
file, however crafted, either loads or is refused with a ``ModelFileError`` and a one-line
reason: its size, structure, offsets, JSON and field types are checked before they are used.
The sha256 detects damage (a truncated download, a flipped bit), not a deliberate edit: whoever
can edit the file can recompute it. With DIGITNET_MODEL_KEY set, files are signed when written
and must carry a valid signature made with that key to load, which an edit without the key
cannot produce (SECURITY.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitnet import __version__
from digitnet.atomic import atomic_write_bytes
from digitnet.errors import ConfigError, ModelFileError
from digitnet.files import NotARegularFile, open_regular_file

if TYPE_CHECKING:
    from digitnet.inference.model import Model

FORMAT_VERSION = 1
MODEL_KIND = "digitnet-model"
CHECKPOINT_KIND = "digitnet-checkpoint"
KEY_VARIABLE = "DIGITNET_MODEL_KEY"
# Files larger than this are refused unread: the mlp's checkpoint, the largest file digitnet
# writes, is about 30 MB.
MAX_MODEL_BYTES = 256 * 2**20
# The JSON header of a digitnet file is tens of kilobytes and at most a few levels deep.
MAX_HEADER_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 32
# The images a model sees are 28x28, flattened (digitnet.inference.preprocess).
IMAGE_VALUES = 28 * 28
_PARAMETER_PREFIX = "parameters/"
# A reader's line network (digitnet.inference.line_reading): its parameters under this prefix,
# its architecture in the header under "line_architecture". Files without them load as before.
_LINE_PREFIX = "line_parameters/"
_MIN_KEY_BYTES = 16
# A JSON string, possessive so that the regex engine never backtracks into it.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')


def _digest(header_json: str, tensors: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256(header_json.encode("utf-8"))
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def signing_key() -> bytes | None:
    """The key in DIGITNET_MODEL_KEY, or None when it is unset or empty."""
    value = os.environ.get(KEY_VARIABLE, "")
    if not value:
        return None
    key = value.encode("utf-8")
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(
            f"{KEY_VARIABLE} is {len(key)} bytes long; use at least {_MIN_KEY_BYTES} random "
            'bytes, e.g. python -c "import secrets; print(secrets.token_hex(32))"'
        )
    return key


def _signature(key: bytes, digest: str) -> str:
    return hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()


def _same(expected: str, found: str) -> bool:
    """Constant-time comparison of a computed hex digest with one read from a file (which may
    hold any text: compare_digest refuses non-ASCII strings, not bytes)."""
    return hmac.compare_digest(expected.encode(), found.encode("utf-8", "surrogatepass"))


def write_bundle(
    path: str | os.PathLike[str],
    kind: str,
    tensors: Mapping[str, np.ndarray],
    header: Mapping[str, Any],
) -> None:
    """Write ``tensors`` and a JSON-able ``header`` to ``path`` atomically (signed when
    DIGITNET_MODEL_KEY is set)."""
    from safetensors.numpy import save

    key = signing_key()
    header_json = json.dumps(header, sort_keys=True, allow_nan=True)
    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    digest = _digest(header_json, arrays)
    metadata = {
        "format": kind,
        "format_version": str(FORMAT_VERSION),
        "header": header_json,
        "sha256": digest,
    }
    if key is not None:
        metadata["hmac_sha256"] = _signature(key, digest)
    atomic_write_bytes(path, save(arrays, metadata=metadata))


def read_bundle(
    path: str | os.PathLike[str], kind: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify a file written by ``write_bundle``; returns (tensors, header).

    Raises ``ModelFileError`` with a one-line reason for anything but such a file.
    """
    from safetensors.numpy import load

    path = Path(path)
    label = "model" if kind == MODEL_KIND else "checkpoint"
    key = signing_key()
    data = _read_file(path, label)
    metadata = _safetensors_metadata(path, data, label)
    found = metadata.get("format")
    if found not in (MODEL_KIND, CHECKPOINT_KIND):
        raise ModelFileError(f"{path} is a safetensors file but not a digitnet {label}")
    if found != kind:
        other = "model" if found == MODEL_KIND else "checkpoint"
        raise ModelFileError(f"{path} is a digitnet {other} file, not a {label} file")
    version_text = metadata.get("format_version", "")
    if not (version_text.isascii() and version_text.isdigit() and len(version_text) < 10):
        raise ModelFileError(f"{path} has no valid format version: it is damaged")
    version = int(version_text)
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise ModelFileError(
            f"{path} uses {label} format version {version}, this digitnet ({__version__}) reads "
            f"version {FORMAT_VERSION}: "
            + ("upgrade digitnet to load it" if newer else "retrain it with this version")
        )
    try:
        tensors = load(data)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelFileError(
            f"{path} is truncated or damaged ({_one_line(error)}); retrain or restore it"
        ) from None
    header_json = metadata.get("header", "")
    digest = _digest(header_json, tensors)
    if not _same(digest, metadata.get("sha256", "")):
        raise ModelFileError(
            f"{path} fails its checksum: it was damaged or changed after it was written; "
            "retrain or restore it"
        )
    if key is not None:
        signature = metadata.get("hmac_sha256")
        if signature is None:
            raise ModelFileError(
                f"{path} is not signed, and {KEY_VARIABLE} is set: only files signed with your "
                f"key load (sign it by saving it again with the key set, if you trust it)"
            )
        if not _same(_signature(key, digest), signature):
            raise ModelFileError(
                f"{path} does not carry a valid signature for your {KEY_VARIABLE}: it was "
                "changed after it was signed, or signed with another key"
            )
    header = _parse_json(header_json, f"{path}: its digitnet header")
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: its digitnet header is not a JSON object: it is damaged")
    return tensors, header


def _read_file(path: Path, label: str) -> bytes:
    try:
        handle, size = open_regular_file(path)
    except FileNotFoundError:
        raise ModelFileError(
            f"no {label} file at {path}: train one with `digitnet train --save-model {path}`"
        ) from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory, not a {label} file") from None
    except NotARegularFile:
        raise ModelFileError(
            f"{path} is not a regular file (a pipe, device or socket); {label} files are read "
            "only from regular files"
        ) from None
    except OSError as error:
        raise ModelFileError(f"cannot read {label} file {path}: {error.strerror}") from None
    with handle:
        if size > MAX_MODEL_BYTES:
            raise ModelFileError(
                f"{path} is {size / 2**20:.0f} MB, larger than any digitnet {label} file "
                f"({MAX_MODEL_BYTES // 2**20} MB at most); refused unread"
            )
        try:
            return handle.read(MAX_MODEL_BYTES + 1)
        except OSError as error:
            raise ModelFileError(f"cannot read {label} file {path}: {error.strerror}") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _json_depth(text: bytes) -> int:
    """How deeply arrays and objects nest in JSON ``text`` (strings skipped); linear time and
    no recursion, so that it can run before ``json.loads`` would hit the recursion limit."""
    structure = np.frombuffer(_JSON_STRING.sub(b'""', text), np.uint8)
    steps = np.zeros(structure.shape, np.int64)
    steps[(structure == ord("[")) | (structure == ord("{"))] = 1
    steps[(structure == ord("]")) | (structure == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def _parse_json(text: str | bytes, what: str) -> Any:
    """``json.loads(text)``; ModelFileError if it is not JSON or nests too deeply."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = _json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise ModelFileError(
            f"{what} nests {depth} levels deep (at most {MAX_JSON_DEPTH}): it is damaged or crafted"
        )
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelFileError(f"{what} is not valid JSON ({_one_line(error)})") from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _safetensors_metadata(path: Path, data: bytes, label: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, after checking the whole header: every
    tensor's dtype, shape and offsets (two integers, in order, contiguous, covering the data)."""
    damaged = ModelFileError(f"{path} is not a digitnet {label} file, or it is truncated")
    if len(data) < 8:
        raise damaged
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > len(data) - 8 or header_size > MAX_HEADER_BYTES:
        raise damaged
    header = _parse_json(data[8 : 8 + header_size], f"{path}: its safetensors header")
    if not isinstance(header, dict):
        raise damaged
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ModelFileError(f"{path}: its metadata is not a map of strings: it is damaged")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (
            isinstance(entry.get("dtype") if isinstance(entry, dict) else None, str)
            and isinstance(shape, list)
            and all(_is_count(size) for size in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(_is_count(offset) for offset in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise ModelFileError(
                f"{path}: tensor {name[:80]!r} is not described by a dtype, a shape of sizes "
                "and two ordered data offsets: the file is damaged"
            )
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise ModelFileError(
                f"{path}: tensor {name[:80]!r} starts at byte {begin}, not where the previous "
                f"one ends ({end}): the file is damaged"
            )
        end = stop
    if 8 + header_size + end != len(data):
        raise ModelFileError(
            f"{path} is truncated: it holds {len(data)} bytes, its header "
            f"describes {8 + header_size + end}"
        )
    return metadata


def base_header(**fields: Any) -> dict[str, Any]:
    """The fields every digitnet file records, plus ``fields``."""
    header: dict[str, Any] = {"digitnet_version": __version__}
    header.update(fields)
    return header


def save_model(model: Model, path: str | os.PathLike[str]) -> None:
    """Write a ``digitnet.Model`` to ``path`` (conventionally ``*.safetensors``), atomically."""
    header = base_header(architecture=model.architecture, **model.metadata)
    tensors = {_PARAMETER_PREFIX + name: value for name, value in model.parameters.items()}
    if model.line_network is not None:
        header["line_architecture"] = model.line_network.architecture
        tensors.update(
            {_LINE_PREFIX + name: value for name, value in model.line_network.parameters.items()}
        )
    write_bundle(path, MODEL_KIND, tensors, header)


def load_model(path: str | os.PathLike[str]) -> Model:
    """Read a model file written by ``save_model`` (or ``digitnet train --save-model``).

    Raises ``ModelFileError`` with a one-line reason for a missing, truncated, tampered,
    crafted or unknown-version file, and for a model that does not take 28x28 images or does
    not output class scores.
    """
    from digitnet.inference.model import LineNetwork, Model

    tensors, header = read_bundle(path, MODEL_KIND)
    parameters = {
        name[len(_PARAMETER_PREFIX) :]: value
        for name, value in tensors.items()
        if name.startswith(_PARAMETER_PREFIX)
    }
    architecture = header.pop("architecture", None)
    if architecture is None:
        raise ModelFileError(f"{path} has no architecture in its header: it is damaged")
    _check_json_architecture(architecture, path)
    line_architecture = header.pop("line_architecture", None)
    if line_architecture is not None:
        _check_json_architecture(line_architecture, path)
    _check_metadata_types(header, path)
    try:
        model = Model(architecture, parameters, header)
        if line_architecture is not None:
            line_parameters = {
                name[len(_LINE_PREFIX) :]: value
                for name, value in tensors.items()
                if name.startswith(_LINE_PREFIX)
            }
            model = model.with_line_network(LineNetwork(line_architecture, line_parameters))
    except ValueError as error:
        raise ModelFileError(f"{path} is inconsistent: {_one_line(error)}") from None
    if model.n_inputs != IMAGE_VALUES:
        raise ModelFileError(
            f"{path} holds a model that takes {model.n_inputs} values per image; digitnet's "
            f"images are 28x28 = {IMAGE_VALUES} values: retrain it on 28x28 images"
        )
    classes = header.get("classes")
    if classes is not None and (
        len(classes) != model.n_classes or not all(isinstance(c, str) for c in classes)
    ):
        raise ModelFileError(
            f"{path} names {len(classes)} classes for {model.n_classes} outputs: it is damaged"
        )
    output = model.architecture["layers"][-1]["activation"]
    if model.n_classes < 2 or output not in ("softmax", "sigmoid"):
        raise ModelFileError(
            f"{path} holds a model whose output is {model.n_classes} {output} values; digitnet "
            "predicts with softmax or sigmoid class scores, at least two"
        )
    return model


def _check_json_architecture(architecture: Any, path: str | os.PathLike[str]) -> None:
    """The architecture's JSON types, so that validating it meets only the types it expects:
    input_shape a list of integers, layers a list of objects with a string type and scalar
    fields. The values themselves are checked by ``validate_architecture``."""
    scalar = (str, int, float, bool)
    input_shape = (
        architecture.get("input_shape", [IMAGE_VALUES]) if isinstance(architecture, dict) else None
    )
    layers = architecture.get("layers") if isinstance(architecture, dict) else None
    if not (
        isinstance(input_shape, list)
        and all(isinstance(size, int) and not isinstance(size, bool) for size in input_shape)
        and isinstance(layers, list)
        and all(
            isinstance(layer, dict)
            and isinstance(layer.get("type"), str)
            and all(isinstance(value, scalar) for value in layer.values())
            for layer in layers
        )
    ):
        raise ModelFileError(
            f"{path} has no valid architecture in its header (an object with input_shape, a "
            "list of integers, and layers, a list of objects each with a type): it is damaged"
        )


# The metadata digitnet reads back, and the JSON type each must have.
_METADATA_TYPES: dict[str, type] = {
    "digitnet_version": str,
    "training": dict,
    "metrics": dict,
    "history": list,
    "data": dict,
    # One name per output; only files of models with more than the ten digits have it.
    "classes": list,
}


def _check_metadata_types(header: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    for name, expected in _METADATA_TYPES.items():
        if name in header and not isinstance(header[name], expected):
            raise ModelFileError(
                f"{path}: its header's {name!r} is a {type(header[name]).__name__}, not a "
                f"{'JSON object' if expected is dict else expected.__name__}: it is damaged"
            )
