"""A trained model: architecture, NumPy parameters, metadata, and a NumPy forward pass.

Prediction never needs TensorFlow: ``digitnet predict``, ``evaluate`` and ``serve`` run this
forward pass, which tests check against TensorFlow's (``digitnet.training.network``).
Importing TensorFlow alone takes seconds; this path answers one image in microseconds.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from digitnet.errors import ConfigError
from digitnet.models import architectures
from digitnet.models.architectures import LINE_CONTEXT, LINE_HEIGHT, LINE_STRIDE
from digitnet.models.classes import not_a_digit_index
from digitnet.models.layers import (
    BatchNormStep,
    ConvStep,
    DenseStep,
    NumpyStep,
    Workspace,
    conv2d,
    fold_batchnorm,
)

# (weights (inputs, units), bias (1, units) or None, in-place activation) per layer.
DenseLayers = list[tuple[np.ndarray, np.ndarray | None, Callable[[np.ndarray], None]]]


def _dense_forward(values: np.ndarray, layers: DenseLayers) -> np.ndarray:
    """A stack of dense layers on ``values`` (n, inputs) float32 -> (n, units of the last).

    Each product makes a new array, so the caller's ``values`` is never written to; the bias
    and activation then work in place in it.
    """
    for weights, bias, activate_in_place in layers:
        # np.dot, not @: the same BLAS product, 0.35 us less of dispatch on small ones.
        values = np.dot(values, weights)
        if bias is not None:
            values += bias
        activate_in_place(values)
    return values


# predict_proba's floor under each sigmoid score before it normalises them to sum to 1 (keeps a
# row of all-zero scores finite). Exported models apply the same.
PROBABILITY_FLOOR = 1e-12

# Large batches go in blocks of rows: dense stacks 1024 at a time (their activations stay in
# the core's cache), convolutional models 16 (the im2col matrix of the cnn's widest layer,
# 0.66 MB an image, then stays near the core's 4 MB cache).
DENSE_BLOCK_ROWS = 1024
CONV_BLOCK_ROWS = 8

# OpenBLAS runs a product on several threads from this many multiply-adds on (its
# GEMM_MULTITHREAD_THRESHOLD); its threads spin at barriers, which goes badly when other
# processes share the cores, so smaller work skips the hold on BLAS's threads.
BLAS_THREADING_MACS = 65536 * 4

# One fused step of the convolutional path: (values, this thread's workspace or None) -> values.
FastStep = Callable[[np.ndarray, Workspace | None], np.ndarray]

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


class _OneBlasThread:
    """Holds the BLAS libraries at one thread while any caller is inside (a count shared by
    all threads; the last one out gives BLAS its threads back). Cheaper than threadpoolctl's
    ``limit`` (about 2 us against 27): it calls the libraries' setters it found once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._saved: list[tuple[Any, int]] = []

    def __enter__(self) -> None:
        controller = _blas_controller()
        if not controller:
            return
        with self._lock:
            if self._inside == 0:
                libraries = [lib for lib in controller.lib_controllers if lib.user_api == "blas"]
                self._saved = [(lib, lib.get_num_threads()) for lib in libraries]
                for lib, _ in self._saved:
                    lib.set_num_threads(1)
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        if not _blas_controller():
            return
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                for lib, threads in self._saved:
                    lib.set_num_threads(threads)


_one_blas_thread = _OneBlasThread()


_load_checked = -math.inf
_load_is_low = False


def _cores_are_free() -> bool:
    """Whether the machine's 1-minute load average (this process's own work included) is under
    its number of cores, checked at most once a second. OpenBLAS's threads spin at barriers:
    with cores to spare they halve the mlp's one image, on a busy machine they took it from
    0.5 ms to 37 ms."""
    global _load_checked, _load_is_low
    now = time.monotonic()
    if now - _load_checked > 1.0:
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average on this platform
            load = math.inf
        _load_is_low = load < (os.cpu_count() or 1)
        _load_checked = now
    return _load_is_low


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
    if not _blas_controller():
        for start in starts:
            block(start)
        return out
    # One large batch at a time: each already has every core.
    with _blocks_lock, _one_blas_thread:
        # list() waits for every block and raises the first block's error, if any.
        list(_worker_pool().map(block, starts))
    return out


