"""digitnet's speed against Keras, PyTorch and scikit-learn, measured side by side in one run.

    python benchmarks/speed.py            # the full run: about 12 minutes per --isa on 2 idle cores
    python benchmarks/speed.py --quick    # a smoke run: one seed, 3 epochs, fewer calls
    python benchmarks/speed.py --isa avx2 --skip-training   # prediction rows, held to AVX2

Needs the MNIST files (``--data-dir`` or ``DIGITNET_DATA_DIR``). PyTorch is optional
(``pip install -e '.[bench]'``); without it its rows say "n/a: torch not installed".

What it measures, and how it keeps the comparison fair:

* Training throughput, samples/s, of the ``seed`` network (784-100-100-60-10, ReLU hidden
  layers, sigmoid output, squared error, Adam lr 0.005, batch 1000, Glorot-uniform weights,
  output biases at the log-odds of the class frequencies) in digitnet, Keras ``model.fit``
  (its defaults, ``verbose=0``), PyTorch eager (``torch.set_num_threads(2)``) and, for the
  hidden layers, scikit-learn's ``MLPClassifier`` (softmax and log-loss: it has no other
  output). Every trainer gets the same float32 arrays of the official 60,000/10,000 split in
  memory, reshuffles every epoch, and is timed over epochs 2..E (epoch 1 traces and compiles),
  then scored on the test set after the same E epochs.
* The same for the ``cnn`` architecture (``digitnet.architectures.cnn_architecture()``,
  rebuilt layer by layer in Keras and PyTorch with batchnorm and dropout; batch 128, Adam,
  cross-entropy, no augmentation), timed over a fixed number of steps after warm-up steps
  (a peer that needs more than a minute for them is timed over the steps of that minute).
* digitnet trains in bfloat16 on CPUs with AMX (its default there). The peers' defaults are
  float32, which the targets compare against; each is also run in bfloat16 (Keras
  ``mixed_bfloat16``, PyTorch ``autocast``) and digitnet in float32, so the table shows every
  pairing.
* The float32 (and bfloat16) GEMM peak of this machine: the best of ``tf.matmul`` and NumPy
  on 2048x2048 matrices, before and after the training runs; and the fraction of it that
  digitnet's training reaches, counting the network's matrix-product FLOPs (forward, weight
  gradients, input gradients).
* Single-image prediction latency in Python (p50, p99) of digitnet's NumPy path
  (``Model.predict_proba``) against Keras ``model.predict``, ``model(x)`` and a reused
  ``tf.function``; prediction of the 10,000 test images; and ``digitnet predict MODEL
  one.png`` in a new process, start to output, next to ``import tensorflow`` alone.
* The same prediction figures for the seed (the model trained here), mlp and cnn (random but
  fixed weights of their architectures: speed needs the shapes) against ONNX Runtime (CPU) on
  the model ``digitnet.inference.onnx_export`` builds from the same weights. Both engines get
  as many threads as the machine has cores: ONNX Runtime ``intra_op_num_threads`` = cores;
  digitnet BLAS's default (cores) and its worker pool (cores).
* Everything twice (``--isa both``, the default): with the CPU's own instruction sets and held
  to AVX2 (``ISA_ENVIRONMENTS``: oneDNN, OpenBLAS, NumPy's SIMD loops, PyTorch, MKL), where
  digitnet trains in float32 and bfloat16 peers are left out; each table says which
  instruction sets each library reported. ONNX Runtime cannot be held: it keeps AVX-512.

Each measurement runs in a fresh Python process (this script with ``--worker``), one after
another, so no framework's threads or imports compete with another's. Other processes on
the machine still do: the load average is printed with the table. Every trainer runs once per
seed (``--seeds``, default 1,2,3), the order reversed from one seed to the next; the table
shows each trainer's best throughput (interference only ever slows a run down) and its mean
test accuracy over the seeds, with their range.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Issue 6's targets.
TARGET_SEED_VS_KERAS = 2.0
TARGET_SEED_VS_TORCH = 1.5
TARGET_CNN_VS_KERAS = 1.5
TARGET_ACCURACY_POINTS = 0.3
TARGET_SINGLE_P50_US = 25.0
TARGET_SINGLE_VS_KERAS_PREDICT = 1000.0
TARGET_BATCH_MS = 20.0
TARGET_CLI_SECONDS = 1.0
# Issue 15's, against ONNX Runtime on the same weights: one image's p50 at or below its own,
# 10,000 images at least 1.2 times faster.
TARGET_SINGLE_VS_ORT = 1.0
TARGET_BATCH_VS_ORT = 1.2

# What each run of the measurements holds the CPU to. "native" leaves every library its
# fastest kernels (AMX and AVX-512 here); "avx2" holds each to what a CPU without AVX-512 and
# AMX has: oneDNN (TensorFlow, PyTorch), OpenBLAS (NumPy's BLAS: numpy.show_config() names
# scipy-openblas, not MKL), NumPy's own SIMD loops, PyTorch's ATen kernels, and MKL should a
# library load it. ONNX Runtime has no such switch: its MLAS kernels pick the CPU's best
# (the table says so).
ISA_ENVIRONMENTS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
}
PREDICT_MODELS = ("seed", "mlp", "cnn")

SEED_BATCH, SEED_LEARNING_RATE = 1000, 0.005
CNN_BATCH, CNN_LEARNING_RATE = 128, 0.003


# ============================================================================================
# Shared helpers (workers and parent)


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _load(data_dir: str):
    """The official split as float32 images (n, 784) in [0, 1] and one-hot labels (n, 10)."""
    from digitnet.data.mnist import load_mnist

    X_train, X_test, y_train, y_test = load_mnist(split="official", data_dir=data_dir)
    return X_train, y_train, X_test, y_test


def _output_bias(y_train, activation: str):
    """digitnet's output-bias start (see ``Fitter.set_output_bias_from_labels``), given to
    every trainer so the comparison is of speed, not of initialisation."""
    import numpy as np

    frequency = np.clip(y_train.astype(np.float64).mean(axis=0), 1e-6, 1 - 1e-6)
    if activation == "sigmoid":
        return np.log(frequency / (1 - frequency)).astype(np.float32)
    return (np.log(frequency) - np.log(frequency).mean()).astype(np.float32)


def training_flops_per_sample(architecture: dict) -> int:
    """Matrix-product FLOPs to train on one sample: the forward pass, the weight gradients,
    and the input gradients of every layer but the first (nothing needs the image's gradient).
    Elementwise work (activations, batchnorm, Adam) is left out, as GEMM peaks count none."""
    from digitnet.models import architectures

    shapes = architectures.layer_shapes(architecture)
    previous = tuple(architecture["input_shape"])
    macs = []
    for layer, output in zip(architecture["layers"], shapes):
        if layer["type"] == "dense":
            macs.append(previous[0] * output[0])
        elif layer["type"] == "conv":
            macs.append(math.prod(output) * layer["kernel"] ** 2 * previous[-1])
        previous = output
    return 2 * (2 * sum(macs) + sum(macs[1:]))


def _percentiles_us(nanoseconds: list[int]) -> dict:
    ordered = sorted(nanoseconds)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0

    return {"p50_us": pick(0.50), "p99_us": pick(0.99), "calls": len(ordered)}


# ============================================================================================
# Workers: each runs in its own process and returns a JSON-able dict.


def worker_gemm(options: dict) -> dict:
    """Best GFLOP/s of float32 (TensorFlow, NumPy) and bfloat16 (TensorFlow) 2048^3 GEMMs."""
    _quiet_tensorflow()
    import numpy as np
    import tensorflow as tf

    size, seconds = 2048, options["seconds"]
    flops = 2 * size**3
    rng = np.random.default_rng(0)
    a, b = (rng.random((size, size), dtype=np.float32) for _ in range(2))

    def best(run) -> float:
        run()
        fastest, deadline = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            run()
            fastest = min(fastest, time.perf_counter() - started)
        return flops / fastest / 1e9

    from digitnet.training.runs import onednn_allows_bfloat16

    results = {"numpy_float32": best(lambda: a @ b)}
    # Held to AVX2, oneDNN has no bfloat16 product (it aborts the process): float32 only.
    dtypes = (tf.float32, tf.bfloat16) if onednn_allows_bfloat16() else (tf.float32,)
    for dtype in dtypes:
        ta, tb = tf.constant(a, dtype), tf.constant(b, dtype)
        product = tf.function(lambda ta=ta, tb=tb: tf.reduce_sum(tf.matmul(ta, tb)[:1, :1]))
        # Reducing one element makes .numpy() wait for the product without copying 16 MB.
        results[f"tensorflow_{dtype.name}"] = best(lambda product=product: product().numpy())
    results["float32_peak"] = max(results["numpy_float32"], results["tensorflow_float32"])
    if "tensorflow_bfloat16" in results:
        results["bfloat16_peak"] = results["tensorflow_bfloat16"]
    return results


def worker_seed_digitnet(options: dict) -> dict:
    """digitnet's engine as ``digitnet train --model seed`` uses it, timed over epochs 2..E."""
    _quiet_tensorflow()
    import tensorflow as tf

    from digitnet.models import architectures
    from digitnet.training.engine import Fitter
    from digitnet.training.runs import PRESETS, compute_dtype

    X, y, X_test, y_test = _load(options["data_dir"])
    precision = options["precision"] or PRESETS["seed"]["precision"]
    architecture = architectures.seed_architecture()
    tf.config.experimental.enable_op_determinism()  # as digitnet train does
    fitter = Fitter(
        architecture,
        cost="mse",
        learning_rate=SEED_LEARNING_RATE,
        batch_size=SEED_BATCH,
        seed=options["seed"],
        compute_dtype=compute_dtype(precision),
    )
    fitter.set_output_bias_from_labels(y)
    data = fitter.dataset(X, y)
    times = []
    for epoch in range(1, options["epochs"] + 1):
        started = time.perf_counter()
        fitter.train_epoch(data, epoch)
        times.append(time.perf_counter() - started)
    result = {
        "precision": compute_dtype(precision) or "float32",
        "samples_per_second": len(X) // SEED_BATCH * SEED_BATCH * (len(times) - 1) / sum(times[1:]),
        "test_accuracy": fitter.accuracy(X_test, y_test),
    }
    if options.get("save_model"):
        from digitnet.inference.model import Model
        from digitnet.inference.modelfile import save_model

        model = Model(
            architecture,
            fitter.parameters(),
            {
                "training": {"model": "seed", "precision": result["precision"]},
                "data": {"split": "official"},
            },
        )
        save_model(model, options["save_model"])
    return result


def _keras_layers(architecture: dict, output_bias):
    """``architecture`` as Keras layers, one per digitnet layer (activations fused where
    digitnet fuses them); the output activation is computed in float32."""
    import keras

    from digitnet.models import architectures

    layers = [keras.Input(tuple(architecture["input_shape"]))]
    for layer in architecture["layers"][:-1]:
        kind = layer["type"]
        if kind == "dense":
            layers.append(
                keras.layers.Dense(
                    layer["units"], activation=layer["activation"], use_bias=layer["use_bias"]
                )
            )
        elif kind == "conv":
            layers.append(
                keras.layers.Conv2D(
                    layer["filters"],
                    layer["kernel"],
                    strides=layer["stride"],
                    padding=layer["padding"],
                    activation=layer["activation"],
                    use_bias=layer["use_bias"],
                )
            )
        elif kind == "batchnorm":
            layers.append(
                keras.layers.BatchNormalization(
                    momentum=layer["momentum"], epsilon=architectures.BATCHNORM_EPSILON
                )
            )
            if layer["activation"] != "linear":
                layers.append(keras.layers.Activation(layer["activation"]))
        elif kind == "dropout":
            layers.append(keras.layers.Dropout(layer["rate"]))
        elif kind == "flatten":
            layers.append(keras.layers.Flatten())
        else:
            raise ValueError(f"no Keras translation for {kind}")
    last = architecture["layers"][-1]
    layers.append(
        keras.layers.Dense(last["units"], bias_initializer=keras.initializers.Constant(output_bias))
    )
    layers.append(keras.layers.Activation(last["activation"], dtype="float32"))
    return layers


def _keras_setup(policy: str, seed: int = 1):
    _quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(policy)
    return keras


def worker_seed_keras(options: dict) -> dict:
    """Keras ``model.fit`` with its defaults (``verbose=0``), timed over epochs 2..E."""
    import numpy as np

    keras = _keras_setup(options["policy"], options["seed"])
    from digitnet.models import architectures

    X, y, X_test, y_test = _load(options["data_dir"])
    model = keras.Sequential(
        _keras_layers(architectures.seed_architecture(), _output_bias(y, "sigmoid"))
    )
    model.compile(keras.optimizers.Adam(SEED_LEARNING_RATE), loss="mse")
    epoch_times = _EpochTimes(keras)
    model.fit(
        X, y, batch_size=SEED_BATCH, epochs=options["epochs"], verbose=0, callbacks=[epoch_times]
    )
    predicted = model.predict(X_test, batch_size=10000, verbose=0).argmax(axis=1)
    return {
        "samples_per_second": len(X) * (options["epochs"] - 1) / sum(epoch_times.times[1:]),
        "test_accuracy": float(np.mean(predicted == y_test.argmax(axis=1))),
    }


def _EpochTimes(keras):
    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.started)

    return EpochTimes()


