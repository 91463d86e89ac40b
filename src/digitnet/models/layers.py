"""The layer types, one class each: everything digitnet knows about a kind of layer.

A layer type knows

* its **fields**, with their defaults and constraints (what a layer spec in an architecture
  may say, e.g. ``{"type": "conv", "filters": 32, "kernel": 3}``);
* its **output shape** for an input shape (and which input it needs);
* its **parameters**: shapes, initial values, and which the optimizer trains;
* its **TensorFlow forward** pass (training, ``digitnet.training.network``);
* its **NumPy forward** pass (prediction without TensorFlow, ``digitnet.inference.model``).

Adding a layer type is one subclass of :class:`LayerType` decorated with :func:`register`;
architectures, validation, model files, initialisation and both forward passes then know it.
TensorFlow is imported inside the ``tensorflow`` methods only, so this module (and all of
``digitnet.models``) imports without it.

Parameters are named ``{short}{k}``: ``k`` numbers the layers whose type has parameters
(1-based, in order), ``short`` is the name the type gives it (``W``, ``b``, ``gamma`` ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from digitnet.errors import ConfigError
from digitnet.models.activations import Activation, activation
from digitnet.models.choices import (
    ACTIVATIONS,
    PADDINGS,
    Boolean,
    Constraint,
    Interval,
    check,
)

FloatArray = npt.NDArray[np.float32]
Shape = tuple[int, ...]
Layer = Mapping[str, Any]
"""A layer spec as an architecture holds it: ``{"type": ..., field: value, ...}``."""

BATCHNORM_EPSILON = 1e-3


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of a field a layer spec must give."""


@dataclass(frozen=True)
class Field:
    """A field of a layer spec: what it must be, and its value when left out."""

    constraint: Constraint
    default: Any = REQUIRED


@dataclass(frozen=True)
class Parameter:
    """An array a layer owns: its shape, initial value, and whether the optimizer trains it
    (running batch-norm statistics are state, updated by the forward pass instead)."""

    shape: Shape
    initializer: Literal["glorot_uniform", "zeros", "ones"]
    trainable: bool = True


@dataclass(frozen=True)
class NumpyStep:
    """One layer of the NumPy forward pass, operands precomputed.

    ``apply`` maps values (n, ...) float32 to the layer's output before its activation. When
    the layer has an activation, the result must be an array the pass owns (not a view of
    its input), as the activation may write into it.
    """

    apply: Callable[[FloatArray], FloatArray]
    activation: Activation


@dataclass(frozen=True)
class DenseStep(NumpyStep):
    """A dense layer's step, with its operands exposed for the dense-stack fast path:
    ``weights`` (inputs, units) contiguous (``X @ W^T`` is the hot product), ``bias``
    (1, units) or None."""

    weights: FloatArray
    bias: FloatArray | None


@dataclass(frozen=True)
class ConvStep(NumpyStep):
    """A convolution's step with its operands: ``kernel`` (k, k, c, f), ``bias`` (f,) or
    None, ``stride``, ``padding`` ("same" or "valid")."""

    kernel: FloatArray
    bias: FloatArray | None
    stride: int
    padding: str


@dataclass(frozen=True)
class BatchNormStep(NumpyStep):
    """An inference-mode batchnorm's step: ``values * scale + shift``, both (channels,)."""

    scale: FloatArray
    shift: FloatArray


def _positive() -> Interval:
    return Interval(int, 1, None)


