"""``digitnet export``: every format, read back by its own runtime, predicts what digitnet does.

Small models of every kind (dense stacks with sigmoid and softmax outputs, the cnn's conv,
batchnorm, dropout and flatten layers, and pooling) are trained in-test on learnable fake
digits, exported as a SavedModel, TFLite (float32 and int8) and ONNX, and run by
``tf.saved_model.load``, LiteRT's interpreter and ONNX Runtime against ``Model.predict_proba``.
The slow tests do the same with models trained on real MNIST, on the whole test set. The
SavedModel also answers a TensorFlow Serving ``:predict`` body as ``digitnet serve`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

from conftest import fake_mnist_arrays, write_dataset
from digitnet.atomic import atomic_directory
from digitnet.errors import ConfigError
from digitnet.inference.model import Model
from digitnet.inference.modelfile import save_model
from digitnet.inference.onnx_export import build_onnx
from digitnet.models import architectures
from digitnet.models.signature import INPUT_NAME, OUTPUT_NAME, SIGNATURE_NAME
from digitnet.serving.app import create_app
from digitnet.serving.schemas import ModelMetadata
from digitnet.training.engine import Fitter
from digitnet.training.export import (
    REPRESENTATIVE_IMAGES,
    default_output,
    export_model,
    representative_images,
)
from digitnet.training.runs import TrainConfig, train_and_evaluate
from export import litert_interpreter

# Probabilities of float32 exports against digitnet's NumPy path: the bound.
PROBABILITY_TOLERANCE = 1e-5


def conv(filters: int, kernel: int, stride: int = 1, padding: str = "valid", **extra) -> dict:
    return {
        "type": "conv",
        "filters": filters,
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        **extra,
    }


# Tiny versions of every model type, and one with the layers the named models do not use.
ARCHITECTURES = {
    "seed": architectures.dense_stack([784, 24, 16, 10], output_activation="sigmoid"),
    "mlp": architectures.dense_stack([784, 32, 10], output_activation="softmax", dropout=0.3),
    # The cnn's layer kinds: conv without bias + batchnorm + ReLU, a strided "same" conv with
    # odd padding (28 -> 13 pads 1 before and 2 after... as TensorFlow does), dropout, and a
    # flatten over a 10x10x8 map, so the order of flattened values matters.
    "cnn": architectures.validate_architecture(
        {
            "input_shape": [28, 28, 1],
            "layers": [
                conv(4, 3, activation="linear", use_bias=False),
                {"type": "batchnorm", "activation": "relu"},
                conv(8, 5, 2, "same", activation="linear", use_bias=False),
                {"type": "batchnorm", "activation": "relu"},
                {"type": "dropout", "rate": 0.4},
                conv(8, 4),
                {"type": "flatten"},
                {"type": "dropout", "rate": 0.4},
                {"type": "dense", "units": 10, "activation": "softmax"},
            ],
        }
    ),
    "pooling": architectures.validate_architecture(
        {
            "input_shape": [28, 28, 1],
            "layers": [
                conv(4, 3, padding="same"),
                {"type": "maxpool", "size": 3},
                conv(6, 3),
                {"type": "global_avgpool"},
                {"type": "batchnorm", "activation": "linear"},
                {"type": "dense", "units": 10, "activation": "sigmoid"},
            ],
        }
    ),
}
FORMATS = ("savedmodel", "tflite", "onnx")


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A fake MNIST folder (1,000 training, 300 test digits: class k is a band at height
    ~2.8k) and its test images (n, 784) float32 and labels (n,)."""
    arrays = fake_mnist_arrays(n_train=1000, n_test=300, seed=3)
    folder = write_dataset(tmp_path_factory.mktemp("fake-mnist"), arrays)
    images = arrays["test_images"].reshape(300, -1).astype(np.float32) / 255
    return folder, images, arrays["test_labels"].astype(np.int64)