def _torch_or_none(seed: int):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    return torch


def _torch_model(torch, architecture: dict, output_bias):
    """``architecture`` as a ``torch.nn.Sequential`` in NCHW, TensorFlow's 'same' padding
    reproduced exactly; returns logits (the loss applies the output activation)."""
    nn = torch.nn
    modules, shape = [], tuple(architecture["input_shape"])
    from digitnet.models import architectures

    shapes = architectures.layer_shapes(architecture)
    for layer, output in zip(architecture["layers"], shapes):
        kind = layer["type"]
        if kind == "dense":
            linear = nn.Linear(shape[0], layer["units"], bias=layer["use_bias"])
            nn.init.xavier_uniform_(linear.weight)
            if layer["use_bias"]:
                nn.init.zeros_(linear.bias)
            modules.append(linear)
            if layer is not architecture["layers"][-1] and layer["activation"] == "relu":
                modules.append(nn.ReLU())
        elif kind == "conv":
            if layer["padding"] == "same":
                # TensorFlow puts the odd pixel of padding at the bottom/right.
                pad_h = max((output[0] - 1) * layer["stride"] + layer["kernel"] - shape[0], 0)
                pad_w = max((output[1] - 1) * layer["stride"] + layer["kernel"] - shape[1], 0)
                modules.append(
                    nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
                )
            conv = nn.Conv2d(
                shape[2], layer["filters"], layer["kernel"], layer["stride"], bias=layer["use_bias"]
            )
            nn.init.xavier_uniform_(conv.weight)
            modules.append(conv)
            if layer["activation"] == "relu":
                modules.append(nn.ReLU())
        elif kind == "batchnorm":
            modules.append(
                nn.BatchNorm2d(
                    shape[-1], eps=architectures.BATCHNORM_EPSILON, momentum=1 - layer["momentum"]
                )
            )
            if layer["activation"] == "relu":
                modules.append(nn.ReLU())
        elif kind == "dropout":
            modules.append(nn.Dropout(layer["rate"]))
        elif kind == "flatten":
            modules.append(nn.Flatten())
        else:
            raise ValueError(f"no PyTorch translation for {kind}")
        shape = output
    model = nn.Sequential(*modules)
    with torch.no_grad():
        modules[-1].bias.copy_(torch.from_numpy(output_bias))
    return model