class LayerType:
    """Base class of the layer types; subclasses set the class attributes and override what
    differs. Instances are stateless: one per type, in :data:`LAYER_TYPES`."""

    name: ClassVar[str]
    fields: ClassVar[Mapping[str, Field]] = {}
    has_parameters: ClassVar[bool] = False
    """Whether layers of this type are numbered ``k`` for their parameters' names."""
    input_rank: ClassVar[int | None] = None
    """1: needs flat features; 3: needs images (height, width, channels); None: takes any."""

    def check(self, index: int, layer: Layer) -> dict[str, Any]:
        """``layer`` with defaults filled in; raises ConfigError naming layer ``index``."""
        where = f"layer {index} ({self.name}): "
        unknown = set(layer) - set(self.fields) - {"type"}
        if unknown:
            raise ConfigError(f"layer {index} ({self.name}) has unknown fields {sorted(unknown)}")
        checked: dict[str, Any] = {"type": self.name}
        for name, field in self.fields.items():
            value = layer.get(name, field.default)
            if value is REQUIRED:
                raise ConfigError(f"layer {index} ({self.name}) needs a {name!r}")
            check(name, value, field.constraint, where)
            checked[name] = value
        return checked

    def output_shape(self, layer: Layer, shape: Shape) -> Shape:
        """The output shape (without the batch axis) for an input of ``shape``; raises
        ConfigError (without the layer's name, which the caller adds) if it does not fit."""
        return shape

    def parameters(self, layer: Layer, shape: Shape) -> dict[str, Parameter]:
        """Short name -> parameter, for an input of ``shape``, in a fixed order."""
        return {}

    def tensorflow(
        self, A: Any, layer: Layer, parameters: Mapping[str, Any], *, training: bool, seed: Any
    ) -> Any:
        """The layer on tensor ``A`` (batch first), before its activation, in ``A``'s dtype.

        ``parameters`` maps short names to the layer's tensors or ``tf.Variable`` s;
        ``seed`` is ``(step_seed, layer_index)`` for stateless randomness in training.
        """
        return A

    def numpy(self, layer: Layer, parameters: Mapping[str, FloatArray]) -> NumpyStep | None:
        """The NumPy step for prediction, or None when the layer is the identity there."""
        return None


LAYER_TYPES: dict[str, LayerType] = {}
"""Every layer type by name, in the order they are registered."""

L = TypeVar("L", bound=type[LayerType])


def register(cls: L) -> L:
    """Class decorator: add a layer type to :data:`LAYER_TYPES`."""
    LAYER_TYPES[cls.name] = cls()
    return cls


def layer_type(index: int, layer: Any) -> LayerType:
    """The type of ``layer`` (the ``index``-th, 1-based), or ConfigError."""
    if not isinstance(layer, Mapping) or "type" not in layer:
        raise ConfigError(f"layer {index} must be a dict with a 'type', got {layer!r}")
    kind = layer["type"]
    if kind not in LAYER_TYPES:
        raise ConfigError(
            f"layer {index} has unknown type {kind!r}: choose one of "
            f"{', '.join(map(repr, LAYER_TYPES))}"
        )
    return LAYER_TYPES[kind]


def _tf() -> Any:
    import tensorflow as tf

    return tf


# --------------------------------------------------------------------------------------------
# The types


@register
class Dense(LayerType):
    """``units`` outputs, each a weighted sum of all inputs. Weights keep the tutorial's
    orientation: ``W``: [units, inputs], ``b``: [units, 1]."""

    name = "dense"
    fields = {
        "units": Field(_positive()),
        "activation": Field(ACTIVATIONS, "relu"),
        "use_bias": Field(Boolean(), True),
    }
    has_parameters = True
    input_rank = 1

    def output_shape(self, layer: Layer, shape: Shape) -> Shape:
        return (layer["units"],)

    def parameters(self, layer: Layer, shape: Shape) -> dict[str, Parameter]:
        parameters = {"W": Parameter((layer["units"], shape[0]), "glorot_uniform")}
        if layer["use_bias"]:
            parameters["b"] = Parameter((layer["units"], 1), "zeros")
        return parameters

    def tensorflow(
        self, A: Any, layer: Layer, parameters: Mapping[str, Any], *, training: bool, seed: Any
    ) -> Any:
        tf = _tf()
        Z = tf.matmul(A, tf.cast(parameters["W"], A.dtype), transpose_b=True)
        if layer["use_bias"]:
            Z = Z + tf.transpose(tf.cast(parameters["b"], A.dtype))
        return Z

    def numpy(self, layer: Layer, parameters: Mapping[str, FloatArray]) -> DenseStep:
        weights = np.ascontiguousarray(parameters["W"].T)
        bias = parameters["b"].reshape(1, -1) if "b" in parameters else None

        def apply(values: FloatArray) -> FloatArray:
            # The product is a new array, so the caller's values are never written to.
            values = values @ weights
            if bias is not None:
                values += bias
            return values

        return DenseStep(apply, activation(layer["activation"]), weights, bias)


