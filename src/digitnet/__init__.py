"""digitnet: a handwritten-digit recogniser on TensorFlow 2.

The public names are loaded lazily so that ``import digitnet`` (and every command that does not
train) stays fast and never imports TensorFlow; only the five tutorial functions and training
need it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # The tutorial's five functions (TensorFlow).
    "initialize_parameters": "digitnet.training.tutorial",
    "forward_propagation": "digitnet.training.tutorial",
    "calculate_cost": "digitnet.training.tutorial",
    "train_parameters": "digitnet.training.tutorial",
    "predict": "digitnet.training.tutorial",
    # Training with validation, early stopping and checkpoints (TensorFlow).
    "train_and_evaluate": "digitnet.training.runs",
    "TrainConfig": "digitnet.training.runs",
    # SavedModel, TFLite (TensorFlow) and ONNX (without it) exports.
    "export_model": "digitnet.training.export",
    # Everything below works without TensorFlow.
    "load_mnist": "digitnet.data.mnist",
    "Model": "digitnet.inference.model",
    "save_model": "digitnet.inference.modelfile",
    "load_model": "digitnet.inference.modelfile",
    "preprocess_image": "digitnet.inference.preprocess",
    "predict_images": "digitnet.inference.predict",
    "read_number": "digitnet.inference.reading",
    "DigitnetError": "digitnet.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'digitnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
