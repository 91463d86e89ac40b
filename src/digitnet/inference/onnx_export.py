"""An ONNX graph built straight from a model's architecture and NumPy parameters.

No TensorFlow is involved: each layer of the architecture dict becomes the ONNX operators
that compute what ``Model.forward`` computes (convolutions in ONNX's NCHW layout), so the
graph runs wherever ONNX Runtime does and ``digitnet export --format onnx`` starts without
importing TensorFlow. Tests check ONNX Runtime against ``Model.predict_proba``.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from digitnet import __version__
from digitnet.inference.model import PROBABILITY_FLOOR, Model
from digitnet.inference.preprocess import MNIST_SIDE
from digitnet.models import architectures

if TYPE_CHECKING:
    import onnx

# Opset 17 and IR version 8 (ONNX 1.12, 2022): every operator used here exists in that form,
# and runtimes from ONNX Runtime 1.12 on load the file.
OPSET = 17
IR_VERSION = 8
PRODUCER = "digitnet"


def instance_shape(architecture: dict[str, Any]) -> tuple[int, ...]:
    """The shape of one input of an exported model, without the batch axis.

    MNIST-sized models take images, (28, 28) float32 in [0, 1]; a single-channel
    convolutional model takes (height, width); any other input stays as the architecture
    gives it (for example (64,) for a dense stack on 64 features).
    """
    shape = tuple(architecture["input_shape"])
    if shape == (MNIST_SIDE * MNIST_SIDE,):
        return (MNIST_SIDE, MNIST_SIDE)
    if len(shape) == 3 and shape[2] == 1:
        return shape[:2]
    return shape


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "SAME": the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Graph:
    """Nodes and initialisers under construction, with generated value names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes: Any) -> str:
        from onnx import helper

        self._count += 1
        output = f"{op.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def activate(self, value: str, activation: str, channel_axis: int) -> str:
        if activation == "relu":
            return self.node("Relu", [value])
        if activation == "sigmoid":
            return self.node("Sigmoid", [value])
        if activation == "softmax":
            # digitnet normalises over the last axis of its NHWC (or flat) values: the channels.
            return self.node("Softmax", [value], axis=channel_axis)
        return value