def worker_seed_torch(options: dict) -> dict:
    """PyTorch eager, 2 threads, timed over epochs 2..E; bfloat16 through ``autocast``."""
    torch = _torch_or_none(options["seed"])
    if torch is None:
        return {"missing": "torch not installed"}
    from digitnet.models import architectures

    X, y, X_test, y_test = _load(options["data_dir"])
    model = _torch_model(torch, architectures.seed_architecture(), _output_bias(y, "sigmoid"))
    # Keras' and digitnet's Adam epsilon, so the three optimisers are the same.
    optimizer = torch.optim.Adam(model.parameters(), lr=SEED_LEARNING_RATE, eps=1e-7)
    X_all, y_all = torch.from_numpy(X), torch.from_numpy(y)
    bfloat16 = options["precision"] == "bfloat16"
    times = []
    for _epoch in range(options["epochs"]):
        started = time.perf_counter()
        order = torch.randperm(len(X))
        for start in range(0, len(X) - SEED_BATCH + 1, SEED_BATCH):
            indices = order[start : start + SEED_BATCH]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                outputs = torch.sigmoid(model(X_all[indices]).float())
            loss = torch.nn.functional.mse_loss(outputs, y_all[indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - started)
    with torch.no_grad():
        predicted = model(torch.from_numpy(X_test)).argmax(dim=1).numpy()
    return {
        "samples_per_second": len(X) * (len(times) - 1) / sum(times[1:]),
        "test_accuracy": float((predicted == y_test.argmax(axis=1)).mean()),
    }


def worker_seed_sklearn(options: dict) -> dict:
    """scikit-learn's MLPClassifier with the seed network's hidden layers, ``max_iter=E``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    X, y, X_test, y_test = _load(options["data_dir"])
    labels = y.argmax(axis=1)
    # n_iter_no_change above max_iter: every epoch runs, as for the other trainers.
    classifier = MLPClassifier(
        hidden_layer_sizes=(100, 100, 60),
        batch_size=SEED_BATCH,
        solver="adam",
        learning_rate_init=SEED_LEARNING_RATE,
        max_iter=options["epochs"],
        random_state=options["seed"],
        n_iter_no_change=options["epochs"] + 1,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(X, labels)
    seconds = time.perf_counter() - started
    # No compilation to exclude: every epoch, the first included, costs the same.
    return {
        "samples_per_second": len(X) * classifier.n_iter_ / seconds,
        "test_accuracy": float(classifier.score(X_test, y_test.argmax(axis=1))),
    }


def _cnn_architecture():
    from digitnet.models import architectures

    architecture = architectures.cnn_architecture()
    architecture["layers"][-1]["activation"] = "softmax"
    return architecture


def worker_cnn_digitnet(options: dict) -> dict:
    """digitnet's engine on the cnn: one compiled chunk of warm-up steps, then timed chunks."""
    _quiet_tensorflow()
    import tensorflow as tf

    from digitnet.training.engine import Fitter
    from digitnet.training.runs import PRESETS, compute_dtype

    X, y, _, _ = _load(options["data_dir"])
    warmup, steps = options["warmup_steps"], options["steps"]
    count = (warmup + steps) * CNN_BATCH
    precision = options["precision"] or PRESETS["cnn"]["precision"]
    tf.config.experimental.enable_op_determinism()
    fitter = Fitter(
        _cnn_architecture(),
        cost="cross_entropy",
        learning_rate=CNN_LEARNING_RATE,
        batch_size=CNN_BATCH,
        seed=options["seed"],
        compute_dtype=compute_dtype(precision),
    )
    data = fitter.dataset(X[:count], y[:count])
    # Equal chunks of `warmup` steps: the first one traces and compiles and is not timed.
    chunks = (warmup + steps) // warmup
    stamps = []
    fitter.train_epoch(
        data,
        1,
        progress=lambda done, total: stamps.append((done, time.perf_counter())),
        chunks=chunks,
    )
    (first_done, first_time), (last_done, last_time) = stamps[0], stamps[-1]
    return {
        "precision": compute_dtype(precision) or "float32",
        "samples_per_second": (last_done - first_done) * CNN_BATCH / (last_time - first_time),
    }


def worker_cnn_keras(options: dict) -> dict:
    """Keras ``model.fit`` on the cnn, timed from the end of the warm-up steps."""
    keras = _keras_setup(options["policy"], options["seed"])
    X, y, _, _ = _load(options["data_dir"])
    warmup, steps = options["warmup_steps"], options["steps"]
    count = (warmup + steps) * CNN_BATCH
    model = keras.Sequential(_keras_layers(_cnn_architecture(), _output_bias(y, "softmax")))
    model.compile(keras.optimizers.Adam(CNN_LEARNING_RATE), loss="categorical_crossentropy")

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.stamps: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.stamps.append(time.perf_counter())
            if (
                len(self.stamps) > warmup
                and self.stamps[-1] - self.stamps[warmup - 1] > options["max_seconds"]
            ):
                self.model.stop_training = True

    timer = StepTimes()
    model.fit(
        X[:count].reshape(-1, 28, 28, 1),
        y[:count],
        batch_size=CNN_BATCH,
        epochs=1,
        verbose=0,
        callbacks=[timer],
    )
    stamps = timer.stamps
    return {
        "samples_per_second": (len(stamps) - warmup)
        * CNN_BATCH
        / (stamps[-1] - stamps[warmup - 1]),
        "steps": len(stamps),
    }


def worker_cnn_torch(options: dict) -> dict:
    """PyTorch eager on the cnn (NCHW, 2 threads), timed from the end of the warm-up steps."""
    torch = _torch_or_none(options["seed"])
    if torch is None:
        return {"missing": "torch not installed"}
    X, y, _, _ = _load(options["data_dir"])
    warmup, steps = options["warmup_steps"], options["steps"]
    count = (warmup + steps) * CNN_BATCH
    model = _torch_model(torch, _cnn_architecture(), _output_bias(y, "softmax"))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=CNN_LEARNING_RATE, eps=1e-7)
    images = torch.from_numpy(X[:count]).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(y[:count].argmax(axis=1))
    bfloat16 = options["precision"] == "bfloat16"
    order = torch.randperm(count)
    done = 0
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        elif step > warmup and time.perf_counter() - started > options["max_seconds"]:
            break
        indices = order[step * CNN_BATCH : (step + 1) * CNN_BATCH]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            logits = model(images[indices])
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1 - warmup
    return {"samples_per_second": done * CNN_BATCH / (time.perf_counter() - started), "steps": done}


