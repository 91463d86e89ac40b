"""The lines the line network trains on: what a pool holds, and that it is the same however
many processes compose it."""

from __future__ import annotations

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
