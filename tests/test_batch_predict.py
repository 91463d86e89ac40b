"""``digitnet predict`` on folders larger than one process handles: work processes, answers
streamed in input order, bad files answered in their place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitnet.inference.batch import CHUNK_FILES, CHUNKS_PER_JOB, IN_PROCESS_FILES
from digitnet.inference.model import Model
from digitnet.inference.modelfile import save_model
from digitnet.inference.predict import ImagePrediction
from digitnet.models import architectures


def digitnet(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digitnet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    architecture = architectures.named_architecture("seed")
    rng = np.random.default_rng(0)
    parameters = {
        name: rng.normal(0, 0.1, shape).astype(np.float32)
        for name, shape in architectures.parameter_shapes(architecture).items()
    }
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(Model(architecture, parameters, {"training": {"model": "seed"}}), path)
    return path


def write_strokes(folder: Path, count: int) -> list[Path]:
    """``count`` PNG files, each a different random pen stroke on white paper."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    paths = []
    for index in range(count):
        image = Image.new("L", (40, 40), 255)
        points = [tuple(int(v) for v in rng.integers(6, 34, 2)) for _ in range(4)]
        ImageDraw.Draw(image).line(points, fill=0, width=3)
        path = folder / f"{index:05d}.png"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """More files than are answered in-process, and a file that is not an image in the middle."""
    paths = write_strokes(tmp_path_factory.mktemp("batch") / "images", IN_PROCESS_FILES + 60)
    bad = paths[len(paths) // 2]
    bad.write_bytes(b"not an image at all")
    return paths[0].parent, bad


def test_streamed_json_is_valid_in_order_and_the_same_with_one_and_two_jobs(
    model: Path, folder: tuple[Path, Path], tmp_path: Path
) -> None:
    images, bad = folder
    expected = [str(path) for path in sorted(images.iterdir())]
    runs = {}
    for jobs in (1, 2):
        saved = tmp_path / f"seen-{jobs}"
        result = digitnet(
            "predict", model, images, "--json", "--jobs", jobs, "--save-preprocessed", saved
        )
        assert result.returncode == 1, result.stderr  # one file failed
        assert "Traceback" not in result.stderr
        records = json.loads(result.stdout)
        assert [record["file"] for record in records] == expected
        failed = [record for record in records if "error" in record]
        assert [record["file"] for record in failed] == [str(bad)]
        assert "not a supported image" in failed[0]["error"]
        assert len(list(saved.iterdir())) == len(records) - 1
        runs[jobs] = records
    for one, two in zip(runs[1], runs[2], strict=True):
        assert one.get("digit") == two.get("digit")
        if "probabilities" in one:
            np.testing.assert_allclose(one["probabilities"], two["probabilities"], rtol=1e-5)


def test_text_output_with_two_jobs_names_every_file_in_order(
    model: Path, folder: tuple[Path, Path]
) -> None:
    images, bad = folder
    result = digitnet("predict", model, images, "--jobs", "2")
    assert result.returncode == 1
    printed = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert printed == [str(path) for path in sorted(images.iterdir()) if path != bad]
    assert result.stderr.splitlines() == [
        line for line in result.stderr.splitlines() if line.startswith("digitnet predict: ")
    ]
    assert str(bad) in result.stderr


def test_answers_are_written_before_the_last_file_is_read(model: Path, tmp_path: Path) -> None:
    """The first answer arrives while the last file is still unread: replaced by a broken file
    after the first answer is read, the last file must come out broken.

    Deterministic, not timed: the command writes each answer as it comes and holds at most
    CHUNKS_PER_JOB chunks per work process in flight, so before it reaches the last chunk it
    must write answers that fill the pipe (about 300 bytes each, far over the 64 KB a pipe
    holds), and the test reads only the first line until the last file is replaced.
    """
    jobs = 2
    paths = write_strokes(tmp_path / "images", CHUNK_FILES * (CHUNKS_PER_JOB * jobs + 4))
    last = paths[-1]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    command = [sys.executable, "-m", "digitnet", "predict", str(model), str(paths[0].parent)]
    process = subprocess.Popen(
        [*command, "--json", "--jobs", str(jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "[\n"
        first = json.loads(process.stdout.readline().rstrip(",\n"))
        assert first["file"] == str(paths[0]) and "digit" in first
        os.replace(broken, last)
        rest = process.stdout.read()
        assert process.wait(timeout=600) == 1
    finally:
        process.kill()
        process.communicate()
    records = json.loads("[" + json.dumps(first) + "," + rest)
    assert [record["file"] for record in records] == [str(path) for path in paths]
    assert "error" in records[-1] and all("digit" in record for record in records[:-1])


def test_a_killed_work_process_costs_no_answer(model: Path, tmp_path: Path) -> None:
    """SIGKILL a work process mid-run (as the OOM killer would): every file is still answered,
    the same as in one process, and the run goes on in new work processes."""
    from digitnet.inference.batch import predict_files
    from digitnet.inference.modelfile import load_model

    loaded = load_model(model)
    paths = write_strokes(tmp_path / "images", CHUNK_FILES * 6)
    expected = [answer.digit for answer in predict_files(loaded, paths, jobs=1)]
    answers = predict_files(loaded, paths, jobs=2)
    got = [next(answers).digit]
    workers = answers.gi_frame.f_locals["workers"]  # type: ignore[union-attr]
    pool = workers.pool
    victim = next(iter(pool._processes.values()))
    os.kill(victim.pid, signal.SIGKILL)
    got += [answer.digit for answer in answers]
    assert got == expected
    assert workers.pool is not pool  # the run went on in new work processes


class _BrokenOn:
    """A stand-in for a process pool whose work process dies on any chunk holding ``fatal``."""

    def __init__(self, fatal: str) -> None:
        self.fatal = fatal
        self.shut = False

    def submit(self, function: object, chunk: list[object], keep_images: bool) -> Future[object]:
        future: Future[object] = Future()
        if self.shut or self.fatal in chunk:
            future.set_exception(BrokenProcessPool("a work process died"))
        else:
            future.set_result([ImagePrediction(str(item), digit=1) for item in chunk])
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.shut = True


def _workers_on_stand_in_pools(
    model: Path, monkeypatch: pytest.MonkeyPatch, make_pool: Callable[[], _BrokenOn]
) -> tuple[Any, list[_BrokenOn]]:
    """A batch run's workers whose every (re)started pool is ``make_pool()``, and that list of
    pools, in the order the run started them."""
    from digitnet.inference import batch
    from digitnet.inference.modelfile import load_model

    pools: list[_BrokenOn] = []

    def start(self: object) -> _BrokenOn:
        pools.append(make_pool())
        return pools[-1]

    monkeypatch.setattr(batch._Workers, "_start", start)
    return batch._Workers(load_model(model), 2), pools


def test_a_file_that_kills_its_work_process_is_answered_with_an_error_in_its_place(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digitnet.inference import batch

    workers, pools = _workers_on_stand_in_pools(model, monkeypatch, lambda: _BrokenOn("c.png"))
    first = workers.submit(["a.png", "b.png", "c.png", "d.png"], False)
    second = workers.submit(["e.png", "f.png"], False)
    pools[0].shutdown()  # the death of a work process breaks every chunk the pool held
    answers = workers.answers(first, False) + workers.answers(second, False)
    assert [answer.file for answer in answers] == [f"{name}.png" for name in "abcdef"]
    assert [answer.error for answer in answers] == [None, None, batch.WORKER_DIED, None, None, None]
    assert [answer.digit for answer in answers] == [1, 1, None, 1, 1, 1]
    assert len(pools) == 3  # one new pool after the first break, one after c.png broke it


class _RefusingWhenBroken(_BrokenOn):
    """A stand-in pool that, once broken, refuses new work as ProcessPoolExecutor does."""

    def submit(self, function: object, chunk: list[object], keep_images: bool) -> Future[object]:
        if self.shut:
            raise BrokenProcessPool("a child process terminated abruptly")
        return super().submit(function, chunk, keep_images)


def test_a_chunk_submitted_after_a_work_process_died_is_still_answered(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A work process can die between two submissions: the pool then refuses the next chunk
    # outright, before any answer has told the run that it broke.
    workers, pools = _workers_on_stand_in_pools(
        model, monkeypatch, lambda: _RefusingWhenBroken("none of these")
    )
    first = workers.submit(["a.png", "b.png"], False)
    pools[0].shutdown()
    second = workers.submit(["c.png", "d.png"], False)
    answers = workers.answers(first, False) + workers.answers(second, False)
    assert [answer.file for answer in answers] == [f"{name}.png" for name in "abcd"]
    assert [answer.digit for answer in answers] == [1, 1, 1, 1]
    assert len(pools) == 2
