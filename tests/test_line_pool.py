"""The lines the line network trains on: what a pool holds, and that it is the same however
many processes compose it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from digitnet.inference.line_reading import LINE_INNER, LINE_PAD
from digitnet.models.architectures import LINE_HEIGHT, LINE_STRIDE
from digitnet.training import line_pool
from digitnet.training.line_pool import MAX_LINE_WIDTH, MAX_TRAINING_DIGITS, compose_lines


def _digits(count: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """``count`` made-up digits, each a bar of its own thickness, and their labels."""
    images = np.zeros((count, 28, 28), np.uint8)
    labels = np.arange(count) % 10
    for index, label in enumerate(labels):
        images[index, 4:24, 12 : 14 + label // 3] = 255
    return images, labels


def test_a_pool_holds_labelled_lines_of_one_to_eight_digits():
    images, labels = _digits()
    pool = compose_lines(images, labels, 60, seed=2, workers=1)
    assert pool.images.shape == (60, LINE_HEIGHT, MAX_LINE_WIDTH)
    assert pool.images.dtype == np.uint8
    assert set(pool.lengths.tolist()) <= set(range(1, MAX_TRAINING_DIGITS + 1))
    assert len(set(pool.lengths.tolist())) > 3
    for row in range(60):
        length, width = int(pool.lengths[row]), int(pool.widths[row])
        assert (pool.labels[row, :length] >= 0).all()
        assert (pool.labels[row, length:] == -1).all()
        assert width % LINE_STRIDE == 0
        # Ink only inside the line image's width, and strokes only inside its margins (a thin
        # pen's thickened and softened strokes spread a faint edge into them).
        assert pool.images[row, :, width:].max() == 0
        inked = pool.images[row] > 64
        assert inked.any()
        columns, rows = np.flatnonzero(inked.any(axis=0)), np.flatnonzero(inked.any(axis=1))
        margin = (LINE_HEIGHT - LINE_INNER) // 2
        assert columns[0] >= LINE_PAD - 2
        assert rows[0] >= margin - 2 and rows[-1] < margin + LINE_INNER + 2


def test_the_pool_is_the_same_however_many_processes_compose_it(monkeypatch):
    images, labels = _digits()
    # Small tasks, so that three processes each compose a few (and the last a part).
    monkeypatch.setattr(line_pool, "_CHUNK", 25)
    alone = compose_lines(images, labels, 110, seed=5, workers=1)
    shared = compose_lines(images, labels, 110, seed=5, workers=3)
    for field in ("images", "widths", "labels", "lengths"):
        np.testing.assert_array_equal(getattr(alone, field), getattr(shared, field))
    other_seed = compose_lines(images, labels, 110, seed=6, workers=1)
    assert not np.array_equal(alone.images, other_seed.images)


def test_at_least_one_process_composes():
    images, labels = _digits()
    with pytest.raises(ValueError, match="workers must be at least 1"):
        compose_lines(images, labels, 10, seed=1, workers=0)


_UNGUARDED_SCRIPT = """
import numpy as np
import tensorflow as tf

from digitnet.training import line_pool

print("script started", flush=True)
# TensorFlow's thread pools are running when the lines are composed, as in a training run.
tf.linalg.matmul(tf.ones((256, 256)), tf.ones((256, 256))).numpy()
line_pool._CHUNK = 20
images = np.zeros((10, 28, 28), np.uint8)
images[:, 4:24, 12:15] = 255
pool = line_pool.compose_lines(images, np.arange(10), 80, seed=1, workers=2)
print("composed", len(pool.widths), int((pool.widths > 0).sum()), flush=True)
"""


def test_processes_compose_lines_for_a_script_without_a_main_guard(tmp_path):
    """A script without ``if __name__ == "__main__":``, which has run TensorFlow, composes
    lines in two processes: they neither run the script again nor hang."""
    script = tmp_path / "train_my_reader.py"
    script.write_text(_UNGUARDED_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("script started") == 1, done.stdout
    assert "composed 80 80" in done.stdout
