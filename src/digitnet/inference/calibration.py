"""Calibration: does a confidence of 90% mean right nine times in ten?

``reliability_bins`` groups predictions into equal-width confidence bins; the expected
calibration error (ECE, Guo et al. 2017) is the gap between each bin's accuracy and its mean
confidence, weighted by the bin's share of the predictions. Used by ``digitnet evaluate``, the
report's reliability diagram and the images benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_BINS = 15


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin ``(lower, upper]``: how many predictions fell in it, their mean
    confidence and the fraction of them that were right (both in [0, 1]; NaN when empty)."""

    lower: float
    upper: float
    count: int
    confidence: float
    accuracy: float


def reliability_bins(
    confidences: ArrayLike, correct: ArrayLike, n_bins: int = DEFAULT_BINS
) -> list[ReliabilityBin]:
    """Group predictions by confidence into ``n_bins`` equal-width bins over (0, 1].

    ``confidences`` (n,) are the probabilities of the predicted classes, ``correct`` (n,) says
    whether each prediction was right. A confidence of exactly 0 goes into the first bin.
    """
    confidence = np.asarray(confidences, dtype=np.float64).reshape(-1)
    right = np.asarray(correct, dtype=bool).reshape(-1)
    if confidence.shape != right.shape:
        raise ValueError(
            f"got {confidence.size} confidences for {right.size} outcomes; pass one of each "
            "per prediction"
        )
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin b holds (edges[b], edges[b + 1]]: searchsorted on the upper edges, "left" side.
    index = np.clip(np.searchsorted(edges[1:], confidence, side="left"), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                count=count,
                confidence=float(confidence[members].mean()) if count else float("nan"),
                accuracy=float(right[members].mean()) if count else float("nan"),
            )
        )
    return bins


def expected_calibration_error(
    confidences: ArrayLike, correct: ArrayLike, n_bins: int = DEFAULT_BINS
) -> float:
    """ECE in [0, 1]: sum over bins of (bin size / n) * |accuracy - mean confidence|."""
    bins = reliability_bins(confidences, correct, n_bins)
    total = sum(b.count for b in bins)
    if total == 0:
        return 0.0
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in bins if b.count))
