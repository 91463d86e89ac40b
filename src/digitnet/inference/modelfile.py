"""Model and checkpoint files: safetensors with a JSON header, a checksum, and no code in them.

A digitnet file is a standard safetensors file. Its tensors are the parameters (and, in a
checkpoint, the optimiser state); its string metadata holds::

    format          "digitnet-model" or "digitnet-checkpoint"
    format_version  "1"
    header          JSON: architecture, training settings, metrics, history, data fingerprint,
                    digitnet version (and for checkpoints: epoch, step, early-stopping state)
    sha256          over the header and every tensor's name, dtype, shape and bytes

Loading parses JSON and raw little-endian arrays only, so a file can never execute code, and a
file that was truncated or edited is refused with a one-line reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from digitnet import __version__
from digitnet.atomic import atomic_write_bytes
from digitnet.errors import ModelFileError

FORMAT_VERSION = 1
MODEL_KIND = "digitnet-model"
CHECKPOINT_KIND = "digitnet-checkpoint"
_PARAMETER_PREFIX = "parameters/"


def _digest(header_json: str, tensors: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256(header_json.encode("utf-8"))
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_bundle(
    path: str | os.PathLike, kind: str, tensors: Mapping[str, np.ndarray], header: Mapping[str, Any]
) -> None:
    """Write ``tensors`` and a JSON-able ``header`` to ``path`` atomically."""
    from safetensors.numpy import save

    header_json = json.dumps(header, sort_keys=True, allow_nan=True)
    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    metadata = {
        "format": kind,
        "format_version": str(FORMAT_VERSION),
        "header": header_json,
        "sha256": _digest(header_json, arrays),
    }
    atomic_write_bytes(path, save(arrays, metadata=metadata))


def read_bundle(path: str | os.PathLike, kind: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read and verify a file written by ``write_bundle``; returns (tensors, header)."""
    from safetensors.numpy import load

    path = Path(path)
    label = "model" if kind == MODEL_KIND else "checkpoint"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"no {label} file at {path}: train one with `digitnet train --save-model {path}`"
        ) from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory, not a {label} file") from None
    except OSError as error:
        raise ModelFileError(f"cannot read {label} file {path}: {error.strerror}") from None
    metadata = _safetensors_metadata(path, data, label)
    found = metadata.get("format")
    if found not in (MODEL_KIND, CHECKPOINT_KIND):
        raise ModelFileError(f"{path} is a safetensors file but not a digitnet {label}")
    if found != kind:
        other = "model" if found == MODEL_KIND else "checkpoint"
        raise ModelFileError(f"{path} is a digitnet {other} file, not a {label} file")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise ModelFileError(f"{path} has no valid format version: it is damaged") from None
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise ModelFileError(
            f"{path} uses {label} format version {version}, this digitnet ({__version__}) reads "
            f"version {FORMAT_VERSION}: "
            + ("upgrade digitnet to load it" if newer else "retrain it with this version")
        )
    try:
        tensors = load(data)
    except Exception as error:  # safetensors raises its own error type for malformed data
        raise ModelFileError(
            f"{path} is truncated or damaged ({error}); retrain or restore it"
        ) from None
    header_json = metadata.get("header", "")
    if _digest(header_json, tensors) != metadata.get("sha256"):
        raise ModelFileError(
            f"{path} fails its checksum: it was modified or damaged after "
            f"it was written; retrain or restore it"
        )
    return tensors, json.loads(header_json)


def _safetensors_metadata(path: Path, data: bytes, label: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, checked for truncation."""
    damaged = ModelFileError(f"{path} is not a digitnet {label} file, or it is truncated")
    if len(data) < 8:
        raise damaged
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > len(data) - 8 or header_size > 100 * 1024 * 1024:
        raise damaged
    try:
        header = json.loads(data[8 : 8 + header_size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise damaged from None
    if not isinstance(header, dict):
        raise damaged
    end = max(
        (
            entry["data_offsets"][1]
            for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
        ),
        default=0,
    )
    if 8 + header_size + end != len(data):
        raise ModelFileError(
            f"{path} is truncated: it holds {len(data)} bytes, its header "
            f"describes {8 + header_size + end}"
        )
    metadata = header.get("__metadata__", {})
    return metadata if isinstance(metadata, dict) else {}


def base_header(**fields: Any) -> dict:
    """The fields every digitnet file records, plus ``fields``."""
    header = {"digitnet_version": __version__}
    header.update(fields)
    return header


def save_model(model, path: str | os.PathLike) -> None:
    """Write a ``digitnet.Model`` to ``path`` (conventionally ``*.safetensors``), atomically."""
    header = base_header(architecture=model.architecture, **model.metadata)
    tensors = {_PARAMETER_PREFIX + name: value for name, value in model.parameters.items()}
    write_bundle(path, MODEL_KIND, tensors, header)


def load_model(path: str | os.PathLike):
    """Read a model file written by ``save_model`` (or ``digitnet train --save-model``).

    Raises ``ModelFileError`` with a one-line reason for a missing, truncated, tampered or
    unknown-version file.
    """
    from digitnet.inference.model import Model

    tensors, header = read_bundle(path, MODEL_KIND)
    parameters = {
        name[len(_PARAMETER_PREFIX) :]: value
        for name, value in tensors.items()
        if name.startswith(_PARAMETER_PREFIX)
    }
    architecture = header.pop("architecture", None)
    if architecture is None:
        raise ModelFileError(f"{path} has no architecture in its header: it is damaged")
    try:
        return Model(architecture, parameters, header)
    except ValueError as error:
        raise ModelFileError(f"{path} is inconsistent: {error}") from None