def worker_predict_digitnet(options: dict) -> dict:
    """The NumPy path (``Model.predict_proba``): one image at a time (p50, p99) and the
    10,000 test images at once. Its threads: BLAS's default (one per core) and its worker
    pool (one per core, up to 8)."""
    import numpy as np

    from digitnet.inference.modelfile import load_model

    _, _, X_test, y_test = _load(options["data_dir"])
    model = load_model(options["model"])
    result = _time_predictions(model.predict_proba, X_test, options)
    probabilities = result.pop("probabilities")
    np.save(options["predictions"], probabilities)
    result["test_accuracy"] = float(np.mean(probabilities.argmax(1) == y_test.argmax(1)))
    return result


def worker_predict_keras(options: dict) -> dict:
    """The same weights in Keras: model.predict, model(x) and a reused tf.function."""
    keras = _keras_setup("float32")
    import numpy as np
    import tensorflow as tf

    from digitnet.inference.modelfile import load_model
    from digitnet.models import architectures
    from digitnet.training.network import forward_propagation

    _, y, X_test, _ = _load(options["data_dir"])
    digitnet_model = load_model(options["model"])
    model = keras.Sequential(
        _keras_layers(architectures.seed_architecture(), _output_bias(y, "sigmoid"))
    )
    weights = []
    for k in range(1, 5):
        weights += [digitnet_model.parameters[f"W{k}"].T, digitnet_model.parameters[f"b{k}"][:, 0]]
    model.set_weights(weights)

    def latency(call, calls: int, warmup: int) -> dict:
        for index in range(warmup):
            call(X_test[index : index + 1])
        times = []
        for index in range(calls):
            image = X_test[index % len(X_test)][None]
            started = time.perf_counter_ns()
            np.asarray(call(image))
            times.append(time.perf_counter_ns() - started)
        return _percentiles_us(times)

    compiled = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    results = {
        "predict": latency(
            lambda image: model.predict(image, verbose=0), *options["predict_calls"]
        ),
        "call": latency(lambda image: model(image, training=False), *options["call_calls"]),
        "function": latency(
            lambda image: compiled(tf.constant(image)).numpy(), *options["call_calls"]
        ),
    }

    def batch(call, repeats: int) -> float:
        call()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    results["batch_predict_ms"] = batch(lambda: model.predict(X_test, verbose=0), 3)
    results["batch_call_ms"] = batch(lambda: np.asarray(model(X_test, training=False)), 10)
    # Agreement of digitnet's NumPy path with TensorFlow: Keras and the reference forward pass.
    numpy_probabilities = np.load(options["predictions"])
    keras_outputs = np.asarray(model(X_test, training=False))
    reference = forward_propagation(
        X_test,
        {k: tf.constant(v) for k, v in digitnet_model.parameters.items()},
        digitnet_model.architecture,
    ).numpy()
    results["agreement_with_keras"] = float(
        np.mean(numpy_probabilities.argmax(1) == keras_outputs.argmax(1))
    )
    results["agreement_with_reference"] = float(
        np.mean(numpy_probabilities.argmax(1) == reference.argmax(1))
    )
    return results


def worker_isa(options: dict) -> dict:
    """Which instruction sets this process's libraries use: the CPU's flags, oneDNN's ISA
    (from its ONEDNN_VERBOSE line on a tiny matmul), OpenBLAS's core type (threadpoolctl),
    NumPy's SIMD targets, PyTorch's ATen capability."""
    report: dict = {}
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        pass
    report["cpu_flags"] = [
        f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags
    ]
    environment = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2")
    probe = (
        "import tensorflow as tf; a = tf.ones((8, 8)); print(float(tf.reduce_sum(tf.matmul(a, a))))"
    )
    process = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=environment
    )
    isa_lines = [line for line in (process.stdout + process.stderr).splitlines() if ",isa:" in line]
    report["onednn"] = isa_lines[0].split(",isa:", 1)[1].strip() if isa_lines else "not reported"
    import numpy as np
    from threadpoolctl import threadpool_info

    report["openblas"] = ", ".join(
        f"{info.get('internal_api')} {info.get('architecture')}"
        for info in threadpool_info()
        if info["user_api"] == "blas"
    )
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    report["numpy_simd"] = max(
        (target for target in __cpu_dispatch__ if __cpu_features__.get(target)),
        key=list(__cpu_dispatch__).index,
        default="baseline",
    )
    del np
    try:
        import torch
    except ImportError:
        report["torch"] = "not installed"
    else:
        report["torch"] = torch.backends.cpu.get_cpu_capability()
    import onnxruntime

    report["onnxruntime"] = f"MLAS, the CPU's best ({onnxruntime.__version__}; no ISA switch)"
    return report


