"""The model description: choice lists as typed constraints, presets, and what derives from them."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from digitnet.errors import ConfigError
from digitnet.inference.model import Model
from digitnet.models import architectures, choices
from digitnet.models.activations import ACTIVATION_FUNCTIONS, activation, zero_row
from digitnet.models.choices import Boolean, Interval, Options
from digitnet.models.layers import (
    LAYER_TYPES,
    BatchNormStep,
    ConvStep,
    Field,
    LayerType,
    NumpyStep,
    Parameter,
    conv2d,
    fold_batchnorm,
    register,
)
from digitnet.models.presets import FLOAT32_PRESETS, PRESETS, preset_defaults

# --------------------------------------------------------------------------------------------
# Constraints


@pytest.mark.parametrize(
    "interval, valid, invalid, description",
    [
        (
            Interval(int, 1, None),
            [1, 2, 10**9],
            [0, -1, 1.0, 1.5, True, "3", None],
            "a whole number >= 1",
        ),
        (
            Interval(float, 0, 10, "neither"),
            [1e-9, 0.5, 3, 9.99],
            [0, 0.0, 10, 10.0, -1, math.nan, math.inf, False, "0.1"],
            "a number in (0, 10)",
        ),
        (Interval(float, 0, 1, "left"), [0, 0.0, 0.5, 0.999], [1, 1.0, -0.1], "a number in [0, 1)"),
        (Interval(float, 0, 1, "right"), [1.0, 0.5], [0.0, 1.01], "a number in (0, 1]"),
        (Interval(float, None, 2, "both"), [-5.0, 2], [2.5], "a number <= 2"),
        (Interval(int, 0, None, note="0: off"), [0, 7], [-1], "a whole number >= 0 (0: off)"),
    ],
)
def test_interval_accepts_its_range_only_and_says_so(interval, valid, invalid, description):
    for value in valid:
        assert interval.is_valid(value), value
    for value in invalid:
        assert not interval.is_valid(value), value
    assert interval.describe() == description


def test_options_are_a_choices_list_with_descriptions():
    options = Options("a", b="the second", c="the 100% third")
    assert list(options) == ["a", "b", "c"] and len(options) == 3
    assert "b" in options and "d" not in options
    assert options.is_valid("c") and not options.is_valid("d") and not options.is_valid(None)
    assert options.describe() == "one of 'a', 'b', 'c'"
    # argparse %-formats help: the percent sign comes out doubled.
    assert options.help() == "a; b: the second; c: the 100%% third"
    with pytest.raises(ValueError):
        Options("a", "a")


def test_check_names_the_setting_the_allowed_values_and_the_value():
    with pytest.raises(ConfigError, match=r"^cost must be one of 'mse', 'cross_entropy', got 'x'$"):
        choices.check("cost", "x", choices.COSTS)
    with pytest.raises(ConfigError, match=r"^layer 2 \(dense\): units must be a whole number"):
        choices.check("units", 0, Interval(int, 1, None), "layer 2 (dense): ")
    choices.check("flag", True, Boolean())
    with pytest.raises(ConfigError, match="true or false, got 1"):
        choices.check("flag", 1, Boolean())


# --------------------------------------------------------------------------------------------
# Presets and everything that derives from the lists


def test_every_model_has_a_preset_that_passes_the_checks(monkeypatch):
    from digitnet.training import runs

    # As on a CPU with bfloat16 units, where no float32 budget applies.
    monkeypatch.setattr(runs, "bfloat16_is_fast", lambda: True)
    assert list(PRESETS) == list(choices.MODEL_NAMES)
    for name in choices.MODEL_NAMES:
        resolved = runs.TrainConfig(model=name).resolved()
        for setting, value in PRESETS[name].items():
            assert getattr(resolved, setting) == value


def test_training_in_float32_takes_the_smaller_budget_unless_told(monkeypatch):
    from digitnet.training import runs

    monkeypatch.setattr(runs, "bfloat16_is_fast", lambda: False)
    assert set(FLOAT32_PRESETS) <= set(PRESETS)
    for name, budget in FLOAT32_PRESETS.items():
        plain = runs.TrainConfig(model=name).resolved()
        explicit = runs.TrainConfig(model=name, precision="float32").resolved()
        for setting, value in budget.items():
            assert getattr(plain, setting) == getattr(explicit, setting) == value
            assert value < PRESETS[name][setting]
        told = runs.TrainConfig(model=name, epochs=3, line_steps=7).resolved()
        assert (told.epochs, told.line_steps) == (3, 7)
    # Models without a float32 budget keep their preset.
    assert runs.TrainConfig(model="cnn", precision="float32").resolved().epochs == 15


def test_preset_defaults_group_models_that_agree():
    assert preset_defaults("epochs") == (
        "20 for seed; 30 for mlp; 15 for cnn; 12 (9 when training in float32) for reader"
    )
    assert preset_defaults("augment") == "off for seed; on for mlp, cnn, reader"
    assert preset_defaults("precision") == "auto"


@pytest.mark.parametrize(
    "setting, value, options",
    [
        ("model", "resnet", choices.MODEL_NAMES),
        ("cost", "hinge", choices.COSTS),
        ("schedule", "step", choices.SCHEDULES),
        ("precision", "float16", choices.PRECISIONS),
        ("split", "random", choices.SPLITS),
        ("source", "tfds", choices.SOURCES),
    ],
)
def test_config_messages_list_the_choices_from_the_one_list(setting, value, options):
    from digitnet.training.runs import TrainConfig

    with pytest.raises(ConfigError) as caught:
        TrainConfig(**{setting: value}).resolved()
    assert options.describe().removeprefix("one of ") in str(caught.value)


def test_command_line_choices_are_the_lists():
    from digitnet.cli.main import build_parser

    parser = build_parser()
    train = next(action for action in parser._subparsers._group_actions if action.choices).choices[
        "train"
    ]
    by_flag = {
        action.option_strings[0]: action for action in train._actions if action.option_strings
    }
    expected = {
        "--model": choices.MODEL_NAMES,
        "--cost": choices.COSTS,
        "--schedule": choices.SCHEDULES,
        "--precision": choices.PRECISIONS,
        "--split": choices.SPLITS,
        "--source": choices.SOURCES,
    }
    for flag, options in expected.items():
        assert by_flag[flag].choices is options, flag
        for value in options:
            assert train.parse_args([flag, value]) is not None
    with pytest.raises(SystemExit):
        train.parse_args(["--cost", "hinge"])
    assert "30 for mlp; 15 for cnn; 12 (9 when training in float32) for reader" in " ".join(
        train.format_help().split()
    )


def test_data_and_network_checks_use_the_lists():
    from digitnet.data.mnist import load_mnist

    with pytest.raises(ConfigError, match=choices.SPLITS.describe()):
        load_mnist(split="random")
    with pytest.raises(ConfigError, match=choices.SOURCES.describe()):
        load_mnist(source="tfds")


# --------------------------------------------------------------------------------------------
# The layer registry


def test_the_model_description_imports_no_tensorflow_training_or_inference():
    code = (
        "import sys\n"
        "import digitnet.models.choices, digitnet.models.presets, digitnet.models.activations\n"
        "import digitnet.models.layers, digitnet.models.architectures\n"
        "from digitnet.models import architectures\n"
        "architectures.bind_layers(architectures.cnn_architecture())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')\n"
        "      or m.startswith(('digitnet.training', 'digitnet.inference'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("rows", [6, 1])
def test_every_activation_has_numpy_forms_that_agree_bit_for_bit(rows):
    assert list(ACTIVATION_FUNCTIONS) == list(choices.ACTIVATIONS)
    values = np.random.default_rng(0).normal(0, 3, (rows, 10)).astype(np.float32)
    for function in ACTIVATION_FUNCTIONS.values():
        copied, in_place = values.copy(), values.copy()
        function.numpy_in_place(in_place)
        assert np.array_equal(function.numpy(copied), in_place), function.name


@pytest.mark.parametrize(
    "scale,shift", [(3, 0), (3, 85), (3, 705), (3, 800), (3, -95), (3, -700), (3, -800), (40, 0)]
)
def test_one_rows_softmax_equals_the_shifted_softmax_of_many_rows(scale, shift):
    """One row skips the shift by its maximum while its exponentials are safe; rows whose
    exponentials overflow (800) or all vanish (-800) take the shifted form, without warnings
    (the suite turns them into errors here)."""
    softmax = ACTIVATION_FUNCTIONS["softmax"].numpy
    logits = np.random.default_rng(2).normal(shift, scale, (50, 10)).astype(np.float32)
    reference = np.exp(logits - logits.max(axis=1, keepdims=True).astype(np.float64))
    reference /= reference.sum(axis=1, keepdims=True)
    batch = softmax(logits.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = [softmax(logits[index : index + 1].copy()) for index in range(len(logits))]
    for index, row in enumerate(rows):
        assert np.isfinite(row).all()
        np.testing.assert_allclose(row[0], reference[index], rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(row[0], batch[index], rtol=2e-5, atol=1e-7)


def test_relu_keeps_its_shape_and_zero_rows_stay_zero():
    relu = ACTIVATION_FUNCTIONS["relu"].numpy_in_place
    for shape in [(1, 7), (5, 7), (2, 3, 3, 7), (7,)]:
        values = np.random.default_rng(3).normal(0, 1, shape).astype(np.float32)
        expected = np.where(values > 0, values, 0)
        relu(values)
        assert np.array_equal(values, expected), shape
    # The shared rows of zeros it compares against cannot be written to.
    assert not zero_row(7).any() and zero_row(7).shape == (1, 7)
    with pytest.raises(ValueError):
        zero_row(7)[0, 0] = 1.0


def test_every_activation_matches_tensorflow():
    tf = pytest.importorskip("tensorflow")
    values = np.random.default_rng(1).normal(0, 3, (6, 10)).astype(np.float32)
    for function in ACTIVATION_FUNCTIONS.values():
        expected = function.tensorflow(tf.constant(values)).numpy()
        np.testing.assert_allclose(
            function.numpy(values.copy()), expected, rtol=1e-5, atol=1e-6, err_msg=function.name
        )


@pytest.mark.parametrize(
    "layer, message",
    [
        ({"type": "dense"}, r"layer 1 \(dense\) needs a 'units'"),
        ({"type": "dense", "units": 0}, r"units must be a whole number >= 1, got 0"),
        ({"type": "dense", "units": 2.5}, r"units must be a whole number >= 1, got 2.5"),
        ({"type": "dense", "units": 4, "use_bias": 1}, r"use_bias must be true or false"),
        ({"type": "dense", "units": 4, "activation": "tanh"}, r"activation must be one of 'relu'"),
        ({"type": "dense", "units": 4, "size": 2}, r"unknown fields \['size'\]"),
        ({"type": "dropout", "rate": 1.0}, r"rate must be a number in \[0, 1\), got 1.0"),
        ({"type": "dropout", "rate": True}, r"rate must be a number in \[0, 1\)"),
        ({"type": "batchnorm", "momentum": 1}, r"momentum must be a number in \(0, 1\)"),
        ({"type": "conv", "filters": 8, "padding": "full"}, r"padding must be one of 'same'"),
        ({"type": "attention"}, r"unknown type 'attention': choose one of 'dense', 'conv'"),
        ("dense", r"must be a dict with a 'type'"),
    ],
)
def test_layer_fields_are_checked_against_their_constraints(layer, message):
    with pytest.raises(ConfigError, match=message):
        architectures.validate_architecture(
            {"input_shape": [784], "layers": [layer, {"type": "dense", "units": 10}]}
        )


@pytest.mark.parametrize(
    "input_shape, layers, message",
    [
        ([784], [{"type": "conv", "filters": 4}], r"layer 1 \(conv\) needs image input"),
        ([28, 28, 1], [{"type": "dense", "units": 4}], r"layer 1 \(dense\) needs flat input"),
        (
            [28, 28, 1],
            [{"type": "conv", "filters": 4, "kernel": 29, "padding": "valid"}],
            r"layer 1 \(conv\): a 29x29 kernel does not fit the 28x28 input",
        ),
        ([4, 4, 1], [{"type": "maxpool", "size": 5}], r"layer 1 \(maxpool\): pool 5 is larger"),
    ],
)
def test_layers_that_cannot_take_their_input_are_named(input_shape, layers, message):
    with pytest.raises(ConfigError, match=message):
        architectures.validate_architecture(
            {
                "input_shape": input_shape,
                "layers": layers + [{"type": "flatten"}, {"type": "dense", "units": 10}],
            }
        )


def test_shapes_numbers_and_trainability_come_from_the_layer_types():
    architecture = architectures.cnn_architecture()
    bound = architectures.bind_layers(architecture)
    assert [layer.type.name for layer in bound] == [
        layer["type"] for layer in architecture["layers"]
    ]
    assert bound[0].input_shape == (28, 28, 1) and bound[0].output_shape == (26, 26, 32)
    assert bound[-1].output_shape == (10,)
    # conv and batchnorm layers are numbered; dropout and flatten have no parameters.
    assert [layer.number for layer in bound] == (
        [1, 2, 3, 4, 5, 6, 0, 7, 8, 9, 10, 11, 12, 0, 13, 14, 0, 0, 15]
    )
    specs = architectures.parameter_specs(architecture)
    assert [name for name, spec in specs.items() if not spec.trainable] == [
        f"{kind}{k}" for k in range(2, 15, 2) for kind in ("mean", "variance")
    ]
    assert specs["W1"].shape == (3, 3, 1, 32) and "b1" not in specs
    assert specs["W15"].shape == (10, 128) and specs["b15"].shape == (10, 1)


@pytest.mark.parametrize(
    "height, width, kernel, stride, padding",
    [(28, 28, 3, 1, "valid"), (28, 28, 5, 2, "same"), (7, 9, 4, 3, "same"), (6, 5, 2, 2, "valid")],
)
def test_numpy_convolution_matches_tensorflow(height, width, kernel, stride, padding):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(kernel)
    images = rng.random((3, height, width, 2), dtype=np.float32)
    weights = rng.normal(0, 0.3, (kernel, kernel, 2, 5)).astype(np.float32)
    expected = tf.nn.conv2d(images, weights, stride, padding.upper()).numpy()
    np.testing.assert_allclose(
        conv2d(images, weights, stride, padding), expected, rtol=1e-5, atol=1e-6
    )


def plain_convolution(images, kernel, stride, padding):
    """The convolution by its definition, in float64: a sum over every kernel tap."""
    size = kernel.shape[0]
    n, height, width, _ = images.shape
    if padding == "same":
        out_h, out_w = -(-height // stride), -(-width // stride)
        pad_h = max((out_h - 1) * stride + size - height, 0)
        pad_w = max((out_w - 1) * stride + size - width, 0)
        images = np.pad(
            images,
            ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
        )
    else:
        out_h, out_w = (height - size) // stride + 1, (width - size) // stride + 1
    result = np.zeros((n, out_h, out_w, kernel.shape[3]))
    for i in range(size):
        for j in range(size):
            taps = images[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
            result += taps.astype(np.float64) @ kernel[i, j].astype(np.float64)
    return result


@pytest.mark.parametrize("stride, padding", [(1, "valid"), (2, "same"), (1, "same")])
def test_convolution_with_buffers_bias_and_relu_matches_the_definition(stride, padding):
    """A workspace's buffers are reused from call to call: a second input with other values
    (the padded border included) gives its own answer, and the bias and ReLU apply."""
    rng = np.random.default_rng(stride)
    kernel = rng.normal(0, 0.3, (5 if stride == 2 else 3, 5 if stride == 2 else 3, 3, 4))
    kernel = kernel.astype(np.float32)
    bias = rng.normal(0, 0.3, 4).astype(np.float32)
    workspace: dict = {}
    for seed in (1, 2):
        images = np.random.default_rng(seed).normal(size=(2, 9, 8, 3)).astype(np.float32)
        expected = np.maximum(plain_convolution(images, kernel, stride, padding) + bias, 0)
        result = conv2d(images, kernel, stride, padding, bias, True, workspace, owner=0)
        assert result.dtype == np.float32
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    assert len(workspace) == (3 if padding == "same" else 2)  # reused, not made again


def test_a_folded_batchnorm_equals_the_convolution_then_the_batchnorm():
    rng = np.random.default_rng(4)
    kernel = rng.normal(0, 0.3, (3, 3, 2, 5)).astype(np.float32)
    scale = rng.uniform(0.5, 2, 5).astype(np.float32)
    shift = rng.normal(0, 1, 5).astype(np.float32)
    images = rng.random((3, 7, 7, 2), dtype=np.float32)
    for bias in (None, rng.normal(0, 1, 5).astype(np.float32)):
        conv = LAYER_TYPES["conv"].numpy(
            {"stride": 1, "padding": "valid", "activation": "linear"},
            {"W": kernel} if bias is None else {"W": kernel, "b": bias},
        )
        norm = BatchNormStep(
            lambda values: values * scale + shift, activation("relu"), scale, shift
        )
        assert isinstance(conv, ConvStep)
        folded = fold_batchnorm(conv, norm)
        assert folded.kernel.dtype == np.float32 and folded.bias.dtype == np.float32
        assert folded.activation.name == "relu"
        expected = np.maximum(conv.apply(images) * scale + shift, 0)
        np.testing.assert_allclose(
            folded.activation.numpy(folded.apply(images)), expected, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    "layers",
    [
        # conv + batchnorm pairs (folded), a conv with a bias and its own ReLU, maxpool, dense.
        [
            {"type": "conv", "filters": 4, "activation": "linear", "use_bias": False},
            {"type": "batchnorm", "activation": "relu"},
            {"type": "conv", "filters": 6, "kernel": 5, "stride": 2, "padding": "same"},
            {"type": "maxpool"},
            {"type": "flatten"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ],
        # A batchnorm after a conv that has its own activation is not folded.
        [
            {"type": "conv", "filters": 4, "activation": "relu"},
            {"type": "batchnorm", "activation": "linear"},
            {"type": "conv", "filters": 3, "kernel": 12, "padding": "valid"},
            {"type": "flatten"},
            {"type": "dense", "units": 10, "activation": "linear"},
        ],
    ],
)
def test_the_fused_convolutional_path_equals_the_layer_by_layer_plan(layers):
    architecture = architectures.validate_architecture(
        {"input_shape": [14, 14, 1], "layers": layers}
    )
    rng = np.random.default_rng(5)
    parameters = {}
    for name, spec in architectures.parameter_specs(architecture).items():
        low = 0.5 if name.startswith("variance") else -0.5
        parameters[name] = rng.uniform(low, 1.0, spec.shape).astype(np.float32)
    model = Model(architecture, parameters)
    images = rng.random((20, 196), dtype=np.float32)
    expected = model._run_plan(images, model._plan)
    # One image and a whole block use this thread's buffers; 20 rows go in blocks.
    first = model.forward(images[:1])
    np.testing.assert_allclose(model.forward(images), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        model.forward(images[: model._block_rows]),
        expected[: model._block_rows],
        rtol=1e-5,
        atol=1e-5,
    )
    model.forward(images[1:2])
    np.testing.assert_allclose(first, expected[:1], rtol=1e-5, atol=1e-5)  # not overwritten


@pytest.fixture
def scale_layer():
    """A new layer type, registered the one way there is: a learned factor per channel."""

    @register
    class Scale(LayerType):
        name = "scale"
        fields = {"activation": Field(choices.ACTIVATIONS, "linear")}
        has_parameters = True

        def parameters(self, layer, shape):
            return {"s": Parameter((shape[-1],), "ones")}

        def tensorflow(self, A, layer, parameters, *, training, seed):
            import tensorflow as tf

            return A * tf.cast(parameters["s"], A.dtype)

        def numpy(self, layer, parameters):
            factors = parameters["s"]
            return NumpyStep(lambda values: values * factors, activation(layer["activation"]))

    yield Scale
    del LAYER_TYPES["scale"]


def test_a_new_layer_type_works_everywhere_from_its_one_class(scale_layer, tmp_path):
    """Validation, parameter names, initialisation, training, the model file and both forward
    passes take a layer type that only its own class describes."""
    tf = pytest.importorskip("tensorflow")
    from digitnet.inference.modelfile import load_model, save_model
    from digitnet.training.engine import Fitter
    from digitnet.training.network import forward_propagation

    architecture = architectures.validate_architecture(
        {
            "input_shape": [784],
            "layers": [
                {"type": "dense", "units": 16},
                {"type": "scale", "activation": "relu"},
                {"type": "dense", "units": 10, "activation": "softmax"},
            ],
        }
    )
    assert architecture["layers"][1] == {"type": "scale", "activation": "relu"}
    assert list(architectures.parameter_shapes(architecture)) == ["W1", "b1", "s2", "W3", "b3"]
    rng = np.random.default_rng(3)
    X = rng.random((64, 784), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[np.arange(64) % 10]
    fitter = Fitter(architecture, cost="cross_entropy", learning_rate=0.01, batch_size=16)
    assert np.array_equal(fitter.variables["s2"].numpy(), np.ones(16, np.float32))
    fitter.train_epoch(fitter.dataset(X, y), 1)
    parameters = fitter.parameters()
    assert not np.allclose(parameters["s2"], 1.0)  # trained
    model = Model(architecture, parameters)
    path = tmp_path / "scale.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    reference = forward_propagation(
        X, {name: tf.constant(value) for name, value in parameters.items()}, architecture
    ).numpy()
    np.testing.assert_allclose(loaded.forward(X), reference, rtol=1e-5, atol=1e-6)
    assert loaded._dense_layers is None  # not a dense stack: the general path


# --------------------------------------------------------------------------------------------
# The number of classes


@pytest.mark.parametrize("name", list(choices.MODEL_NAMES))
def test_named_models_take_the_number_of_classes(name):
    assert architectures.n_outputs(architectures.named_architecture(name)) == 10
    assert architectures.n_outputs(architectures.named_architecture(name, n_classes=3)) == 3
    assert architectures.n_outputs(architectures.normalize_layout(name, n_classes=26)) == 26


def test_a_given_output_size_must_match_the_classes():
    assert architectures.n_outputs(architectures.normalize_layout([784, 16, 3], n_classes=3)) == 3
    with pytest.raises(ConfigError, match="ends in 10 outputs but the data has 3 classes"):
        architectures.normalize_layout({"l0": 784, "l1": 10}, n_classes=3)
    with pytest.raises(ConfigError, match="has 10 outputs but the data has 3 classes"):
        architectures.normalize_layout(architectures.seed_architecture(), n_classes=3)
