"""Model architectures as plain data: one description serves TensorFlow, NumPy and model files.

An architecture is a JSON-friendly dict::

    {"input_shape": [784], "layers": [{"type": "dense", "units": 100, "activation": "relu"}, ...]}

Inputs always arrive flat, ``(n, 784)`` float32 in [0, 1] (MNIST form); an ``input_shape`` of
``[28, 28, 1]`` reshapes them to images for convolutional layers. The tutorial's ``layout`` dict
``{"l0": 784, "l1": 100, ..., "l4": 10}`` is shorthand for a stack of ReLU dense layers with a
sigmoid output, so the tutorial's code and the larger models go through one mechanism.

What each layer type accepts, its shapes, parameters and forward passes are in
``digitnet.models.layers``. Parameters are named by the position ``k`` (1-based) of their layer
among the layers that have parameters: dense and conv layers own ``W{k}`` and ``b{k}``;
batchnorm layers own ``gamma{k}``, ``beta{k}`` (trained) and ``mean{k}``, ``variance{k}``
(running statistics). Dense weights keep the tutorial's orientation ``W{k}: [units, inputs]``,
``b{k}: [units, 1]``; conv kernels are ``[height, width, in_channels, filters]`` as in
``tf.nn.conv2d``, with ``b{k}: [filters]``. This module imports no TensorFlow.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from digitnet.errors import ConfigError
from digitnet.models.activations import Activation, activation
from digitnet.models.choices import ACTIVATIONS as ACTIVATIONS  # re-exported
from digitnet.models.choices import MODEL_NAMES
from digitnet.models.choices import PADDINGS as PADDINGS  # re-exported
from digitnet.models.layers import BATCHNORM_EPSILON as BATCHNORM_EPSILON  # re-exported
from digitnet.models.layers import LayerType, Parameter, Shape, layer_type

T = TypeVar("T")

Architecture = dict[str, Any]
"""``{"input_shape": [...], "layers": [layer spec, ...]}``, JSON-friendly."""


# --------------------------------------------------------------------------------------------
# Named models. Each is a function of a few options, so `--layout` and `--dropout` reshape a
# named model instead of needing a second mechanism.


def dense_stack(
    sizes: Sequence[int], output_activation: str = "sigmoid", dropout: float = 0.0
) -> Architecture:
    """A fully connected network: ``sizes[0]`` inputs, ReLU hidden layers, then the output.

    ``dropout`` (a fraction) is applied after every hidden layer when above zero.
    """
    sizes = [int(size) for size in sizes]
    if len(sizes) < 2:
        raise ConfigError(f"a layout needs at least an input and an output size, got {sizes}")
    layers: list[dict[str, Any]] = []
    for index, units in enumerate(sizes[1:], start=1):
        last = index == len(sizes) - 1
        layers.append(
            {"type": "dense", "units": units, "activation": output_activation if last else "relu"}
        )
        if dropout and not last:
            layers.append({"type": "dropout", "rate": float(dropout)})
    return validate_architecture({"input_shape": [sizes[0]], "layers": layers})


def _sizes(
    layout: Sequence[int] | None, default: Sequence[int], n_classes: int | None
) -> list[int]:
    """``layout``, or ``default`` hidden sizes between 784 inputs and ``n_classes`` (10 when
    None) outputs; a given layout must end in ``n_classes`` when both are given."""
    if not layout:
        return [784, *default, 10 if n_classes is None else n_classes]
    sizes = [int(size) for size in layout]
    if n_classes is not None and len(sizes) >= 2 and sizes[-1] != n_classes:
        raise ConfigError(
            f"the layout ends in {sizes[-1]} outputs but the data has {n_classes} classes; "
            f"make its last size {n_classes}"
        )
    return sizes


def seed_architecture(
    layout: Sequence[int] | None = None, n_classes: int | None = None
) -> Architecture:
    """The tutorial's network: 784-100-100-60-10, ReLU hidden layers, sigmoid output.

    ``n_classes`` sizes the output (default 10); ``layout`` gives all sizes instead.
    """
    return dense_stack(_sizes(layout, (100, 100, 60), n_classes), output_activation="sigmoid")


def mlp_architecture(
    layout: Sequence[int] | None = None,
    dropout: float | None = None,
    n_classes: int | None = None,
) -> Architecture:
    """A wide dropout MLP with a softmax output, trained with cross-entropy: 784-1200-1200-10."""
    return dense_stack(
        _sizes(layout, (1200, 1200), n_classes),
        output_activation="softmax",
        dropout=0.3 if dropout is None else dropout,
    )


def _conv_bn(filters: int, kernel: int, stride: int, padding: str) -> list[dict[str, Any]]:
    """A convolution without bias, then batch normalisation and ReLU (the bias would only be
    cancelled by the normalisation)."""
    return [
        {
            "type": "conv",
            "filters": filters,
            "kernel": kernel,
            "stride": stride,
            "padding": padding,
            "activation": "linear",
            "use_bias": False,
        },
        {"type": "batchnorm", "activation": "relu"},
    ]


def cnn_architecture(dropout: float | None = None, n_classes: int = 10) -> Architecture:
    """A batch-normalised convolutional network (about 0.3 M parameters).

    Two stages of 3x3 convolutions with a strided 5x5 convolution in place of pooling (the
    downsampling is learned), then a 4x4 convolution that acts as a dense layer over each map.
    """
    rate = 0.4 if dropout is None else dropout

    def conv_bn(
        filters: int, kernel: int = 3, stride: int = 1, padding: str = "valid"
    ) -> list[dict[str, Any]]:
        return _conv_bn(filters, kernel, stride, padding)

    layers = (
        conv_bn(32)
        + conv_bn(32)
        + conv_bn(32, 5, 2, "same")
        + [{"type": "dropout", "rate": rate}]
        + conv_bn(64)
        + conv_bn(64)
        + conv_bn(64, 5, 2, "same")
        + [{"type": "dropout", "rate": rate}]
        + conv_bn(128, 4)
        + [
            {"type": "flatten"},
            {"type": "dropout", "rate": rate},
            {"type": "dense", "units": n_classes, "activation": "softmax"},
        ]
    )
    return validate_architecture({"input_shape": [28, 28, 1], "layers": layers})


LINE_HEIGHT = 32
"""A line network's input height in pixels (``line_architecture``)."""
LINE_STRIDE = 4
"""Input columns per output column of ``line_architecture``."""
LINE_CONTEXT = 7
"""Output columns the 8-wide height-collapsing convolution costs: a line network maps an
input ``width`` (a multiple of ``LINE_STRIDE``) to ``width / LINE_STRIDE - LINE_CONTEXT``."""


