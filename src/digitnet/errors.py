"""Errors that carry a message meant for the person running digitnet.

Every error here is a ``ValueError`` subclass, so code that treats bad input generically still
catches it; the CLI prints ``str(error)`` as one line and exits non-zero, the server answers 4xx.
"""


class DigitnetError(ValueError):
    """Base class: the message says what was wrong and what to do about it."""


class DataError(DigitnetError):
    """A dataset file is missing, truncated, corrupt or does not match its partner."""


class ModelFileError(DigitnetError):
    """A model or checkpoint file cannot be read: truncated, tampered with, or unknown version."""


class ImageError(DigitnetError):
    """An input image cannot be read or is unusable (not an image, empty, too large, too small)."""


class NoDigitFound(ImageError):
    """The image was read but holds no ink that could be a digit."""


class ConfigError(DigitnetError):
    """A setting, layout, architecture or augmentation parameter is not valid."""


class TrainingError(DigitnetError):
    """Training cannot go on as configured (for example the cost became NaN)."""
