"""The number reader's own crops of composed lines, labelled: what its segmentation must learn to
tell apart.

``read_number`` over-segments a line and asks the digit model about every span of pieces that
could be one digit (``digitnet.inference.reading``). Most spans are wrong: half a digit, a digit
with a neighbour's stroke, two touching digits fitted into one frame. A model that has seen only
whole digits answers some of those with confidence, and the wrong split wins. Here lines are
composed from training digits (``digitnet.data.lines``), segmented exactly as the reader
segments, and each span labelled by whose ink it holds: one digit whole (labelled that digit),
or clearly not one digit (labelled "not a digit"); spans in between are left out.

No TensorFlow: NumPy, through the reader's segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from digitnet.data.lines import compose_number
from digitnet.inference.preprocess import find_ink
from digitnet.inference.reading import at_working_height, span_images

# A span is one digit when it holds at least WHOLE of that digit's ink and at most STRAY of its
# own ink belongs to other digits; it is not one digit when it holds less than PART of its
# main digit, or more than MIXED of its ink is another digit's.
WHOLE = 0.85
STRAY = 0.10
PART = 0.65
MIXED = 0.25
# Label of a span left out.
UNLABELLED = -1
# Wrong spans are left out when they are shorter than SHORT of the line's digit height (the
# reader's height prior already rejects those), or narrower than NARROW of their height once
# fitted (a lone stroke: a 1 in all but name, which only the line's context can rule out).
SHORT = 0.5
NARROW = 0.45


@dataclass
class LabelledSpans:
    """A composed line's spans: ``images`` (n, 28, 28) float32 in MNIST form, ``labels`` (n,)
    int (a digit, ``not_a_digit``, or ``UNLABELLED``); the line's ``pieces`` count, and each
    span's pieces ``first`` to ``stop`` (n,) (exclusive), as ``read_number`` numbers them."""

    images: np.ndarray
    labels: np.ndarray
    not_a_digit: int
    pieces: int
    first: np.ndarray
    stop: np.ndarray

    @property
    def right(self) -> np.ndarray:
        """(n,) bool: True for the spans that are one whole digit."""
        result: np.ndarray = (self.labels >= 0) & (self.labels != self.not_a_digit)
        return result


def labelled_spans(
    digits: list[np.ndarray],
    digit_labels: list[int],
    rng: np.random.Generator,
    not_a_digit: int,
) -> LabelledSpans:
    """Compose ``digits`` (each (28, 28), white on black) into a line, segment it as
    ``read_number`` does and label every span. Raises ``NoDigitFound`` if no ink is found."""
    line = compose_number(digits, rng, owners=True)
    assert line.owners is not None
    ink_map = at_working_height(find_ink(line.image))
    ink = ink_map.ink
    rows = np.floor((ink_map.top + np.arange(ink.shape[0]) + 0.5) * ink_map.scale).astype(int)
    cols = np.floor((ink_map.left + np.arange(ink.shape[1]) + 0.5) * ink_map.scale).astype(int)
    rows = np.clip(rows, 0, line.owners.shape[0] - 1)
    cols = np.clip(cols, 0, line.owners.shape[1] - 1)
    owners = line.owners[np.ix_(rows, cols)].astype(np.int64)
    segmented, spans, images, usable = span_images(ink)
    n_digits = len(digits)
    owned = owners >= 0
    totals = np.bincount(owners[owned], weights=ink[owned], minlength=n_digits)
    labels = np.full(len(spans), UNLABELLED, np.int64)
    fitted = images > 0.1
    widths = fitted.any(axis=1).sum(axis=1)
    heights = np.maximum(fitted.any(axis=2).sum(axis=1), 1)
    for index, span in enumerate(spans):
        if not usable[index]:
            continue
        stroke_like = widths[index] < NARROW * heights[index]
        short = span.bottom - span.top < SHORT * segmented.height
        span_pieces = [piece.label for piece in segmented.pieces[span.first : span.stop]]
        box = (slice(span.top, span.bottom), slice(span.left, span.right))
        mask = np.isin(segmented.labels[box], span_pieces) & owned[box]
        masses = np.bincount(owners[box][mask], weights=ink[box][mask], minlength=n_digits)
        held = masses.sum()
        if held <= 0:
            continue
        main = int(masses.argmax())
        share_of_digit = masses[main] / max(totals[main], 1e-9)
        others = 1.0 - masses[main] / held
        if share_of_digit >= WHOLE and others <= STRAY:
            labels[index] = digit_labels[main]
        elif (share_of_digit < PART or others > MIXED) and not (stroke_like or short):
            labels[index] = not_a_digit
    first = np.array([span.first for span in spans])
    stop = np.array([span.stop for span in spans])
    return LabelledSpans(images, labels, not_a_digit, len(segmented.pieces), first, stop)


def right_split_exists(spans: LabelledSpans, n_digits: int) -> bool:
    """Whether some partition of the pieces into ``n_digits`` spans uses right spans only."""
    reachable = np.zeros((spans.pieces + 1, n_digits + 1), bool)
    reachable[0, 0] = True
    order = np.argsort(spans.stop, kind="stable")
    right = spans.right
    for index in order:
        if not right[index]:
            continue
        first, stop = int(spans.first[index]), int(spans.stop[index])
        reachable[stop, 1:] |= reachable[first, :-1]
    return bool(reachable[spans.pieces, n_digits])
