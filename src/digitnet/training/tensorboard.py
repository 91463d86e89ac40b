"""TensorBoard logs of a training run (``digitnet train --tensorboard DIR``).

Event files go where ``tensorboard --logdir DIR`` expects Keras's: ``DIR/train`` and
``DIR/validation``, one step per epoch, so both runs share each chart:

=====================  ===================================================================
``train``              ``cost`` (mean batch cost as optimised: with label smoothing and the
                       L2 term where set), ``accuracy`` (running, on the batches as
                       trained), ``learning_rate``, a histogram of every parameter
                       (``W1``, ``b1``, ``gamma2``, ...), ``settings`` (text, step 0)
``validation``         ``cost`` (plain), ``accuracy``, ``mistakes``: the most confident wrong
                       answers as images, with ``mistakes_labels`` (text) saying what each is
=====================  ===================================================================

Without a validation set (the ``seed`` model) the mistakes come from the first
``MISTAKE_POOL`` training images and go under ``train``. The summaries are TensorBoard's own
(``tf.summary.scalar``, ``histogram``, ``image``, ``text``), which the ``tensorboard`` package
implements.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from digitnet.errors import ConfigError

MISTAKES_SHOWN = 8
MISTAKE_POOL = 5000
TRAIN_SCALARS = {
    "cost": "training: the mean batch cost as optimised (label smoothing and L2 included), so "
    "above the validation cost",
    "accuracy": "training: fraction right on the epoch's batches as trained (augmented, dropout)",
    "learning_rate": "Adam's step size at the end of the epoch",
}


class TensorBoardLog:
    """Writes one training run's summaries; call ``write_epoch`` after every epoch.

    Args:
        logdir: the folder given to ``tensorboard --logdir``.
        settings: the run's resolved settings (``TrainConfig.to_json()``), logged as text.
        X_train, y_train: training images (n, features) and one-hot labels (n, classes).
        X_val, y_val: the validation set (may be empty).
    """

    def __init__(
        self,
        logdir: str | Path,
        settings: dict[str, Any],
        X_train: np.ndarray,
        y_train: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
    ) -> None:
        try:
            import tensorboard  # noqa: F401  (tf.summary's scalar, histogram, image live there)
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install tensorboard"
            ) from None
        logdir = Path(logdir)
        self.train = tf.summary.create_file_writer(str(logdir / "train"))
        self.validation = None
        if len(X_val):
            self.validation = tf.summary.create_file_writer(str(logdir / "validation"))
            self.X_check, self.y_check = X_val, y_val
            self.check_writer, self.check_name = self.validation, "validation"
        else:
            self.X_check, self.y_check = X_train[:MISTAKE_POOL], y_train[:MISTAKE_POOL]
            self.check_writer, self.check_name = self.train, "training"
        self.labels = np.asarray(self.y_check).argmax(axis=1)
        side = math.isqrt(self.X_check.shape[1])
        self.side = side if side * side == self.X_check.shape[1] else None
        with self.train.as_default(step=0):
            tf.summary.text("settings", f"```\n{json.dumps(settings, indent=2)}\n```")
        self.train.flush()

    def write_epoch(self, record: dict[str, Any], fitter: Any) -> None:
        """Log one epoch: ``record`` is its history row (``epoch``, ``cost``, ``accuracy``,
        ``learning_rate``, ``val_cost``, ``val_accuracy``); ``fitter`` holds the weights."""
        step = int(record["epoch"])
        with self.train.as_default(step=step):
            for name, description in TRAIN_SCALARS.items():
                if record.get(name) is not None:
                    tf.summary.scalar(name, record[name], description=description)
            for name, value in fitter.parameters().items():
                tf.summary.histogram(name, value)
        if self.validation is not None:
            with self.validation.as_default(step=step):
                tf.summary.scalar(
                    "cost",
                    record["val_cost"],
                    description="validation: the plain cost, without label smoothing or L2",
                )
                tf.summary.scalar("accuracy", record["val_accuracy"])
        if self.side is not None:
            with self.check_writer.as_default(step=step):
                self._write_mistakes(fitter.outputs(self.X_check))
        for writer in (self.train, self.validation):
            if writer is not None:
                writer.flush()

    def _write_mistakes(self, outputs: np.ndarray) -> None:
        """The ``MISTAKES_SHOWN`` wrong answers given with the highest confidence."""
        probabilities = outputs / np.maximum(outputs.sum(axis=1, keepdims=True), 1e-12)
        predicted = probabilities.argmax(axis=1)
        confidence = probabilities.max(axis=1)
        wrong = np.flatnonzero(predicted != self.labels)
        worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:MISTAKES_SHOWN]
        if len(worst) == 0:
            return
        side = self.side or 0
        images = self.X_check[worst].reshape(-1, side, side, 1)
        where = f"{self.check_name} images" + (
            f" (the first {len(self.X_check)})" if self.check_name == "training" else ""
        )
        tf.summary.image(
            "mistakes",
            images,
            max_outputs=MISTAKES_SHOWN,
            description=f"The most confident wrong answers on the {where}; "
            "mistakes_labels says what each one is.",
        )
        tf.summary.text(
            "mistakes_labels",
            "\n".join(
                f"{k}. image {i}: true {self.labels[i]}, predicted {predicted[i]} "
                f"({confidence[i] * 100:.1f} %)  "
                for k, i in enumerate(worst)
            ),
        )
