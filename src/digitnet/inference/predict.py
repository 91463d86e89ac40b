"""Predict digits in image files: one code path for ``digitnet predict`` and the server.

No TensorFlow here: images go through ``digitnet.inference.preprocess`` into MNIST form and
then through the model's NumPy forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
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
# Why a model with a "not a digit" class refused an image.
NOT_A_DIGIT_REASON = (
    'the model reads it as "not a digit" (a letter, symbol, shape or scribble), '
    "more likely than any digit"
)


@dataclass
class ImagePrediction:
    """What the model made of one image.

    ``digit`` and ``probabilities`` are None when the image could not be read or holds no
    digit; ``error`` then says why. ``image`` is the 28x28 float32 array the model saw.

    A model with a "not a digit" class (``Model.not_a_digit_class``) may refuse the image:
    ``not_a_digit`` is then True, ``digit`` None, ``confidence`` the probability of "not a
    digit" and ``reason`` says why. With such a model ``probabilities`` always holds the ten
    digits' probabilities (which then sum to one minus that of "not a digit").
    """

    file: str
    digit: int | None = None
    confidence: float | None = None
    probabilities: list[float] | None = None
    low_confidence: bool = False
    error: str | None = None
    no_digit: bool = False
    image: np.ndarray | None = field(default=None, repr=False)
    not_a_digit: bool = False
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
        if self.not_a_digit:
            return {
                "file": self.file,
                "digit": None,
                "confidence": self.confidence,
                "probabilities": self.probabilities,
                "not_a_digit": True,
                "reason": self.reason,
            }
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
    return [
        (int(answer), float(row[answer]), [float(p) for p in row])
        for answer, row in zip(model.answers(probabilities), probabilities, strict=True)
    ]


def low_confidence_threshold(model: Any) -> float:
    """The top-class probability below which ``model``'s answers are marked low confidence."""
    calibration = getattr(model, "calibration", None)
    return LOW_CONFIDENCE if calibration is None else float(calibration.low_confidence)


def predict_image(model: Model, image: Any, name: str | None = None) -> ImagePrediction:
    """Preprocess and predict one image: a path, encoded bytes, a PIL image or an array."""
    label = (
        name
        if name is not None
        else (str(image) if isinstance(image, (str, os.PathLike)) else "<image>")
    )
    seen = _preprocessed(model, image, label)
    if isinstance(seen, ImagePrediction):
        return seen
    ((digit, confidence, probabilities),) = predict_arrays(model, seen[None])
    return _answer(model, label, seen, digit, confidence, probabilities)


def predict_image_batch(model: Model, images: Sequence[tuple[str, Any]]) -> list[ImagePrediction]:
    """``predict_image`` for each ``(name, image)``, with one forward pass for them all: the
    same answers (within float rounding), many times faster per image for a CNN."""
    prepared = [_preprocessed(model, image, label) for label, image in images]
    ready = [seen for seen in prepared if not isinstance(seen, ImagePrediction)]
    answers = iter(predict_arrays(model, np.stack(ready)) if ready else [])
    return [
        seen if isinstance(seen, ImagePrediction) else _answer(model, label, seen, *next(answers))
        for (label, _), seen in zip(images, prepared, strict=True)
    ]


def _preprocessed(model: Model, image: Any, label: str) -> np.ndarray | ImagePrediction:
    """The MNIST-form image, or the answer without a digit: an image that could not be read,
    holds no digit, or holds several (read by ``model``)."""
    from digitnet.inference.preprocess import find_ink, fit_into_mnist_frame
    from digitnet.inference.reading import looks_like_several_digits, read_number

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
        return seen
    except NoDigitFound as error:
        return ImagePrediction(label, error=str(error), no_digit=True)
    except ImageError as error:
        return ImagePrediction(label, error=str(error))


def _answer(
    model: Model,
    label: str,
    seen: np.ndarray,
    digit: int,
    confidence: float,
    probabilities: list[float],
) -> ImagePrediction:
    refusal = model.not_a_digit_class
    if refusal is not None:
        probabilities = probabilities[:refusal]
        if digit == refusal:
            return ImagePrediction(
                label,
                None,
                confidence,
                probabilities,
                image=seen,
                not_a_digit=True,
                reason=NOT_A_DIGIT_REASON,
            )
    return ImagePrediction(
        label,
        digit,
        confidence,
        probabilities,
        low_confidence=confidence < low_confidence_threshold(model),
        image=seen,
    )


def iter_image_files(inputs: Iterable[str | os.PathLike[str]]) -> Iterator[str | ImagePrediction]:
    """Files as given, and the image files inside each folder (sorted by name, not recursive),
    as path strings; a folder that cannot be listed yields its error as an ``ImagePrediction``.

    A folder is read with one ``scandir`` pass and no ``stat`` per entry (the entry's type comes
    with its name on Linux), and only its names are held: 100,000 files cost a few MB.
    """
    for item in inputs:
        base = Path(item)
        if not base.is_dir():
            yield str(base)
            continue
        try:
            with os.scandir(base) as entries:
                names = sorted(
                    entry.name
                    for entry in entries
                    if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file()
                )
        except OSError as error:
            yield ImagePrediction(str(item), error=f"cannot list {item}: {error.strerror or error}")
            continue
        yield from (str(base / name) for name in names)


def no_images_found() -> ImageError:
    """The error for inputs that name no image file at all."""
    return ImageError(
        f"no images found in the given folders (looked for {' '.join(sorted(IMAGE_SUFFIXES))})"
    )


def predict_images(model: Model, paths: Iterable[str | os.PathLike[str]]) -> list[ImagePrediction]:
    """Predict every image in ``paths`` (files or directories); bad files, and folders that
    cannot be listed, get their own error and never stop the rest."""
    return [
        item if isinstance(item, ImagePrediction) else predict_image(model, item, item)
        for item in iter_image_files(paths)
    ]