@pytest.fixture(scope="module")
def models(fake_data) -> dict[str, Model]:
    """Each architecture trained for a few epochs on the fake training digits (batchnorm's
    running statistics move away from their start)."""
    folder, _, _ = fake_data
    arrays = fake_mnist_arrays(n_train=1000, n_test=300, seed=3)
    X = arrays["train_images"].reshape(1000, -1).astype(np.float32) / 255
    y = np.eye(10, dtype=np.float32)[arrays["train_labels"]]
    trained = {}
    for name, architecture in ARCHITECTURES.items():
        softmax = architecture["layers"][-1]["activation"] == "softmax"
        fitter = Fitter(
            architecture,
            cost="cross_entropy" if softmax else "mse",
            learning_rate=0.01,
            batch_size=100,
            seed=2,
        )
        fitter.set_output_bias_from_labels(y)
        data = fitter.dataset(X, y)
        for epoch in range(1, 5):
            fitter.train_epoch(data, epoch)
        # The metadata a trained model carries: int8's representative images come from the
        # training split named here.
        metadata = {"training": {"model": name}, "data": {"split": "official", "source": "idx"}}
        trained[name] = Model(architecture, fitter.parameters(), metadata)
    assert not np.allclose(trained["cnn"].parameters["mean2"], 0.0)
    return trained


# --------------------------------------------------------------------------------------------
# Reading an export back with its own runtime: images (n, 28, 28) -> probabilities (n, 10).


def savedmodel_probabilities(folder: Path, images: np.ndarray) -> np.ndarray:
    signature = tf.saved_model.load(str(folder)).signatures[SIGNATURE_NAME]
    return signature(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()


def tflite_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    runner = litert_interpreter(path).get_signature_runner(SIGNATURE_NAME)
    return runner(**{INPUT_NAME: images})[OUTPUT_NAME]


def onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


READERS = {
    "savedmodel": savedmodel_probabilities,
    "tflite": tflite_probabilities,
    "onnx": onnx_probabilities,
}


def exported_probabilities(
    model: Model, format: str, out: Path, images: np.ndarray, **options
) -> tuple[Path, np.ndarray]:
    target = export_model(model, format, out, **options)
    return target, READERS[format](target, images.reshape(len(images), 28, 28))


def assert_same_labels(probabilities: np.ndarray, reference: np.ndarray) -> None:
    """Equal labels, except where digitnet's own top two are tied within float32 rounding
    (then either answer is right); such ties must really be ties."""
    different = np.nonzero(probabilities.argmax(axis=1) != reference.argmax(axis=1))[0]
    top_two = np.sort(reference[different], axis=1)[:, -2:]
    gaps = top_two[:, 1] - top_two[:, 0]
    assert np.all(gaps <= PROBABILITY_TOLERANCE), (
        f"{len(different)} labels differ from digitnet's, with gaps {gaps[:10]} between "
        f"its top two probabilities"
    )


# --------------------------------------------------------------------------------------------
# Every format and model type agrees with digitnet.


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_float_exports_predict_what_digitnet_predicts(models, fake_data, tmp_path, name, format):
    model = models[name]
    _, images, _ = fake_data
    reference = model.predict_proba(images)
    _, probabilities = exported_probabilities(model, format, tmp_path / "out", images)
    assert probabilities.shape == reference.shape and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, reference, rtol=0, atol=PROBABILITY_TOLERANCE)
    assert np.array_equal(probabilities.argmax(axis=1), reference.argmax(axis=1))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_int8_tflite_is_integer_and_keeps_the_labels(models, fake_data, tmp_path, name):
    model = models[name]
    folder, images, labels = fake_data
    path, probabilities = exported_probabilities(
        model, "tflite", tmp_path / "q.tflite", images, quantize="int8", data_dir=folder
    )
    details = litert_interpreter(path).get_tensor_details()
    # Weights and activations in int8 (biases and shapes int32): only the input and the
    # output stay float32.
    floats = [d["name"] for d in details if d["dtype"] == np.float32]
    assert floats == [f"{SIGNATURE_NAME}_{INPUT_NAME}:0", "StatefulPartitionedCall:0"]
    assert {d["dtype"] for d in details} == {np.float32, np.int8, np.int32}
    reference = model.predict_proba(images)
    agreement = np.mean(probabilities.argmax(axis=1) == reference.argmax(axis=1))
    assert agreement >= 0.97
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.05)
    accuracy = np.mean(reference.argmax(axis=1) == labels)
    assert np.mean(probabilities.argmax(axis=1) == labels) >= accuracy - 0.03


def test_representative_images_come_from_the_training_split(models, fake_data):
    folder, _, _ = fake_data
    arrays = fake_mnist_arrays(n_train=1000, n_test=300, seed=3)
    chosen = representative_images(models["seed"], folder)
    assert chosen.shape == (min(REPRESENTATIVE_IMAGES, 1000), 28, 28)
    training = {image.tobytes() for image in arrays["train_images"]}
    as_bytes = [np.rint(image * 255).astype(np.uint8).tobytes() for image in chosen]
    assert all(image in training for image in as_bytes)
    assert len(set(as_bytes)) > 0.9 * len(as_bytes)  # drawn without repeats