def worker_make_model(options: dict) -> dict:
    """A model of ``options["name"]``'s architecture with random but fixed weights (He-uniform
    for the weights, small biases, batchnorm statistics away from their start), saved to
    ``options["path"]``: prediction speed needs the shapes, not training."""
    import numpy as np

    from digitnet.inference.model import Model
    from digitnet.inference.modelfile import save_model
    from digitnet.models import architectures

    name = options["name"]
    if name == "cnn":
        architecture = _cnn_architecture()
    else:
        architecture = architectures.named_architecture(name)
        architecture["layers"][-1]["activation"] = "softmax"
    rng = np.random.default_rng(options["seed"])
    parameters = {}
    for key, spec in architectures.parameter_specs(architecture).items():
        shape = spec.shape
        if key.startswith("variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif key.startswith(("mean", "beta", "b")):
            value = rng.normal(0.0, 0.1, shape)
        elif key.startswith("gamma"):
            value = rng.uniform(0.8, 1.2, shape)
        else:
            # He-uniform: activations keep their scale through the ReLUs, so the outputs are
            # not a near-uniform distribution (which would hide any disagreement).
            fan_in = math.prod(shape[:-1]) if len(shape) == 4 else shape[1]
            limit = math.sqrt(6.0 / fan_in)
            value = rng.uniform(-limit, limit, shape)
        parameters[key] = value.astype(np.float32)
    model = Model(architecture, parameters, {"training": {"model": name}})
    save_model(model, options["path"])
    return {"parameters": int(sum(value.size for value in parameters.values()))}


def worker_predict_onnxruntime(options: dict) -> dict:
    """ONNX Runtime (CPU) on the model digitnet's exporter builds from the same weights: one
    image at a time (p50, p99) and the 10,000 test images at once, on as many threads as
    digitnet uses (``intra_op_num_threads`` = the cores, one inter-op thread)."""
    import numpy as np
    import onnxruntime

    from digitnet.inference.modelfile import load_model
    from digitnet.inference.onnx_export import build_onnx, instance_shape

    _, _, X_test, y_test = _load(options["data_dir"])
    model = load_model(options["model"])
    settings = onnxruntime.SessionOptions()
    settings.intra_op_num_threads = os.cpu_count() or 1
    settings.inter_op_num_threads = 1
    settings.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(
        build_onnx(model, "images", "probabilities").SerializeToString(),
        settings,
        providers=["CPUExecutionProvider"],
    )
    images = np.ascontiguousarray(X_test.reshape(-1, *instance_shape(model.architecture)))

    def run(batch):
        return session.run(None, {"images": batch})[0]

    result = _time_predictions(run, images, options)
    probabilities = result.pop("probabilities")
    ours = np.load(options["predictions"])
    result["max_difference_from_digitnet"] = float(np.abs(probabilities - ours).max())
    result["agreement_with_digitnet"] = float(np.mean(probabilities.argmax(1) == ours.argmax(1)))
    result["test_accuracy"] = float(np.mean(probabilities.argmax(1) == y_test.argmax(1)))
    result["threads"] = settings.intra_op_num_threads
    return result


def _time_predictions(run, images, options: dict) -> dict:
    """``run`` (batch -> probabilities) on one image at a time (after as many warm-up calls,
    up to 2,000) and on all of ``images`` at once, ``batch_repeats`` times after one warm-up."""
    calls = options["single_calls"]
    for index in range(min(calls, 2000)):  # warm caches and the allocator
        run(images[index % len(images)][None])
    single = []
    for index in range(calls):
        image = images[index % len(images)][None]
        started = time.perf_counter_ns()
        run(image)
        single.append(time.perf_counter_ns() - started)
    run(images)
    batch = []
    for _ in range(options["batch_repeats"]):
        started = time.perf_counter()
        probabilities = run(images)
        batch.append(time.perf_counter() - started)
    return {
        "single": _percentiles_us(single),
        "batch_ms": 1000 * statistics.median(batch),
        "batch_best_ms": 1000 * min(batch),
        "probabilities": probabilities,
    }


def worker_cli(options: dict) -> dict:
    """Wall time of ``digitnet predict MODEL one.png``, process start to output."""
    command = shutil.which("digitnet")
    command = [command] if command else [sys.executable, "-m", "digitnet"]
    command += ["predict", options["model"], options["image"]]

    def wall(arguments, runs: int) -> tuple[list[float], str]:
        subprocess.run(arguments, capture_output=True, check=True)  # warm the file cache
        times, output = [], ""
        for _ in range(runs):
            started = time.perf_counter()
            output = subprocess.run(arguments, capture_output=True, text=True, check=True).stdout
            times.append(time.perf_counter() - started)
        return times, output

    predict_times, output = wall(command, options["runs"])
    import_times, _ = wall([sys.executable, "-c", "import tensorflow"], options["import_runs"])
    return {
        "predict_s": statistics.median(predict_times),
        "predict_best_s": min(predict_times),
        "output": output.strip().replace(str(Path(options["image"]).parent) + os.sep, ""),
        "import_tensorflow_s": statistics.median(import_times),
    }


WORKERS = {
    name[len("worker_") :]: function
    for name, function in globals().items()
    if name.startswith("worker_")
}


# ============================================================================================
# The parent: run every worker, then print the table.


def run_worker(name: str, options: dict, isa: str = "native") -> dict:
    """Run one worker in a new process with the CPU held to ``isa`` (a key of
    ``ISA_ENVIRONMENTS``); its last stdout line is its JSON result."""
    started = time.perf_counter()
    process = subprocess.run(
        [sys.executable, __file__, "--worker", name, json.dumps(options)],
        capture_output=True,
        text=True,
        env={**os.environ, **ISA_ENVIRONMENTS[isa]},
    )
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        tail = "\n".join(process.stderr.strip().splitlines()[-5:])
        print(f"# {name}: failed after {seconds:.0f} s\n{tail}", file=sys.stderr, flush=True)
        return {"error": tail.splitlines()[-1] if tail else f"exit {process.returncode}"}
    result = json.loads(process.stdout.strip().splitlines()[-1])
    result["load_average"] = os.getloadavg()[0]
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
    print(
        f"# [{isa}] {name} {options.get('precision') or options.get('policy') or ''}"
        f"{options.get('name', '')} ({seconds:.0f} s): {shown}",
        file=sys.stderr,
        flush=True,
    )
    return result


def measure(args) -> dict:
    data_dir = args.data_dir or os.environ.get("DIGITNET_DATA_DIR")
    if not data_dir:
        raise SystemExit("speed.py: set DIGITNET_DATA_DIR or pass --data-dir (the MNIST files)")
    quick = args.quick
    epochs = args.epochs or (3 if quick else 20)
    seeds = [int(seed) for seed in (args.seeds or ("1" if quick else "1,2,3")).split(",")]
    isas = ["native", "avx2"] if args.isa == "both" else [args.isa]
    results: dict = {
        "settings": {
            "epochs": epochs,
            "cnn_steps": args.cnn_steps or (20 if quick else 90),
            "cnn_warmup_steps": 5 if quick else 10,
            "quick": quick,
            "seeds": seeds,
            "isas": isas,
        },
        "machine": machine(),
        "isa": {},
    }
    for isa in isas:
        results["isa"][isa] = measure_isa(args, isa, data_dir, epochs, seeds)
    return results


def measure_isa(args, isa: str, data_dir: str, epochs: int, seeds: list[int]) -> dict:
    """Every measurement with the CPU held to ``isa``; the results by row key."""
    quick = args.quick
    # A slow peer stops after max_seconds of timed steps (OpenMP's spinning threads can slow
    # PyTorch a hundredfold while other processes hold the cores).
    cnn = dict(
        data_dir=data_dir,
        warmup_steps=5 if quick else 10,
        steps=args.cnn_steps or (20 if quick else 90),
        max_seconds=20 if quick else 60,
    )
    seed_network = dict(data_dir=data_dir, epochs=epochs)
    workdir = Path(tempfile.mkdtemp(prefix="digitnet-speed-"))
    model_path = str(workdir / "seed.safetensors")
    results: dict = {"load_before": os.getloadavg(), "isa": run_worker("isa", {}, isa)}
    gemm = [run_worker("gemm", {"seconds": 1.0 if quick else 3.0}, isa)]

    # Held to AVX2 there are no bfloat16 units: digitnet trains in float32 (as "auto" does on
    # such CPUs) and the peers' bfloat16 runs, emulated there, are left out.
    native = isa == "native"
    training = [
        ("seed_digitnet", "seed_digitnet", dict(seed_network, precision=None)),
        ("seed_digitnet_float32", "seed_digitnet", dict(seed_network, precision="float32")),
        ("seed_keras", "seed_keras", dict(seed_network, policy="float32")),
        ("seed_keras_bfloat16", "seed_keras", dict(seed_network, policy="mixed_bfloat16")),
        ("seed_torch", "seed_torch", dict(seed_network, precision="float32")),
        ("seed_torch_bfloat16", "seed_torch", dict(seed_network, precision="bfloat16")),
        ("seed_sklearn", "seed_sklearn", seed_network),
        ("cnn_digitnet", "cnn_digitnet", dict(cnn, precision=None)),
        ("cnn_digitnet_float32", "cnn_digitnet", dict(cnn, precision="float32")),
        ("cnn_keras", "cnn_keras", dict(cnn, policy="float32")),
        ("cnn_keras_bfloat16", "cnn_keras", dict(cnn, policy="mixed_bfloat16")),
        ("cnn_torch", "cnn_torch", dict(cnn, precision="float32")),
        ("cnn_torch_bfloat16", "cnn_torch", dict(cnn, precision="bfloat16")),
    ]
    if not native:
        training = [
            (key, worker, dict(options, precision="float32") if "digitnet" in key else options)
            for key, worker, options in training
            if "bfloat16" not in key and not key.endswith("digitnet_float32")
        ]
    if args.skip_training:
        training = [row for row in training if row[0] == "seed_digitnet"]
    runs: dict[str, list[dict]] = {}
    for index, seed in enumerate(seeds):
        for key, worker, options in training if index % 2 == 0 else training[::-1]:
            options = dict(options, seed=seed)
            if key == "seed_digitnet" and index == 0:
                options["save_model"] = model_path  # the model the prediction rows use
            runs.setdefault(key, []).append(run_worker(worker, options, isa))
    for key, key_runs in runs.items():
        results[key] = combine_runs(key_runs)
    # The peak is what the machine can do: measured before and after the training runs, since
    # other processes can hold it back during either.
    gemm.append(run_worker("gemm", {"seconds": 1.0 if quick else 3.0}, isa))
    results["gemm"] = (
        {
            key: max(run[key] for run in gemm if key in run)
            for key in gemm[0]
            if key != "load_average"
        }
        if all("float32_peak" in run for run in gemm)
        else gemm[0]
    )

    predictions = str(workdir / "predictions.npy")
    if "error" in results["seed_digitnet"]:
        raise SystemExit("speed.py: digitnet's seed training failed; no model to predict with")
    models = {"seed": model_path}
    for name in PREDICT_MODELS[1:]:
        models[name] = str(workdir / f"{name}.safetensors")
        run_worker("make_model", dict(name=name, seed=1, path=models[name]), isa)
    # The cnn costs about 30 MFLOP an image (the seed network 0.2): fewer calls keep it short.
    for name, path in models.items():
        calls = (
            dict(single_calls=2000, batch_repeats=10)
            if quick
            else dict(single_calls=20000, batch_repeats=30)
        )
        if name == "cnn":
            calls = (
                dict(single_calls=300, batch_repeats=3)
                if quick
                else dict(single_calls=3000, batch_repeats=7)
            )
        options = dict(calls, data_dir=data_dir, model=path, predictions=predictions)
        # digitnet first: ONNX Runtime's rows compare against its saved probabilities. The
        # pair runs twice, in both orders, and each keeps its faster run.
        ours = [run_worker("predict_digitnet", options, isa)]
        theirs = [run_worker("predict_onnxruntime", options, isa)]
        if not quick:
            theirs.append(run_worker("predict_onnxruntime", options, isa))
            ours.append(run_worker("predict_digitnet", options, isa))
        results[f"predict_digitnet_{name}"] = _fastest(ours)
        results[f"predict_onnxruntime_{name}"] = _fastest(theirs)
    # The seed model's rows against Keras (issue 6) use its digitnet figures.
    results["predict_digitnet"] = results["predict_digitnet_seed"]
    options = dict(single_calls=1, batch_repeats=1, data_dir=data_dir, model=model_path)
    run_worker("predict_digitnet", dict(options, predictions=predictions), isa)
    results["predict_keras"] = run_worker(
        "predict_keras",
        dict(
            data_dir=data_dir,
            model=model_path,
            predictions=predictions,
            predict_calls=(30, 5) if quick else (200, 20),
            call_calls=(300, 30) if quick else (2000, 100),
        ),
        isa,
    )
    image = workdir / "one.png"
    label = _write_test_png(data_dir, image)
    results["cli"] = run_worker(
        "cli",
        dict(
            model=model_path,
            image=str(image),
            runs=3 if quick else 7,
            import_runs=1 if quick else 3,
        ),
        isa,
    )
    results["cli"]["label"] = label
    results["load_after"] = os.getloadavg()
    shutil.rmtree(workdir, ignore_errors=True)
    return results


def _fastest(runs: list[dict]) -> dict:
    """Of one engine's prediction runs, the one with the lower p50 and the lower 10,000-image
    median (each taken from its own run: interference only ever slows a run down)."""
    good = [run for run in runs if "single" in run]
    if not good:
        return runs[0]
    best = dict(min(good, key=lambda run: run["batch_ms"]))
    best["single"] = min((run["single"] for run in good), key=lambda single: single["p50_us"])
    best["batch_best_ms"] = min(run["batch_best_ms"] for run in good)
    return best


def combine_runs(runs: list[dict]) -> dict:
    """One trainer's runs (one per seed) as one result: the best throughput, the mean test
    accuracy, and every run's figures."""
    good = [run for run in runs if "samples_per_second" in run]
    if not good:
        return runs[0]
    combined = dict(good[0])
    combined["samples_per_second"] = max(run["samples_per_second"] for run in good)
    combined["samples_per_second_runs"] = [run["samples_per_second"] for run in good]
    if "test_accuracy" in combined:
        accuracies = [run["test_accuracy"] for run in good]
        combined["test_accuracy"] = statistics.mean(accuracies)
        combined["test_accuracies"] = accuracies
    return combined


def _write_test_png(data_dir: str, path: Path) -> int:
    """The first MNIST test digit as an 8-bit PNG; returns its label."""
    import numpy as np
    from PIL import Image

    _, _, X_test, y_test = _load(data_dir)
    Image.fromarray(np.round(X_test[0].reshape(28, 28) * 255).astype(np.uint8)).save(path)
    return int(y_test[0].argmax())


def machine() -> dict:
    cpu, flags = "", []
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and not cpu:
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    versions = {}
    for package in ("tensorflow", "keras", "torch", "scikit-learn", "numpy"):
        try:
            from importlib.metadata import version

            versions[package] = version(
                package if package != "tensorflow" else _tensorflow_distribution()
            )
        except Exception:
            versions[package] = None
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "amx_bf16": "amx_bf16" in flags,
        "python": platform.python_version(),
        "versions": versions,
    }


