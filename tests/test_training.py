"""train_and_evaluate: validation split, best weights, checkpoints, resume, and accuracy floors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import digitnet
from digitnet.errors import ConfigError, DigitnetError
from digitnet.inference import evaluation
from digitnet.inference.modelfile import load_model
from digitnet.training.runs import TrainConfig, train_and_evaluate


def quiet(_line):
    pass


class Interrupted(Exception):
    """Stands for Ctrl+C or a crash between two epochs."""


def interrupt_after(last_epoch):
    """An ``on_epoch_end`` that ends the run once ``last_epoch`` is checkpointed."""

    def on_epoch_end(epoch, record):
        if epoch >= last_epoch:
            raise Interrupted

    return on_epoch_end


def small_config(**changes):
    settings = dict(
        model="mlp", layout=[784, 32, 10], epochs=4, batch_size=16, val_size=20, precision="float32"
    )
    settings.update(changes)
    return TrainConfig(**settings)


def test_config_checks_every_setting_in_one_place():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=-1).resolved()
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0).resolved()
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="resnet").resolved()
    resolved = TrainConfig(model="cnn").resolved()
    assert resolved.split == "official" and resolved.val_size == 5000
    assert TrainConfig().resolved().split == "seed"  # the tutorial's default


def test_validation_set_is_held_out_and_best_weights_are_kept(tmp_path, fake_mnist_dir):
    seen = []
    result = train_and_evaluate(
        small_config(),
        tmp_path,
        data_dir=fake_mnist_dir,
        log=quiet,
        on_epoch_end=lambda epoch, record: seen.append((epoch, dict(record))),
    )
    data = result.model.metadata["data"]
    assert (data["n_train"], data["n_validation"], data["n_test"]) == (40, 20, 20)
    history = result.history
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    best = max(history, key=lambda row: (row["val_accuracy"], -row["val_cost"]))
    assert result.metrics["best_epoch"] == best["epoch"]
    assert result.metrics["val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert seen == [(row["epoch"], row) for row in history]  # the callback saw every epoch


def test_resume_after_interruption_ends_exactly_like_an_uninterrupted_run(tmp_path, fake_mnist_dir):
    config = small_config(epochs=5, dropout=0.2, augment=True)
    whole = train_and_evaluate(config, tmp_path / "whole", data_dir=fake_mnist_dir, log=quiet)
    with pytest.raises(Interrupted):
        train_and_evaluate(
            config,
            tmp_path / "split",
            data_dir=fake_mnist_dir,
            log=quiet,
            on_epoch_end=interrupt_after(2),
        )
    resumed = train_and_evaluate(
        config, tmp_path / "split", data_dir=fake_mnist_dir, log=quiet, resume=True
    )
    for name, value in whole.model.parameters.items():
        assert np.array_equal(resumed.model.parameters[name], value), name
    assert [row["cost"] for row in resumed.history] == [row["cost"] for row in whole.history]
    assert resumed.metrics["test_accuracy"] == whole.metrics["test_accuracy"]


def test_resume_refuses_other_settings_and_missing_checkpoints(tmp_path, fake_mnist_dir):
    with pytest.raises(Interrupted):
        train_and_evaluate(
            small_config(),
            tmp_path,
            data_dir=fake_mnist_dir,
            log=quiet,
            on_epoch_end=interrupt_after(1),
        )
    with pytest.raises(DigitnetError, match="learning_rate"):
        train_and_evaluate(
            small_config(learning_rate=0.01),
            tmp_path,
            data_dir=fake_mnist_dir,
            log=quiet,
            resume=True,
        )
    with pytest.raises(DigitnetError, match="no checkpoint"):
        train_and_evaluate(
            small_config(), tmp_path / "empty", data_dir=fake_mnist_dir, log=quiet, resume=True
        )


@pytest.mark.parametrize("model_name", ["seed", "cnn"])
def test_a_dataset_with_three_classes_trains_predicts_and_evaluates(
    tmp_path, make_fake_mnist, model_name
):
    """The output layer takes its size from the labels: 3 classes, not MNIST's 10."""
    directory = make_fake_mnist(n_classes=3, n_train=90, n_test=30)
    path = tmp_path / "three.safetensors"
    config = TrainConfig(model=model_name, dry_run=True, epochs=2, val_size=15, precision="float32")
    result = train_and_evaluate(
        config, tmp_path / "run", data_dir=directory, log=quiet, save_model_path=path
    )
    model = load_model(path)
    assert model.n_classes == 3 and model.architecture["layers"][-1]["units"] == 3
    X_test, labels = evaluation.test_set_for(model, directory)
    probabilities = model.predict_proba(X_test)
    assert probabilities.shape == (len(X_test), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # TensorFlow's predict on the same parameters agrees with the NumPy model.
    assert np.array_equal(
        digitnet.predict(X_test, model.parameters, model.architecture), model.predict(X_test)
    )
    report = evaluation.evaluate_model(model, X_test, labels)
    assert np.array(report["confusion_matrix"]).shape == (3, 3)
    assert report["accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    # The tutorial's function sizes a named model from the labels too.
    X_train, _, y_train, _ = digitnet.load_mnist(split="official", data_dir=directory)
    parameters = digitnet.train_parameters(
        X_train, y_train, X_test, y_train[: len(X_test)], "seed", epochs=1, verbose=False
    )
    assert parameters["W4"].shape == (3, 60) and parameters["b4"].shape == (3, 1)


def test_a_layout_whose_output_disagrees_with_the_data_is_refused(tmp_path, make_fake_mnist):
    directory = make_fake_mnist(n_classes=3)
    with pytest.raises(ConfigError, match="ends in 10 outputs but the data has 3 classes"):
        train_and_evaluate(
            small_config(layout=[784, 32, 10]), tmp_path, data_dir=directory, log=quiet
        )


def test_resume_after_the_process_is_killed(tmp_path, fake_mnist_dir):
    """SIGKILL mid-run (no clean-up at all), then `digitnet train --resume` finishes it."""
    workdir, model_path = tmp_path / "run", tmp_path / "model.safetensors"
    args = [
        sys.executable,
        "-m",
        "digitnet",
        "train",
        "--model",
        "mlp",
        "--layout",
        "784,64,10",
        "--epochs",
        "25",
        "--batch-size",
        "8",
        "--val-size",
        "20",
        "--precision",
        "float32",
        "--data-dir",
        str(fake_mnist_dir),
        "--workdir",
        str(workdir),
        "--save-model",
        str(model_path),
    ]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = []
    for line in process.stdout:  # wait until a few epochs are checkpointed
        lines.append(line)
        if line.startswith("Cost after epoch 3:"):
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not model_path.exists()
    assert (workdir / "checkpoint.safetensors").exists()
    # The kill may land while a checkpoint is being written; its unfinished copy is removed
    # when the run resumes. One is planted to make sure.
    (workdir / ".checkpoint.safetensors.x7_kill3.tmp").write_bytes(b"half a checkpoint")
    result = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Resuming after epoch" in result.stdout
    assert "Cost after epoch 25:" in result.stdout
    assert model_path.exists()
    assert not [p for p in workdir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_mlp_reaches_a_floor_on_real_mnist_quickly(tmp_path, mnist_dir):
    """A short mlp run (a few epochs of the default recipe) on the official split."""
    started = time.perf_counter()
    result = train_and_evaluate(
        TrainConfig(model="mlp", epochs=3), tmp_path, data_dir=mnist_dir, log=quiet
    )
    accuracy = result.metrics["test_accuracy"]
    assert 0.975 <= accuracy < 0.999, accuracy
    assert result.metrics["val_accuracy"] >= 0.97
    print(f"mlp, 3 epochs: {accuracy:.4f} test in {time.perf_counter() - started:.0f} s")


def test_auto_precision_follows_a_onednn_isa_cap(monkeypatch):
    from digitnet.training.runs import compute_dtype

    # Held to AVX2 (what most users' CPUs have), bfloat16 would be emulated: train in float32.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert compute_dtype("auto") is None
    assert compute_dtype("float32") is None
    # oneDNN would abort the process on a bfloat16 product: a clear error instead.
    with pytest.raises(ConfigError, match="ONEDNN_MAX_CPU_ISA=AVX2"):
        compute_dtype("bfloat16")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert compute_dtype("bfloat16") == "bfloat16"
