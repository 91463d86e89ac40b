"""The JSON answers of the non-hot routes, as Pydantic models: FastAPI documents them in
/openapi.json and checks every answer against them.

The hot ``:predict`` route answers ``Predictor``'s bytes directly and is described by hand
(``routes.tf_serving.predict_paths``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from digitnet import __version__
from digitnet.models import architectures
from digitnet.serving.protocol import (
    INPUT_NAME,
    MODEL_NAME,
    MODEL_VERSION,
    NO_DIGIT_MESSAGE,
    OUTPUT_NAME,
    SIGNATURE_NAME,
)

if TYPE_CHECKING:
    from digitnet.inference.model import Model
    from digitnet.inference.predict import ImagePrediction


class _Answer(BaseModel):
    model_config = ConfigDict(
        # TF Serving's field names start with "model_", which Pydantic reserves by default.
        protected_namespaces=(),
        # Every field is in every answer, defaults included: the schema says so.
        json_schema_serialization_defaults_required=True,
    )


class ErrorBody(_Answer):
    """Every 4xx and 500 answer."""

    error: str = Field(description="What was wrong, and what to do")


# ---------------------------------------------------------------------------------------------
# /api/health and the "digitnet" block of the metadata


class ModelSummary(_Answer):
    name: str = Field(description="The model's name, e.g. seed, mlp, cnn")
    architecture: str = Field(examples=["dense 784-100-100-60-10 (sigmoid output)"])
    inputs: int = Field(description="Values per instance")
    classes: int
    not_a_digit_class: int | None = Field(
        description='The output meaning "not a digit" (the last), or null when every output '
        "is a digit"
    )
    refuse_above: float | None = Field(
        description='The probability of "not a digit" above which the model refuses an image, '
        "chosen by its calibration; null when it refuses where that output is the likeliest "
        "(files calibrated before the threshold) or has no such output"
    )
    digitnet_version: str

    @classmethod
    def of(cls, model: Model) -> ModelSummary:
        calibration = model.calibration
        return cls(
            name=model.name,
            architecture=architectures.describe(model.architecture),
            inputs=model.n_inputs,
            classes=model.n_classes,
            not_a_digit_class=model.not_a_digit_class,
            refuse_above=None if calibration is None else calibration.refuse_above,
            digitnet_version=__version__,
        )


class Health(_Answer):
    status: Literal["ok"] = "ok"
    model: ModelSummary


# ---------------------------------------------------------------------------------------------
# TF Serving's GetModelStatus and GetModelMetadata


class StatusCode(_Answer):
    error_code: str = "OK"
    error_message: str = ""


class VersionStatus(_Answer):
    version: str = MODEL_VERSION
    state: str = "AVAILABLE"
    status: StatusCode = StatusCode()


class ModelStatus(_Answer):
    """GetModelStatus: one version, AVAILABLE."""

    model_version_status: list[VersionStatus] = [VersionStatus()]


class Dimension(_Answer):
    size: str = Field(description='"-1" for the batch dimension')
    name: str = ""


class TensorShape(_Answer):
    dim: list[Dimension]
    unknown_rank: bool = False


class TensorInfo(_Answer):
    dtype: str = "DT_FLOAT"
    tensor_shape: TensorShape
    name: str

    @classmethod
    def batch_of(cls, size: int, tensor_name: str) -> TensorInfo:
        """A float tensor of shape [-1, size]."""
        shape = TensorShape(dim=[Dimension(size="-1"), Dimension(size=str(size))])
        return cls(tensor_shape=shape, name=tensor_name)


class SignatureDef(_Answer):
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    method_name: str = "tensorflow/serving/predict"


class SignatureDefMap(_Answer):
    signature_def: dict[str, SignatureDef]


class Metadata(_Answer):
    signature_def: SignatureDefMap
    digitnet: ModelSummary


class ModelSpec(_Answer):
    name: str = MODEL_NAME
    signature_name: str = ""
    version: str = MODEL_VERSION


class ModelMetadata(_Answer):
    """GetModelMetadata, plus a "digitnet" block describing the model."""

    model_spec: ModelSpec = ModelSpec()
    metadata: Metadata

    @classmethod
    def of(cls, model: Model) -> ModelMetadata:
        signature = SignatureDef(
            inputs={
                INPUT_NAME: TensorInfo.batch_of(model.n_inputs, f"{SIGNATURE_NAME}_{INPUT_NAME}:0")
            },
            outputs={
                OUTPUT_NAME: TensorInfo.batch_of(model.n_classes, "StatefulPartitionedCall:0")
            },
        )
        return cls(
            metadata=Metadata(
                signature_def=SignatureDefMap(signature_def={SIGNATURE_NAME: signature}),
                digitnet=ModelSummary.of(model),
            )
        )


# ---------------------------------------------------------------------------------------------
# /api/predict


class DigitAnswer(_Answer):
    """The digit in an image."""

    digit: int = Field(ge=0)
    confidence: float = Field(description="The digit's probability")
    low_confidence: bool
    probabilities: list[float] = Field(description="One per class, in [0, 1]")
    image: list[list[float]] = Field(
        description="The 28x28 image the model saw: floats in [0, 1], white ink on black"
    )
    no_digit: Literal[False] = False
    not_a_digit: Literal[False] = False


class NotADigitAnswer(_Answer):
    """An image that a model with a "not a digit" class refused: a letter, a symbol, a shape
    or a scribble."""

    digit: None = None
    confidence: float = Field(description='The probability of "not a digit"')
    low_confidence: Literal[False] = False
    probabilities: list[float] = Field(description="The ten digits' probabilities, in [0, 1]")
    image: list[list[float]] = Field(
        description="The 28x28 image the model saw: floats in [0, 1], white ink on black"
    )
    no_digit: Literal[False] = False
    not_a_digit: Literal[True] = True
    reason: str = Field(description="Why it is not a digit")


class NoDigitAnswer(_Answer):
    """An image without a digit: a normal state (an empty drawing), not an error."""

    digit: None = None
    confidence: None = None
    low_confidence: Literal[False] = False
    probabilities: None = None
    image: None = None
    no_digit: Literal[True] = True
    not_a_digit: Literal[False] = False
    message: str = NO_DIGIT_MESSAGE
    detail: str = Field(description="Why no digit was found")


class SeveralDigitsAnswer(_Answer):
    """An image holding several digits: the number they read, and a pointer to /api/read."""

    digit: None = None
    number: str = Field(pattern=r"^[0-9]+$", examples=["42"])
    confidence: float = Field(description="The number's confidence: its digits' product")
    several_digits: Literal[True] = True
    reason: str = Field(examples=["the image holds 2 digits; use digitnet read for numbers"])
    image: list[list[float]] = Field(
        description="The 28x28 image a single digit would have been: all the ink, fitted"
    )
    no_digit: Literal[False] = False
    not_a_digit: Literal[False] = False


def image_answer(
    prediction: ImagePrediction,
) -> DigitAnswer | NotADigitAnswer | NoDigitAnswer | SeveralDigitsAnswer:
    """The /api/predict answer for an ``ImagePrediction`` that is ok or ``no_digit``."""
    if prediction.no_digit:
        return NoDigitAnswer(detail=prediction.error or NO_DIGIT_MESSAGE)
    if prediction.several_digits:
        assert prediction.number is not None and prediction.confidence is not None
        assert prediction.image is not None
        return SeveralDigitsAnswer(
            number=prediction.number,
            confidence=prediction.confidence,
            reason=prediction.reason or f"the image holds {len(prediction.number)} digits",
            image=_image_list(prediction.image),
        )
    assert prediction.confidence is not None
    assert prediction.probabilities is not None and prediction.image is not None
    if prediction.not_a_digit:
        return NotADigitAnswer(
            confidence=prediction.confidence,
            probabilities=prediction.probabilities,
            image=_image_list(prediction.image),
            reason=prediction.reason or "",
        )
    assert prediction.digit is not None
    return DigitAnswer(
        digit=prediction.digit,
        confidence=prediction.confidence,
        low_confidence=prediction.low_confidence,
        probabilities=prediction.probabilities,
        image=_image_list(prediction.image),
    )


def _image_list(image: np.ndarray) -> list[list[float]]:
    # Four decimals: 0.0001 is far below one grey level, and it keeps the answer small.
    values: list[list[float]] = np.round(image.astype(np.float64), 4).tolist()
    return values


# ---------------------------------------------------------------------------------------------
# /api/read


class DigitInNumber(_Answer):
    """One digit of a number, and where it was written."""

    digit: int = Field(ge=0, le=9)
    confidence: float = Field(description="The digit's probability")
    box: list[int] = Field(
        min_length=4,
        max_length=4,
        description="x0, y0, x1, y1: the digit's box in the image's pixels from its top-left "
        "corner, x1 and y1 exclusive",
        examples=[[12, 30, 58, 102]],
    )


class NumberAnswer(_Answer):
    """The number written in an image: ``NumberReading.to_json()``."""

    number: str = Field(pattern=r"^[0-9]+$", examples=["2104"])
    confidence: float = Field(description="The product of the digits' confidences")
    digits: list[DigitInNumber] = Field(description="Left to right")


class NotANumberAnswer(_Answer):
    """Marks that are not digits (a letter, a symbol, a scribble): refused, with the reason."""

    number: None = None
    confidence: float = Field(description="The probability of 'not a digit'")
    digits: list[DigitInNumber] = Field(description="The digits read before the refusal, if any")
    not_a_digit: Literal[True] = True
    reason: str


class NoNumberAnswer(_Answer):
    """An image without a digit: a normal state (an empty drawing), not an error."""

    number: None = None
    confidence: None = None
    digits: list[DigitInNumber] = Field(default=[], max_length=0)
    no_digit: Literal[True] = True
    message: str = NO_DIGIT_MESSAGE
    detail: str = Field(description="Why no digit was found")


def number_answer(reading: dict[str, Any]) -> NumberAnswer | NotANumberAnswer | NoNumberAnswer:
    """The /api/read answer for a ``NumberReading.to_json()``, or for ``{"no_digit": True,
    "detail": ...}``."""
    if reading.get("no_digit"):
        return NoNumberAnswer(detail=reading.get("detail") or NO_DIGIT_MESSAGE)
    if reading.get("not_a_digit"):
        return NotANumberAnswer.model_validate({"reason": "not a digit", **reading})
    return NumberAnswer.model_validate(reading)
