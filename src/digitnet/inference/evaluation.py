"""Test-set metrics for a trained model, without TensorFlow."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from digitnet.errors import DigitnetError

if TYPE_CHECKING:
    from digitnet.inference.model import Model


def test_set_for(
    model: Model, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The test images (n, 784) and labels (n,) of the split ``model`` was trained with.

    A model with a "not a digit" class is tested on digits only, as its training run was: a
    digit it refuses counts as a mistake."""
    from digitnet.data.mnist import load_mnist

    data = model.metadata.get("data", {})
    split, source = data.get("split", "official"), data.get("source", "idx")
    _, X_test, _, y_test = load_mnist(split=split, data_dir=data_dir, source=source)
    n_classes = model.n_classes - (model.not_a_digit_class is not None)
    if y_test.shape[1] != n_classes or X_test.shape[1] != model.n_inputs:
        raise DigitnetError(
            f"this data has {y_test.shape[1]} classes of {X_test.shape[1]} "
            f"values, the model expects {n_classes} of {model.n_inputs}"
        )
    return X_test, y_test.argmax(axis=1)


def evaluate_model(
    model: Model,
    X: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy and ECE (fractions), per-class precision and recall, and the confusion matrix.

    Args:
        model: a ``digitnet.Model``.
        X: images (n, 784) float32 in [0, 1].
        labels: true classes (n,) int.
        predicted: the model's classes for ``X`` (n,) int when already computed (a forward
            pass of the cnn over the 10,000 test images takes seconds), else computed here.
        probabilities: ``model.predict_proba(X)`` (n, n_classes) when already computed.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from digitnet.inference.calibration import expected_calibration_error

    if probabilities is None:
        probabilities = model.predict_proba(X)
    if predicted is None:
        predicted = model.answers(probabilities)
    classes = np.arange(model.n_classes)
    precision, recall, _, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    extra: dict[str, Any] = {}
    if model.not_a_digit_class is not None:
        # The share of the images answered "not a digit" (for digits: refused wrongly).
        extra["not_a_digit"] = float(np.mean(predicted == model.not_a_digit_class))
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "n": int(len(labels)),
        # Expected calibration error, 15 bins, of the confidences the model reports (calibrated
        # when its file holds a calibration).
        "ece": expected_calibration_error(
            probabilities[np.arange(len(predicted)), predicted], predicted == labels
        ),
        "calibrated": model.calibration is not None,
        "per_class": [
            {"class": int(c), "precision": float(p), "recall": float(r), "support": int(s)}
            for c, p, r, s in zip(classes, precision, recall, support)
        ],
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        **extra,
    }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text report: accuracy, calibration error, a per-class table and the confusion
    matrix."""
    refusals = "not_a_digit" in report
    lines = [
        f"Test accuracy: {report['accuracy'] * 100:.2f} % of {report['n']} images",
        f"Expected calibration error (15 bins): {report['ece'] * 100:.2f} %"
        + ("" if report.get("calibrated") else " (the model is not calibrated)"),
        *(
            [f"Answered not a digit: {report['not_a_digit'] * 100:.2f} % of the images"]
            if refusals
            else []
        ),
        "",
        "class  precision  recall  support",
    ]
    for row in report["per_class"]:
        if refusals and row["class"] == len(report["per_class"]) - 1:
            continue  # "not a digit" (the last class) has no test images
        lines.append(
            f"{row['class']:>5}  {row['precision'] * 100:8.2f}%  "
            f"{row['recall'] * 100:5.2f}%  {row['support']:>7}"
        )
    matrix = report["confusion_matrix"]
    width = max(len(str(v)) for row in matrix for v in row) + 1
    lines += [
        "",
        "Confusion matrix (rows: true class, columns: predicted"
        + (f"; {len(matrix) - 1}: not a digit):" if refusals else "):"),
        "     " + "".join(f"{c:>{width}}" for c in range(len(matrix))),
    ]
    for c, row in enumerate(matrix[:-1] if refusals else matrix):
        lines.append(f"{c:>4} " + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