def _largest_layer_macs(architecture: dict[str, Any]) -> int:
    """The most multiply-adds one dense or convolutional layer does per sample."""
    shapes = architectures.layer_shapes(architecture)
    inputs = [tuple(architecture["input_shape"]), *shapes[:-1]]
    macs = [1]
    for layer, shape, previous in zip(architecture["layers"], shapes, inputs):
        if layer["type"] == "dense":
            macs.append(previous[0] * shape[0])
        elif layer["type"] == "conv":
            macs.append(int(np.prod(shape)) * layer["kernel"] ** 2 * previous[-1])
    return max(macs)


def _fused_conv(step: ConvStep, owner: int) -> FastStep:
    relu = step.activation.name == "relu"

    def run(values: np.ndarray, workspace: Workspace | None) -> np.ndarray:
        return conv2d(
            values, step.kernel, step.stride, step.padding, step.bias, relu, workspace, owner
        )

    return run


def _plain_step(step: NumpyStep) -> FastStep:
    def run(values: np.ndarray, workspace: Workspace | None) -> np.ndarray:
        return step.activation.numpy(step.apply(values))

    return run


def checked_parameters(
    architecture: dict[str, Any], parameters: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``parameters`` as float32 arrays, in the architecture's order; ConfigError naming a
    missing, unexpected or misshapen one."""
    expected = architectures.parameter_shapes(architecture)
    missing = sorted(set(expected) - set(parameters))
    extra = sorted(set(parameters) - set(expected))
    if missing or extra:
        raise ConfigError(
            f"parameters do not match the architecture: missing {missing}, unexpected {extra}"
        )
    for name, shape in expected.items():
        if tuple(parameters[name].shape) != shape:
            raise ConfigError(
                f"parameter {name} has shape {tuple(parameters[name].shape)}, the architecture "
                f"needs {shape}"
            )
    return {name: np.asarray(parameters[name], dtype=np.float32) for name in expected}


def _layer_steps(
    architecture: dict[str, Any], parameters: dict[str, np.ndarray]
) -> list[NumpyStep | None]:
    return [
        layer.type.numpy(layer.spec, layer.own(parameters))
        for layer in architectures.bind_layers(architecture)
    ]


def compile_steps(
    architecture: dict[str, Any], parameters: dict[str, np.ndarray]
) -> list[NumpyStep]:
    """Each layer's NumPy step (its layer type's ``numpy``), operands precomputed so the
    forward pass does no per-call reshaping: dense weights transposed and contiguous,
    batchnorm folded into one scale and shift. Layers that are the identity at inference
    (dropout) have no step."""
    return [step for step in _layer_steps(architecture, parameters) if step is not None]


def fuse_steps(plan: list[NumpyStep]) -> list[FastStep]:
    """The convolutional path's steps: each convolution with the batchnorm after it folded in
    (once, here) and its ReLU applied in place; other steps as they are."""
    fast: list[FastStep] = []
    index = 0
    while index < len(plan):
        step = plan[index]
        following = plan[index + 1] if index + 1 < len(plan) else None
        if (
            isinstance(step, ConvStep)
            and isinstance(following, BatchNormStep)
            and step.activation.name == "linear"
        ):
            step = fold_batchnorm(step, following)
            index += 1
        index += 1
        if isinstance(step, ConvStep) and step.activation.name in ("relu", "linear"):
            fast.append(_fused_conv(step, owner=len(fast)))
        else:
            fast.append(_plain_step(step))
    return fast


ModelParts = tuple[
    dict[str, Any],
    dict[str, np.ndarray],
    dict[str, Any],
    tuple[dict[str, Any], dict[str, np.ndarray]] | None,
]
"""A model's architecture, parameters, metadata and line network's (architecture,
parameters) or None: ``Model.parts``."""


@dataclass
class Model:
    """A trained network ready to predict.

    Attributes:
        architecture: canonical architecture dict (see ``digitnet.models.architectures``).
        parameters: name -> float32 array, e.g. ``W1`` (100, 784) and ``b1`` (100, 1).
        metadata: training settings, metrics, history, data fingerprint, versions.
        line_network: the network that reads whole lines of digits, which a reader model file
            carries beside its classifier (``digitnet.inference.line_reading``), or None.
    """

    architecture: dict[str, Any]
    parameters: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)
    line_network: LineNetwork | None = None

    def __post_init__(self) -> None:
        self.architecture = architectures.validate_architecture(self.architecture)
        if self.architecture.get("output") == "columns":
            raise ConfigError("this architecture is a line network's, not a classifier's")
        self.parameters = checked_parameters(self.architecture, self.parameters)
        self._plan = self._compile()
        self._n_inputs = architectures.n_inputs(self.architecture)
        # The seed and mlp models are dense stacks: they take a path without per-layer
        # dispatch or temporaries (one image about 1 us sooner, 13 us instead of 14).
        dense = [step for step in self._plan if isinstance(step, DenseStep)]
        self._dense_layers: DenseLayers | None = (
            [(step.weights, step.bias, step.activation.numpy_in_place) for step in dense]
            if len(dense) == len(self._plan)
            else None
        )
        # The most multiply-adds one layer does per sample: above OpenBLAS's threshold for
        # threads, forward holds BLAS at one thread (its own threads take large batches).
        self._macs_per_sample = _largest_layer_macs(self.architecture)
        # One image through a wide dense stack (the mlp) is a chain of matrix-vector products,
        # bound by memory bandwidth: BLAS splits each over the cores, reading the weights in
        # Fortran order so that every output is one contiguous run of them (the mlp's one
        # image 145 -> 76 us on 2 cores). A second copy of the weights (9.6 MB for the mlp);
        # smaller stacks (the seed) gain nothing from threads and keep one. (Carrying the
        # biases in the products, a unit held at 1 per layer, saved nothing measurable.)
        self._dense_one_row = self._dense_layers
        self._one_row_threads = False
        if self._dense_layers is not None and self._macs_per_sample >= BLAS_THREADING_MACS:
            self._one_row_threads = True
            self._dense_one_row = [
                (np.asfortranarray(weights), bias, activate)
                for weights, bias, activate in self._dense_layers
            ]
        self._block_rows = DENSE_BLOCK_ROWS if self._dense_layers is not None else CONV_BLOCK_ROWS
        self._fast_plan = fuse_steps(self._plan) if self._dense_layers is None else []
        self._workspaces = threading.local()

    @property
    def n_classes(self) -> int:
        return architectures.n_outputs(self.architecture)

    @property
    def n_inputs(self) -> int:
        return architectures.n_inputs(self.architecture)

    @property
    def not_a_digit_class(self) -> int | None:
        """The output meaning "not a digit" (the last, 10 for the reader model), or None: the
        outputs are digits only (the seed, mlp and cnn models, every file written before)."""
        return not_a_digit_index(self.metadata.get("classes"), self.n_classes)

    @property
    def name(self) -> str:
        return str(self.metadata.get("training", {}).get("model", "custom"))

    def _compile(self) -> list[NumpyStep]:
        """Each layer's NumPy step (its layer type's ``numpy``), operands precomputed so the
        forward pass does no per-call reshaping: dense weights transposed and contiguous,
        batchnorm folded into one scale and shift. Layers that are the identity at inference
        (dropout) have no step."""
        steps = _layer_steps(self.architecture, self.parameters)
        # How many steps the first k + 1 layers make, for layer_output.
        self._steps_through = list(itertools.accumulate(step is not None for step in steps))
        return [step for step in steps if step is not None]

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
        n = len(values)
        if n == 1 and self._dense_one_row is not None:
            if not self._one_row_threads or _cores_are_free():
                return _dense_forward(values, self._dense_one_row)
            with _one_blas_thread:
                return _dense_forward(values, self._dense_one_row)
        rows = block_rows or self._block_rows
        if n > rows:
            return _in_row_blocks(self._forward_block, values, rows, self.n_classes)
        if n * self._macs_per_sample >= BLAS_THREADING_MACS:
            with _one_blas_thread:
                return self._forward_block(values)
        return self._forward_block(values)

    def _forward_block(self, values: np.ndarray) -> np.ndarray:
        """``forward`` on checked float32 rows (n, n_inputs), on this thread."""
        if self._dense_layers is not None:
            return _dense_forward(values, self._dense_layers)
        values = values.reshape(len(values), *self.architecture["input_shape"])
        # One image and whole blocks, the sizes that recur, reuse this thread's buffers.
        workspace: Workspace | None = None
        if len(values) == 1 or len(values) == self._block_rows:
            workspace = self._workspaces.__dict__.setdefault("buffers", {})
        # The last layer is dense (architectures require it): its product is a new array, so
        # no buffer escapes.
        for step in self._fast_plan:
            values = step(values, workspace)
        return values

    def layer_output(self, X: np.ndarray, layer: int) -> np.ndarray:
        """What layer number ``layer`` (1-based, counted over ``architecture["layers"]``)
        outputs for ``X`` (n, n_inputs), in inference mode: (n, h, w, channels) after a
        convolutional layer, (n, units) after a dense one."""
        values = np.asarray(X, dtype=np.float32).reshape(-1, self._n_inputs)
        return self._run_plan(values, self._plan[: self._steps_through[layer - 1]])

    def _run_plan(self, values: np.ndarray, plan: list[NumpyStep]) -> np.ndarray:
        """The steps of ``plan`` (from ``_compile``) on float32 rows (n, n_inputs)."""
        if len(self.architecture["input_shape"]) == 3:
            values = values.reshape(len(values), *self.architecture["input_shape"])
        for step in plan:
            values = step.activation.numpy(step.apply(values))
        return values

    def predict_proba(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, (n, n_classes) float32, each row summing to 1.

        A calibrated model (its file records a temperature, see ``digitnet.inference.
        calibration``) answers ``softmax(logits / T)``. Otherwise a sigmoid output (the
        tutorial's network) scores each class independently; its scores are normalised so
        every model answers with a distribution. ``batch_size`` is ``forward``'s ``block_rows``.
        """
        scorer, temperature, normalize = self._probability_path()
        outputs = scorer.forward(X, batch_size)
        if temperature is not None:
            from digitnet.inference.calibration import softmax

            return softmax(outputs, temperature)
        if normalize:
            # forward's result is a fresh array: normalise it in place. One image's row is the
            # whole array, and a sum without an axis costs half as much (about 1 us less).
            np.maximum(outputs, PROBABILITY_FLOOR, out=outputs)
            outputs /= outputs.sum() if len(outputs) == 1 else outputs.sum(axis=1, keepdims=True)
        return outputs

    def _probability_path(self) -> tuple[Model, float | None, bool]:
        """The model whose forward pass gives ``predict_proba``'s answer, the temperature of
        a softmax still to apply (or None), and whether its outputs still need normalising;
        made once per recorded calibration.

        A calibrated model's twin has ``1 / T`` folded into its dense output layer and a
        softmax output, so one image costs no extra passes over its scores.
        """
        recorded = self.metadata.get("calibration")
        cached = self.__dict__.get("_probability_cache")
        if cached is not None and cached[0] is recorded:
            return cached[1], cached[2], cached[3]
        calibration = self.calibration
        last = self.architecture["layers"][-1]
        path: tuple[Model, float | None, bool]
        if calibration is None:
            path = (self, None, last["activation"] != "softmax")
        elif last["type"] == "dense":
            architecture = copy.deepcopy(self.architecture)
            architecture["layers"][-1]["activation"] = "softmax"
            k = architectures.layer_numbers(self.architecture)[-1]
            parameters = dict(self.parameters)
            for name in (f"W{k}", f"b{k}"):
                if name in parameters:
                    parameters[name] = parameters[name] / np.float32(calibration.temperature)
            path = (Model(architecture, parameters), None, False)
        else:
            path = (self._linear(), calibration.temperature, False)
        self.__dict__["_probability_cache"] = (recorded, *path)
        return path

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
        return self._linear().forward(X, batch_size)

    def _linear(self) -> Model:
        """This model with a linear output layer (made once)."""
        twin = self.__dict__.get("_linear_twin")
        if twin is None:
            architecture = copy.deepcopy(self.architecture)
            architecture["layers"][-1]["activation"] = "linear"
            twin = self.__dict__["_linear_twin"] = Model(architecture, self.parameters)
        return twin

    def answers(self, probabilities: np.ndarray) -> np.ndarray:
        """The class each row of ``probabilities`` (n, n_classes) answers, int64 (n,): the
        most likely one, except that a model with a "not a digit" class answers it only where
        its calibration refuses the image (``calibration.refused``), and otherwise the most
        likely digit."""
        values = np.asarray(probabilities)
        refusal = self.not_a_digit_class
        if refusal is None:
            best: np.ndarray = values.argmax(axis=1).astype(np.int64)
            return best
        from digitnet.inference.calibration import refused

        calibration = self.calibration
        threshold = None if calibration is None else calibration.refuse_above
        digits = values[:, :refusal].argmax(axis=1).astype(np.int64)
        chosen: np.ndarray = np.where(refused(values, refusal, threshold), refusal, digits)
        return chosen

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted labels, int64 (n,): ``answers`` of the probabilities (for a model without
        a "not a digit" class, the largest output)."""
        if self.not_a_digit_class is not None:
            return self.answers(self.predict_proba(X))
        labels: np.ndarray = np.argmax(self.forward(X), axis=1).astype(np.int64)
        return labels

    def with_metadata(self, **updates: Any) -> Model:
        merged = dict(self.metadata)
        merged.update(updates)
        return Model(self.architecture, self.parameters, merged, self.line_network)

    def with_line_network(self, line_network: LineNetwork | None) -> Model:
        return Model(self.architecture, self.parameters, self.metadata, line_network)

    def parts(self) -> ModelParts:
        """What ``from_parts`` rebuilds this model from, in plain data: a compiled model holds
        closures that pickle cannot send to another process."""
        line = self.line_network
        return (
            self.architecture,
            self.parameters,
            self.metadata,
            None if line is None else (line.architecture, line.parameters),
        )

    @classmethod
    def from_parts(cls, parts: ModelParts) -> Model:
        architecture, parameters, metadata, line = parts
        return cls(architecture, parameters, metadata, None if line is None else LineNetwork(*line))


@dataclass
class LineNetwork:
    """A trained line network ready to read whole lines of digits: ``architecture``
    (``"output": "columns"``, see ``line_architecture``) and its ``parameters`` (name ->
    float32 array). ``digitnet.inference.line_reading`` makes its input and decodes its
    output."""

    architecture: dict[str, Any]
    parameters: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.architecture = architectures.validate_architecture(self.architecture)
        if (
            self.architecture.get("output") != "columns"
            or self.architecture["input_shape"][0] != LINE_HEIGHT
        ):
            raise ConfigError(
                f"a line network takes lines {LINE_HEIGHT} px tall and scores their columns"
            )
        self.parameters = checked_parameters(self.architecture, self.parameters)
        self._steps = fuse_steps(compile_steps(self.architecture, self.parameters))

    def scores(self, values: np.ndarray) -> np.ndarray:
        """Column scores for a line image's ``values`` (LINE_HEIGHT, width), width a multiple
        of LINE_STRIDE and at least LINE_STRIDE * (LINE_CONTEXT + 1): (width / LINE_STRIDE -
        LINE_CONTEXT, symbols) float32 probabilities (11 for the reader: ten digits, blank)."""
        height, width = values.shape
        if height != LINE_HEIGHT or width % LINE_STRIDE or width < LINE_STRIDE * (LINE_CONTEXT + 1):
            raise ConfigError(
                f"a line image is {LINE_HEIGHT} px tall and a multiple of {LINE_STRIDE} px "
                f"wide, at least {LINE_STRIDE * (LINE_CONTEXT + 1)}; got {height}x{width}"
            )
        maps = np.ascontiguousarray(values, np.float32).reshape(1, height, width, 1)
        # Every line is far above the size where OpenBLAS would start its spinning threads:
        # held at one, as Model.forward holds it.
        with _one_blas_thread:
            for step in self._steps:
                maps = step(maps, None)
        return np.asarray(maps[0, 0])


def model_from_parameters(
    parameters: Mapping[str, Any], layout: Any = None, metadata: Mapping[str, Any] | None = None
) -> Model:
    """Wrap the five functions' parameter dict (NumPy or tensors) into a ``Model``."""
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in parameters.items()}
    if layout is None:
        architecture = architectures.architecture_from_parameters(arrays)
    else:
        architecture = architectures.normalize_layout(layout)
    return Model(architecture, arrays, dict(metadata or {}))