def test_onnx_graph_is_valid_with_the_shapes_it_declares(models):
    proto = build_onnx(models["cnn"], INPUT_NAME, OUTPUT_NAME)
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    (output,) = inferred.graph.output
    assert output.name == OUTPUT_NAME
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["n", 10]
    assert {node.op_type for node in proto.graph.node} >= {"Conv", "BatchNormalization", "Gemm"}
    assert "Dropout" not in {node.op_type for node in proto.graph.node}


# --------------------------------------------------------------------------------------------
# The SavedModel as TensorFlow Serving sees it.


def tf_serving_predict(folder: Path, payload: dict) -> dict:
    """What TensorFlow Serving's REST ``:predict`` does with a JSON body, on a SavedModel.

    As its REST API documents: the row form ``{"instances": [...]}`` lists one value per
    instance (or ``{input name: value}`` objects), stacked along a new batch axis into the
    signature's input; the columnar form ``{"inputs": ...}`` is the whole batched tensor (or
    ``{input name: tensor}``). A signature with one output answers its values as a list,
    ``{"predictions": [...]}`` or ``{"outputs": [...]}``.
    """
    signature = tf.saved_model.load(str(folder)).signatures[
        payload.get("signature_name", SIGNATURE_NAME)
    ]
    ((input_name, spec),) = signature.structured_input_signature[1].items()
    if "instances" in payload:
        rows = [row[input_name] if isinstance(row, dict) else row for row in payload["instances"]]
        key = "predictions"
    else:
        inputs = payload["inputs"]
        rows = inputs[input_name] if isinstance(inputs, dict) else inputs
        key = "outputs"
    tensor = tf.constant(rows, dtype=spec.dtype)
    assert spec.shape.is_compatible_with(tensor.shape), (spec.shape, tensor.shape)
    outputs = signature(**{input_name: tensor})
    ((_, values),) = outputs.items()
    return {key: values.numpy().tolist()}


def digitnet_serve_answers(model: Model, payloads: list[dict]) -> list[httpx.Response]:
    """``digitnet serve``'s app answering each body at ``/v1/models/digitnet:predict``."""

    async def post_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(model))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return [await client.post("/v1/models/digitnet:predict", json=p) for p in payloads]

    return asyncio.run(post_all())


@pytest.mark.parametrize("name", ["seed", "cnn"])
def test_savedmodel_answers_digitnet_requests_as_digitnet_serve_does(
    models, fake_data, tmp_path, name
):
    model = models[name]
    _, images, _ = fake_data
    target = export_model(model, "savedmodel", tmp_path / "digitnet")
    assert target == tmp_path / "digitnet" / "1"  # TensorFlow Serving's NAME/VERSION layout
    batch = images[:5].reshape(5, 28, 28).tolist()
    payloads = [
        {"instances": batch},
        {"instances": [{INPUT_NAME: image} for image in batch]},
        {"signature_name": SIGNATURE_NAME, "instances": batch},
        {"inputs": batch},
        {"inputs": {INPUT_NAME: batch}},
    ]
    for payload, expected in zip(payloads, digitnet_serve_answers(model, payloads)):
        assert expected.status_code == 200, expected.text
        answer = tf_serving_predict(target, json.loads(json.dumps(payload)))
        ((key, values),) = answer.items()
        assert set(expected.json()) == {key}
        np.testing.assert_allclose(values, expected.json()[key], atol=PROBABILITY_TOLERANCE)


