"""The tutorial's five functions, on TensorFlow 2.

``initialize_parameters``, ``forward_propagation``, ``calculate_cost``, ``train_parameters`` and
``predict`` keep the tutorial's names, arguments and printed lines. Each also accepts the larger
models (a ``layout`` may be an architecture dict, see ``digitnet.models.architectures``), so the
tutorial's network and digitnet's own models go through the same code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from digitnet.models import architectures
from digitnet.models.architectures import BATCHNORM_EPSILON
from digitnet.models.choices import COSTS, check


def architecture_of(layout: Any, parameters: Mapping) -> dict:
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
        zeros and ``variance`` ones (not trainable).
    """
    architecture = architectures.normalize_layout(layout)
    parameters = {}
    for name, shape in architectures.parameter_shapes(architecture).items():
        k = int(re.search(r"\d+$", name).group())
        if name.startswith("W"):
            initializer = tf.keras.initializers.GlorotUniform(seed=seed * 1009 + k)
            value = initializer(shape, dtype=tf.float32)
        elif name.startswith(("gamma", "variance")):
            value = tf.ones(shape, tf.float32)
        else:
            value = tf.zeros(shape, tf.float32)
        parameters[name] = tf.Variable(value, name=name, trainable=architectures.is_trainable(name))
    return parameters


def _activate(Z: tf.Tensor, activation: str) -> tf.Tensor:
    if activation == "relu":
        return tf.nn.relu(Z)
    if activation == "sigmoid":
        return tf.nn.sigmoid(Z)
    if activation == "softmax":
        return tf.nn.softmax(Z)
    return Z


def forward_propagation(
    X,
    parameters: Mapping,
    layout: Any = None,
    *,
    training: bool = False,
    seed=None,
    return_logits: bool = False,
    compute_dtype=None,
):
    """Run the network on ``X`` (n, n_inputs) and return the output activations (n, n_classes).

    Without ``layout`` the parameters are read as the tutorial's dense stack (ReLU hidden
    layers, sigmoid output). ``training=True`` applies dropout (with the stateless ``seed``, a
    pair of ints) and batch statistics, updating running batchnorm statistics held in
    ``tf.Variable`` parameters. ``return_logits=True`` returns ``(A_output, Z_output)``.
    ``compute_dtype=tf.bfloat16`` carries activations and runs products and convolutions in
    bfloat16 (several times faster on CPUs with AMX); the parameters stay in their precision
    and the output is computed in it.
    """
    architecture = architecture_of(layout, parameters)
    # The parameters' precision: float32 normally, float64 for gradient checks.
    output_dtype = tf.as_dtype(next(iter(parameters.values())).dtype)
    A = tf.cast(X, compute_dtype or output_dtype)
    if len(architecture["input_shape"]) == 3:
        A = tf.reshape(A, [-1, *architecture["input_shape"]])
    layers, numbers = architecture["layers"], architectures.layer_numbers(architecture)
    for index, (layer, k) in enumerate(zip(layers[:-1], numbers)):
        A = _layer(A, layer, k, parameters, training, None if seed is None else (seed, index))
    Z = _layer(A, layers[-1], numbers[-1], parameters, training, None, activate=False)
    Z = tf.cast(Z, output_dtype)
    A_output = _activate(Z, layers[-1]["activation"])
    return (A_output, Z) if return_logits else A_output


def _layer(
    A, layer: Mapping, k: int, parameters: Mapping, training: bool, seed, activate: bool = True
):
    """One layer of ``forward_propagation``, computed in A's dtype."""
    kind = layer["type"]

    def weight(name: str) -> tf.Tensor:
        return tf.cast(parameters[f"{name}{k}"], A.dtype)

    if kind == "dense":
        Z = tf.matmul(A, weight("W"), transpose_b=True)
        if layer["use_bias"]:
            Z = Z + tf.transpose(weight("b"))
    elif kind == "conv":
        Z = tf.nn.conv2d(A, weight("W"), layer["stride"], layer["padding"].upper())
        if layer["use_bias"]:
            Z = Z + weight("b")
    elif kind == "batchnorm":
        Z = _batchnorm(A, parameters, k, layer["momentum"], training)
    elif kind == "maxpool":
        return tf.nn.max_pool2d(A, layer["size"], layer["size"], "VALID")
    elif kind == "global_avgpool":
        return tf.reduce_mean(A, axis=[1, 2])
    elif kind == "flatten":
        return tf.reshape(A, [tf.shape(A)[0], -1])
    elif kind == "dropout" and training and layer["rate"] > 0:
        (step_seed, index) = seed
        layer_seed = tf.stack(
            [tf.cast(step_seed[0], tf.int64), tf.cast(step_seed[1], tf.int64) * 1024 + index]
        )
        return tf.nn.experimental.stateless_dropout(A, layer["rate"], seed=layer_seed)
    else:
        return A
    return _activate(Z, layer["activation"]) if activate else Z


def _batchnorm(A, parameters: Mapping, k: int, momentum: float, training: bool):
    """Batch normalisation with TensorFlow's fused kernel (one pass forward and backward).

    Works in A's dtype (bfloat16 included) with float32 statistics; in training it normalises
    by the batch's statistics and moves the running ones held in ``tf.Variable`` parameters.
    """
    shape = tf.shape(A)
    images = A if len(A.shape) == 4 else tf.reshape(A, [-1, 1, 1, A.shape[-1]])
    mean, variance = parameters[f"mean{k}"], parameters[f"variance{k}"]
    statistics_dtype = tf.float64 if A.dtype == tf.float64 else tf.float32

    def cast(value: Any) -> tf.Tensor:
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
            cast(parameters[f"beta{k}"]),
            cast(parameters[f"gamma{k}"]),
            BATCHNORM_EPSILON,
        )
    normalised, batch_mean, batch_variance = tf.compat.v1.nn.fused_batch_norm(
        images,
        cast(parameters[f"gamma{k}"]),
        cast(parameters[f"beta{k}"]),
        mean=None if training else cast(mean),
        variance=None if training else cast(variance),
        epsilon=BATCHNORM_EPSILON,
        is_training=training,
    )
    if training and isinstance(mean, tf.Variable):
        mean.assign(momentum * mean + (1.0 - momentum) * batch_mean)
        variance.assign(momentum * variance + (1.0 - momentum) * batch_variance)
    return normalised if len(A.shape) == 4 else tf.reshape(normalised, shape)


def calculate_cost(
    A_output,
    y,
    parameters: Mapping,
    *,
    cost: str = "mse",
    l2: float = 0.0,
    label_smoothing: float = 0.0,
    logits=None,
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
