"""Composed lines of digits (``digitnet.data.lines``) and the reader's labelled segmentation
crops of them (``digitnet.training.segments``), on real MNIST training digits."""

from __future__ import annotations

import numpy as np
import pytest

from digitnet.data.lines import compose_number
from digitnet.training.nondigits import NonDigitComposer
from digitnet.training.segments import UNLABELLED, labelled_spans, right_split_exists


@pytest.fixture(scope="module")
def digits(mnist_arrays):
    return mnist_arrays.train_images[:3000], mnist_arrays.train_labels[:3000].astype(int)


def test_the_owner_map_does_not_change_the_line_and_covers_its_ink(digits):
    images, _ = digits
    for seed in range(20):
        chosen = [images[i] for i in np.random.default_rng(seed).integers(0, 3000, size=5)]
        plain = compose_number(chosen, np.random.default_rng([seed, 1]))
        owned = compose_number(chosen, np.random.default_rng([seed, 1]), owners=True)
        assert owned.owners is not None and plain.owners is None
        assert np.array_equal(plain.image, owned.image) and plain.boxes == owned.boxes
        assert owned.owners.shape == owned.image.shape
        # Every digit owns ink, strong ink always has an owner, and owners go left to right.
        assert set(np.unique(owned.owners)) == {-1, 0, 1, 2, 3, 4}
        assert (owned.owners[owned.image > 0.3] >= 0).all()
        centres = [np.nonzero(owned.owners == d)[1].mean() for d in range(5)]
        assert centres == sorted(centres)


def test_a_lone_digit_has_one_right_span_that_is_its_digit(digits):
    images, labels = digits
    found = 0
    for index in range(60):
        spans = labelled_spans([images[index]], [labels[index]], np.random.default_rng(index), 10)
        assert not right_split_exists(spans, 2)
        assert (spans.labels[spans.right] == labels[index]).all()
        found += right_split_exists(spans, 1)
    # A digit far wider than tall (a flat 5) is not one span: the reader would not read it
    # alone either.
    assert found >= 55


def test_lines_give_wrong_spans_and_right_spans_with_their_digits(digits):
    images, labels = digits
    found_split = wrong = 0
    for index in range(40):
        rng = np.random.default_rng(index)
        chosen = rng.integers(0, 3000, size=4)
        spans = labelled_spans([images[i] for i in chosen], list(labels[chosen]), rng, 10)
        assert spans.images.shape == (len(spans.labels), 28, 28)
        assert set(spans.labels[spans.right]) <= set(labels[chosen])
        assert not (spans.right & (spans.labels == 10)).any()
        assert ((spans.labels == UNLABELLED) | (spans.labels == 10) | spans.right).all()
        wrong += int((spans.labels == 10).sum())
        found_split += right_split_exists(spans, 4)
    # Most lines can be split into their four digits; wrong spans are plentiful.
    assert found_split >= 30 and wrong >= 200


def test_the_composer_trains_on_segmentation_crops_fixed_by_its_seed(digits):
    images, labels = digits
    X = images.reshape(len(images), -1).astype(np.float32) / 255.0
    composer = NonDigitComposer(X[:1200], labels[:1200], seed=2)
    wrong, right, right_digits = composer.segment_pool()
    assert len(wrong) > 100 and len(right) > 50
    assert right_digits.min() >= 0 and right_digits.max() <= 9
    again = NonDigitComposer(X[:1200], labels[:1200], seed=2).segment_pool()
    assert np.array_equal(wrong, again[0]) and np.array_equal(right, again[1])
    segment_crops = composer.non_digits("segment", 50, np.random.default_rng(0))
    pool = {image.tobytes() for image in wrong}
    assert all(image.tobytes() in pool for image in segment_crops)
