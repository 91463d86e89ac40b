"""Held-out parts of a training set: the validation split and the calibration split.

A run trains on what is left of its split's training images after holding out ``val_size``
images for validation (picking the best epoch, early stopping) and, for presets without a
validation set, ``calibration_size`` images for fitting the confidence calibration. Both are
stratified and fixed by the run's seed, so ``digitnet calibrate`` can find a model's held-out
images again from the settings its file records, and checks that it did by the fingerprint of
the training data. The test set is never part of either.

No TensorFlow; scikit-learn only inside the functions that need it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from digitnet.errors import ConfigError, DataError

# A dry run trains on this many batches; its held-out sets keep at most DRY_RUN_HELD_OUT rows.
DRY_RUN_BATCHES = 3
DRY_RUN_HELD_OUT = 500


def split_off(
    X: np.ndarray, y: np.ndarray, size: int, seed: int, what: str = "--val-size"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ``size`` samples of (X, y one-hot), stratified, fixed by ``seed``:
    returns (X_kept, y_kept, X_held, y_held)."""
    if size == 0:
        return X, y, X[:0], y[:0]
    if size >= len(X):
        raise ConfigError(
            f"{what} {size} leaves no training data (the training set has {len(X)} samples)"
        )
    from sklearn.model_selection import train_test_split

    labels = y.argmax(axis=1)
    counts = np.bincount(labels)
    # Stratifying needs two samples of each class, and a held-out set with room for each.
    stratify = labels if counts.min() >= 2 and size >= len(counts) else None
    X_kept, X_held, y_kept, y_held = train_test_split(
        X, y, test_size=size, random_state=seed, stratify=stratify
    )
    return X_kept, y_kept, X_held, y_held


@dataclass
class Splits:
    """A run's arrays: X float32 (n, 784), y one-hot float32 (n, classes)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_calibration: np.ndarray
    y_calibration: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    def held_out(self) -> tuple[str, np.ndarray, np.ndarray]:
        """The set calibration is fitted on: ("validation" | "calibration", X, y)."""
        if len(self.X_val):
            return "validation", self.X_val, self.y_val
        return "calibration", self.X_calibration, self.y_calibration


def make_splits(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    val_size: int,
    calibration_size: int,
    seed: int,
    dry_run: bool = False,
    batch_size: int = 1,
) -> Splits:
    """Hold out the validation set, then the calibration set, from the training arrays.

    The calibration set takes at most a tenth of what validation left (a small dataset, as in
    tests, still trains on most of its images).
    """
    X_train, y_train, X_val, y_val = split_off(X_train, y_train, val_size, seed)
    X_train, y_train, X_cal, y_cal = split_off(
        X_train, y_train, min(calibration_size, len(X_train) // 10), seed, "--calibration-size"
    )
    if dry_run:
        # A few batches of everything: enough to run every code path in seconds.
        take = min(len(X_train), DRY_RUN_BATCHES * batch_size)
        X_train, y_train = X_train[:take], y_train[:take]
        X_val, y_val = X_val[:DRY_RUN_HELD_OUT], y_val[:DRY_RUN_HELD_OUT]
        X_cal, y_cal = X_cal[:DRY_RUN_HELD_OUT], y_cal[:DRY_RUN_HELD_OUT]
        X_test, y_test = X_test[:DRY_RUN_HELD_OUT], y_test[:DRY_RUN_HELD_OUT]
    return Splits(X_train, y_train, X_val, y_val, X_cal, y_cal, X_test, y_test)


def splits_of_model(
    metadata: Mapping[str, Any], data_dir: str | os.PathLike[str] | None = None
) -> Splits:
    """A trained model's splits, found again from the settings its file records.

    Raises ``DataError`` if the training data found does not match the model's fingerprint
    (other data, or a file from a digitnet that split differently), and ``ConfigError`` if the
    model held nothing out.
    """
    from digitnet.data.mnist import dataset_fingerprint, load_mnist

    training = metadata.get("training") or {}
    data = metadata.get("data") or {}
    if not training or "sha256" not in data:
        raise DataError(
            "the model file does not record how it was trained (no training settings or data "
            "fingerprint), so its held-out images cannot be found"
        )
    val_size = int(training.get("val_size") or 0)
    calibration_size = int(training.get("calibration_size") or 0)
    if val_size == 0 and calibration_size == 0:
        raise ConfigError(
            f"the model was trained on all {data.get('n_train', 'its')} training images of its "
            "split and held none out; calibrating on the test set would make its figures "
            "meaningless, so retrain it with this digitnet (`digitnet train` holds out images "
            "for calibration; see --calibration-size)"
        )
    X_train, X_test, y_train, y_test = load_mnist(
        split=str(training.get("split", "official")),
        data_dir=data_dir,
        source=str(training.get("source", "idx")),
    )
    splits = make_splits(
        X_train,
        y_train,
        X_test,
        y_test,
        val_size=val_size,
        calibration_size=calibration_size,
        seed=int(training.get("seed", 1)),
        dry_run=bool(training.get("dry_run")),
        batch_size=int(training.get("batch_size") or 1),
    )
    if dataset_fingerprint(splits.X_train, splits.y_train) != data["sha256"]:
        raise DataError(
            "the training images found do not match the model's data fingerprint: point "
            "--data-dir at the MNIST files the model was trained on"
        )
    return splits