def _tensorflow_distribution() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("tensorflow", "tensorflow-cpu"):
        try:
            version(name)
            return name
        except PackageNotFoundError:
            continue
    return "tensorflow"


# ============================================================================================
# The table


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _check(ratio: float | None, target: float | None) -> str:
    if ratio is None or target is None:
        return ""
    return f" ({'met' if ratio >= target else 'NOT met'}: >= {target:g}x)"


ISA_TITLES = {
    "native": "the CPU's own instruction sets",
    "avx2": "the CPU held to AVX2 (no AVX-512, no AMX)",
}


def render(results: dict) -> str:
    """One table per instruction-set setting (see ``render_isa``)."""
    if "isa" not in results:  # a --json written before the ISA settings
        return render_isa(results)
    parts = []
    for isa, measured in results["isa"].items():
        parts.append(f"### {ISA_TITLES[isa]} (`--isa {isa}`)\n")
        parts.append(
            render_isa({**measured, "settings": results["settings"], "machine": results["machine"]})
        )
        parts.append("")
    return "\n".join(parts)


def _isa_line(report: dict) -> str:
    return (
        f"Instruction sets used: CPU flags {' '.join(report.get('cpu_flags', []))}; oneDNN "
        f"(TensorFlow) {report.get('onednn')}; OpenBLAS (NumPy's BLAS) {report.get('openblas')}; "
        f"NumPy's SIMD loops {report.get('numpy_simd')}; PyTorch {report.get('torch')}; "
        f"ONNX Runtime {report.get('onnxruntime')}."
    )


