"""``--resume`` with a crafted or damaged checkpoint: a one-line ModelFileError, never a traceback.

The checkpoint's checksum is a plain sha256 kept in the file, so an edited file checksummed
again reads back; what it holds is then checked against what this run would write.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import fake_mnist_arrays, write_dataset
from digitnet.errors import ModelFileError
from digitnet.inference.modelfile import CHECKPOINT_KIND, read_bundle, write_bundle
from digitnet.training.runs import (
    RunState,
    TrainConfig,
    _comparable,
    check_checkpoint_header,
    check_checkpoint_tensors,
    train_and_evaluate,
)

CHECKPOINT = "checkpoint.safetensors"
Tensors = dict[str, np.ndarray]
Header = dict[str, Any]


def small_config() -> TrainConfig:
    return TrainConfig(
        model="mlp", layout=[784, 16, 10], epochs=3, batch_size=16, val_size=20, precision="float32"
    )


class Interrupted(Exception):
    pass


def stop_after_two(epoch: int, record: dict[str, Any]) -> None:
    if epoch >= 2:
        raise Interrupted


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tensors, Header]:
    """The fake data, and the tensors and header of a real checkpoint after two epochs."""
    root = tmp_path_factory.mktemp("checkpoint")
    data = write_dataset(root / "data", fake_mnist_arrays())
    with pytest.raises(Interrupted):
        train_and_evaluate(
            small_config(),
            root / "run",
            data_dir=data,
            log=lambda line: None,
            on_epoch_end=stop_after_two,
        )
    tensors, header = read_bundle(root / "run" / CHECKPOINT, CHECKPOINT_KIND)
    return data, tensors, header


def without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def with_field(name: str, value: Any) -> Callable[[Tensors, Header], tuple[Tensors, Header]]:
    return lambda tensors, header: (tensors, {**header, name: value})


def with_tensor(name: str, value: Any) -> Callable[[Tensors, Header], tuple[Tensors, Header]]:
    return lambda tensors, header: ({**tensors, name: value(tensors[name])}, header)


DAMAGES: dict[str, Callable[[Tensors, Header], tuple[Tensors, Header]]] = {
    "weights transposed": with_tensor("parameters/W1", lambda w: np.ascontiguousarray(w.T)),
    "weights widened": with_tensor("parameters/W2", lambda w: np.zeros((w.shape[0], 99), w.dtype)),
    "bias as float64": with_tensor("parameters/b1", lambda b: b.astype(np.float64)),
    "optimizer moment reshaped": with_tensor("optimizer/0001", lambda m: m.reshape(-1)),
    "step count as a matrix": with_tensor("optimizer/0000", lambda s: np.zeros((3, 3), s.dtype)),
    "best weights reshaped": with_tensor("best/W1", lambda w: w[:-1]),
    "weights missing": lambda t, h: (without(t, "parameters/W2"), h),
    "optimizer state missing": lambda t, h: (without(t, "optimizer/0002"), h),
    "best weights missing": lambda t, h: (
        {k: v for k, v in t.items() if not k.startswith("best/")},
        h,
    ),
    "a tensor too many": lambda t, h: ({**t, "parameters/W9": np.zeros(3, np.float32)}, h),
    "settings a string": with_field("config", "mlp"),
    "settings a list": with_field("config", [1, 2]),
    "data a number": with_field("data", 5),
    "epoch a string": with_field("epoch", "2"),
    "epoch negative": with_field("epoch", -1),
    "epoch a boolean": with_field("epoch", True),
    "epoch beyond the history": with_field("epoch", 7),
    "history an object": with_field("history", {"epoch": 1}),
    "history of numbers": with_field("history", [1, 2]),
    "history record without cost": lambda t, h: (
        t,
        {**h, "history": [without(h["history"][0], "cost"), h["history"][1]]},
    ),
    "best key one number": with_field("best_key", [0.5]),
    "best key text": with_field("best_key", "best"),
    "best epoch beyond": with_field("best_epoch", 5),
    "stale epochs null": with_field("stale_epochs", None),
    "seconds a string": with_field("seconds", "fast"),
    "epoch missing": lambda t, h: (t, without(h, "epoch")),
    "settings missing": lambda t, h: (t, without(h, "config")),
}


def resume(data: Path, workdir: Path) -> None:
    train_and_evaluate(small_config(), workdir, data_dir=data, log=lambda line: None, resume=True)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_crafted_checkpoint_is_refused_with_one_line(
    run: tuple[Path, Tensors, Header], tmp_path: Path, damage: str
) -> None:
    data, tensors, header = run
    crafted_tensors, crafted_header = DAMAGES[damage](dict(tensors), dict(header))
    tmp_path.mkdir(exist_ok=True)
    write_bundle(tmp_path / CHECKPOINT, CHECKPOINT_KIND, crafted_tensors, crafted_header)
    with pytest.raises(ModelFileError, match="checkpoint") as caught:
        resume(data, tmp_path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_the_untouched_checkpoint_resumes(
    run: tuple[Path, Tensors, Header], tmp_path: Path
) -> None:
    """The control: the same bytes, written the same way, resume without complaint."""
    data, tensors, header = run
    write_bundle(tmp_path / CHECKPOINT, CHECKPOINT_KIND, tensors, header)
    resume(data, tmp_path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_a_truncated_checkpoint_is_refused(
    run: tuple[Path, Tensors, Header], tmp_path: Path, keep: float
) -> None:
    data, tensors, header = run
    write_bundle(tmp_path / "whole", CHECKPOINT_KIND, tensors, header)
    whole = (tmp_path / "whole").read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(ModelFileError, match="truncated|damaged"):
        resume(data, tmp_path)


def test_settings_that_differ_by_thousands_of_keys_give_a_short_message(
    run: tuple[Path, Tensors, Header], tmp_path: Path
) -> None:
    data, tensors, header = run
    config = {**header["config"], **{f"key{i}\n": "x" * 1000 for i in range(100)}}
    write_bundle(tmp_path / CHECKPOINT, CHECKPOINT_KIND, tensors, {**header, "config": config})
    with pytest.raises(Exception, match="other settings") as caught:
        resume(data, tmp_path)
    assert len(str(caught.value)) < 1000 and "and 95 more" in str(caught.value)


# Arbitrary JSON values, as a crafted header may hold in any field.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
FIELDS = ["config", "data", "epoch", "history", "best_epoch", "best_key", "seconds", "extra"]


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(FIELDS), JSON | st.just(...), max_size=3))
def test_any_header_is_accepted_whole_or_refused_with_model_file_error(
    run: tuple[Path, Tensors, Header], changes: dict[str, Any]
) -> None:
    _, _, header = run
    crafted = {**header, **{k: v for k, v in changes.items() if v is not ...}}
    crafted = {k: v for k, v in crafted.items() if changes.get(k, 0) is not ...}
    try:
        check_checkpoint_header(Path("checkpoint"), crafted)
    except ModelFileError:
        return
    # Accepted: what _restore goes on to do with the header works.
    _comparable({"calibration_size": 0, **crafted["config"]})
    assert crafted["data"].get("sha256", "") is not None
    assert RunState.from_header(crafted, None).epoch == crafted["epoch"]


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_tensor_change_is_refused_with_model_file_error(
    run: tuple[Path, Tensors, Header], data: st.DataObject
) -> None:
    _, tensors, header = run
    expected = {k: v for k, v in tensors.items() if not k.startswith("best/")}
    expected["optimizer/0000"] = expected["optimizer/0000"].reshape(())  # as TF holds it
    name = data.draw(st.sampled_from(sorted(tensors)))
    change = data.draw(st.sampled_from(["drop", "shape", "dtype"]))
    crafted = dict(tensors)
    if change == "drop":
        del crafted[name]
    elif change == "shape":
        shape = data.draw(st.lists(st.integers(0, 5), max_size=3).map(tuple))
        # The step count is a scalar that safetensors stores as (1,): both are right.
        if shape == tensors[name].shape or (name == "optimizer/0000" and shape in ((), (1,))):
            return
        crafted[name] = np.zeros(shape, tensors[name].dtype)
    else:
        dtype = data.draw(st.sampled_from([np.float16, np.float64, np.int32, np.int64, np.uint8]))
        if np.dtype(dtype) == tensors[name].dtype:
            return
        crafted[name] = tensors[name].astype(dtype)
    with pytest.raises(ModelFileError):
        check_checkpoint_tensors(Path("checkpoint"), crafted, header, expected)


def cli_train(data: Path, workdir: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digitnet", "train", "--model", "mlp", "--layout", "784,16,10"]
        + ["--epochs", "1", "--batch-size", "16", "--val-size", "20", "--data-dir", str(data)]
        + ["--workdir", str(workdir), *more],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_the_cli_prints_one_line_and_no_traceback(
    run: tuple[Path, Tensors, Header], tmp_path: Path
) -> None:
    data = run[0]
    assert cli_train(data, tmp_path).returncode == 0
    tensors, header = read_bundle(tmp_path / CHECKPOINT, CHECKPOINT_KIND)
    for damage in ("weights transposed", "settings a list"):
        crafted_tensors, crafted_header = DAMAGES[damage](dict(tensors), dict(header))
        write_bundle(tmp_path / CHECKPOINT, CHECKPOINT_KIND, crafted_tensors, crafted_header)
        result = cli_train(data, tmp_path, "--resume")
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("digitnet")]
        assert len(errors) == 1 and "is damaged" in errors[0], result.stderr[-2000:]
