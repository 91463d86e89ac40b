"""``digitnet train --tensorboard DIR``: event files TensorBoard reads, with the run's numbers;
and the running training accuracy the history now records."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from digitnet.models import architectures
from digitnet.training.engine import Fitter
from digitnet.training.runs import TrainConfig, train_and_evaluate


def quiet(_line):
    pass


def events(run: Path) -> dict[str, dict[int, tf.compat.v1.Summary.Value]]:
    """tag -> step -> summary value, from every event file of one run folder."""
    found: dict[str, dict[int, tf.compat.v1.Summary.Value]] = defaultdict(dict)
    files = sorted(run.glob("events.out.tfevents.*"))
    assert files, f"no event files in {run}"
    for file in files:
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for value in event.summary.value:
                found[value.tag][event.step] = value
    return found


def scalar(value) -> float:
    return float(tf.make_ndarray(value.tensor))


def test_event_files_hold_each_epochs_scalars_histograms_and_mistakes(tmp_path, fake_mnist_dir):
    config = TrainConfig(
        model="mlp", layout=[784, 32, 10], epochs=3, batch_size=16, val_size=20, augment=False
    )
    result = train_and_evaluate(
        config, tmp_path / "run", data_dir=fake_mnist_dir, log=quiet, tensorboard=tmp_path / "tb"
    )
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["train", "validation"]
    train, validation = events(tmp_path / "tb" / "train"), events(tmp_path / "tb" / "validation")
    epochs = [1, 2, 3]
    names = ["W1", "b1", "W2", "b2"]
    assert set(train) == {"settings", "cost", "accuracy", "learning_rate", *names}
    assert set(validation) == {"cost", "accuracy", "mistakes", "mistakes_labels"}
    assert list(train["settings"]) == [0]
    for tag in ("cost", "accuracy", "learning_rate", *names):
        assert sorted(train[tag]) == epochs, tag
    for tag in ("cost", "accuracy", "mistakes", "mistakes_labels"):
        assert sorted(validation[tag]) == epochs, tag
    # The logged numbers are the history's (float32 in the event file).
    for row in result.history:
        epoch = row["epoch"]
        assert scalar(train["cost"][epoch]) == pytest.approx(row["cost"], rel=1e-6)
        assert scalar(train["accuracy"][epoch]) == pytest.approx(row["accuracy"], rel=1e-6)
        assert scalar(train["learning_rate"][epoch]) == pytest.approx(row["learning_rate"])
        assert scalar(validation["cost"][epoch]) == pytest.approx(row["val_cost"], rel=1e-6)
        assert scalar(validation["accuracy"][epoch]) == pytest.approx(row["val_accuracy"])
    # Histograms: (buckets, 3) of [left, right, count]; the last epoch's count every weight.
    histogram = tf.make_ndarray(train["W1"][3].tensor)
    assert histogram.shape[1] == 3 and histogram[:, 2].sum() == 32 * 784
    assert train["W1"][3].metadata.plugin_data.plugin_name == "histograms"
    # Mistakes: 28x28 PNGs, as many as the labels list, each a wrong answer.
    wrong = round((1 - result.history[-1]["val_accuracy"]) * 20)
    images = tf.make_ndarray(validation["mistakes"][3].tensor)  # [width, height, png, ...]
    assert images[:2].tolist() == [b"28", b"28"]
    assert len(images) - 2 == min(wrong, 8)
    for png in images[2:]:
        assert Image.open(io.BytesIO(png)).size == (28, 28)
    labels = tf.make_ndarray(validation["mistakes_labels"][3].tensor).item().decode()
    lines = labels.splitlines()
    assert len(lines) == len(images) - 2
    for line in lines:
        true, predicted = line.split("true ")[1].split(", predicted ")
        assert int(true) != int(predicted.split()[0])


def test_without_a_validation_set_the_mistakes_come_from_training_images(tmp_path, fake_mnist_dir):
    config = TrainConfig(model="seed", epochs=2, precision="float32")
    train_and_evaluate(
        config, tmp_path / "run", data_dir=fake_mnist_dir, log=quiet, tensorboard=tmp_path / "tb"
    )
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["train"]
    train = events(tmp_path / "tb" / "train")
    assert {"cost", "accuracy", "learning_rate", "W4", "b4"} <= set(train)
    assert "val_cost" not in train and sorted(train["cost"]) == [1, 2]


def test_tensorboard_is_not_a_training_setting(tmp_path, fake_mnist_dir):
    """A run resumed with or without --tensorboard is the same run."""
    config = TrainConfig(model="seed", epochs=2, precision="float32")

    def interrupt(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(
            config,
            tmp_path,
            data_dir=fake_mnist_dir,
            log=quiet,
            tensorboard=tmp_path / "tb",
            on_epoch_end=interrupt,
        )
    result = train_and_evaluate(config, tmp_path, data_dir=fake_mnist_dir, log=quiet, resume=True)
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_training_accuracy_counts_the_batches_as_trained():
    """With one batch per epoch, no dropout and no augmentation, the epoch's running accuracy
    is the accuracy of the weights the epoch started from."""
    rng = np.random.default_rng(5)
    X = rng.random((64, 20)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 64)]
    fitter = Fitter(
        architectures.dense_stack([20, 16, 4], "softmax"),
        cost="cross_entropy",
        learning_rate=0.05,
        batch_size=64,
    )
    data = fitter.dataset(X, y)
    for epoch in range(1, 4):
        before = fitter.accuracy(X, y)
        fitter.train_epoch(data, epoch)
        assert fitter.epoch_accuracy == pytest.approx(before)
