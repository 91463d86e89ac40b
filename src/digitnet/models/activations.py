"""The activation functions, one table: each with its NumPy and its TensorFlow form.

The NumPy forms serve ``digitnet.inference.model`` (prediction without TensorFlow), the
TensorFlow forms ``digitnet.training.network``; TensorFlow is imported only when one of those
is called, so this module stays importable without it. The names are
``digitnet.models.choices.ACTIVATIONS``.
"""

from __future__ import annotations

import math
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


# A row of zeros per width, for ReLU: NumPy's maximum against an array row runs about twice as
# fast as against the scalar 0.0 (a 1024 x 100 block 19 us against 41; one image's row of 100
# 0.37 us against 0.69), and the result is the same.
_ZERO_ROWS: dict[int, FloatArray] = {}


def zero_row(width: int) -> FloatArray:
    """A read-only (1, width) float32 row of zeros, made once per width."""
    row = _ZERO_ROWS.get(width)
    if row is None:
        row = np.zeros((1, width), np.float32)
        row.flags.writeable = False
        row = _ZERO_ROWS.setdefault(width, row)
    return row


def _relu(values: FloatArray) -> FloatArray:
    _relu_in_place(values)
    return values


def _relu_in_place(values: FloatArray) -> None:
    zeros = zero_row(values.shape[-1]) if values.ndim > 1 else 0.0
    np.maximum(values, zeros, out=values)


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
    result = values.copy()
    _softmax_in_place(result)
    return result


# One image's row of scores: its softmax in Python floats (double precision, without the shift
# by the maximum) costs 1.6 us against NumPy's 4.4 for ten scores, about a tenth of the seed
# network's whole image. A row whose exponentials overflow (math.exp raises where NumPy would
# only warn, or their sum is infinite) or all vanish takes the shifted form below.
_SMALLEST_SUM = 1e-300


def _softmax_in_place(values: FloatArray) -> None:
    if values.ndim == 2 and len(values) == 1:
        try:
            exponentials = [math.exp(value) for value in values.tolist()[0]]
        except OverflowError:
            pass
        else:
            total = sum(exponentials)
            if _SMALLEST_SUM < total < math.inf:
                scale = 1.0 / total
                values[0] = [exponential * scale for exponential in exponentials]
                return
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