@register
class Conv(LayerType):
    """A 2-D convolution as ``tf.nn.conv2d``: ``W``: [kernel, kernel, in_channels, filters],
    ``b``: [filters]; ``same`` padding puts the odd pixel at the bottom and right."""

    name = "conv"
    fields = {
        "filters": Field(_positive()),
        "kernel": Field(_positive(), 3),
        "stride": Field(_positive(), 1),
        "padding": Field(PADDINGS, "same"),
        "activation": Field(ACTIVATIONS, "relu"),
        "use_bias": Field(Boolean(), True),
    }
    has_parameters = True
    input_rank = 3

    def output_shape(self, layer: Layer, shape: Shape) -> Shape:
        height, width, _ = shape
        kernel, stride = layer["kernel"], layer["stride"]
        if layer["padding"] == "same":
            height, width = math.ceil(height / stride), math.ceil(width / stride)
        else:
            height = (height - kernel) // stride + 1
            width = (width - kernel) // stride + 1
        if height <= 0 or width <= 0:
            raise ConfigError(
                f"a {kernel}x{kernel} kernel does not fit the {shape[0]}x{shape[1]} input"
            )
        return (height, width, layer["filters"])

    def parameters(self, layer: Layer, shape: Shape) -> dict[str, Parameter]:
        kernel, filters = layer["kernel"], layer["filters"]
        parameters = {"W": Parameter((kernel, kernel, shape[-1], filters), "glorot_uniform")}
        if layer["use_bias"]:
            parameters["b"] = Parameter((filters,), "zeros")
        return parameters

    def tensorflow(
        self, A: Any, layer: Layer, parameters: Mapping[str, Any], *, training: bool, seed: Any
    ) -> Any:
        tf = _tf()
        Z = tf.nn.conv2d(
            A, tf.cast(parameters["W"], A.dtype), layer["stride"], layer["padding"].upper()
        )
        if layer["use_bias"]:
            Z = Z + tf.cast(parameters["b"], A.dtype)
        return Z

    def numpy(self, layer: Layer, parameters: Mapping[str, FloatArray]) -> ConvStep:
        kernel, bias = parameters["W"], parameters.get("b")
        stride, padding = layer["stride"], layer["padding"]

        def apply(values: FloatArray) -> FloatArray:
            return conv2d(values, kernel, stride, padding, bias)

        return ConvStep(apply, activation(layer["activation"]), kernel, bias, stride, padding)


Workspace = dict[tuple[Any, ...], FloatArray]
"""Buffers a forward pass reuses from one call to the next, by (owner, role, shape)."""


def _buffer(
    workspace: Workspace | None, key: tuple[Any, ...], shape: Shape, zeros: bool = False
) -> FloatArray:
    """A float32 array of ``shape``: the one ``workspace`` keeps under ``key`` (made once,
    zero-filled; callers relying on ``zeros`` never write those elements) or, without a
    workspace, a new one."""
    if workspace is None:
        return np.zeros(shape, np.float32) if zeros else np.empty(shape, np.float32)
    key = (*key, shape)
    found = workspace.get(key)
    if found is None:
        found = workspace[key] = np.zeros(shape, np.float32)
    return found