def _onnxruntime_rows(results: dict, missing) -> list[tuple[str, ...]]:
    """Per model: one image's p50 / p99 and the 10,000 test images, digitnet against ONNX
    Runtime on the same weights and the same number of threads."""
    rows = []
    for name in PREDICT_MODELS:
        ours = results.get(f"predict_digitnet_{name}")
        theirs = results.get(f"predict_onnxruntime_{name}")
        reason = missing(ours) or missing(theirs)
        peer = f"ONNX Runtime CPU, {(theirs or {}).get('threads', '?')} threads"
        if reason:
            rows.append((f"{name}: one image, p50 / p99, us", "", peer, reason, ""))
            continue
        p50, theirs_p50 = ours["single"]["p50_us"], theirs["single"]["p50_us"]
        ratio = theirs_p50 / p50
        rows.append(
            (
                f"{name}: one image, p50 / p99, us",
                f"{p50:.1f} / {ours['single']['p99_us']:.0f}",
                peer,
                f"{theirs_p50:.1f} / {theirs['single']['p99_us']:.0f}",
                f"{ratio:.2f}x" + _check(ratio, TARGET_SINGLE_VS_ORT),
            )
        )
        ratio = theirs["batch_ms"] / ours["batch_ms"]
        rows.append(
            (
                f"{name}: 10,000 test images, ms (median)",
                _number(ours["batch_ms"]),
                peer,
                _number(theirs["batch_ms"]),
                f"{ratio:.2f}x"
                + _check(ratio, TARGET_BATCH_VS_ORT)
                + f"; max difference {theirs['max_difference_from_digitnet']:.1e}",
            )
        )
    return rows