def line_architecture(n_symbols: int = 11, dropout: float = 0.2) -> Architecture:
    """The network that reads a whole line of digits (about 0.6 M parameters).

    Input: the line's ink, ``LINE_HEIGHT`` px tall and any width (``input_shape`` records 64,
    the narrowest it is validated at). Output: one row of scores per 4 input columns, over
    ``n_symbols`` (the ten digits and CTC's blank, last). Two 2x2 poolings, then an 8x8
    convolution without padding collapses the 8 remaining rows and sees 8 columns (32 px, one
    and a half digits) at once; a 1x1 convolution scores each column.
    """

    def conv_bn(filters: int, kernel: int = 3, padding: str = "same") -> list[dict[str, Any]]:
        return _conv_bn(filters, kernel, 1, padding)

    layers = (
        conv_bn(16)
        + [{"type": "maxpool", "size": 2}]
        + conv_bn(32)
        + conv_bn(32)
        + [{"type": "maxpool", "size": 2}]
        + conv_bn(64)
        + conv_bn(64)
        + conv_bn(128, 8, "valid")
        + [
            {"type": "dropout", "rate": dropout},
            {"type": "conv", "filters": n_symbols, "kernel": 1, "activation": "softmax"},
        ]
    )
    return validate_architecture(
        {"input_shape": [LINE_HEIGHT, 64, 1], "layers": layers, "output": "columns"}
    )


def named_architecture(
    name: str,
    layout: Sequence[int] | None = None,
    dropout: float | None = None,
    n_classes: int | None = None,
) -> Architecture:
    """The architecture of a named model; ``layout`` resizes the dense models, ``n_classes``
    sizes the output (default 10; a ``layout`` must end in it)."""
    if name == "seed":
        if dropout:
            return dense_stack(_sizes(layout, (100, 100, 60), n_classes), "sigmoid", dropout)
        return seed_architecture(layout, n_classes)
    if name == "mlp":
        return mlp_architecture(layout, dropout, n_classes)
    if name in ("cnn", "reader"):
        if layout is not None:
            raise ConfigError("--layout describes dense layers; the cnn model does not take one")
        return cnn_architecture(dropout, 10 if n_classes is None else n_classes)
    raise ConfigError(f"unknown model {name!r}: choose {MODEL_NAMES.describe()}")


# --------------------------------------------------------------------------------------------
# Parsing and validation.


def parse_layout(text: str) -> list[int]:
    """Parse ``"784,100,100,60,10"`` into a list of positive layer sizes."""
    try:
        sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ConfigError(
            f"--layout must be comma-separated whole numbers like 784,100,100,60,10, got {text!r}"
        ) from None
    if len(sizes) < 2 or any(size <= 0 for size in sizes):
        raise ConfigError(
            f"--layout needs at least two positive sizes (input and output), got {text!r}"
        )
    return sizes


