"""A trained model: architecture, NumPy parameters, metadata, and a NumPy forward pass.

Prediction never needs TensorFlow: ``digitnet predict``, ``evaluate`` and ``serve`` run this
forward pass, which tests check against ``digitnet.core.forward_propagation``. Importing
TensorFlow alone takes seconds; this path answers one image in microseconds.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from digitnet.errors import ConfigError
from digitnet.models import architectures
from digitnet.models.architectures import BATCHNORM_EPSILON


def _activate(values: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(values, 0.0, out=values)
    if activation == "sigmoid":
        # Written as 0.5 * (1 + tanh(x / 2)): equal to 1 / (1 + exp(-x)) but never overflows.
        return 0.5 * (1.0 + np.tanh(0.5 * values))
    if activation == "softmax":
        shifted = values - values.max(axis=-1, keepdims=True)
        np.exp(shifted, out=shifted)
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return values


def _activate_in_place(values: np.ndarray, activation: str) -> None:
    """``_activate`` writing into ``values`` (float32, owned by the caller): the same
    arithmetic, bit for bit, without temporaries."""
    if activation == "relu":
        np.maximum(values, 0.0, out=values)
    elif activation == "sigmoid":
        values *= 0.5
        np.tanh(values, out=values)
        values += 1.0
        values *= 0.5
    elif activation == "softmax":
        values -= values.max(axis=-1, keepdims=True)
        np.exp(values, out=values)
        values /= values.sum(axis=-1, keepdims=True)


def _dense_forward(values: np.ndarray, layers: list[tuple]) -> np.ndarray:
    """A stack of dense layers on ``values`` (n, inputs) float32 -> (n, units of the last).

    Each product makes a new array, so the caller's ``values`` is never written to; the bias
    and activation then work in place in it.
    """
    for weights, bias, activation in layers:
        values = values @ weights
        if bias is not None:
            values += bias
        _activate_in_place(values, activation)
    return values


# Large batches go in blocks of rows: dense stacks 1024 at a time (their activations stay in
# the core's cache), convolutional models 256 (im2col windows take memory per image).
DENSE_BLOCK_ROWS = 1024
CONV_BLOCK_ROWS = 256

_pool: ThreadPoolExecutor | None = None
_blas: Any = None
_setup_lock = threading.Lock()
_blocks_lock = threading.Lock()


def _worker_pool() -> ThreadPoolExecutor:
    global _pool
    with _setup_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                min(os.cpu_count() or 1, 8), thread_name_prefix="digitnet-forward"
            )
        return _pool


def _blas_controller() -> Any:
    """threadpoolctl's handle on the loaded BLAS libraries (found once, 3 ms), or False
    without threadpoolctl."""
    global _blas
    with _setup_lock:
        if _blas is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                _blas = False
            else:
                _blas = ThreadpoolController()
        return _blas


def _in_row_blocks(
    function: Callable[[np.ndarray], np.ndarray], values: np.ndarray, rows: int, columns: int
) -> np.ndarray:
    """``function`` (block (r, ...) -> (r, columns) float32) over ``values`` in blocks of
    ``rows`` on worker threads, BLAS held to one thread meanwhile; returns (n, columns).

    OpenBLAS's own threads spin at barriers, which goes badly when other processes share
    the cores: the 10,000 test images took 27-58 ms on its two threads on this 2-core machine,
    and 11-17 ms as blocks on two Python threads with one BLAS thread each.
    """
    out = np.empty((len(values), columns), np.float32)

    def block(start: int) -> None:
        out[start : start + rows] = function(values[start : start + rows])

    starts = range(0, len(values), rows)
    controller = _blas_controller()
    if not controller:
        for start in starts:
            block(start)
        return out
    # One large batch at a time: each already has every core, and BLAS's thread count is
    # process-wide (threadpoolctl lets one thread at a time change it and change it back).
    with _blocks_lock, controller.limit(limits=1, user_api="blas"):
        # list() waits for every block and raises the first block's error, if any.
        list(_worker_pool().map(block, starts))
    return out


def _conv2d(images: np.ndarray, kernel: np.ndarray, stride: int, padding: str) -> np.ndarray:
    """``images`` (n, h, w, c) conv ``kernel`` (k, k, c, f) -> (n, h', w', f), as tf.nn.conv2d."""
    size = kernel.shape[0]
    if padding == "same":
        height, width = images.shape[1:3]
        out_h, out_w = -(-height // stride), -(-width // stride)
        pad_h = max((out_h - 1) * stride + size - height, 0)
        pad_w = max((out_w - 1) * stride + size - width, 0)
        # TensorFlow puts the odd pixel of padding at the bottom/right.
        images = np.pad(
            images,
            ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
        )
    windows = sliding_window_view(images, (size, size), axis=(1, 2))[:, ::stride, ::stride]
    # windows: (n, h', w', c, k, k). Copying them into one (n*h'*w', c*k*k) matrix (im2col)
    # turns the convolution into a single BLAS matrix product, far faster than einsum here.
    n, out_h, out_w = windows.shape[:3]
    columns = windows.reshape(n * out_h * out_w, -1)
    weights = kernel.transpose(2, 0, 1, 3).reshape(-1, kernel.shape[3])
    return (columns @ weights).reshape(n, out_h, out_w, kernel.shape[3])


@dataclass
class Model:
    """A trained network ready to predict.

    Attributes:
        architecture: canonical architecture dict (see ``digitnet.models.architectures``).
        parameters: name -> float32 array, e.g. ``W1`` (100, 784) and ``b1`` (100, 1).
        metadata: training settings, metrics, history, data fingerprint, versions.
    """

    architecture: dict
    parameters: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.architecture = architectures.validate_architecture(self.architecture)
        expected = architectures.parameter_shapes(self.architecture)
        missing = sorted(set(expected) - set(self.parameters))
        extra = sorted(set(self.parameters) - set(expected))
        if missing or extra:
            raise ConfigError(
                f"parameters do not match the architecture: missing {missing}, unexpected {extra}"
            )
        for name, shape in expected.items():
            if tuple(self.parameters[name].shape) != shape:
                raise ConfigError(
                    f"parameter {name} has shape "
                    f"{tuple(self.parameters[name].shape)}, the architecture "
                    f"needs {shape}"
                )
        self.parameters = {
            name: np.asarray(self.parameters[name], dtype=np.float32) for name in expected
        }
        self._plan = self._compile()
        self._n_inputs = architectures.n_inputs(self.architecture)
        # The seed and mlp models are dense stacks: they take a path without per-layer
        # dispatch or temporaries (one image about 1 us sooner, 13 us instead of 14).
        self._dense_layers = (
            [step[1:] for step in self._plan]
            if all(step[0] == "dense" for step in self._plan)
            else None
        )
        self._block_rows = DENSE_BLOCK_ROWS if self._dense_layers is not None else CONV_BLOCK_ROWS

    @property
    def n_classes(self) -> int:
        return architectures.n_outputs(self.architecture)

    @property
    def n_inputs(self) -> int:
        return architectures.n_inputs(self.architecture)

    @property
    def name(self) -> str:
        return str(self.metadata.get("training", {}).get("model", "custom"))

    def _compile(self) -> list[tuple]:
        """Precompute per-layer operands so the forward pass does no per-call reshaping.

        Dense weights are stored transposed and contiguous (X @ W^T is the hot path); batchnorm
        is folded into one scale and shift.
        """
        plan = []
        for layer, k in zip(
            self.architecture["layers"], architectures.layer_numbers(self.architecture)
        ):
            kind, p = layer["type"], self.parameters
            if kind == "dense":
                bias = p[f"b{k}"].reshape(1, -1) if f"b{k}" in p else None
                plan.append(
                    ("dense", np.ascontiguousarray(p[f"W{k}"].T), bias, layer["activation"])
                )
            elif kind == "conv":
                plan.append(
                    (
                        "conv",
                        p[f"W{k}"],
                        p.get(f"b{k}"),
                        layer["stride"],
                        layer["padding"],
                        layer["activation"],
                    )
                )
            elif kind == "batchnorm":
                scale = p[f"gamma{k}"] / np.sqrt(p[f"variance{k}"] + BATCHNORM_EPSILON)
                shift = p[f"beta{k}"] - p[f"mean{k}"] * scale
                plan.append(
                    (
                        "affine",
                        scale.astype(np.float32),
                        shift.astype(np.float32),
                        layer["activation"],
                    )
                )
            elif kind == "maxpool":
                plan.append(("maxpool", layer["size"]))
            elif kind == "global_avgpool":
                plan.append(("global_avgpool",))
            elif kind == "flatten":
                plan.append(("flatten",))
            # Dropout is the identity at inference.
        return plan

    def forward(self, X: np.ndarray, block_rows: int | None = None) -> np.ndarray:
        """Output activations for ``X`` (n, n_inputs) float32 in [0, 1] -> (n, n_classes),
        a new array.

        More than ``block_rows`` samples (default ``DENSE_BLOCK_ROWS`` or
        ``CONV_BLOCK_ROWS``) are computed in blocks of that many on worker threads.
        """
        values = np.asarray(X, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != self._n_inputs:
            values = values.reshape(len(values) if values.ndim > 1 else 1, -1)
            if values.shape[1] != self._n_inputs:
                raise ConfigError(
                    f"the model takes {self._n_inputs} values per sample, got {values.shape[1]}"
                )
        rows = block_rows or self._block_rows
        if len(values) > rows:
            return _in_row_blocks(self._forward_block, values, rows, self.n_classes)
        return self._forward_block(values)

    def _forward_block(self, values: np.ndarray) -> np.ndarray:
        """``forward`` on checked float32 rows (n, n_inputs), on this thread."""
        if self._dense_layers is not None:
            return _dense_forward(values, self._dense_layers)
        if len(self.architecture["input_shape"]) == 3:
            values = values.reshape(len(values), *self.architecture["input_shape"])
        for step in self._plan:
            kind = step[0]
            if kind == "dense":
                _, weights, bias, activation = step
                values = values @ weights
                if bias is not None:
                    values += bias
                values = _activate(values, activation)
            elif kind == "conv":
                _, kernel, bias, stride, padding, activation = step
                values = _conv2d(values, kernel, stride, padding)
                if bias is not None:
                    values += bias
                values = _activate(values, activation)
            elif kind == "affine":
                _, scale, shift, activation = step
                values = _activate(values * scale + shift, activation)
            elif kind == "maxpool":
                size = step[1]
                n, height, width, channels = values.shape
                height, width = height // size * size, width // size * size
                values = (
                    values[:, :height, :width]
                    .reshape(n, height // size, size, width // size, size, channels)
                    .max(axis=(2, 4))
                )
            elif kind == "global_avgpool":
                values = values.mean(axis=(1, 2))
            elif kind == "flatten":
                values = values.reshape(len(values), -1)
        return values

    def predict_proba(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, (n, n_classes) float32, each row summing to 1.

        A calibrated model (its file records a temperature, see ``digitnet.inference.
        calibration``) answers ``softmax(logits / T)``. Otherwise a sigmoid output (the
        tutorial's network) scores each class independently; its scores are normalised so
        every model answers with a distribution. ``batch_size`` is ``forward``'s ``block_rows``.
        """
        calibration = self.calibration
        if calibration is not None:
            from digitnet.inference.calibration import softmax

            return softmax(self.logits(X, batch_size), calibration.temperature)
        outputs = self.forward(X, batch_size)
        if self.architecture["layers"][-1]["activation"] != "softmax":
            # forward's result is a fresh array: normalise it in place.
            np.maximum(outputs, 1e-12, out=outputs)
            outputs /= outputs.sum(axis=1, keepdims=True)
        return outputs

    @property
    def calibration(self) -> Any:
        """The ``Calibration`` recorded in the metadata, or None (files written before it)."""
        from digitnet.inference.calibration import Calibration

        return Calibration.from_json(self.metadata.get("calibration"))

    def logits(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """The output layer's values before its activation: (n, n_classes) float32.

        Computed by a twin of this model whose output layer is linear, so a saturated sigmoid
        (the seed model answers exactly 1.0 for a quarter of the test digits) keeps its order.
        """
        twin = self.__dict__.get("_linear_twin")
        if twin is None:
            architecture = copy.deepcopy(self.architecture)
            architecture["layers"][-1]["activation"] = "linear"
            twin = self.__dict__["_linear_twin"] = Model(architecture, self.parameters)
        return twin.forward(X, batch_size)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted labels, int64 (n,)."""
        return np.argmax(self.forward(X), axis=1).astype(np.int64)

    def with_metadata(self, **updates: Any) -> Model:
        merged = dict(self.metadata)
        merged.update(updates)
        return Model(self.architecture, self.parameters, merged)


def model_from_parameters(
    parameters: Mapping[str, Any], layout: Any = None, metadata: Mapping | None = None
) -> Model:
    """Wrap the five functions' parameter dict (NumPy or tensors) into a ``Model``."""
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in parameters.items()}
    if layout is None:
        architecture = architectures.architecture_from_parameters(arrays)
    else:
        architecture = architectures.normalize_layout(layout)
    return Model(architecture, arrays, dict(metadata or {}))
