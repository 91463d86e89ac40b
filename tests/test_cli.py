"""The real ``digitnet`` command, run as a user runs it: smoke runs, errors, fast start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from digitnet.inference.modelfile import load_model


def digitnet(*args, cwd=None, env=None, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "digitnet", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"digitnet {' '.join(map(str, args))} failed "
            f"({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


def test_help_lists_every_command_and_flag():
    result = digitnet("--help")
    for command in ("train", "evaluate", "predict", "serve"):
        assert command in result.stdout
    train_help = digitnet("train", "--help").stdout
    for flag in (
        "--layout",
        "--epochs",
        "--lr",
        "--batch-size",
        "--seed",
        "--split",
        "--data-dir",
        "--save-model",
        "--dry-run",
        "--model",
        "--resume",
        "--val-size",
        "--strategy",
        "--devices",
        "--cluster-timeout",
    ):
        assert flag in train_help


def test_commands_that_do_not_train_import_no_tensorflow():
    code = (
        "import sys\nfrom digitnet.cli.main import build_parser\n"
        "import digitnet.cli.predict, digitnet.cli.evaluate, "
        "digitnet.cli.serve\nimport digitnet.inference.model, digitnet.inference.modelfile, "
        "digitnet.inference.predict, digitnet.data.mnist, "
        "digitnet.inference.evaluation\nbuild_parser()\n"
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("model_name", ["seed", "mlp", "cnn"])
def test_dry_run_trains_saves_and_evaluates_each_model(tmp_path, fake_mnist_dir, model_name):
    model_path = tmp_path / f"{model_name}.safetensors"
    result = digitnet(
        "train",
        "--model",
        model_name,
        "--dry-run",
        "--data-dir",
        fake_mnist_dir,
        "--save-model",
        model_path,
        "--workdir",
        tmp_path / "run",
        "--val-size",
        "10" if model_name != "seed" else "0",
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Cost after epoch 1: ")
    assert "Training complete!" in lines
    assert any(line.startswith("Accuracy on the test set: ") for line in lines)
    model = load_model(model_path)
    assert model.metadata["training"]["model"] == model_name
    assert model.metadata["data"]["split"] in ("seed", "official")
    assert len(model.metadata["history"]) == 1
    report = json.loads(
        digitnet("evaluate", model_path, "--json", "--data-dir", fake_mnist_dir).stdout
    )
    assert 0.0 <= report["accuracy"] <= 1.0 and report["n"] > 0
    assert len(report["confusion_matrix"]) == 10


@pytest.mark.slow
def test_tutorial_defaults_on_real_mnist_print_the_tutorial_lines(tmp_path, mnist_dir):
    """`digitnet train` with no flags replays the tutorial: 20 epochs, seed split."""
    model_path = tmp_path / "seed.safetensors"
    result = digitnet(
        "train", "--save-model", model_path, "--workdir", tmp_path / "run", "--data-dir", mnist_dir
    )
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:20]] == [
        f"Cost after epoch {i}" for i in range(1, 21)
    ]
    assert lines[20] == "Training complete!"
    test_line = next(line for line in lines if line.startswith("Accuracy on the test set"))
    accuracy = float(test_line.split(":")[1].strip(" %"))
    assert 96.5 <= accuracy < 99.5
    report = json.loads(digitnet("evaluate", model_path, "--json", "--data-dir", mnist_dir).stdout)
    assert report["n"] == 14000  # the tutorial's split, read back from the model file
    assert report["accuracy"] * 100 == pytest.approx(accuracy, abs=0.01)


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--layout", "784,abc"], "--layout must be"),
        (["train", "--epochs", "0", "--dry-run"], "epochs must be"),
        (["train", "--model", "cnn", "--layout", "784,10"], "cnn model does not take"),
        (["evaluate", "no-such-model.safetensors"], "no model file"),
    ],
)
def test_bad_input_gives_one_line_and_no_traceback(tmp_path, args, message, fake_mnist_dir):
    result = digitnet(*args, "--data-dir", fake_mnist_dir, cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("digitnet")]) == 1


def test_missing_data_error_names_the_files(tmp_path):
    result = digitnet("train", "--dry-run", "--data-dir", tmp_path, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "train-images-idx3-ubyte" in result.stderr
