"""The activation functions, one table: each with its NumPy and its TensorFlow form.

The NumPy forms serve ``digitnet.inference.model`` (prediction without TensorFlow), the
TensorFlow forms ``digitnet.training.network``; TensorFlow is imported only when one of those
is called, so this module stays importable without it. The names are
``digitnet.models.choices.ACTIVATIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from digitnet.models.choices import ACTIVATIONS

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Activation:
    """One activation function.

    Attributes:
        name: as written in architectures (``"relu"``).
        numpy: values (n, ...) -> activations of the same shape; may write into ``values``,
            which the forward pass owns, and may return it.
        numpy_in_place: the same arithmetic, bit for bit, written into ``values`` (float32)
            without temporaries; for the dense-stack fast path.
        tensorflow: a tensor -> its activations, with ``tf.nn``'s kernels.
    """

    name: str
    numpy: Callable[[FloatArray], FloatArray]
    numpy_in_place: Callable[[FloatArray], None]
    tensorflow: Callable[[Any], Any]


def _tf() -> Any:
    import tensorflow as tf

    return tf


def _relu(values: FloatArray) -> FloatArray:
    return np.maximum(values, 0.0, out=values)


def _relu_in_place(values: FloatArray) -> None:
    np.maximum(values, 0.0, out=values)


def _sigmoid(values: FloatArray) -> FloatArray:
    # Written as 0.5 * (1 + tanh(x / 2)): equal to 1 / (1 + exp(-x)) but never overflows.
    result: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * values))
    return result


def _sigmoid_in_place(values: FloatArray) -> None:
    values *= 0.5
    np.tanh(values, out=values)
    values += 1.0
    values *= 0.5


def _softmax(values: FloatArray) -> FloatArray:
    shifted = values - values.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    result: FloatArray = shifted / shifted.sum(axis=-1, keepdims=True)
    return result


def _softmax_in_place(values: FloatArray) -> None:
    values -= values.max(axis=-1, keepdims=True)
    np.exp(values, out=values)
    values /= values.sum(axis=-1, keepdims=True)


def _identity(values: Any) -> Any:
    return values


def _nothing(values: FloatArray) -> None:
    return None


ACTIVATION_FUNCTIONS: dict[str, Activation] = {
    activation.name: activation
    for activation in (
        Activation("relu", _relu, _relu_in_place, lambda Z: _tf().nn.relu(Z)),
        Activation("sigmoid", _sigmoid, _sigmoid_in_place, lambda Z: _tf().nn.sigmoid(Z)),
        Activation("softmax", _softmax, _softmax_in_place, lambda Z: _tf().nn.softmax(Z)),
        Activation("linear", _identity, _nothing, _identity),
    )
}

if list(ACTIVATION_FUNCTIONS) != list(ACTIVATIONS):  # pragma: no cover - a programming error
    raise ImportError(
        f"choices.ACTIVATIONS {list(ACTIVATIONS)} and the table {list(ACTIVATION_FUNCTIONS)} differ"
    )


def activation(name: str) -> Activation:
    """The activation called ``name`` (one of ``ACTIVATIONS``; architectures are validated)."""
    return ACTIVATION_FUNCTIONS[name]
