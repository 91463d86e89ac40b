"""Every fast path predicts what TensorFlow's reference forward pass predicts.

The NumPy ``Model`` (one image, a batch, the dense-stack path, the convolutional path),
models trained in bfloat16, and ``digitnet predict`` on a PNG are checked against
``digitnet.core.forward_propagation``; ``digitnet --help``, ``predict``, ``evaluate`` and
``serve`` are run in fresh processes and must not import TensorFlow. Speed itself is measured
by ``benchmarks/speed.py``, never asserted here.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

import digitnet
from digitnet.inference.model import Model
from digitnet.inference.modelfile import save_model
from digitnet.inference.preprocess import preprocess_image
from digitnet.models import architectures
from digitnet.training.engine import Fitter
from digitnet.training.runs import onednn_allows_bfloat16

MODEL_NAMES = ("seed", "mlp", "cnn")


def trained_architecture(name: str) -> dict:
    """The named architecture with the output ``digitnet train`` gives it by default."""
    architecture = architectures.named_architecture(name)
    if name != "seed":
        architecture["layers"][-1]["activation"] = "softmax"
    return architecture


def reference_outputs(model: Model, X: np.ndarray) -> np.ndarray:
    """TensorFlow's forward pass in float32 on the model's parameters: (n, classes)."""
    parameters = {name: tf.constant(value) for name, value in model.parameters.items()}
    return digitnet.forward_propagation(X, parameters, model.architecture).numpy()


def normalised(outputs: np.ndarray) -> np.ndarray:
    outputs = np.maximum(outputs, 1e-12)
    return outputs / outputs.sum(axis=1, keepdims=True)


def assert_same_predictions(model: Model, X: np.ndarray) -> None:
    """forward, predict_proba and predict on ``X`` (n, 784) equal the TensorFlow reference."""
    reference = reference_outputs(model, X)
    np.testing.assert_allclose(model.forward(X), reference, rtol=2e-4, atol=2e-5)
    expected = (
        reference
        if model.architecture["layers"][-1]["activation"] == "softmax"
        else normalised(reference)
    )
    np.testing.assert_allclose(model.predict_proba(X), expected, rtol=2e-4, atol=2e-5)
    assert np.array_equal(model.predict(X), reference.argmax(axis=1))


@pytest.fixture(scope="module")
def mnist_like():
    """Images with MNIST's statistics without the files: random strokes on black, (n, 784)."""
    rng = np.random.default_rng(7)
    images = np.zeros((600, 28, 28), np.float32)
    for image in images:
        for _ in range(3):
            row, column = rng.integers(4, 24, size=2)
            image[row - 2 : row + 2, column - 6 : column + 6] = rng.random()
    return images.reshape(len(images), -1)


@pytest.fixture(scope="module")
def bfloat16_models(mnist_like):
    """Each named model trained for a few steps in bfloat16 (as ``precision=auto`` does on
    AMX CPUs), with running batchnorm statistics that differ from their start. With oneDNN
    held to AVX2 (CI's plain-CPU pass) they train in float32, the path such CPUs take."""
    labels = np.eye(10, dtype=np.float32)[np.arange(len(mnist_like)) % 10]
    models = {}
    for name in MODEL_NAMES:
        architecture = trained_architecture(name)
        cost = "mse" if name == "seed" else "cross_entropy"
        fitter = Fitter(
            architecture,
            cost=cost,
            learning_rate=0.003,
            batch_size=100,
            seed=3,
            compute_dtype="bfloat16" if onednn_allows_bfloat16() else None,
        )
        fitter.set_output_bias_from_labels(labels)
        data = fitter.dataset(mnist_like[:300], labels[:300])
        for epoch in (1, 2):
            fitter.train_epoch(data, epoch)
        models[name] = (Model(architecture, fitter.parameters()), fitter)
    return models