def normalize_layout(layout: Any, n_classes: int | None = None) -> Architecture:
    """Return the canonical architecture dict for any accepted way of describing a network.

    Accepts the tutorial's ``{"l0": 784, "l1": 100, ...}``, a sequence of sizes, a comma-separated
    string of sizes, a model name (``"seed"``, ``"mlp"``, ``"cnn"``), or an architecture dict.
    ``n_classes`` (the data's number of classes) sizes a named model's output; a layout that
    gives the output size must agree with it.
    """
    if isinstance(layout, str) and layout in MODEL_NAMES:
        return named_architecture(layout, n_classes=n_classes)
    if isinstance(layout, Mapping) and "layers" in layout:
        architecture = validate_architecture(layout)
        if n_classes is not None and n_outputs(architecture) != n_classes:
            raise ConfigError(
                f"the architecture has {n_outputs(architecture)} outputs but the data has "
                f"{n_classes} classes; make its last layer's units {n_classes}"
            )
        return architecture
    return seed_architecture(_layout_sizes(layout), n_classes)


def _layout_sizes(layout: Any) -> list[int]:
    if isinstance(layout, str):
        return parse_layout(layout)
    if isinstance(layout, Mapping):
        keys = [f"l{i}" for i in range(len(layout))]
        if sorted(layout) != sorted(keys):
            raise ConfigError(
                f"a tutorial layout has keys l0, l1, ... without gaps, got {sorted(layout)}"
            )
        return [layout[key] for key in keys]
    if isinstance(layout, Sequence):
        return list(layout)
    raise ConfigError(
        f"cannot read a layout from {type(layout).__name__}: pass a dict like "
        f"{{'l0': 784, 'l1': 100, ...}}, a list of sizes, or a model name"
    )


def validate_architecture(architecture: Mapping[str, Any]) -> Architecture:
    """Check an architecture dict and fill in defaults; returns a new dict.

    A classifier ends in a dense layer (the class scores). An architecture with ``"output":
    "columns"`` is a line network instead (``line_architecture``): it ends in a 1x1
    convolution over maps one row tall, the scores of each column.

    Raises ValueError naming the first layer that is malformed or whose input shape it cannot
    take (for example a conv layer after a dense one).
    """
    if not isinstance(architecture, Mapping) or "layers" not in architecture:
        raise ConfigError("an architecture is a dict with 'input_shape' and 'layers'")
    input_shape = list(architecture.get("input_shape", [784]))
    if not input_shape or any(not isinstance(d, int) or d <= 0 for d in input_shape):
        raise ConfigError(f"input_shape must be positive whole numbers, got {input_shape}")
    if len(input_shape) not in (1, 3):
        raise ConfigError(
            f"input_shape must be [features] or [height, width, channels], got {input_shape}"
        )
    output = architecture.get("output", "classes")
    if output not in ("classes", "columns"):
        raise ConfigError(f"an architecture's output is 'classes' or 'columns', not {output!r}")
    columns = output == "columns"
    layers = [
        layer_type(index, layer).check(index, layer)
        for index, layer in enumerate(architecture["layers"], start=1)
    ]
    if columns:
        if not layers or layers[-1]["type"] != "conv" or layers[-1]["kernel"] != 1:
            raise ConfigError(
                "a line network's last layer must be a 1x1 convolution (each column's scores)"
            )
    elif not layers or layers[-1]["type"] != "dense":
        raise ConfigError("the last layer must be a dense layer (the class scores)")
    result: dict[str, Any] = {"input_shape": input_shape, "layers": layers}
    if columns:
        result["output"] = output
    shapes = layer_shapes(result)  # raises on layers that cannot follow each other
    if columns and shapes[-1][0] != 1:
        raise ConfigError(
            f"a line network's maps must be one row tall at its last layer, not {shapes[-1][0]}"
        )
    return copy.deepcopy(result)


@dataclass(frozen=True)
class BoundLayer:
    """A layer of an architecture with what follows from its place in it.

    Attributes:
        spec: the layer's dict, e.g. ``{"type": "dense", "units": 10, ...}``.
        type: its layer type.
        number: the ``k`` of its parameters' names (0 for a type without parameters).
        input_shape, output_shape: without the batch axis.
        parameters: short name (``W``) -> shape, initializer and trainability.
    """

    spec: Mapping[str, Any]
    type: LayerType
    number: int
    input_shape: Shape
    output_shape: Shape
    parameters: Mapping[str, Parameter]

    @property
    def activation(self) -> Activation:
        return activation(self.spec.get("activation", "linear"))

    def parameter_names(self) -> dict[str, str]:
        """Short name -> full name, ``{"W": "W3", "b": "b3"}``."""
        return {short: f"{short}{self.number}" for short in self.parameters}

    def own(self, parameters: Mapping[str, T]) -> dict[str, T]:
        """This layer's entries of a full parameter dict, by short name."""
        return {short: parameters[name] for short, name in self.parameter_names().items()}