def test_savedmodel_signature_is_the_one_digitnet_serve_describes(models, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    model = models["mlp"]
    target = export_model(model, "savedmodel", tmp_path / "digitnet")
    saved = saved_model_pb2.SavedModel.FromString((target / "saved_model.pb").read_bytes())
    (graph,) = saved.meta_graphs
    signature = graph.signature_def[SIGNATURE_NAME]
    described = ModelMetadata.of(model).model_dump(by_alias=True)["metadata"]["signature_def"][
        "signature_def"
    ]
    expected = described[SIGNATURE_NAME]
    assert signature.method_name == expected["method_name"]
    for group in ("inputs", "outputs"):
        actual = getattr(signature, group)
        assert set(actual) == set(expected[group])
        for key, info in expected[group].items():
            assert actual[key].name == info["name"]
            assert tf.dtypes.as_dtype(actual[key].dtype).name == "float32"
            assert info["dtype"] == "DT_FLOAT"
    dims = [d.size for d in signature.inputs[INPUT_NAME].tensor_shape.dim]
    assert dims == [-1, 28, 28]
    assert [d.size for d in signature.outputs[OUTPUT_NAME].tensor_shape.dim] == [-1, 10]


# --------------------------------------------------------------------------------------------
# Outputs: where they go, what is replaced, what is refused, atomic writes.


def test_versions_sit_side_by_side_and_a_version_is_replaced_whole(models, tmp_path):
    base = tmp_path / "exported" / "digitnet"
    first = export_model(models["seed"], "savedmodel", base)
    second = export_model(models["mlp"], "savedmodel", base, model_version=2)
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no temporary folders left
    (first / "stale-file").write_text("from before")
    export_model(models["mlp"], "savedmodel", base)
    assert not (first / "stale-file").exists()
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
    assert (second / "saved_model.pb").is_file()


def test_an_earlier_export_is_replaced_and_anything_else_refused(models, tmp_path):
    model = models["seed"]
    for format, name in (("onnx", "m.onnx"), ("tflite", "m.tflite")):
        path = tmp_path / name
        export_model(model, format, path)
        export_model(models["mlp"], format, path)  # an earlier export: replaced
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        foreign = tmp_path / f"notes-{name}"
        foreign.write_text("my notes")
        with pytest.raises(ConfigError, match="exists and is not an earlier"):
            export_model(model, format, foreign)
        assert foreign.read_text() == "my notes"
        with pytest.raises(ConfigError, match="is a folder"):
            export_model(model, format, tmp_path)
    # A TFLite file is not an ONNX export and the other way round.
    with pytest.raises(ConfigError, match="not an earlier onnx export"):
        export_model(model, "onnx", tmp_path / "m.tflite")
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "1").mkdir()
    (tmp_path / "base" / "1" / "data.csv").write_text("1,2")
    with pytest.raises(ConfigError, match="not an earlier savedmodel export"):
        export_model(model, "savedmodel", tmp_path / "base")
    with pytest.raises(ConfigError, match="is a file"):
        export_model(model, "savedmodel", tmp_path / "m.onnx")


def test_default_outputs_sit_beside_the_model_named_after_it(tmp_path):
    model_path = tmp_path / "models" / "cnn.safetensors"
    assert default_output(model_path, "onnx", None) == tmp_path / "models" / "cnn.onnx"
    assert default_output(model_path, "tflite", None) == tmp_path / "models" / "cnn.tflite"
    assert default_output(model_path, "tflite", "int8") == tmp_path / "models" / "cnn.int8.tflite"
    assert default_output(model_path, "savedmodel", None) == tmp_path / "models" / "cnn"