def render_isa(results: dict) -> str:
    """The markdown table: one row per measurement and peer, with both figures and the ratio
    (how many times faster digitnet is; above 1 is better)."""
    from digitnet.models import architectures

    rows = []

    def missing(result: dict | None) -> str | None:
        if result is None:
            return "n/a: not run"
        if "missing" in result:
            return f"n/a: {result['missing']}"
        if "error" in result:
            return f"n/a: failed ({result['error'][:60]})"
        return None

    def throughput_rows(what: str, ours_key: str, peers: list, targets: dict):
        if ours_key not in results:  # not run with this ISA (or with --skip-training)
            return
        ours = results[ours_key]
        ours_text = missing(ours)
        label = f"{what} ({ours.get('precision', '?')}), samples/s"
        for peer_key, peer_name in peers:
            peer = results.get(peer_key)
            if peer is None:
                continue
            reason = ours_text or missing(peer)
            if reason:
                rows.append(
                    (label, ours_text or _number(ours["samples_per_second"]), peer_name, reason, "")
                )
                continue
            ratio = ours["samples_per_second"] / peer["samples_per_second"]
            rows.append(
                (
                    label,
                    _number(ours["samples_per_second"]),
                    peer_name,
                    _number(peer["samples_per_second"]),
                    f"{ratio:.2f}x" + _check(ratio, targets.get(peer_key)),
                )
            )

    seed_peers = [
        ("seed_keras", "Keras model.fit (float32)"),
        ("seed_torch", "PyTorch eager (float32)"),
        ("seed_sklearn", "scikit-learn MLPClassifier (float64/32, softmax)"),
        ("seed_keras_bfloat16", "Keras model.fit (mixed_bfloat16)"),
        ("seed_torch_bfloat16", "PyTorch eager (bfloat16 autocast)"),
    ]
    throughput_rows(
        "seed training",
        "seed_digitnet",
        seed_peers,
        {"seed_keras": TARGET_SEED_VS_KERAS, "seed_torch": TARGET_SEED_VS_TORCH},
    )
    throughput_rows("seed training", "seed_digitnet_float32", seed_peers[:3], {})
    cnn_peers = [
        ("cnn_keras", "Keras model.fit (float32)"),
        ("cnn_torch", "PyTorch eager (float32)"),
        ("cnn_keras_bfloat16", "Keras model.fit (mixed_bfloat16)"),
        ("cnn_torch_bfloat16", "PyTorch eager (bfloat16 autocast)"),
    ]
    throughput_rows("cnn training", "cnn_digitnet", cnn_peers, {"cnn_keras": TARGET_CNN_VS_KERAS})
    throughput_rows("cnn training", "cnn_digitnet_float32", cnn_peers[:2], {})

    epochs, seeds = results["settings"]["epochs"], results["settings"]["seeds"]
    label = f"seed test accuracy after {epochs} epochs, %" + (
        "" if len(seeds) < 2 else f", mean (range) over seeds {','.join(map(str, seeds))}"
    )

    def accuracy(result: dict) -> str:
        text = f"{100 * result['test_accuracy']:.2f}"
        runs = result.get("test_accuracies", [])
        if len(runs) > 1:
            text += f" ({100 * min(runs):.2f}-{100 * max(runs):.2f})"
        return text

    ours = results.get("seed_digitnet", {})
    for peer_key, peer_name in [("seed_digitnet_float32", "digitnet (float32)")] + seed_peers:
        peer = results.get(peer_key)
        if peer is None:
            continue
        reason = missing(ours) or missing(peer)
        if reason:
            rows.append((label, "", peer_name, reason, ""))
            continue
        points = 100 * (ours["test_accuracy"] - peer["test_accuracy"])
        if "sklearn" in peer_key:
            verdict = " (another loss: softmax and log-loss)"
        elif abs(points) <= TARGET_ACCURACY_POINTS:
            verdict = " (same: within 0.3)"
        else:
            verdict = " (digitnet higher)" if points > 0 else " (NOT met: digitnet lower)"
        rows.append(
            (label, accuracy(ours), peer_name, accuracy(peer), f"{points:+.2f} points{verdict}")
        )

    gemm = results.get("gemm", {})
    if not missing(gemm):
        for key, what, architecture in [
            ("seed_digitnet", "seed", architectures.seed_architecture()),
            ("seed_digitnet_float32", "seed", architectures.seed_architecture()),
            ("cnn_digitnet", "cnn", _cnn_architecture()),
        ]:
            result = results.get(key)
            if result is None or missing(result):
                continue
            achieved = result["samples_per_second"] * training_flops_per_sample(architecture) / 1e9
            rows.append(
                (
                    f"{what} training ({result['precision']}), GEMM GFLOP/s",
                    f"{achieved:.0f}",
                    "float32 GEMM peak (2048^3)",
                    f"{gemm['float32_peak']:.0f}",
                    f"{100 * achieved / gemm['float32_peak']:.0f}% of the float32 peak"
                    + (
                        ""
                        if result["precision"] == "float32"
                        else f"; {100 * achieved / gemm['bfloat16_peak']:.0f}% of the "
                        f"bfloat16 peak ({gemm['bfloat16_peak']:.0f})"
                    ),
                )
            )

    single = results.get("predict_digitnet", {})
    keras_predict = results.get("predict_keras", {})
    if not missing(single) and not missing(keras_predict):
        p50, p99 = single["single"]["p50_us"], single["single"]["p99_us"]
        for key, peer_name, target in [
            ("predict", "Keras model.predict", TARGET_SINGLE_VS_KERAS_PREDICT),
            ("call", "Keras model(x)", None),
            ("function", "Keras model in a reused tf.function", None),
        ]:
            peer = keras_predict[key]
            ratio = peer["p50_us"] / p50
            rows.append(
                (
                    "one image, p50 / p99 latency, us",
                    f"{p50:.1f} / {p99:.1f}",
                    peer_name,
                    f"{_number(peer['p50_us'])} / {_number(peer['p99_us'])}",
                    f"{ratio:,.0f}x" + _check(ratio, target),
                )
            )
        batch = single["batch_ms"]
        for key, peer_name in [
            ("batch_predict_ms", "Keras model.predict (batch 32)"),
            ("batch_call_ms", "Keras model(x), one call"),
        ]:
            rows.append(
                (
                    "10,000 test images, ms",
                    f"{batch:.1f}",
                    peer_name,
                    f"{keras_predict[key]:.1f}",
                    f"{keras_predict[key] / batch:.1f}x",
                )
            )
    rows += _onnxruntime_rows(results, missing)
    cli = results.get("cli", {})
    if not missing(cli):
        rows.append(
            (
                "`digitnet predict MODEL one.png`, s (process start to output)",
                f"{cli['predict_s']:.2f}",
                "`python -c 'import tensorflow'`",
                f"{cli['import_tensorflow_s']:.2f}",
                f"{cli['import_tensorflow_s'] / cli['predict_s']:.1f}x",
            )
        )

    lines = [
        "| Measurement | digitnet | Peer | Peer's figure | digitnet vs peer |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines.append("")
    lines += _targets(results)
    lines.append("")
    if "isa" in results and not missing(results["isa"]):
        lines.append(_isa_line(results["isa"]))
        lines.append("")
    lines.append(_footer(results))
    return "\n".join(lines)


def _targets(results: dict) -> list[str]:
    """Issue 6's absolute targets, each with this run's figure."""
    lines = ["Absolute targets:", ""]
    single = results.get("predict_digitnet", {})
    if "single" in single:
        p50 = single["single"]["p50_us"]
        lines.append(
            f"- one image p50 {p50:.1f} us (target <= {TARGET_SINGLE_P50_US:g} us): "
            f"{'met' if p50 <= TARGET_SINGLE_P50_US else 'NOT met'}"
        )
        batch = single["batch_ms"]
        lines.append(
            f"- 10,000 test images {batch:.1f} ms median, {single['batch_best_ms']:.1f}"
            f" ms best (target <= {TARGET_BATCH_MS:g} ms): "
            f"{'met' if batch <= TARGET_BATCH_MS else 'NOT met'}"
        )
    cli = results.get("cli", {})
    if "predict_s" in cli:
        seconds = cli["predict_s"]
        lines.append(
            f"- `digitnet predict` of one image {seconds:.2f} s median, "
            f"{cli['predict_best_s']:.2f} s best (target <= {TARGET_CLI_SECONDS:g} s):"
            f" {'met' if seconds <= TARGET_CLI_SECONDS else 'NOT met'}; it printed "
            f"`{' '.join(cli['output'].split())}` for a {cli['label']}"
        )
    keras_predict = results.get("predict_keras", {})
    if "agreement_with_reference" in keras_predict:
        lines.append(
            f"- NumPy predictions agree with TensorFlow's forward pass on "
            f"{100 * keras_predict['agreement_with_reference']:.2f}% and with Keras on "
            f"{100 * keras_predict['agreement_with_keras']:.2f}% of the 10,000 test "
            f"images"
        )
    return lines


def _footer(results: dict) -> str:
    machine, settings = results["machine"], results["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    load = f"{results['load_before'][0]:.2f} before, {results['load_after'][0]:.2f} after"
    return (
        f"{machine['cpu']}, {machine['cores']} cores, AMX bf16: "
        f"{'yes' if machine['amx_bf16'] else 'no'}; Python {machine['python']}, {versions}. "
        f"Seed: {settings['epochs']} epochs of the official split, epoch 1 untimed; cnn: "
        f"{settings['cnn_steps']} steps of batch {CNN_BATCH} after "
        f"{settings['cnn_warmup_steps']} untimed; throughput is the best of "
        f"{len(settings['seeds'])} run(s), one per seed. "
        f"1-minute load average {load}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 epochs, 20 cnn steps, fewer calls: a smoke run"
    )
    parser.add_argument("--epochs", type=int, help="seed-network epochs (default 20)")
    parser.add_argument("--cnn-steps", type=int, help="timed cnn steps (default 90)")
    parser.add_argument(
        "--seeds", help="seeds to train each model with, e.g. 1,2,3 (default; --quick: 1)"
    )
    parser.add_argument(
        "--isa",
        choices=["native", "avx2", "both"],
        default="both",
        help="run with the CPU's own instruction sets, held to AVX2, or both (default)",
    )
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="only the prediction rows (and the seed training run whose model they use)",
    )
    parser.add_argument("--data-dir", help="folder with the MNIST files")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--table-from", type=Path, help="print the table of a saved --json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.worker:
        result = WORKERS[args.worker](json.loads(rest[0]))
        print(json.dumps(result))
        return 0
    if args.table_from:
        print(render(json.loads(args.table_from.read_text())))
        return 0
    results = measure(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
