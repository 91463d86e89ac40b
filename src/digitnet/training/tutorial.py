"""The tutorial's five functions, on TensorFlow 2.

``initialize_parameters``, ``forward_propagation`` and ``calculate_cost`` are the network's
operations (``digitnet.training.network``); ``train_parameters`` and ``predict`` drive them as
the tutorial did, with its names, arguments and printed lines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from digitnet.models import architectures
from digitnet.training.engine import Fitter
from digitnet.training.network import (
    architecture_of,
    calculate_cost,
    forward_propagation,
    initialize_parameters,
)

__all__ = [
    "initialize_parameters",
    "forward_propagation",
    "calculate_cost",
    "train_parameters",
    "predict",
]


def train_parameters(
    X_train,
    y_train,
    X_test,
    y_test,
    layout,
    learning_rate: float = 0.005,
    epochs: int = 20,
    batch_size: int = 1000,
    *,
    seed: int = 1,
    cost: str | None = None,
    l2: float = 0.0,
    verbose: bool = True,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Train a network on ``X_train`` (n, 784) and one-hot ``y_train`` (n, classes) with Adam.

    A model name as ``layout`` gets as many outputs as ``y_train`` has classes; sizes or an
    architecture must end in that many.

    Prints ``Cost after epoch N: C`` (the mean batch cost) every epoch, then ``Training
    complete!`` and the accuracy on the training and test sets, as the tutorial did. Each epoch
    runs as one compiled TensorFlow graph over freshly shuffled mini-batches, and the output
    biases start at the log-odds of the class frequencies (see ``Fitter``): without that, the
    tutorial's sigmoid output with squared error loses a whole digit on some seeds.

    Returns:
        The trained parameters as NumPy arrays (``W1``: [l1, l0], ``b1``: [l1, 1], ...).
    """
    architecture = architectures.normalize_layout(layout, n_classes=np.shape(y_train)[1])
    cost = cost or (
        "cross_entropy" if architecture["layers"][-1]["activation"] == "softmax" else "mse"
    )
    fitter = Fitter(
        architecture,
        cost=cost,
        learning_rate=learning_rate,
        l2=l2,
        batch_size=batch_size,
        seed=seed,
    )
    fitter.set_output_bias_from_labels(y_train)
    train = fitter.dataset(X_train, y_train)
    for epoch in range(1, epochs + 1):
        epoch_cost = fitter.train_epoch(train, epoch, progress=progress)
        if verbose:
            print(f"Cost after epoch {epoch}: {epoch_cost}")
    if verbose:
        print("Training complete!")
        print(f"Accuracy on the training set: {fitter.accuracy(X_train, y_train) * 100:.2f} %")
        print(f"Accuracy on the test set: {fitter.accuracy(X_test, y_test) * 100:.2f} %")
    return fitter.parameters()


# Plain Python over the architecture, no tensor-dependent branches: AutoGraph's rewriting of
# everything it calls would be most of the first call's time.
@tf.function(reduce_retracing=True, autograph=False)
def _labels(X, parameters, architecture_json):
    # The architecture travels as a JSON string: a hashable, value-compared trace key.
    architecture = architectures.validate_architecture(json.loads(architecture_json))
    return tf.argmax(forward_propagation(X, parameters, architecture), axis=1)


def predict(X_predict, parameters: Mapping, layout: Any = None) -> np.ndarray:
    """Predicted labels for one flat sample (784,) or a batch (n, 784): int64 (1,) or (n,).

    The compiled graph is traced once per architecture and reused on later calls.
    """
    X_predict = np.asarray(X_predict, dtype=np.float32)
    if X_predict.ndim == 1:
        X_predict = X_predict.reshape(1, -1)
    architecture = architecture_of(layout, parameters)
    tensors = {
        name: tf.convert_to_tensor(value, tf.float32)
        if not isinstance(value, tf.Variable)
        else value
        for name, value in parameters.items()
    }
    labels = _labels(
        tf.convert_to_tensor(X_predict), tensors, json.dumps(architecture, sort_keys=True)
    )
    return labels.numpy().astype(np.int64)
