"""Reading a whole line at once: the line network's input and its CTC decoding.

The number reader's segmentation (``digitnet.inference.reading``) must cut touching and
overlapping digits apart before its classifier sees them, and most of its misreadings are bad
cuts. A line network reads the line's ink as it is: ``line_image`` scales the ink to
``LINE_HEIGHT`` px, the network (``digitnet.models.architectures.line_architecture``) scores
every 4 px column over the ten digits and CTC's blank, and ``decode`` takes the best symbol of
each column, merges repeats and drops blanks (greedy CTC decoding). Each digit's box is the ink
between the midpoints to its neighbours' columns.

No TensorFlow here: the network's NumPy pass is ``digitnet.inference.model.LineNetwork``,
and ``digitnet.training.line_reader`` trains it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from digitnet.inference.model import LineNetwork
from digitnet.inference.preprocess import stroke_width
from digitnet.models.architectures import LINE_HEIGHT, LINE_STRIDE

__all__ = [
    "LINE_INNER",
    "LINE_PAD",
    "MAX_LINE_WIDTH",
    "LineDigit",
    "LineImage",
    "LineNetwork",
    "decode",
    "digit_boxes",
    "digit_columns",
    "line_image",
]

LINE_INNER = 24
"""The ink's height in a line image, px: 4 px of margin above and below."""
LINE_PAD = 16
"""Empty columns left of the ink in a line image (and at least as many right of it): output
column ``t`` of the network is centred on input column ``LINE_STRIDE * t + LINE_PAD``, so on
column ``LINE_STRIDE * t`` of the ink."""
MAX_LINE_WIDTH = 50 * LINE_INNER
"""Ink more than 50 times as long as tall is not a line image: 12 digits with wide gaps
are about 15 heights long, and a hairline 3,000 px long would otherwise become a line image
of 72,000 columns (gigabytes in the first convolutions)."""
# Ink below this is background when the line image is cropped and its strokes measured.
_INKED = 0.05
# Strokes are scaled so that this percentile of their pixels is full ink (thin pens and pencil
# come out faint), but never brightened more than 1 / _FAINTEST.
_STROKE_LEVEL = 75
_FAINTEST = 0.2
BLANK = 10
"""The symbol CTC's blank has: the last of the line network's 11 outputs."""


@dataclass
class LineImage:
    """A line's ink ready for the line network: ``values`` (LINE_HEIGHT, width) float32 in
    [0, 1], width a multiple of LINE_STRIDE; ink column ``c`` of the cropped ink is column
    ``LINE_PAD + c * scale`` of it. ``left``, ``top``: where the crop starts in the ink
    (px); ``scale``: line-image px per ink px; ``ink``: the cropped ink (h, w)."""

    values: np.ndarray
    left: int
    top: int
    scale: float
    ink: np.ndarray