@pytest.mark.parametrize(
    "format,options,message",
    [
        ("keras", {}, "unknown export format 'keras': choose one of savedmodel, tflite, onnx"),
        ("onnx", {"quantize": "int8"}, "--quantize int8 is not available for onnx"),
        ("savedmodel", {"quantize": "int8"}, "not available for savedmodel: only for tflite"),
        ("tflite", {"quantize": "int4"}, "unknown quantization 'int4'"),
        ("savedmodel", {"model_version": 0}, "a model version is a whole number from 1"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(
    models, tmp_path, format, options, message
):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        export_model(models["seed"], format, tmp_path / "out", **options)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_the_earlier_one_and_no_temporary_files(models, tmp_path):
    path = tmp_path / "m.tflite"
    export_model(models["seed"], "tflite", path)
    before = path.read_bytes()
    # int8 needs training images; a folder without them fails after conversion has begun.
    with pytest.raises(Exception, match="MNIST|train|no such|not found|missing"):
        export_model(models["mlp"], "tflite", path, quantize="int8", data_dir=tmp_path / "no-data")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


def test_atomic_directory_keeps_the_old_folder_when_the_writer_fails(tmp_path):
    target = tmp_path / "1"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "new").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["1"]
    assert [p.name for p in target.iterdir()] == ["old"]
    with atomic_directory(target) as staging:
        (staging / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["1"]


# --------------------------------------------------------------------------------------------
# The command.


def digitnet(*args, cwd: Path, check: bool = True, code: str | None = None):
    command = [sys.executable, "-m", "digitnet", *map(str, args)]
    if code is not None:
        command = [sys.executable, "-c", code, *map(str, args)]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, env=dict(os.environ), timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result


def test_cli_onnx_export_by_default_beside_the_model_without_tensorflow(
    models, fake_data, tmp_path
):
    model = models["cnn"]
    save_model(model, tmp_path / "cnn.safetensors")
    # The command as a user runs it, checking afterwards that TensorFlow was never imported.
    code = (
        "import sys\nfrom digitnet.cli.main import main\n"
        "status = main(sys.argv[1:])\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "sys.exit(status)\n"
    )
    result = digitnet("export", "cnn.safetensors", "--format", "onnx", cwd=tmp_path, code=code)
    assert result.stdout.startswith("Wrote onnx to cnn.onnx (")
    _, images, _ = fake_data
    np.testing.assert_allclose(
        onnx_probabilities(tmp_path / "cnn.onnx", images.reshape(-1, 28, 28)),
        model.predict_proba(images),
        atol=PROBABILITY_TOLERANCE,
    )


def test_cli_savedmodel_and_int8_tflite(models, fake_data, tmp_path):
    folder, images, _ = fake_data
    save_model(models["seed"], tmp_path / "seed.safetensors")
    result = digitnet(
        "export",
        "seed.safetensors",
        "--format",
        "savedmodel",
        "--out",
        "exported/digitnet",
        cwd=tmp_path,
    )
    assert "exported/digitnet/1" in result.stdout and "--model_name=digitnet" in result.stdout
    assert (tmp_path / "exported" / "digitnet" / "1" / "saved_model.pb").is_file()
    digitnet(
        "export",
        "seed.safetensors",
        "--format",
        "tflite",
        "--quantize",
        "int8",
        "--data-dir",
        folder,
        cwd=tmp_path,
    )
    probabilities = tflite_probabilities(tmp_path / "seed.int8.tflite", images.reshape(-1, 28, 28))
    assert probabilities.shape == (len(images), 10)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--format", "keras"], "unknown export format 'keras'"),
        (["--format", "onnx", "--quantize", "int8"], "--quantize int8 is not available for onnx"),
        (["--format", "onnx", "--out", "notes.txt"], "notes.txt exists and is not an earlier"),
    ],
)
def test_cli_errors_are_one_line(models, tmp_path, args, message):
    save_model(models["seed"], tmp_path / "seed.safetensors")
    (tmp_path / "notes.txt").write_text("mine")
    result = digitnet("export", "seed.safetensors", *args, cwd=tmp_path, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("digitnet export: error: "), result.stderr
    assert message in lines[0]
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------
# Real MNIST: models like /work/models' trained briefly, every format on the whole test set.

QUICK_RUNS = {
    "seed": TrainConfig(model="seed"),  # the tutorial's whole run: seconds
    "mlp": TrainConfig(model="mlp", epochs=2),
    "cnn": TrainConfig(model="cnn", epochs=1),
}


@pytest.fixture(scope="module")
def mnist_models(tmp_path_factory) -> dict[str, Model]:
    value = os.environ.get("DIGITNET_DATA_DIR", "")
    if not value:
        pytest.skip("real MNIST not available: set DIGITNET_DATA_DIR")
    trained = {}
    for name, config in QUICK_RUNS.items():
        workdir = tmp_path_factory.mktemp(f"run-{name}")
        trained[name] = train_and_evaluate(
            config, workdir, data_dir=value, log=lambda _: None
        ).model
    return trained


@pytest.mark.slow
@pytest.mark.parametrize("name", list(QUICK_RUNS))
def test_exports_agree_with_digitnet_on_the_whole_mnist_test_set(mnist_models, tmp_path, name):
    from digitnet.inference.evaluation import test_set_for

    model = mnist_models[name]
    X_test, labels = test_set_for(model)
    reference = model.predict_proba(X_test)
    accuracy = np.mean(reference.argmax(axis=1) == labels)
    for format in FORMATS:
        _, probabilities = exported_probabilities(model, format, tmp_path / format, X_test)
        assert np.abs(probabilities - reference).max() <= PROBABILITY_TOLERANCE, format
        assert_same_labels(probabilities, reference)
    _, quantized = exported_probabilities(
        model, "tflite", tmp_path / "int8.tflite", X_test, quantize="int8"
    )
    # Within 0.3 points of the model's test accuracy.
    assert abs(np.mean(quantized.argmax(axis=1) == labels) - accuracy) <= 0.003
