"""Predict digits in image files: one code path for ``digitnet predict`` and the server.

No TensorFlow here: images go through ``digitnet.inference.preprocess`` into MNIST form and
then through the model's NumPy forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitnet.errors import ImageError, NoDigitFound
from digitnet.inference.calibration import DEFAULT_LOW_CONFIDENCE

if TYPE_CHECKING:
    from digitnet.inference.model import Model

# Below this probability of the top class an answer is flagged as a guess, for model files
# without a calibration; calibrated files carry a threshold chosen on held-out data.
LOW_CONFIDENCE = DEFAULT_LOW_CONFIDENCE
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class ImagePrediction:
    """What the model made of one image.

    ``digit`` and ``probabilities`` are None when the image could not be read or holds no
    digit; ``error`` then says why. ``image`` is the 28x28 float32 array the model saw.
    """

    file: str
    digit: int | None = None
    confidence: float | None = None
    probabilities: list[float] | None = None
    low_confidence: bool = False
    error: str | None = None
    no_digit: bool = False
    image: np.ndarray | None = field(default=None, repr=False)
    # An image holding several digits: no ``digit``; ``number`` is what they read, and
    # ``confidence`` that reading's.
    number: str | None = None
    several_digits: bool = False
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: ``{file, digit, confidence, probabilities}`` or ``{file,
        error}``."""
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        if self.several_digits:
            return {
                "file": self.file,
                "digit": None,
                "number": self.number,
                "confidence": self.confidence,
                "several_digits": True,
                "reason": self.reason,
            }
        return {
            "file": self.file,
            "digit": self.digit,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "low_confidence": self.low_confidence,
        }


def predict_arrays(model: Model, images: np.ndarray) -> list[tuple[int, float, list[float]]]:
    """(digit, confidence, probabilities) for MNIST-form ``images`` (n, 28, 28) or (n, 784)."""
    images = np.asarray(images, dtype=np.float32)
    probabilities = model.predict_proba(images.reshape(len(images), -1))
    return [(int(row.argmax()), float(row.max()), [float(p) for p in row]) for row in probabilities]


def low_confidence_threshold(model: Any) -> float:
    """The top-class probability below which ``model``'s answers are marked low confidence."""
    calibration = getattr(model, "calibration", None)
    return LOW_CONFIDENCE if calibration is None else float(calibration.low_confidence)


def predict_image(model: Model, image: Any, name: str | None = None) -> ImagePrediction:
    """Preprocess and predict one image: a path, encoded bytes, a PIL image or an array."""
    from digitnet.inference.preprocess import find_ink, fit_into_mnist_frame
    from digitnet.inference.reading import looks_like_several_digits, read_number

    label = (
        name
        if name is not None
        else (str(image) if isinstance(image, (str, os.PathLike)) else "<image>")
    )
    try:
        # preprocess_image, keeping the ink to look at before it is fitted.
        ink_map = find_ink(image, name=label, line=False)
        seen = fit_into_mnist_frame(ink_map.ink, name=label)
        if ink_map.more_along_line or looks_like_several_digits(ink_map.ink):
            reading = read_number(model, image, name=label)
            if reading.number is not None and len(reading.number) > 1:
                return ImagePrediction(
                    label,
                    confidence=reading.confidence,
                    image=seen,
                    number=reading.number,
                    several_digits=True,
                    reason=f"the image holds {len(reading.number)} digits; "
                    "use digitnet read for numbers",
                )
    except NoDigitFound as error:
        return ImagePrediction(label, error=str(error), no_digit=True)
    except ImageError as error:
        return ImagePrediction(label, error=str(error))
    ((digit, confidence, probabilities),) = predict_arrays(model, seen[None])
    return ImagePrediction(
        label,
        digit,
        confidence,
        probabilities,
        low_confidence=confidence < low_confidence_threshold(model),
        image=seen,
    )


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, and the image files inside any directory (sorted, not recursive)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(
                sorted(
                    p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        else:
            paths.append(path)
    return paths


def predict_images(model: Model, paths: Iterable[str | os.PathLike[str]]) -> list[ImagePrediction]:
    """Predict every image in ``paths`` (files or directories); bad files, and folders that
    cannot be listed, get their own error and never stop the rest."""
    results = []
    for item in paths:
        try:
            files = expand_inputs([item])
        except OSError as error:
            results.append(
                ImagePrediction(str(item), error=f"cannot list {item}: {error.strerror or error}")
            )
            continue
        results.extend(predict_image(model, path, str(path)) for path in files)
    return results