def build_onnx(model: Model, input_name: str, output_name: str) -> onnx.ModelProto:
    """The ONNX model of ``model``: ``input_name`` float32 [n, *instance_shape] in [0, 1] ->
    ``output_name`` float32 [n, n_classes], the probabilities ``model.predict_proba`` gives
    (a sigmoid or linear output normalised to sum to 1, as it does there).

    Dropout layers are left out (the identity at inference); batch normalisation uses the
    running statistics.
    """
    from onnx import TensorProto, checker, helper

    architecture, parameters = model.architecture, model.parameters
    calibration = model.calibration
    if calibration is not None:
        # A calibrated model answers softmax(logits / T): the output layer's values before its
        # activation, as Model.predict_proba computes them.
        architecture = copy.deepcopy(architecture)
        architecture["layers"][-1]["activation"] = "linear"
    graph = _Graph()
    input_shape = list(architecture["input_shape"])
    value = input_name
    # Flat values are (n, features); images are NCHW for ONNX's Conv while digitnet's are NHWC.
    if len(input_shape) == 3:
        height, width, channels = input_shape
        if channels == 1:
            value = graph.node(
                "Reshape",
                [value, graph.constant("image_shape", np.array([-1, 1, height, width], np.int64))],
            )
        else:
            value = graph.node(
                "Reshape",
                [value, graph.constant("image_shape", np.array([-1, *input_shape], np.int64))],
            )
            value = graph.node("Transpose", [value], perm=[0, 3, 1, 2])
    else:
        value = graph.node(
            "Reshape",
            [value, graph.constant("flat_shape", np.array([-1, model.n_inputs], np.int64))],
        )
    shape = tuple(input_shape)
    for layer, k, output in zip(
        architecture["layers"],
        architectures.layer_numbers(architecture),
        architectures.layer_shapes(architecture),
    ):
        kind = layer["type"]
        channel_axis = 1 if len(shape) == 3 else -1
        if kind == "dense":
            inputs = [value, graph.constant(f"W{k}", parameters[f"W{k}"])]
            if layer["use_bias"]:
                inputs.append(graph.constant(f"b{k}", parameters[f"b{k}"].reshape(-1)))
            # Gemm with transB takes W as digitnet stores it, [units, inputs].
            value = graph.node("Gemm", inputs, transB=1)
            value = graph.activate(value, layer["activation"], -1)
        elif kind == "conv":
            size, stride = layer["kernel"], layer["stride"]
            if layer["padding"] == "same":
                top, bottom = _same_padding(shape[0], size, stride)
                left, right = _same_padding(shape[1], size, stride)
            else:
                top = bottom = left = right = 0
            # digitnet's kernels are [k, k, in, filters]; ONNX's are [filters, in, k, k].
            kernel = parameters[f"W{k}"].transpose(3, 2, 0, 1)
            inputs = [value, graph.constant(f"W{k}", kernel)]
            if layer["use_bias"]:
                inputs.append(graph.constant(f"b{k}", parameters[f"b{k}"]))
            value = graph.node(
                "Conv",
                inputs,
                kernel_shape=[size, size],
                strides=[stride, stride],
                pads=[top, left, bottom, right],
            )
            value = graph.activate(value, layer["activation"], channel_axis)
        elif kind == "batchnorm":
            names = [
                graph.constant(f"{name}{k}", parameters[f"{name}{k}"])
                for name in ("gamma", "beta", "mean", "variance")
            ]
            value = graph.node(
                "BatchNormalization", [value, *names], epsilon=architectures.BATCHNORM_EPSILON
            )
            value = graph.activate(value, layer["activation"], channel_axis)
        elif kind == "maxpool":
            size = layer["size"]
            value = graph.node("MaxPool", [value], kernel_shape=[size, size], strides=[size, size])
        elif kind == "global_avgpool":
            value = graph.node("GlobalAveragePool", [value])
            value = graph.node("Flatten", [value], axis=1)
        elif kind == "flatten" and len(shape) == 3:
            # digitnet flattens NHWC values: back to that order first.
            value = graph.node("Transpose", [value], perm=[0, 2, 3, 1])
            value = graph.node("Flatten", [value], axis=1)
        shape = output
    if calibration is not None:
        temperature = np.array(calibration.temperature, np.float32)
        value = graph.node("Div", [value, graph.constant("temperature", temperature)])
        value = graph.node("Softmax", [value], axis=-1)
    elif architecture["layers"][-1]["activation"] != "softmax":
        floor = graph.constant("probability_floor", np.array(PROBABILITY_FLOOR, np.float32))
        value = graph.node("Max", [value, floor])
        axes = graph.constant("class_axis", np.array([1], np.int64))
        total = graph.node("ReduceSum", [value, axes], keepdims=1)
        value = graph.node("Div", [value, total])
    graph.nodes[-1].output[0] = output_name

    batch = "n"
    onnx_graph = helper.make_graph(
        graph.nodes,
        f"digitnet_{model.name}",
        [
            helper.make_tensor_value_info(
                input_name, TensorProto.FLOAT, [batch, *instance_shape(architecture)]
            )
        ],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, model.n_classes])],
        graph.initializers,
    )
    onnx_model = helper.make_model(
        onnx_graph,
        producer_name=PRODUCER,
        producer_version=__version__,
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=f"digitnet {model.name}: {architectures.describe(architecture)}; "
        f"{input_name}: images in [0, 1], white ink on black (MNIST form); "
        f"{output_name}: class probabilities",
    )
    onnx_model.ir_version = IR_VERSION
    helper.set_model_props(
        onnx_model,
        {"digitnet_model": model.name, "architecture": json.dumps(architecture)},
    )
    checker.check_model(onnx_model, full_check=True)
    return onnx_model


def is_digitnet_onnx(data: bytes) -> bool:
    """Whether ``data`` is an ONNX model that digitnet wrote (one an export may replace)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        loaded = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        return False
    return loaded.producer_name == PRODUCER and len(loaded.graph.node) > 0