def conv2d(
    images: FloatArray,
    kernel: FloatArray,
    stride: int,
    padding: str,
    bias: FloatArray | None = None,
    relu: bool = False,
    workspace: Workspace | None = None,
    owner: Any = None,
) -> FloatArray:
    """``images`` (n, h, w, c) conv ``kernel`` (k, k, c, f), plus ``bias`` (f,), then ReLU if
    ``relu`` -> (n, h', w', f) float32, as ``tf.nn.conv2d`` computes it, in NumPy.

    The windows are copied channels-last into one (n*h'*w', k*k*c) matrix (im2col: each
    window is runs of c contiguous values, and the kernel is already that matrix), so the
    convolution is a single BLAS product. With a ``workspace``, the padded images, the matrix
    and the result live in buffers kept there under ``owner``; the result is then overwritten
    by the next call with the same owner, so callers pass one only for intermediate values.
    """
    size, channels, filters = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    n, height, width, _ = images.shape
    if padding == "same":
        out_h, out_w = -(-height // stride), -(-width // stride)
        pad_h = max((out_h - 1) * stride + size - height, 0)
        pad_w = max((out_w - 1) * stride + size - width, 0)
        # TensorFlow puts the odd pixel of padding at the bottom/right. The buffer's border is
        # zero from its creation and never written.
        padded = _buffer(
            workspace, (owner, "padded"), (n, height + pad_h, width + pad_w, channels), zeros=True
        )
        padded[:, pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width] = images
        images = padded
    windows = sliding_window_view(images, (size, size), axis=(1, 2))[:, ::stride, ::stride]
    # windows: (n, h', w', c, k, k); copied channels last, the kernel's own order.
    out_h, out_w = windows.shape[1:3]
    columns = _buffer(workspace, (owner, "columns"), (n, out_h, out_w, size, size, channels))
    np.copyto(columns, windows.transpose(0, 1, 2, 4, 5, 3))
    result = _buffer(workspace, (owner, "result"), (n * out_h * out_w, filters))
    np.matmul(columns.reshape(len(result), -1), kernel.reshape(-1, filters), out=result)
    if bias is not None:
        result += bias
    if relu:
        activation("relu").numpy_in_place(result)
    return result.reshape(n, out_h, out_w, filters)


def fold_batchnorm(conv: ConvStep, norm: BatchNormStep) -> ConvStep:
    """A convolution followed by an inference-mode batchnorm as one convolution, in float32:
    the kernel scaled per filter, the shift (plus the conv's bias, scaled) as its bias, and
    the batchnorm's activation."""
    kernel = (conv.kernel * norm.scale).astype(np.float32)
    bias = (norm.shift if conv.bias is None else conv.bias * norm.scale + norm.shift).astype(
        np.float32
    )
    stride, padding = conv.stride, conv.padding

    def apply(values: FloatArray) -> FloatArray:
        return conv2d(values, kernel, stride, padding, bias)

    return ConvStep(apply, norm.activation, kernel, bias, stride, padding)


@register
class BatchNorm(LayerType):
    """Batch normalization over the last axis: ``gamma`` and ``beta`` are trained, the running
    ``mean`` and ``variance`` are moved by ``momentum`` in training and used at inference
    (where the NumPy pass folds all four into one scale and shift)."""

    name = "batchnorm"
    fields = {
        "activation": Field(ACTIVATIONS, "linear"),
        "momentum": Field(Interval(float, 0, 1, "neither"), 0.99),
    }
    has_parameters = True

    def parameters(self, layer: Layer, shape: Shape) -> dict[str, Parameter]:
        channels = (shape[-1],)
        return {
            "gamma": Parameter(channels, "ones"),
            "beta": Parameter(channels, "zeros"),
            "mean": Parameter(channels, "zeros", trainable=False),
            "variance": Parameter(channels, "ones", trainable=False),
        }

    def tensorflow(
        self, A: Any, layer: Layer, parameters: Mapping[str, Any], *, training: bool, seed: Any
    ) -> Any:
        """TensorFlow's fused kernel (one pass forward and backward), in A's dtype (bfloat16
        included) with float32 statistics; in training it normalizes by the batch's
        statistics and moves the running ones when they are ``tf.Variable`` s."""
        tf = _tf()
        momentum = layer["momentum"]
        shape = tf.shape(A)
        images = A if len(A.shape) == 4 else tf.reshape(A, [-1, 1, 1, A.shape[-1]])
        mean, variance = parameters["mean"], parameters["variance"]
        statistics_dtype = tf.float64 if A.dtype == tf.float64 else tf.float32

        def cast(value: Any) -> Any:
            return tf.cast(value, statistics_dtype)

        if A.dtype == tf.float64:
            # The fused kernel has no float64 version; gradient checks use the plain formula.
            axes = list(range(len(A.shape) - 1))
            if training:
                mean, variance = tf.nn.moments(A, axes=axes)
            return tf.nn.batch_normalization(
                A,
                cast(mean),
                cast(variance),
                cast(parameters["beta"]),
                cast(parameters["gamma"]),
                BATCHNORM_EPSILON,
            )
        normalized, batch_mean, batch_variance = tf.compat.v1.nn.fused_batch_norm(
            images,
            cast(parameters["gamma"]),
            cast(parameters["beta"]),
            mean=None if training else cast(mean),
            variance=None if training else cast(variance),
            epsilon=BATCHNORM_EPSILON,
            is_training=training,
        )
        if training and isinstance(mean, tf.Variable):
            mean.assign(momentum * mean + (1.0 - momentum) * batch_mean)
            variance.assign(momentum * variance + (1.0 - momentum) * batch_variance)
        return normalized if len(A.shape) == 4 else tf.reshape(normalized, shape)

    def numpy(self, layer: Layer, parameters: Mapping[str, FloatArray]) -> BatchNormStep:
        scale = parameters["gamma"] / np.sqrt(parameters["variance"] + BATCHNORM_EPSILON)
        shift = parameters["beta"] - parameters["mean"] * scale
        scale, shift = scale.astype(np.float32), shift.astype(np.float32)

        def apply(values: FloatArray) -> FloatArray:
            result: FloatArray = values * scale + shift
            return result

        return BatchNormStep(apply, activation(layer["activation"]), scale, shift)


@register
class MaxPool(LayerType):
    """The maximum over non-overlapping ``size`` x ``size`` windows; a remainder is dropped."""

    name = "maxpool"
    fields = {"size": Field(_positive(), 2)}
    input_rank = 3

    def output_shape(self, layer: Layer, shape: Shape) -> Shape:
        size = layer["size"]
        if shape[0] < size or shape[1] < size:
            raise ConfigError(f"pool {size} is larger than the input")
        return (shape[0] // size, shape[1] // size, shape[2])

    def tensorflow(
        self, A: Any, layer: Layer, parameters: Mapping[str, Any], *, training: bool, seed: Any
    ) -> Any:
        return _tf().nn.max_pool2d(A, layer["size"], layer["size"], "VALID")

    def numpy(self, layer: Layer, parameters: Mapping[str, FloatArray]) -> NumpyStep:
        size = layer["size"]

        def apply(values: FloatArray) -> FloatArray:
            n, height, width, channels = values.shape
            height, width = height // size * size, width // size * size
            result: FloatArray = (
                values[:, :height, :width]
                .reshape(n, height // size, size, width // size, size, channels)
                .max(axis=(2, 4))
            )
            return result

        return NumpyStep(apply, activation("linear"))


@register
class GlobalAvgPool(LayerType):
    """The mean of each channel over the whole image: (h, w, c) -> (c,)."""

    name = "global_avgpool"
    input_rank = 3

    def output_shape(self, layer: Layer, shape: Shape) -> Shape:
        return (shape[2],)

    def tensorflow(
        self, A: Any, layer: Layer, parameters: Mapping[str, Any], *, training: bool, seed: Any
    ) -> Any:
        return _tf().reduce_mean(A, axis=[1, 2])

    def numpy(self, layer: Layer, parameters: Mapping[str, FloatArray]) -> NumpyStep:
        def apply(values: FloatArray) -> FloatArray:
            result: FloatArray = values.mean(axis=(1, 2))
            return result

        return NumpyStep(apply, activation("linear"))


@register
class Dropout(LayerType):
    """Zeroes a fraction ``rate`` of the values in training (and scales the rest up); the
    identity at inference. Its random numbers are stateless, keyed by (seed, step, layer)."""

    name = "dropout"
    fields = {"rate": Field(Interval(float, 0, 1, "left"))}

    def tensorflow(
        self, A: Any, layer: Layer, parameters: Mapping[str, Any], *, training: bool, seed: Any
    ) -> Any:
        if not training or layer["rate"] <= 0:
            return A
        if seed is None:
            raise ConfigError("training with dropout needs a seed")
        tf = _tf()
        step_seed, index = seed
        layer_seed = tf.stack(
            [tf.cast(step_seed[0], tf.int64), tf.cast(step_seed[1], tf.int64) * 1024 + index]
        )
        return tf.nn.experimental.stateless_dropout(A, layer["rate"], seed=layer_seed)


@register
class Flatten(LayerType):
    """Images (h, w, c) -> features (h * w * c,), row by row."""

    name = "flatten"

    def output_shape(self, layer: Layer, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def tensorflow(
        self, A: Any, layer: Layer, parameters: Mapping[str, Any], *, training: bool, seed: Any
    ) -> Any:
        tf = _tf()
        return tf.reshape(A, [tf.shape(A)[0], -1])

    def numpy(self, layer: Layer, parameters: Mapping[str, FloatArray]) -> NumpyStep:
        def apply(values: FloatArray) -> FloatArray:
            return values.reshape(len(values), -1)

        return NumpyStep(apply, activation("linear"))