def line_image(ink: np.ndarray) -> LineImage | None:
    """The ink (h, w) float in [0, 1], white on black, cropped to its strokes and scaled to
    LINE_INNER px tall in a LINE_HEIGHT-px line image; None when there is no ink or it would
    be wider than MAX_LINE_WIDTH."""
    values = np.asarray(ink, np.float32)
    rows = np.flatnonzero(values.max(axis=1) > _INKED)
    cols = np.flatnonzero(values.max(axis=0) > _INKED)
    if rows.size == 0:
        return None
    crop = values[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    level = _levelled(crop)
    scale = LINE_INNER / level.shape[0]
    width = max(1, round(level.shape[1] * scale))
    if width > MAX_LINE_WIDTH:
        return None
    # Reduced by area, enlarged bilinearly: neither leaves gaps in a stroke.
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    scaled = np.asarray(Image.fromarray(level).resize((width, LINE_INNER), method), np.float32)
    scaled = _at_full_strength(scaled)
    total = -(-(width + 2 * LINE_PAD) // LINE_STRIDE) * LINE_STRIDE
    out = np.zeros((LINE_HEIGHT, total), np.float32)
    margin = (LINE_HEIGHT - LINE_INNER) // 2
    out[margin : margin + LINE_INNER, LINE_PAD : LINE_PAD + width] = np.clip(scaled, 0.0, 1.0)
    strokes = stroke_width(out)
    if strokes is not None and strokes <= _THIN_STROKE:
        out = _thickened(out)
    return LineImage(out, int(cols[0]), int(rows[0]), width / crop.shape[1], crop)


# A line whose strokes come out at most this wide (px, at LINE_INNER) is thickened. A thin pen
# reduced by area leaves 1-2 px lines, where the line network learned from MNIST's strokes
# (about 3.5 px): thickened, thin-pen numbers of 4 and 8 validation digits read 76.7 -> 79.3 %
# and 63.3 -> 71.3 % exact (150 each); no other rendering has strokes this thin.
_THIN_STROKE = 2.2


def _thickened(values: np.ndarray) -> np.ndarray:
    """Strokes about 2 px wider (a 3 x 3 maximum), softened as an anti-aliased pen line is
    (Gaussian, 0.6 px) and brought back to full strength: float32 of the same shape."""
    thick = ndimage.gaussian_filter(ndimage.maximum_filter(values, size=3), 0.6)
    result: np.ndarray = np.clip(_at_full_strength(thick), 0.0, 1.0).astype(np.float32)
    return result


def _at_full_strength(values: np.ndarray) -> np.ndarray:
    """``values`` divided by their typical stroke pixel's level (the _STROKE_LEVEL percentile
    of the inked pixels, at least _FAINTEST), so that strokes come out at full ink; not
    clipped."""
    inked = values[values > _INKED]
    if not inked.size:
        return values
    return values / max(float(np.percentile(inked, _STROKE_LEVEL)), _FAINTEST)


# A line is levelled when it is at least this many times as long as tall (a lone digit's own
# slant must not be taken for the line's), tilted between these slopes (about 2 and 15
# degrees), and comes out at most _LEVELLED_HEIGHT of its height.
_LEVEL_ASPECT = 2.0
_LEVEL_SLOPES = np.tan(np.radians(np.arange(-15.0, 15.5, 0.5)))
_MIN_SLOPE = np.tan(np.radians(1.75))
_LEVELLED_HEIGHT = 0.85


def _levelled(crop: np.ndarray) -> np.ndarray:
    """``crop`` (h, w), ink cropped to its strokes, with a tilted or drifting line brought
    level by shifting each column up or down (a vertical shear): (h', w), the same columns.

    A number written uphill fills a box much taller than its digits, and scaled to
    LINE_INNER px its digits come out small (8 digits tilted by 10 degrees: a third of
    LINE_INNER). Columns keep their places, so digit boxes still fall on the ink's columns.
    The slope is the one that packs the ink's rows closest (least weighted spread).
    """
    height, width = crop.shape
    if width < _LEVEL_ASPECT * height:
        return crop
    ink_rows, ink_columns = np.nonzero(crop > _INKED)
    # A few thousand pixels measure a slope as well as all of them.
    step = max(1, len(ink_rows) // 4000)
    ink_rows, ink_columns = ink_rows[::step], ink_columns[::step]
    weights = crop[ink_rows, ink_columns].astype(np.float64)
    ys, xs = ink_rows.astype(np.float64), ink_columns.astype(np.float64)
    xs -= np.average(xs, weights=weights)
    shifted = ys[None, :] - _LEVEL_SLOPES[:, None] * xs[None, :]
    means = shifted @ weights / weights.sum()
    spreads = ((shifted - means[:, None]) ** 2) @ weights
    slope = float(_LEVEL_SLOPES[int(np.argmin(spreads))])
    if abs(slope) < _MIN_SLOPE:
        return crop
    # Output (r, c) reads input (r + slope * (c - width / 2) - pad, c): pad rows above and
    # below hold the column shifts.
    pad = abs(slope) * width / 2
    levelled = ndimage.affine_transform(
        crop,
        np.array([[1.0, slope], [0.0, 1.0]]),
        offset=(-slope * width / 2 - pad, 0.0),
        output_shape=(int(np.ceil(height + 2 * pad)), width),
        order=1,
    )
    rows = np.flatnonzero(levelled.max(axis=1) > _INKED)
    if rows.size == 0 or rows[-1] + 1 - rows[0] > _LEVELLED_HEIGHT * height:
        return crop
    return np.ascontiguousarray(levelled[rows[0] : rows[-1] + 1], np.float32)


@dataclass
class LineDigit:
    """A digit CTC decoding found: ``confidence`` its best column's probability, ``first``
    and ``last`` the output columns where it was the best symbol (inclusive)."""

    digit: int
    confidence: float
    first: int
    last: int


def decode(scores: np.ndarray) -> list[LineDigit]:
    """Greedy CTC decoding of ``scores`` (columns, 11) probabilities, blank last: the best
    symbol of each column, runs of one symbol merged, blanks dropped ("1-1" is 11, "11" is 1).
    """
    best = scores.argmax(axis=1)
    digits: list[LineDigit] = []
    previous = BLANK
    for column, symbol in enumerate(best.tolist()):
        if symbol != BLANK:
            probability = float(scores[column, symbol])
            if symbol == previous:
                digits[-1].last = column
                digits[-1].confidence = max(digits[-1].confidence, probability)
            else:
                digits.append(LineDigit(symbol, probability, column, column))
        previous = symbol
    return digits


def digit_columns(digits: list[LineDigit], image: LineImage) -> list[tuple[int, int]]:
    """Each digit's share of the cropped ink's columns, (start, stop): from the midpoint
    between its columns and its left neighbour's to the midpoint with its right neighbour's
    (the ink's ends for the first and last)."""
    width = image.ink.shape[1]
    centres = [(digit.first + digit.last) / 2 * LINE_STRIDE / image.scale for digit in digits]
    edges = [0] + [round((a + b) / 2) for a, b in zip(centres, centres[1:])] + [width]
    shares = []
    for a, b in zip(edges, edges[1:]):
        # A digit the network places past the ink's end (in the line image's margin) still
        # gets the ink's last column.
        start = min(max(a, 0), width - 1)
        shares.append((start, min(max(b, start + 1), width)))
    return shares


def digit_boxes(digits: list[LineDigit], image: LineImage) -> list[tuple[int, int, int, int]]:
    """Each digit's box (top, left, bottom, right) in the ink ``line_image`` was made from,
    bottom and right exclusive: its share of the columns (``digit_columns``) trimmed to the
    ink in it, or the whole share where it holds none."""
    boxes = []
    for start, stop in digit_columns(digits, image):
        share = image.ink[:, start:stop]
        rows = np.flatnonzero(share.max(axis=1) > _INKED)
        cols = np.flatnonzero(share.max(axis=0) > _INKED)
        if rows.size == 0:
            top, bottom, left, right = 0, share.shape[0], start, stop
        else:
            top, bottom = int(rows[0]), int(rows[-1]) + 1
            left, right = start + int(cols[0]), start + int(cols[-1]) + 1
        boxes.append((image.top + top, image.left + left, image.top + bottom, image.left + right))
    return boxes