# --------------------------------------------------------------------------------------------
# The NumPy paths against the reference


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bfloat16_trained_models_predict_the_same_in_numpy(bfloat16_models, mnist_like, name):
    model, fitter = bfloat16_models[name]
    if name == "cnn":
        assert not np.allclose(model.parameters["mean2"], 0.0)  # batchnorm really trained
    assert_same_predictions(model, mnist_like[300:])
    # Training's own accuracy uses the compiled TensorFlow pass: the same outputs.
    np.testing.assert_allclose(
        model.forward(mnist_like[300:]), fitter.outputs(mnist_like[300:]), rtol=2e-4, atol=2e-5
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_image_equals_its_row_of_the_batch(bfloat16_models, mnist_like, name):
    model, _ = bfloat16_models[name]
    batch = model.predict_proba(mnist_like[:40])
    for index in range(0, 40, 7):
        image = mnist_like[index]
        for form in (image, image[None], image.reshape(28, 28)[None]):
            np.testing.assert_allclose(
                model.predict_proba(form)[0], batch[index], rtol=1e-5, atol=1e-6
            )
        assert model.predict(image)[0] == batch[index].argmax()


@pytest.mark.parametrize("name,count", [("seed", 10000), ("mlp", 3000), ("cnn", 600)])
def test_large_batches_equal_the_reference(bfloat16_models, name, count):
    """Batches larger than any slicing the NumPy path does (the cnn goes 256 at a time)."""
    model, _ = bfloat16_models[name]
    X = np.random.default_rng(count).random((count, 784), dtype=np.float32)
    X[X < 0.8] = 0.0  # MNIST-like sparsity
    assert_same_predictions(model, X)


def blas_threads() -> list[int]:
    """The thread count of each BLAS library loaded in this process."""
    import threadpoolctl

    return [
        info["num_threads"]
        for info in threadpoolctl.threadpool_info()
        if info["user_api"] == "blas"
    ]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_blocks_on_worker_threads_equal_one_block_and_restore_blas(bfloat16_models, name):
    """Concurrent callers (the server's threads) share the worker threads and BLAS's
    one-thread hold; afterwards BLAS has its threads back."""
    pytest.importorskip("threadpoolctl")
    from concurrent.futures import ThreadPoolExecutor

    model, _ = bfloat16_models[name]
    X = np.random.default_rng(1).random((1100 if name == "cnn" else 3000, 784), dtype=np.float32)
    before = blas_threads()
    whole = model.forward(X, block_rows=len(X))
    with ThreadPoolExecutor(4) as callers:
        answers = list(
            callers.map(lambda rows: model.forward(X, block_rows=rows), [None, 100, 333, 1000] * 2)
        )
    for answer in answers:
        np.testing.assert_allclose(answer, whole, rtol=1e-5, atol=1e-6)
    assert blas_threads() == before


@pytest.mark.parametrize("name, held", [("seed", False), ("cnn", True)])
def test_one_image_holds_blas_at_one_thread_only_when_blas_would_thread(
    bfloat16_models, mnist_like, monkeypatch, name, held
):
    """OpenBLAS threads products above its threshold (the mlp's and cnn's layers, not the
    seed network's): one image runs with BLAS at one thread, then BLAS has its threads back."""
    pytest.importorskip("threadpoolctl")
    from digitnet.inference import model as model_module

    model, _ = bfloat16_models[name]
    before = blas_threads()
    seen = []
    forward_block, dense_forward = model._forward_block, model_module._dense_forward

    def recording(values):
        seen.append(blas_threads())
        return forward_block(values)

    def recording_dense(values, layers):  # a dense stack's one image goes straight here
        seen.append(blas_threads())
        return dense_forward(values, layers)

    monkeypatch.setattr(model, "_forward_block", recording)
    monkeypatch.setattr(model_module, "_dense_forward", recording_dense)
    expected = model.forward(mnist_like[:2], block_rows=1)  # blocks: the pool's own hold
    np.testing.assert_allclose(model.forward(mnist_like[:1]), expected[:1], rtol=1e-5, atol=1e-6)
    assert seen[-1] == ([1] * len(before) if held else before)
    assert blas_threads() == before


@pytest.mark.parametrize("free", [True, False])
def test_one_image_of_a_wide_dense_stack_uses_blas_threads_only_on_free_cores(
    bfloat16_models, mnist_like, monkeypatch, free
):
    """The mlp's one image is a chain of matrix-vector products: on BLAS's threads while the
    load leaves cores free, held at one thread otherwise; the answer is the same either way."""
    pytest.importorskip("threadpoolctl")
    from digitnet.inference import model as model_module

    model, _ = bfloat16_models["mlp"]
    expected = model.forward(mnist_like[:2])[:1]
    before = blas_threads()
    seen = []
    dense_forward = model_module._dense_forward

    def recording(values, layers):
        seen.append(blas_threads())
        return dense_forward(values, layers)

    monkeypatch.setattr(model_module, "_dense_forward", recording)
    monkeypatch.setattr(model_module, "_cores_are_free", lambda: free)
    np.testing.assert_allclose(model.forward(mnist_like[:1]), expected, rtol=1e-5, atol=1e-6)
    assert seen == [before if free else [1] * len(before)]
    assert blas_threads() == before


def test_the_dense_path_leaves_the_input_alone(bfloat16_models, mnist_like):
    model, _ = bfloat16_models["seed"]
    X = mnist_like[:50].copy()
    model.predict_proba(X)
    model.forward(X[0])
    assert np.array_equal(X, mnist_like[:50])


def test_random_parameters_of_every_activation_match(mnist_like):
    """A dense stack with sigmoid hidden layers and linear and softmax outputs."""
    rng = np.random.default_rng(2)
    for output in ("linear", "softmax", "sigmoid"):
        architecture = {
            "input_shape": [784],
            "layers": [
                {"type": "dense", "units": 32, "activation": "sigmoid"},
                {"type": "dense", "units": 16, "activation": "relu", "use_bias": False},
                {"type": "dense", "units": 10, "activation": output},
            ],
        }
        shapes = architectures.parameter_shapes(architectures.validate_architecture(architecture))
        model = Model(
            architecture,
            {name: rng.normal(0, 0.2, shape).astype(np.float32) for name, shape in shapes.items()},
        )
        reference = reference_outputs(model, mnist_like)
        np.testing.assert_allclose(model.forward(mnist_like), reference, rtol=2e-4, atol=2e-5)


def test_wrong_input_sizes_are_refused(bfloat16_models):
    model, _ = bfloat16_models["seed"]
    with pytest.raises(ValueError, match="784 values per sample, got 100"):
        model.forward(np.zeros((3, 100), np.float32))
    with pytest.raises(ValueError, match="784 values per sample"):
        model.predict_proba(np.zeros(783, np.float32))


# --------------------------------------------------------------------------------------------
# Training inputs stored in bfloat16


@pytest.mark.skipif(
    not onednn_allows_bfloat16(), reason="oneDNN is held below its bfloat16 kernels"
)
def test_bfloat16_inputs_cast_once_train_exactly_as_casting_each_batch(mnist_like):
    labels = np.eye(10, dtype=np.float32)[np.arange(300) % 10]

    def trained(cast_once: bool) -> dict:
        fitter = Fitter(
            trained_architecture("seed"),
            cost="mse",
            learning_rate=0.005,
            batch_size=50,
            seed=4,
            compute_dtype="bfloat16",
        )
        X, y = fitter.dataset(mnist_like[:300], labels)
        if cast_once:
            fitter.train_epoch((X, y), 1)
        else:
            # The path before the cast was hoisted: float32 rows gathered, cast in the step.
            order = tf.random.experimental.stateless_shuffle(
                tf.range(300), seed=tf.constant([4, 1], tf.int64)
            )
            fitter._train_chunk(X, y, order, tf.constant(0), tf.constant(6), tf.constant(50))
        return fitter.parameters()

    once, each = trained(True), trained(False)
    for name in once:
        assert np.array_equal(once[name], each[name]), name


# --------------------------------------------------------------------------------------------
# The command line


def digit_png(path, strokes=((7, 6), (21, 6), (12, 23)), size=140) -> None:
    """A drawn digit (a seven by default), dark ink on white, as a phone or the page sends."""
    image = Image.new("RGB", (size, size), "white")
    scale = size / 28
    ImageDraw.Draw(image).line(
        [(x * scale, y * scale) for x, y in strokes],
        fill="black",
        width=int(2.2 * scale),
        joint="curve",
    )
    image.save(path, "PNG")


def run_digitnet(*args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "digitnet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-2000:])
    return result


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_digitnet_predict_on_a_png_equals_the_reference(tmp_path, bfloat16_models, name):
    model, _ = bfloat16_models[name]
    model_path = tmp_path / f"{name}.safetensors"
    save_model(model.with_metadata(training={"model": name}), model_path)
    image_path = tmp_path / "seven.png"
    digit_png(image_path)
    answer = json.loads(run_digitnet("predict", model_path, image_path, "--json").stdout)[0]
    seen = preprocess_image(image_path).reshape(1, 784)
    reference = reference_outputs(model, seen)
    if name == "seed":
        reference = normalised(reference)
    assert answer["digit"] == int(reference.argmax())
    np.testing.assert_allclose(answer["probabilities"], reference[0], rtol=2e-4, atol=2e-5)
    assert answer["confidence"] == pytest.approx(float(reference.max()), rel=2e-4, abs=2e-5)
    plain = run_digitnet("predict", model_path, image_path).stdout.split("\t")
    assert int(plain[1]) == answer["digit"]


# --------------------------------------------------------------------------------------------
# Start-up: nothing that does not train imports TensorFlow

_REPORT = (
    "import sys\n"
    "print('\\nIMPORTED', *sorted(m for m in ('tensorflow', 'keras', 'torch') "
    "if m in sys.modules))\n"
)


def imported_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy frameworks it left in sys.modules."""
    result = subprocess.run(
        [sys.executable, "-c", code + _REPORT], capture_output=True, text=True, timeout=300
    )
    assert "IMPORTED" in result.stdout, result.stderr[-2000:]
    return result.stdout.rsplit("IMPORTED", 1)[1].split()


def run_main(argv) -> str:
    return (
        "from digitnet.cli.main import main\n"
        f"try:\n    status = main({[str(a) for a in argv]!r})\n"
        "except SystemExit as exit:\n    status = exit.code\n"
        "assert status in (0, None), status\n"
    )


@pytest.fixture(scope="module")
def saved_seed_model(tmp_path_factory, bfloat16_models):
    path = tmp_path_factory.mktemp("model") / "seed.safetensors"
    model, _ = bfloat16_models["seed"]
    save_model(model.with_metadata(training={"model": "seed"}, data={"split": "official"}), path)
    return path


def test_help_and_predict_import_no_tensorflow(tmp_path, saved_seed_model):
    image_path = tmp_path / "seven.png"
    digit_png(image_path)
    assert imported_after(run_main(["--help"])) == []
    for command in ("train", "evaluate", "predict", "serve"):
        assert imported_after(run_main([command, "--help"])) == [], command
    assert imported_after(run_main(["predict", saved_seed_model, image_path])) == []
    assert imported_after(run_main(["predict", saved_seed_model, image_path, "--json"])) == []


def test_evaluate_imports_no_tensorflow(fake_mnist_dir, saved_seed_model):
    assert (
        imported_after(run_main(["evaluate", saved_seed_model, "--data-dir", fake_mnist_dir])) == []
    )


def test_serve_answers_a_prediction_without_tensorflow(saved_seed_model):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import json, threading, time, urllib.request\n"
        "from digitnet.cli.main import main\n"
        f"argv = ['serve', {str(saved_seed_model)!r}, '--port', '{port}', '--quiet']\n"
        "threading.Thread(target=main, args=(argv,), daemon=True).start()\n"
        f"request = urllib.request.Request('http://127.0.0.1:{port}/v1/models/digitnet:predict',"
        " data=json.dumps({'instances': [[0.0] * 784]}).encode(), method='POST')\n"
        "for attempt in range(600):\n"
        "    try:\n"
        "        answer = json.loads(urllib.request.urlopen(request, timeout=5).read())\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
        "assert len(answer['predictions'][0]) == 10, answer\n"
    )
    assert imported_after(code) == []
