"""The real ``digitnet`` command, run as a user runs it: smoke runs, errors, fast start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    for command in ("train", "evaluate", "predict", "report", "serve"):
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
        "--tensorboard",
    ):
        assert flag in train_help


def test_commands_that_do_not_train_import_no_tensorflow():
    code = (
        "import sys\nfrom digitnet.cli.main import build_parser\n"
        "import digitnet.cli.predict, digitnet.cli.evaluate, "
        "digitnet.cli.serve, digitnet.cli.report\nimport digitnet.inference.model, "
        "digitnet.inference.modelfile, digitnet.inference.predict, digitnet.data.mnist, "
        "digitnet.inference.evaluation, digitnet.inference.report\nbuild_parser()\n"
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


# ---------------------------------------------------------------------------------------------
# predict: escaped names, every failure reported, the rest still predicted


def _tiny_model(path):
    import numpy as np

    from digitnet.inference.model import Model
    from digitnet.inference.modelfile import save_model
    from digitnet.models import architectures

    architecture = architectures.named_architecture("seed")
    rng = np.random.default_rng(0)
    parameters = {
        name: rng.normal(0, 0.1, shape).astype(np.float32)
        for name, shape in architectures.parameter_shapes(architecture).items()
    }
    save_model(Model(architecture, parameters, {"training": {"model": "seed"}}), path)
    return path


def _seven_png() -> bytes:
    import io

    from PIL import Image, ImageDraw

    image = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(image).line([(35, 25), (85, 25), (55, 95)], fill=0, width=8)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_escapes_file_names_so_no_line_or_column_is_forged(tmp_path):
    model = _tiny_model(tmp_path / "model.safetensors")
    folder = tmp_path / "images"
    folder.mkdir()
    names = ["tab\there.png", "forged\n7\t0.9999.png", "esc\x1b[31mred.png", "back\\slash.png"]
    for name in names:
        (folder / name).write_bytes(_seven_png())
    result = digitnet("predict", model, folder)
    lines = result.stdout.splitlines()
    assert len(lines) == len(names)
    assert all(len(line.split("\t")) in (3, 4) for line in lines)
    printed = {line.split("\t")[0] for line in lines}
    assert printed == {
        str(folder / "tab\\there.png"),
        str(folder / "forged\\n7\\t0.9999.png"),
        str(folder / "esc\\x1b[31mred.png"),
        str(folder / "back\\\\slash.png"),
    }
    assert "\x1b" not in result.stdout
    # JSON keeps the real names (JSON escapes them itself).
    records = json.loads(digitnet("predict", model, folder, "--json").stdout)
    assert {Path(record["file"]).name for record in records} == set(names)


def test_predict_reports_every_bad_file_on_its_own_line_and_predicts_the_rest(tmp_path):
    import struct

    model = _tiny_model(tmp_path / "model.safetensors")
    first, last = tmp_path / "first.png", tmp_path / "last.png"
    first.write_bytes(_seven_png())
    last.write_bytes(_seven_png())
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    sparse = tmp_path / "huge.png"
    with sparse.open("wb") as handle:
        handle.truncate(60 * 2**20)
    ico = tmp_path / "icon.ico"
    ico.write_bytes(struct.pack("<HHH", 0, 1, 1) + b"\x00" * 40)
    strips = tmp_path / "strips.tif"
    strips.write_bytes(
        b"II*\x00"
        + struct.pack("<IH", 8, 1)
        + struct.pack("<HHII", 273, 4, 1_000_000, 0)
        + b"\x00" * 4
    )
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(_seven_png()[:200])
    bad = [fifo, sparse, ico, strips, truncated, "/dev/zero", tmp_path / "missing.png"]
    result = digitnet("predict", model, first, *bad, last, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(first), str(last)]
    errors = result.stderr.splitlines()
    assert len(errors) == len(bad)
    assert all(line.startswith("digitnet predict: ") for line in errors)
    for path, line in zip(bad, errors):
        assert str(path) in line


# ---------------------------------------------------------------------------------------------
# train: an unwritable --save-model or --workdir is refused before training starts


def _refused_before_training(tmp_path, fake_mnist_dir, *args, env=None) -> str:
    """Run ``digitnet train`` in-process and return its one error line; fails if TensorFlow
    was imported (the check must come before any training)."""
    argv = ["train", "--dry-run", "--data-dir", str(fake_mnist_dir), *map(str, args)]
    code = (
        "import sys\nfrom digitnet.cli.main import main\n"
        f"status = main({argv!r})\n"
        "print(status, 'tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert result.stdout.split() == ["1", "False"], result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    return line


def test_save_model_into_a_directory_is_refused_before_training(tmp_path, fake_mnist_dir):
    folder = tmp_path / "models"
    folder.mkdir()
    line = _refused_before_training(tmp_path, fake_mnist_dir, "--save-model", folder)
    assert "--save-model" in line and "is a directory" in line


def test_save_model_under_a_file_is_refused_before_training(tmp_path, fake_mnist_dir):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    target = tmp_path / "notes.txt" / "sub" / "model.safetensors"
    line = _refused_before_training(tmp_path, fake_mnist_dir, "--save-model", target)
    assert "notes.txt is a file, not a folder" in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a read-only /proc")
def test_save_model_on_a_read_only_file_system_is_refused_before_training(tmp_path, fake_mnist_dir):
    # /proc refuses new files even to root, as a read-only mount or a full quota would.
    line = _refused_before_training(
        tmp_path, fake_mnist_dir, "--save-model", "/proc/digitnet/model.safetensors"
    )
    assert "--save-model /proc/digitnet/model.safetensors: cannot write in /proc" in line
    line = _refused_before_training(tmp_path, fake_mnist_dir, "--workdir", "/proc/digitnet-run")
    assert "--workdir" in line and "cannot write in /proc" in line


def test_a_signing_key_too_short_is_refused_before_training(tmp_path, fake_mnist_dir):
    line = _refused_before_training(
        tmp_path,
        fake_mnist_dir,
        "--save-model",
        tmp_path / "m.safetensors",
        env={"DIGITNET_MODEL_KEY": "short"},
    )
    assert "DIGITNET_MODEL_KEY is 5 bytes long; use at least 16" in line


def test_predict_refuses_an_unwritable_save_preprocessed_folder_before_reading(tmp_path):
    model = _tiny_model(tmp_path / "model.safetensors")
    (tmp_path / "seven.png").write_bytes(_seven_png())
    (tmp_path / "out").write_text("a file")
    result = digitnet(
        "predict",
        model,
        tmp_path / "seven.png",
        "--save-preprocessed",
        tmp_path / "out",
        check=False,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "--save-preprocessed" in result.stderr and "is a file, not a folder" in result.stderr
