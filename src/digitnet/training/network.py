"""The tutorial's five functions, on TensorFlow 2.

``initialize_parameters``, ``forward_propagation``, ``calculate_cost``, ``train_parameters`` and
``predict`` keep the tutorial's names, arguments and printed lines. Each also accepts the larger
models (a ``layout`` may be an architecture dict, see ``digitnet.models.architectures``), so the
tutorial's network and digitnet's own models go through the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from digitnet.models import architectures
from digitnet.models.choices import COSTS, check


def architecture_of(layout: Any, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture ``layout`` describes, or the tutorial's dense stack that
    ``parameters`` (``W1..WL``) make when there is no layout."""
    if layout is None:
        return architectures.architecture_from_parameters(parameters)
    return architectures.normalize_layout(layout)


def initialize_parameters(layout: Any, seed: int = 1) -> dict[str, tf.Variable]:
    """Create the parameters of every layer of ``layout``.

    Args:
        layout: the tutorial's ``{"l0": 784, "l1": 100, ..., "l4": 10}``, a list of sizes, a
            model name or an architecture dict.
        seed: seeds the Glorot-uniform initialisers (one derived seed per layer).

    Returns:
        ``W1..WL`` (dense: [units, inputs]; conv: [k, k, in, filters]) Glorot-uniform, ``b1..bL``
        zeros (dense: [units, 1]); batchnorm ``gamma`` ones, ``beta`` zeros, running ``mean``
        zeros and ``variance`` ones (not trainable). Each layer type says which
        (``digitnet.models.layers``).
    """
    architecture = architectures.normalize_layout(layout)
    parameters = {}
    for layer in architectures.bind_layers(architecture):
        for short, name in layer.parameter_names().items():
            spec = layer.parameters[short]
            if spec.initializer == "glorot_uniform":
                initializer = tf.keras.initializers.GlorotUniform(seed=seed * 1009 + layer.number)
                value = initializer(spec.shape, dtype=tf.float32)
            elif spec.initializer == "ones":
                value = tf.ones(spec.shape, tf.float32)
            else:
                value = tf.zeros(spec.shape, tf.float32)
            # Under a tf.distribute strategy, state the forward pass assigns on each replica
            # (running batch-norm statistics) is averaged across replicas by that assignment;
            # without one the aggregation is unused.
            aggregation = (
                tf.VariableAggregation.NONE if spec.trainable else tf.VariableAggregation.MEAN
            )
            parameters[name] = tf.Variable(
                value, name=name, trainable=spec.trainable, aggregation=aggregation
            )
    return parameters


def forward_propagation(
    X: Any,
    parameters: Mapping[str, Any],
    layout: Any = None,
    *,
    training: bool = False,
    seed: Any = None,
    return_logits: bool = False,
    compute_dtype: Any = None,
) -> Any:
    """Run the network on ``X`` (n, n_inputs) and return the output activations (n, n_classes).

    Without ``layout`` the parameters are read as the tutorial's dense stack (ReLU hidden
    layers, sigmoid output). ``training=True`` applies dropout (with the stateless ``seed``, a
    pair of ints) and batch statistics, updating running batchnorm statistics held in
    ``tf.Variable`` parameters. ``return_logits=True`` returns ``(A_output, Z_output)``.
    ``compute_dtype=tf.bfloat16`` carries activations and runs products and convolutions in
    bfloat16 (several times faster on CPUs with AMX); the parameters stay in their precision
    and the output is computed in it. Each layer's computation is its layer type's
    ``tensorflow`` method (``digitnet.models.layers``).
    """
    architecture = architecture_of(layout, parameters)
    # The parameters' precision: float32 normally, float64 for gradient checks.
    output_dtype = tf.as_dtype(next(iter(parameters.values())).dtype)
    A = tf.cast(X, compute_dtype or output_dtype)
    if len(architecture["input_shape"]) == 3 and len(A.shape) != 4:
        # Images come flat; a line network's lines come as maps, each batch its own width.
        A = tf.reshape(A, [-1, *architecture["input_shape"]])
    *hidden, last = architectures.bind_layers(architecture)
    for index, layer in enumerate(hidden):
        Z = layer.type.tensorflow(
            A,
            layer.spec,
            layer.own(parameters),
            training=training,
            seed=None if seed is None else (seed, index),
        )
        A = layer.activation.tensorflow(Z)
    Z = last.type.tensorflow(A, last.spec, last.own(parameters), training=training, seed=None)
    Z = tf.cast(Z, output_dtype)
    A_output = last.activation.tensorflow(Z)
    return (A_output, Z) if return_logits else A_output


def calculate_cost(
    A_output: Any,
    y: Any,
    parameters: Mapping[str, Any],
    *,
    cost: str = "mse",
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    logits: Any = None,
) -> tf.Tensor:
    """The cost to minimise, a scalar.

    ``cost="mse"`` is the tutorial's mean squared difference between ``A_output`` (n, classes)
    and one-hot ``y`` (n, classes). ``cost="cross_entropy"`` is the mean categorical
    cross-entropy, computed from ``logits`` when given (numerically stable) and optionally with
    label smoothing. ``l2`` adds ``l2 * sum(W ** 2)`` over all weight matrices and kernels, the
    regularisation the tutorial suggests.
    """
    check("cost", cost, COSTS)
    A_output = tf.convert_to_tensor(A_output)
    if not A_output.dtype.is_floating:
        A_output = tf.cast(A_output, tf.float32)
    y = tf.cast(y, A_output.dtype)
    if label_smoothing:
        y = y * (1.0 - label_smoothing) + label_smoothing / tf.cast(tf.shape(y)[-1], y.dtype)
    if cost == "mse":
        value = tf.reduce_mean(tf.math.squared_difference(A_output, y))
    elif logits is not None:
        value = tf.reduce_mean(
            tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=tf.cast(logits, y.dtype))
        )
    else:
        probabilities = tf.clip_by_value(A_output, 1e-7, 1.0)
        value = -tf.reduce_mean(tf.reduce_sum(y * tf.math.log(probabilities), axis=-1))
    if l2:
        weights = [value_ for name, value_ in parameters.items() if name.startswith("W")]
        value = value + l2 * tf.add_n(
            [tf.reduce_sum(tf.square(tf.cast(W, value.dtype))) for W in weights]
        )
    return value