def bind_layers(architecture: Mapping[str, Any]) -> list[BoundLayer]:
    """Every layer with its type, shapes and parameters, in order; raises ConfigError naming
    the first layer whose input it cannot take (for example a conv layer after a dense one)."""
    shape: Shape = tuple(architecture["input_shape"])
    bound, k = [], 0
    for index, spec in enumerate(architecture["layers"], start=1):
        kind = layer_type(index, spec)
        if kind.input_rank == 3 and len(shape) != 3:
            raise ConfigError(
                f"layer {index} ({kind.name}) needs image input [h, w, c], "
                f"but gets {list(shape)}: set input_shape to [28, 28, 1]"
            )
        if kind.input_rank == 1 and len(shape) != 1:
            raise ConfigError(
                f"layer {index} ({kind.name}) needs flat input; add a flatten layer "
                f"before it (it gets {list(shape)})"
            )
        try:
            output = kind.output_shape(spec, shape)
        except ConfigError as error:
            raise ConfigError(f"layer {index} ({kind.name}): {error}") from None
        if kind.has_parameters:
            k += 1
        parameters = kind.parameters(spec, shape)
        bound.append(
            BoundLayer(spec, kind, k if kind.has_parameters else 0, shape, output, parameters)
        )
        shape = output
    return bound


def layer_shapes(architecture: Mapping[str, Any]) -> list[Shape]:
    """Output shape (without the batch axis) of every layer, in order."""
    return [layer.output_shape for layer in bind_layers(architecture)]


def parameter_specs(architecture: Mapping[str, Any]) -> dict[str, Parameter]:
    """Name -> shape, initializer and trainability of every parameter, in layer order."""
    return {
        name: layer.parameters[short]
        for layer in bind_layers(architecture)
        for short, name in layer.parameter_names().items()
    }


def parameter_shapes(architecture: Mapping[str, Any]) -> dict[str, Shape]:
    """Name -> shape of every parameter the architecture needs, in layer order."""
    return {name: spec.shape for name, spec in parameter_specs(architecture).items()}


def layer_numbers(architecture: Mapping[str, Any]) -> list[int]:
    """For each layer, the ``k`` of its parameters (0 for layers without parameters)."""
    return [layer.number for layer in bind_layers(architecture)]


def n_outputs(architecture: Mapping[str, Any]) -> int:
    """The number of classes: the last layer's units."""
    return int(architecture["layers"][-1]["units"])


def n_inputs(architecture: Mapping[str, Any]) -> int:
    """Values per sample: the product of ``input_shape``."""
    return math.prod(architecture["input_shape"])


def architecture_from_parameters(parameters: Mapping[str, Any]) -> Architecture:
    """Infer the tutorial's dense stack from ``W1..WL`` shapes (ReLU hidden, sigmoid output).

    This is how ``forward_propagation(X, parameters)`` works without a layout, as in the
    tutorial.
    """
    count = sum(1 for name in parameters if name.startswith("W"))
    if count == 0 or any(f"W{k}" not in parameters for k in range(1, count + 1)):
        raise ConfigError(f"parameters must hold W1..WL (and b1..bL); got {sorted(parameters)}")
    shapes = [tuple(parameters[f"W{k}"].shape) for k in range(1, count + 1)]
    if any(len(shape) != 2 for shape in shapes):
        raise ConfigError(
            "these parameters are not a dense stack: pass layout= (the model's "
            "architecture) to describe them"
        )
    sizes = [shapes[0][1]] + [shape[0] for shape in shapes]
    return seed_architecture(sizes)


def describe(architecture: Mapping[str, Any]) -> str:
    """A short human-readable summary, e.g. ``dense 784-100-100-60-10 (sigmoid)``."""
    layers = architecture["layers"]
    if all(layer["type"] in ("dense", "dropout") for layer in layers):
        sizes = [str(architecture["input_shape"][0])]
        sizes += [str(layer["units"]) for layer in layers if layer["type"] == "dense"]
        return f"dense {'-'.join(sizes)} ({layers[-1]['activation']} output)"
    convs = sum(layer["type"] == "conv" for layer in layers)
    count = sum(math.prod(shape) for shape in parameter_shapes(architecture).values())
    return (
        f"{convs} conv + {sum(layer['type'] == 'dense' for layer in layers)} dense layers, "
        f"{count:,} parameters"
    )
