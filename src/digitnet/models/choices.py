"""Every choice a user makes by name or number, defined once, as typed constraints.

Modelled on scikit-learn's parameter validation: an :class:`Options` is a set of strings, an
:class:`Interval` a range of integers or reals, :class:`Boolean` true or false. Each knows
whether a value is valid (``is_valid``) and how to say what it must be (``describe``), so the
command line's ``choices=`` and help, the configuration checks and their error messages all
derive from the lists below instead of repeating them.

Plain Python: imports nothing from digitnet but its errors, so every layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from digitnet.errors import ConfigError


class Constraint(Protocol):
    """What a setting must be."""

    def is_valid(self, value: Any) -> bool: ...

    def describe(self) -> str:
        """The end of the sentence "NAME must be ...", e.g. ``"one of 'mse', 'cross_entropy'"``."""
        ...


@dataclass(frozen=True, init=False)
class Options:
    """A closed set of strings, in the order they are listed to users.

    ``Options("mse", "cross_entropy")``, or with a few words on each for help texts:
    ``Options(mse="squared error", cross_entropy="softmax with cross-entropy")``. Iterable and
    supports ``in``, so it is an argparse ``choices=`` as it is.
    """

    values: tuple[str, ...]
    descriptions: Mapping[str, str] = field(compare=False)

    def __init__(self, *values: str, **described: str) -> None:
        object.__setattr__(self, "values", tuple(values) + tuple(described))
        object.__setattr__(self, "descriptions", dict(described))
        if not self.values or len(set(self.values)) != len(self.values):
            raise ValueError(f"options must be distinct and not empty, got {self.values}")

    def is_valid(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(value) for value in self.values)

    def help(self) -> str:
        """The options with their descriptions, ``"mse: squared error; cross_entropy: ..."``,
        as argparse help (which formats with ``%``: a literal one is doubled)."""
        return "; ".join(
            f"{value}: {self.descriptions[value]}" if value in self.descriptions else value
            for value in self.values
        ).replace("%", "%%")

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __contains__(self, value: object) -> bool:
        return value in self.values

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Interval:
    """Numbers of ``type`` between ``low`` and ``high`` (None: unbounded on that side).

    ``closed`` says which ends belong to the interval, as in scikit-learn's ``Interval``.
    ``int`` admits whole numbers only; ``float`` admits any finite real, whole numbers too.
    Booleans are never numbers here, although Python counts them as ints.
    """

    type: type[int] | type[float]
    low: float | None
    high: float | None
    closed: Literal["left", "right", "both", "neither"] = "both"
    note: str = ""

    def is_valid(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return False
        return True

    def describe(self) -> str:
        kind = "a whole number" if self.type is int else "a number"
        left_closed = self.closed in ("left", "both")
        right_closed = self.closed in ("right", "both")
        if self.low is not None and self.high is not None:
            text = (
                f"{kind} in {'[' if left_closed else '('}{_number(self.low)}, "
                f"{_number(self.high)}{']' if right_closed else ')'}"
            )
        elif self.low is not None:
            text = f"{kind} {'>=' if left_closed else '>'} {_number(self.low)}"
        elif self.high is not None:
            text = f"{kind} {'<=' if right_closed else '<'} {_number(self.high)}"
        else:
            text = kind
        return f"{text} ({self.note})" if self.note else text


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Boolean:
    """``True`` or ``False`` (not 0 or 1: a JSON ``1`` for a flag is more likely a mistake)."""

    def is_valid(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


def check(name: str, value: Any, constraint: Constraint, where: str = "") -> None:
    """Raise ConfigError ``"{where}{name} must be ..., got value"`` unless ``value`` is valid."""
    if not constraint.is_valid(value):
        raise ConfigError(f"{where}{name} must be {constraint.describe()}, got {value!r}")


# --------------------------------------------------------------------------------------------
# The lists. The command line shows them in this order; the first word of each description
# is what its --help says about the choice.

MODEL_NAMES = Options(
    seed="the tutorial's 784-100-100-60-10 network",
    mlp="a wide dropout MLP",
    cnn="a batch-normalized CNN",
    reader='the cnn with an eleventh output, "not a digit"',
)
COSTS = Options(
    mse="squared error on sigmoid outputs (the tutorial's)",
    cross_entropy="softmax with cross-entropy",
)
SCHEDULES = Options(
    constant="the same rate throughout",
    cosine="cosine decay to 1% of the rate",
    onecycle="warm-up over the first 20% of steps, then cosine decay",
)
PRECISIONS = Options(
    auto="bfloat16 where the CPU has AMX or AVX-512 BF16 units (several times faster), "
    "else float32",
    float32="always float32",
    bfloat16="always bfloat16",
)
SPLITS = Options(
    seed="the tutorial's 56,000/14,000 split of all 70,000 images",
    official="MNIST's 60,000/10,000",
)
SOURCES = Options(idx="the MNIST files", openml="scikit-learn's fetch_openml")
ACTIVATIONS = Options("relu", "sigmoid", "softmax", "linear")
PADDINGS = Options("same", "valid")
STRATEGIES = Options(
    default="one device, TensorFlow's default strategy",
    mirrored="MirroredStrategy over every local GPU, else the CPU",
    multiworker="MultiWorkerMirroredStrategy across the hosts TF_CONFIG lists",
)
CLUSTER_JOBS = Options(
    chief="the worker that also writes checkpoints and the model (optional)",
    worker="a training worker (the first one writes when there is no chief)",
)
CLUSTER_TIMEOUT = Interval(float, 0, None, "neither", note="seconds")
DEFAULT_CLUSTER_TIMEOUT = 300.0
"""Seconds a multiworker run waits for every TF_CONFIG task to join: long enough for pods
scheduled and started minutes apart, short enough that a missing worker is an error."""
