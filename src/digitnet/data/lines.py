"""Numbers composed from MNIST digits, laid out on one line the way people write them.

``compose_number`` puts digits side by side with uneven gaps, a quarter of the neighbouring
pairs touching or overlapping, heights varying by 15 %, a baseline that drifts and tilts, and a
slant. ``benchmarks/read_numbers.py`` composes its numbers from the **test** digits with it;
the reader's training composes lines from the training digits only, to teach the number
reader what its segmentation's wrong crops look like (``digitnet.training.nondigits``).

No TensorFlow: NumPy and Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Layout, in units of the line's nominal digit width (the MNIST digits' mean ink width at
# their height, 14 of 20 px) and height.
NOMINAL_WIDTH = 14.0
GAP_RANGE = (0.0, 0.6)
OVERLAP_RANGE = (0.0, 0.2)
TOUCHING_SHARE = 0.25
HEIGHT_RANGE = (0.85, 1.15)
BASELINE_TILT = 0.08
BASELINE_JITTER = 0.05
SLANT = 0.2
MARGIN = 4
# Ink below this belongs to no digit in the owner map.
_OWNED = 0.05


@dataclass
class ComposedLine:
    """A composed number.

    ``image`` float32 (h, w) in [0, 1], white on black, h >= 28, w >= h, digits about 20 px
    tall as in MNIST; ``boxes`` each digit's (x0, y0, x1, y1) in it before the slant;
    ``owners`` (h, w) int16, when asked for: the index of the digit whose ink is strongest at
    each pixel, -1 where there is (almost) none.
    """

    image: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    owners: np.ndarray | None = None


def compose_number(
    digits: Sequence[np.ndarray], rng: np.random.Generator, *, owners: bool = False
) -> ComposedLine:
    """Lay MNIST digits (each (28, 28) uint8 or float, white on black) out on one line.

    The random draws do not depend on ``owners``: the same ``rng`` state gives the same line.
    """
    scales = rng.uniform(*HEIGHT_RANGE, size=len(digits))
    crops = []
    for digit, scale in zip(digits, scales):
        values = np.asarray(digit, np.float32).reshape(28, 28)
        if values.max() > 1.0:
            values = values / 255.0
        rows = np.flatnonzero(values.max(axis=1) > 0.1)
        cols = np.flatnonzero(values.max(axis=0) > 0.1)
        crop = values[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        height = max(1, round(crop.shape[0] * scale))
        width = max(1, round(crop.shape[1] * scale))
        resized = Image.fromarray(crop).resize((width, height), Image.Resampling.BILINEAR)
        crops.append(np.clip(np.asarray(resized, np.float32), 0.0, 1.0))
    tilt = rng.uniform(-BASELINE_TILT, BASELINE_TILT)
    nominal = NOMINAL_WIDTH * float(np.mean(scales))
    # Positions: x of each digit's left edge, y of its baseline (bottom), on an unbounded plane.
    lefts, bottoms = [0], [0.0]
    for index in range(1, len(crops)):
        previous, current = crops[index - 1], crops[index]
        bottom = tilt * lefts[-1] + rng.normal(0.0, BASELINE_JITTER * 20)
        if rng.random() < TOUCHING_SHARE:
            contact = _contact(previous, lefts[-1], bottoms[-1], current, bottom)
            # Strokes touching, pushed further in by up to 20 % of a width, but the boxes
            # never overlapping by more than that (a digit nested in its neighbour's hollow
            # is not how people write).
            left = max(
                contact - round(rng.uniform(*OVERLAP_RANGE) * nominal),
                lefts[-1] + previous.shape[1] - round(OVERLAP_RANGE[1] * nominal),
            )
        else:
            left = lefts[-1] + previous.shape[1] + round(rng.uniform(*GAP_RANGE) * nominal)
        lefts.append(left)
        bottoms.append(bottom)
    tops = [round(b) - crop.shape[0] for b, crop in zip(bottoms, crops)]
    min_top, min_left = min(tops), min(lefts)
    max_bottom = max(t + crop.shape[0] for t, crop in zip(tops, crops))
    max_right = max(left + crop.shape[1] for left, crop in zip(lefts, crops))
    ink_height, ink_width = max_bottom - min_top, max_right - min_left
    height = max(28, ink_height + 2 * MARGIN)
    width = max(height, ink_width + 2 * MARGIN)
    line = np.zeros((height, width), np.float32)
    row0 = (height - ink_height) // 2 - min_top
    col0 = (width - ink_width) // 2 - min_left
    boxes = []
    for top, left, crop in zip(tops, lefts, crops):
        y, x = top + row0, left + col0
        region = line[y : y + crop.shape[0], x : x + crop.shape[1]]
        np.maximum(region, crop, out=region)
        boxes.append((x, y, x + crop.shape[1], y + crop.shape[0]))
    # Slant: rows sheared about the middle, as italic handwriting leans.
    shear = rng.uniform(-SLANT, SLANT)

    def slant(layer: np.ndarray) -> np.ndarray:
        slanted = Image.fromarray(layer).transform(
            layer.shape[::-1],
            Image.Transform.AFFINE,
            (1.0, shear, -shear * height / 2, 0.0, 1.0, 0.0),
            Image.Resampling.BILINEAR,
        )
        return np.clip(np.asarray(slanted, np.float32), 0.0, 1.0)

    owner_map = None
    if owners:
        layers = np.zeros((len(crops), height, width), np.float32)
        for index, (x0, y0, x1, y1) in enumerate(boxes):
            layers[index, y0:y1, x0:x1] = crops[index]
            layers[index] = slant(layers[index])
        owner_map = np.where(layers.max(axis=0) > _OWNED, layers.argmax(axis=0), -1)
        owner_map = owner_map.astype(np.int16)
    return ComposedLine(slant(line), boxes, owner_map)


def _contact(
    previous: np.ndarray,
    previous_left: int,
    previous_bottom: float,
    current: np.ndarray,
    bottom: float,
) -> int:
    """The left edge at which ``current`` just touches ``previous`` (ink above 0.3, rows aligned
    by their bottoms)."""
    top_previous = round(previous_bottom) - previous.shape[0]
    top_current = round(bottom) - current.shape[0]
    best: int | None = None
    for row in range(current.shape[0]):
        other = row + top_current - top_previous
        if not 0 <= other < previous.shape[0]:
            continue
        mine = np.flatnonzero(current[row] > 0.3)
        theirs = np.flatnonzero(previous[other] > 0.3)
        if mine.size and theirs.size:
            # current's leftmost ink lands one pixel right of previous's rightmost.
            left = previous_left + int(theirs[-1]) + 1 - int(mine[0])
            best = left if best is None else max(best, left)
    if best is None:
        return previous_left + int(previous.shape[1])
    return best
