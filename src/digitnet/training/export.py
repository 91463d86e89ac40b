"""Exporting a model to the formats other engines serve: a TensorFlow SavedModel (TensorFlow
Serving), a TFLite flatbuffer (LiteRT, phones) and ONNX (ONNX Runtime and other stacks).

Every format takes the same input and gives the same output: float32 images ``[n, 28, 28]``
in [0, 1] (MNIST form, white ink on black) under ``digitnet serve``'s input name, and the
class probabilities ``[n, 10]`` of ``Model.predict_proba`` under its output name. ``FORMATS``
is the one table of formats: a new format is a function and a row there.

This module imports TensorFlow only inside the functions that need it (the SavedModel and
TFLite writers), so the CLI can read ``FORMATS`` without it and the ONNX export, built from
the architecture by ``digitnet.inference.onnx_export``, runs without TensorFlow at all.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitnet.atomic import atomic_directory, atomic_write_bytes
from digitnet.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np

    from digitnet.inference.model import Model

# Everything else is imported where it is used: `digitnet --help` reads this table, and every
# command starts faster without NumPy, SciPy or TensorFlow.

QUANTIZATIONS = ("int8",)
# Training images the int8 converter runs to calibrate each tensor's range: TensorFlow's guide
# suggests a few hundred; 1,000 cost a few seconds of conversion (8 s for the cnn).
REPRESENTATIVE_IMAGES = 1000
REPRESENTATIVE_SEED = 0


@dataclass(frozen=True)
class ExportOptions:
    """Settings some formats use: ``quantize`` (one of QUANTIZATIONS or None), ``data_dir``
    (MNIST, for int8's representative images) and ``model_version`` (the SavedModel's
    version folder)."""

    quantize: str | None = None
    data_dir: str | os.PathLike[str] | None = None
    model_version: int = 1


@dataclass(frozen=True)
class ExportFormat:
    """One row of ``FORMATS``.

    Attributes:
        write: writes ``model`` to the target path (a file, or a folder when ``versioned``),
            atomically.
        summary: one line for ``--help``.
        suffix: the default output's suffix beside the model file ("" for a folder).
        quantizations: the ``--quantize`` values the format supports.
        versioned: the output is TensorFlow Serving's model folder; the export goes into its
            ``VERSION/`` subfolder.
        is_previous_export: whether an existing target is an earlier export in this format,
            which a new export may replace.
    """

    write: Callable[[Model, Path, ExportOptions], None]
    summary: str
    suffix: str
    quantizations: tuple[str, ...]
    versioned: bool
    is_previous_export: Callable[[Path], bool]


# --------------------------------------------------------------------------------------------
# TensorFlow: SavedModel and TFLite.


def serving_module(model: Model) -> Any:
    """A ``tf.Module`` holding the parameters as variables, with ``serve``: a ``tf.function``
    from ``INPUT_NAME`` float32 [n, *instance_shape] to ``{OUTPUT_NAME: [n, n_classes]}``,
    the probabilities ``Model.predict_proba`` gives, computed by the training code's own
    ``forward_propagation``."""
    import tensorflow as tf

    from digitnet.inference.model import PROBABILITY_FLOOR
    from digitnet.inference.onnx_export import instance_shape
    from digitnet.models.signature import INPUT_NAME, OUTPUT_NAME
    from digitnet.training.network import forward_propagation

    architecture = model.architecture
    calibration = model.calibration
    if calibration is not None:
        # A calibrated model answers softmax(logits / T), as Model.predict_proba does.
        architecture = copy.deepcopy(architecture)
        architecture["layers"][-1]["activation"] = "linear"
    normalize = calibration is None and architecture["layers"][-1]["activation"] != "softmax"
    module = tf.Module()
    module.parameters = {
        name: tf.Variable(value, trainable=False, name=name)
        for name, value in model.parameters.items()
    }

    signature = [tf.TensorSpec([None, *instance_shape(architecture)], tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=signature)
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        flat = tf.reshape(images, [-1, model.n_inputs])
        outputs = forward_propagation(flat, module.parameters, architecture)
        if calibration is not None:
            outputs = tf.nn.softmax(outputs / calibration.temperature, axis=-1)
        if normalize:
            outputs = tf.maximum(outputs, PROBABILITY_FLOOR)
            outputs = outputs / tf.reduce_sum(outputs, axis=1, keepdims=True)
        return {OUTPUT_NAME: outputs}

    module.serve = serve
    return module


def write_savedmodel(model: Model, target: Path, options: ExportOptions) -> None:
    """A SavedModel with a ``serving_default`` signature into the folder ``target``."""
    import tensorflow as tf

    from digitnet.models.signature import SIGNATURE_NAME

    module = serving_module(model)
    with atomic_directory(target) as staging:
        tf.saved_model.save(module, str(staging), signatures={SIGNATURE_NAME: module.serve})


def write_tflite(model: Model, target: Path, options: ExportOptions) -> None:
    """A TFLite flatbuffer: float32, or with ``quantize="int8"`` int8 weights and activations
    (float32 in and out) calibrated on training images."""
    import tensorflow as tf

    module = serving_module(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    if options.quantize == "int8":
        images = representative_images(model, options.data_dir)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        # Every operator in int8, or the conversion fails: no silent float fallback.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    atomic_write_bytes(target, converter.convert())


def representative_images(model: Model, data_dir: str | os.PathLike[str] | None) -> np.ndarray:
    """``REPRESENTATIVE_IMAGES`` images (n, *instance_shape) float32 drawn at random (fixed
    seed) from the training split the model was trained on; never test images."""
    import numpy as np

    from digitnet.data.mnist import load_mnist
    from digitnet.inference.onnx_export import instance_shape

    data = model.metadata.get("data", {})
    X_train, _, _, _ = load_mnist(
        split=data.get("split", "official"), data_dir=data_dir, source=data.get("source", "idx")
    )
    if X_train.shape[1] != model.n_inputs:
        raise DataError(
            f"the training images have {X_train.shape[1]} values each, the model takes "
            f"{model.n_inputs}: point --data-dir at the data it was trained on"
        )
    rng = np.random.default_rng(REPRESENTATIVE_SEED)
    chosen = rng.choice(len(X_train), min(REPRESENTATIVE_IMAGES, len(X_train)), replace=False)
    return X_train[np.sort(chosen)].reshape(-1, *instance_shape(model.architecture))


# --------------------------------------------------------------------------------------------
# ONNX, without TensorFlow.


def write_onnx(model: Model, target: Path, options: ExportOptions) -> None:
    """An ONNX model built from the architecture (``digitnet.inference.onnx_export``)."""
    from digitnet.inference.onnx_export import build_onnx
    from digitnet.models.signature import INPUT_NAME, OUTPUT_NAME

    atomic_write_bytes(target, build_onnx(model, INPUT_NAME, OUTPUT_NAME).SerializeToString())


# --------------------------------------------------------------------------------------------
# What a new export may replace: an earlier export of the same format, nothing else.


def _is_savedmodel(path: Path) -> bool:
    return path.is_dir() and (
        (path / "saved_model.pb").is_file() or not any(path.iterdir())  # or an empty folder
    )


def _is_tflite(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        # A TFLite flatbuffer carries the file identifier "TFL3" after its root offset.
        return handle.read(8)[4:8] == b"TFL3"


def _is_onnx(path: Path) -> bool:
    from digitnet.inference.onnx_export import is_digitnet_onnx

    return path.is_file() and is_digitnet_onnx(path.read_bytes())


FORMATS: dict[str, ExportFormat] = {
    "savedmodel": ExportFormat(
        write_savedmodel,
        "TensorFlow SavedModel in TensorFlow Serving's layout (OUT/VERSION/)",
        "",
        (),
        True,
        _is_savedmodel,
    ),
    "tflite": ExportFormat(
        write_tflite,
        "TFLite flatbuffer for LiteRT (float32, or int8 with --quantize int8)",
        ".tflite",
        ("int8",),
        False,
        _is_tflite,
    ),
    "onnx": ExportFormat(
        write_onnx,
        "ONNX model (opset 17) for ONNX Runtime, built without TensorFlow",
        ".onnx",
        (),
        False,
        _is_onnx,
    ),
}


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ConfigError(f"unknown export format {name!r}: choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def default_output(model_path: str | os.PathLike[str], format: str, quantize: str | None) -> Path:
    """Where an export goes without ``--out``: beside the model file, named after it
    (``cnn.safetensors`` -> ``cnn.onnx``, ``cnn.int8.tflite``, or the folder ``cnn/``)."""
    path = Path(model_path)
    name = path.stem + (f".{quantize}" if quantize else "") + get_format(format).suffix
    return path.with_name(name)


def export_model(
    model: Model,
    format: str,
    out: str | os.PathLike[str],
    *,
    quantize: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    model_version: int | None = None,
) -> Path:
    """Write ``model`` in ``format`` (a key of ``FORMATS``) to ``out``; returns what was written
    (``out/VERSION`` for a SavedModel, else ``out``).

    ``quantize="int8"`` (TFLite only) reads ``REPRESENTATIVE_IMAGES`` training images from
    ``data_dir`` (else ``$DIGITNET_DATA_DIR``, the cache or a download). An existing output is
    replaced only if it is an earlier export in the same format; anything else there is
    refused with a ``ConfigError``, as are unknown formats and unsupported quantizations.
    """
    from digitnet.models.signature import MODEL_VERSION

    chosen = get_format(format)
    if quantize is not None:
        if quantize not in QUANTIZATIONS:
            raise ConfigError(
                f"unknown quantization {quantize!r}: choose one of {', '.join(QUANTIZATIONS)}"
            )
        if quantize not in chosen.quantizations:
            supported = [name for name, row in FORMATS.items() if quantize in row.quantizations]
            raise ConfigError(
                f"--quantize {quantize} is not available for {format}: only for "
                f"{', '.join(supported)} ({format} exports float32)"
            )
    version = int(MODEL_VERSION) if model_version is None else model_version
    if chosen.versioned and not (isinstance(version, int) and version > 0):
        raise ConfigError(f"a model version is a whole number from 1, got {version!r}")
    out = Path(out)
    target = out
    if chosen.versioned:
        if out.exists() and not out.is_dir():
            raise ConfigError(
                f"{out} is a file: a {format} export is a folder ({out}/{version}/); "
                f"choose another --out"
            )
        target = out / str(version)
    elif target.is_dir():
        raise ConfigError(
            f"{target} is a folder: give --out a file name such as model{chosen.suffix}"
        )
    if (target.exists() or target.is_symlink()) and not chosen.is_previous_export(target):
        raise ConfigError(
            f"{target} exists and is not an earlier {format} export, the only kind digitnet "
            f"replaces: choose another --out, or move it away"
        )
    chosen.write(model, target, ExportOptions(quantize, data_dir, version))
    return target
