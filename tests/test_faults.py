"""Faults during a save: SIGKILL mid-write, a full disk. The previous file always survives.

Files are written to a temporary file beside the target, fsynced, then renamed over it
(digitnet.atomic); these tests kill the writer at the worst moments and fill the disk under it.
SIGKILL during training followed by ``--resume`` is tested in test_training.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from digitnet.atomic import remove_leftovers
from digitnet.cli.main import main as cli_main
from digitnet.inference.model import Model
from digitnet.inference.modelfile import load_model, save_model
from digitnet.models import architectures


def make_model(seed: int, hidden: int = 64) -> Model:
    architecture = architectures.dense_stack([784, hidden, 10], output_activation="softmax")
    rng = np.random.default_rng(seed)
    parameters = {
        name: rng.normal(0, 0.1, shape).astype(np.float32)
        for name, shape in architectures.parameter_shapes(architecture).items()
    }
    return Model(architecture, parameters, {"training": {"seed": seed}})


def seed_of(path: Path) -> int:
    """Which complete model the file holds (loading fails on a torn file)."""
    return int(load_model(path).metadata["training"]["seed"])


# ---------------------------------------------------------------------------------------------
# SIGKILL during a save

# A writer that saves 12.5 MB models to argv[1], pausing where argv[2] says so that the test
# can kill it there, or saving seeds 2, 3, 4, ... in a loop when argv[2] is "loop".
_WRITER = """
import os, sys, time
import numpy as np
import digitnet.atomic
from digitnet.inference.model import Model
from digitnet.inference.modelfile import save_model
from digitnet.models import architectures

target, where = sys.argv[1], sys.argv[2]

def model(seed):
    architecture = architectures.dense_stack([784, 4000, 10], output_activation="softmax")
    rng = np.random.default_rng(seed)
    parameters = {name: rng.normal(0, 0.1, shape).astype(np.float32)
                  for name, shape in architectures.parameter_shapes(architecture).items()}
    return Model(architecture, parameters, {"training": {"seed": seed}})

def pause():
    print("paused", flush=True)
    time.sleep(120)

if where == "before-rename":
    real_replace = os.replace
    def replace(source, destination):
        pause()
        real_replace(source, destination)
    os.replace = replace
elif where == "mid-write":
    real_fdopen = os.fdopen
    class HalfThenPause:
        def __init__(self, handle):
            self.handle = handle
        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            pause()
        def __getattr__(self, name):
            return getattr(self.handle, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)
    digitnet.atomic.os.fdopen = lambda fd, mode: HalfThenPause(real_fdopen(fd, mode))
if where == "loop":
    seed = 2
    while True:
        save_model(model(seed), target)
        print(f"saved {seed}", flush=True)
        seed += 1
save_model(model(2), target)
print("finished", flush=True)
"""


def _start_writer(target: Path, where: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target), where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("where", ["mid-write", "before-rename"])
def test_sigkill_during_a_save_leaves_the_previous_file_intact(tmp_path, where):
    target = tmp_path / "model.safetensors"
    save_model(make_model(1), target)
    before = target.read_bytes()
    writer = _start_writer(target, where)
    try:
        assert writer.stdout is not None
        line = writer.stdout.readline()
        assert line.strip() == "paused", writer.stderr.read() if writer.stderr else ""
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            writer.kill()
    assert writer.returncode == -signal.SIGKILL
    assert target.read_bytes() == before
    assert seed_of(target) == 1
    # The killed writer could not remove its temporary file; it is hidden and never read,
    # and whoever owns the file next removes it (a resumed training run does), sparing the
    # temporary files of other targets.
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.safetensors.")
    other = tmp_path / ".model.safetensors.old.abcdefgh.tmp"
    other.write_bytes(b"another target's")
    assert remove_leftovers(target) == 1
    assert sorted(tmp_path.iterdir()) == sorted([target, other])
    assert seed_of(target) == 1


def test_sigkill_at_random_moments_of_repeated_saves_never_tears_the_file(tmp_path):
    target = tmp_path / "model.safetensors"
    save_model(make_model(1), target)
    rng = random.Random(14)
    kills = 0
    for _ in range(6):
        writer = _start_writer(target, "loop")
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline().startswith("saved")  # one save done: now racing
            time.sleep(rng.uniform(0.0, 0.4))
            writer.send_signal(signal.SIGKILL)
            writer.wait(30)
            kills += 1
        finally:
            with contextlib.suppress(ProcessLookupError):
                writer.kill()
        assert seed_of(target) >= 2  # a complete model, whichever save it came from
    assert kills == 6


# ---------------------------------------------------------------------------------------------
# A full disk during a save


def _assert_unchanged(directory: Path, target: Path, before: bytes) -> None:
    assert target.read_bytes() == before
    assert [p.name for p in directory.iterdir()] == [target.name]  # no temporary file left


def test_full_disk_at_fsync_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    save_model(make_model(1), target)
    before = target.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        save_model(make_model(2), target)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(target)
    assert "No space left on device" in str(caught.value)
    assert "previous file there is unchanged" in str(caught.value)
    _assert_unchanged(tmp_path, target, before)


def test_full_disk_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    import digitnet.atomic

    target = tmp_path / "model.safetensors"
    save_model(make_model(1), target)
    before = target.read_bytes()
    real_fdopen = os.fdopen

    class FillsUp:
        """A file on a disk that fills up after 1000 bytes."""

        def __init__(self, handle):
            self.handle = handle

        def write(self, data: bytes) -> int:
            self.handle.write(data[:1000])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    monkeypatch.setattr(
        digitnet.atomic.os, "fdopen", lambda fd, mode: FillsUp(real_fdopen(fd, mode))
    )
    with pytest.raises(OSError, match="No space left on device"):
        save_model(make_model(2), target)
    _assert_unchanged(tmp_path, target, before)


def test_full_disk_in_the_cli_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from PIL import Image, ImageDraw

    model_path = tmp_path / "model.safetensors"
    save_model(make_model(1), model_path)
    image = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(image).line([(30, 20), (70, 20), (45, 80)], fill=0, width=6)
    image.save(tmp_path / "seven.png")
    out = tmp_path / "seen"
    out.mkdir()
    (out / "seven.png").write_bytes(b"the previous file")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    status = cli_main(
        ["predict", str(model_path), str(tmp_path / "seven.png"), "--save-preprocessed", str(out)]
    )
    stderr = capsys.readouterr().err
    assert status == 1
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert f"digitnet predict: error: {out / 'seven.png'}: No space left on device" in stderr
    _assert_unchanged(out, out / "seven.png", b"the previous file")


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KB tmpfs (needs root and mount); the test is skipped where it cannot be made."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_a_really_full_disk_keeps_the_previous_file(tiny_tmpfs):
    target = tiny_tmpfs / "model.safetensors"
    save_model(make_model(1, hidden=16), target)  # 51 KB
    before = target.read_bytes()
    with pytest.raises(OSError) as caught:
        save_model(make_model(2, hidden=128), target)  # 400 KB: does not fit
    assert caught.value.errno == errno.ENOSPC
    assert "\n" not in str(caught.value)
    _assert_unchanged(tiny_tmpfs, target, before)
    assert seed_of(target) == 1
