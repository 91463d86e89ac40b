"""Non-digits for the reader model, composed on the fly from training digits and DejaVu fonts.

The reader (``digitnet train --model reader``) has an eleventh output, "not a digit". Each
epoch it sees the training digits plus images composed here, in MNIST form as
``preprocess_image`` would hand them to the model (ink cropped, strokes at MNIST's width, 20 px
on the longer side, centred by mass), which the training graph's augmentation then varies:

- non-digits (label "not a digit"): letters and symbols in the DejaVu fonts (not the letters
  that are digits' twins, ``TWIN_LETTERS``), geometric shapes (no circles or ovals: those are
  zeros), scribbles in four pen habits (smooth strokes, sharp tangles, chains of loops,
  lines that curl into small loops), digit fragments (a digit cut to 30-65% of its width), two
  digits squeezed side by side into one frame, and the number reader's own wrong crops of
  lines composed from training digits (``digitnet.training.segments``);
- digits with a sliver of a neighbouring digit at their left or right edge, and whole digits
  as the number reader crops them from a composed line (labelled as the digit): what a
  segmenter's crop of touching handwriting looks like;
- digits restyled as photos, pens and scanners deliver them (labelled as the digit): crisp
  strokes, strokes redrawn with an even round pen, small low-resolution scans. Without them
  crisp or even strokes, which every drawn non-digit has, would mean "not a digit".

Only the digits passed in (the training split) and the DejaVu fonts are used, so what
``benchmarks/images.py`` measures (Liberation fonts, its own scribbles, test digits) was never
trained on. Everything is drawn from ``numpy.random.default_rng((seed, epoch, salt))``: an
epoch's images depend on nothing else, which keeps ``--resume`` bit-identical.

No TensorFlow: NumPy, Pillow and SciPy (through the preprocessing).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from digitnet.errors import DataError, NoDigitFound
from digitnet.inference.batch import usable_cpus
from digitnet.inference.preprocess import MNIST_SIDE, ink_to_mnist
from digitnet.models.classes import TWIN_LETTERS

# Non-digit kinds and their shares of an epoch's non-digits. Glyphs and scribbles are what
# people submit by mistake; fragments, pairs and segments are what a number reader's
# segmentation hypotheses produce and must be told apart from whole digits (fragments and pairs
# drawn here, segments the segmentation's own crops).
MIX: dict[str, float] = {
    "glyph": 0.28,
    "shape": 0.12,
    "scribble": 0.26,
    "fragment": 0.08,
    "pair": 0.06,
    "segment": 0.20,
}
# Letters not in TWIN_LETTERS, and symbols no one would read as a digit (no | / \ ( ) [ ] ! ,
# which are ones when written; no circles).
LETTERS = "".join(
    c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in TWIN_LETTERS
)
SYMBOLS = "+-=#$%&@*?<>~^×÷±€£¥∞√∑∏πΩλμΣΨΔΓ→←↑↓✓✗★♥♦♣♠"
# A fragment keeps this share of its digit's width.
FRAGMENT_WIDTH = (0.30, 0.65)
# A sliver is this share of the neighbour's width; the gap to it is in MNIST pixels (20-px
# digits), negative when the two touch or overlap.
SLIVER_WIDTH = (0.08, 0.25)
SLIVER_GAP = (-1, 3)
# Digits with a neighbour's sliver per non-digit composed; SEGMENT_DIGITS of them are instead
# whole digits as the number reader's segmentation crops them from a composed line.
SLIVERS_PER_NON_DIGIT = 0.25
SEGMENT_DIGITS = 0.5
# Lines composed for the segmentation crops: one per LINE_DIGITS training digits, at most
# MAX_LINES (about 30 ms each), each of 2 to 6 digits, keeping at most WRONG_PER_LINE of its
# wrong crops (a line has 10-200 spans, most of them wrong).
LINE_DIGITS = 40
MAX_LINES = 1200
LINE_LENGTHS = (2, 6)
WRONG_PER_LINE = 12
# Training digits shown restyled per non-digit composed: upsampled and thresholded into crisp
# strokes, as a photo or a drawing comes out of preprocess_image. Without them crisp strokes
# meant "not a digit" (the glyphs, shapes and scribbles are drawn crisp, MNIST digits are
# soft), and the first reader refused 16-32 % of rendered test digits.
RESTYLED_PER_NON_DIGIT = 1.0
# Share of the restyled digits whose strokes are instead redrawn along their middles with a
# round pen of even width, as a ballpoint, a thin pen or a finger on the page draws them. The
# scribbles are drawn so; without digits drawn so too, an even pen line is a hint of "not a
# digit", and thin-pen and small-scan digits were the ones refused most.
PEN_REDRAWN = 0.7
# Share of them instead reduced to 10-24 px tall by area and blurred, as a low-resolution scan
# or a small form field delivers a digit: the kind refused most once pen lines were added.
SMALL_SCANNED = 0.2
# Pairs: gap between the two digits, in MNIST pixels (negative: overlapping).
PAIR_GAP = (-3, 4)

DEJAVU = "DejaVu"
_FONT_DIRS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.local/share/fonts",
    "~/.fonts",
    "/Library/Fonts",
    "/System/Library/Fonts",
    "C:/Windows/Fonts",
)
# Rendering size of the glyph pool: big enough that the preprocessing's stroke-width step and
# Lanczos reduction see the font's own shapes.
_GLYPH_PIXELS = 64
_CANVAS = 64
# An epoch's images are composed in this many parts, each from its own random stream.
EPOCH_PARTS = 4
# Processes compose the parts only where they fork (Linux, FORKS): they inherit the composer,
# its digits and its glyphs rather than receive them pickled, and run no TensorFlow.
# Elsewhere this process composes them, with the same result.
FORKS = sys.platform == "linux"
_COMPOSER: NonDigitComposer | None = None
_SALT = 0x4E6F7444  # "NotD": keeps these draws apart from any other use of (seed, epoch)
_SEGMENT_SALT = 0x53656773  # "Segs": the segmentation crops' lines


def find_fonts(family: str) -> list[Path]:
    """The TrueType files of a font family (``"DejaVu"``, ``"Liberation"``), sorted by name:
    the upright, bold and italic/oblique faces of its Sans, Serif and Mono members (no
    math or narrow faces). ``DIGITNET_FONT_DIR`` is searched first. Raises ``DataError`` when
    none is installed."""
    roots = [os.environ.get("DIGITNET_FONT_DIR", ""), *_FONT_DIRS]
    found: dict[str, Path] = {}
    for root in roots:
        if not root:
            continue
        base = Path(root).expanduser()
        if not base.is_dir():
            continue
        for path in base.rglob(f"{family}*.ttf"):
            if any(skip in path.name for skip in ("Math", "Narrow", "ExtraLight")):
                continue
            found.setdefault(path.name, path)
    if not found:
        raise DataError(
            f"no {family} fonts found (searched {', '.join(r for r in roots if r)}): install "
            f"them (Debian: apt-get install fonts-{family.lower()}) or set DIGITNET_FONT_DIR"
        )
    return [found[name] for name in sorted(found)]


def _ink_crop(ink: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return ink[:0, :0]
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def render_glyph(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray | None:
    """``char`` in ``font`` as float32 ink (white on black) cropped to its box, or None when
    the font lacks it (it would draw its empty-box glyph) or draws nothing."""
    if font.getmask(char).getbbox() is None:
        return None
    if _same_bitmap(font, char, "\uffff"):
        return None
    size = 2 * _GLYPH_PIXELS
    image = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(image).text((size // 2, size // 2), char, fill=255, font=font)
    crop = _ink_crop(np.asarray(image, dtype=np.float32) / 255.0)
    return crop if crop.size else None


def _same_bitmap(font: ImageFont.FreeTypeFont, a: str, b: str) -> bool:
    mask_a, mask_b = font.getmask(a), font.getmask(b)
    return bool(mask_a.size == mask_b.size and bytes(mask_a) == bytes(mask_b))


@lru_cache(maxsize=4)
def glyph_pool(fonts: tuple[Path, ...], chars: str) -> tuple[np.ndarray, ...]:
    """Every ``char`` the ``fonts`` have, rendered once (see ``render_glyph``)."""
    pool = []
    for path in fonts:
        font = ImageFont.truetype(str(path), _GLYPH_PIXELS)
        for char in chars:
            glyph = render_glyph(font, char)
            if glyph is not None:
                pool.append(glyph)
    return tuple(pool)


# ---------------------------------------------------------------------------------------------
# Strokes


def _chaikin(points: np.ndarray, rounds: int = 3) -> np.ndarray:
    """A smooth open curve through the corners of ``points`` (k, 2) (Chaikin's corner cutting)."""
    for _ in range(rounds):
        a, b = points[:-1], points[1:]
        cut = np.empty((2 * len(a), 2))
        cut[0::2] = 0.75 * a + 0.25 * b
        cut[1::2] = 0.25 * a + 0.75 * b
        points = np.vstack([points[:1], cut, points[-1:]])
    return points


def _draw(strokes: Iterable[np.ndarray], width: int, size: int = _CANVAS) -> np.ndarray:
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        draw.line([tuple(p) for p in stroke.tolist()], fill=255, width=width, joint="curve")
    return np.asarray(image, dtype=np.float32) / 255.0


def scribble(rng: np.random.Generator) -> np.ndarray:
    """A scribble, as ink, in one of four pen habits chosen at random: smooth strokes through
    a few far-apart points, a tangle of sharp bends, a chain of loops, or a wandering line
    that curls into small loops on its way. The first reader saw only the smooth kind and let
    through a sixth of the tangles people scrawl (``benchmarks/images.py``'s scribbles),
    reading them as 2s, 3s and 8s."""
    habit = int(rng.integers(4))
    if habit == 0:
        margin = 6
        strokes = []
        for _ in range(int(rng.integers(1, 4))):
            count = int(rng.integers(5, 10))
            points = rng.uniform(margin, _CANVAS - margin, size=(count, 2))
            strokes.append(_chaikin(points, int(rng.integers(1, 4))))
    elif habit == 1:
        strokes = [_fit(_tangle(rng), rng) for _ in range(int(rng.integers(1, 3)))]
    elif habit == 2:
        strokes = [_fit(_loop_chain(rng), rng)]
    else:
        strokes = [_fit(_curlicues(rng), rng)]
    return _draw(strokes, int(rng.integers(3, 7)))


def _tangle(rng: np.random.Generator) -> np.ndarray:
    """A stroke that bends sharply and often: 10-24 unit steps whose heading turns by about a
    radian each (so it crosses itself and curls), corners then rounded."""
    count = int(rng.integers(10, 25))
    headings = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 1.1, count))
    steps = rng.uniform(0.5, 1.5, (count, 1)) * np.stack(
        [np.cos(headings), np.sin(headings)], axis=1
    )
    points = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    return _chaikin(points, int(rng.integers(2, 4)))


def _loop_chain(rng: np.random.Generator) -> np.ndarray:
    """Two to five loops in a row, as a pen scrawls "eeee" (a prolate trochoid whose loop size
    and slant drift), turned up to 40 degrees off the horizontal."""
    turns = rng.uniform(2.0, 5.0)
    t = np.linspace(0, 2 * math.pi * turns, int(60 * turns))
    drift = np.cumsum(rng.normal(0, 0.02, t.size))
    radius = rng.uniform(0.6, 1.0) * np.exp(drift - drift.mean())
    advance = rng.uniform(0.15, 0.45)
    squash = rng.uniform(0.6, 1.6)
    points = np.stack([advance * t - radius * np.sin(t), -squash * radius * np.cos(t)], axis=1)
    return _rotate(points, rng, rng.uniform(-0.7, 0.7))


def _curlicues(rng: np.random.Generator) -> np.ndarray:
    """A smooth line through 5-8 points that curls into two to five small loops on its way
    (each 14-25 % of the line's extent across, turning either way). One loop on a short line
    is often a 2, 6 or 9; readers trained on those refused more real digits."""
    path = _chaikin(rng.uniform(0, 1, (int(rng.integers(5, 9)), 2)), 4)
    extent = float(np.ptp(path, axis=0).max())
    stops = np.sort(rng.choice(np.arange(2, len(path) - 2), int(rng.integers(2, 6)), False))
    pieces, start = [], 0
    for stop in stops:
        pieces.append(path[start : stop + 1])
        heading = path[stop + 1] - path[stop - 1]
        heading /= max(float(np.hypot(*heading)), 1e-9)
        side = 1.0 if rng.random() < 0.5 else -1.0
        normal = side * np.array([-heading[1], heading[0]])
        radius = rng.uniform(0.07, 0.125) * extent
        # Round the circle from the line's point, leaving in the line's direction again.
        angles = np.linspace(0, 2 * math.pi, 24)[:, None]
        pieces.append(
            path[stop] + radius * (np.sin(angles) * heading + (1 - np.cos(angles)) * normal)
        )
        start = stop
    pieces.append(path[start:])
    return np.vstack(pieces)


def _fit(points: np.ndarray, rng: np.random.Generator, margin: float = 6) -> np.ndarray:
    """``points`` (k, 2) scaled and moved into the canvas, keeping their aspect, filling
    60-100 % of it."""
    low, high = points.min(axis=0), points.max(axis=0)
    room = (_CANVAS - 2 * margin) * rng.uniform(0.6, 1.0)
    scale = room / max(float((high - low).max()), 1e-9)
    fitted: np.ndarray = (points - low) * scale + margin
    return fitted


def stroke_middles(mask: np.ndarray) -> np.ndarray:
    """The pixels along the middles of the strokes of ``mask`` (h, w) bool: the ridge of the
    distance to the background. bool (h, w)."""
    depth = ndimage.distance_transform_edt(mask)
    middles: np.ndarray = mask & (depth >= ndimage.maximum_filter(depth, size=3))
    return middles


def pen_redrawn(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``ink`` (h, w) in [0, 1] redrawn with an even round pen along the middles of its
    strokes: the pen 2-5 % of the image's height wide, edges anti-aliased. float32 (h, w)."""
    ridge = stroke_middles(ink > 0.5)
    radius = max(1.0, rng.uniform(0.01, 0.025) * ink.shape[0])
    # Distance to the nearest ridge pixel, turned into a pen's soft edge.
    distance = ndimage.distance_transform_edt(~ridge)
    return np.clip(radius + 0.5 - distance, 0.0, 1.0).astype(np.float32)


def small_scanned(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``ink`` (h, w) reduced by area to 10-24 px tall (the aspect kept), as a scanner's sensor
    integrates it, then blurred a little. float32 (about 10-24, w * that / h)."""
    height = int(rng.integers(10, 25))
    width = max(1, round(ink.shape[1] * height / ink.shape[0]))
    small = Image.fromarray(np.asarray(ink, np.float32)).resize(
        (width, height), Image.Resampling.BOX
    )
    blurred = ndimage.gaussian_filter(np.asarray(small, np.float32), rng.uniform(0.0, 0.6))
    return np.clip(blurred, 0.0, 1.0).astype(np.float32)


def _regular_polygon(corners: int, rng: np.random.Generator, star: bool = False) -> np.ndarray:
    turn = rng.uniform(0, 2 * math.pi)
    steps = 2 * corners if star else corners
    angles = turn + np.arange(steps + 1) * 2 * math.pi / steps
    radius = np.where(np.arange(steps + 1) % 2 == 1, rng.uniform(0.35, 0.5), 1.0) if star else 1
    return np.stack([np.cos(angles) * radius, np.sin(angles) * radius], axis=1)


_SHAPES = ("triangle", "square", "rectangle", "diamond", "star", "cross", "plus", "arrow", "hash")


def shape(rng: np.random.Generator) -> np.ndarray:
    """An outline or filled geometric shape with straight sides (never a circle or an oval,
    which would be zeros), rotated at random, as ink."""
    kind = _SHAPES[int(rng.integers(len(_SHAPES)))]
    if kind == "triangle":
        strokes = [_regular_polygon(3, rng)]
    elif kind == "square":
        strokes = [_regular_polygon(4, rng)]
    elif kind == "rectangle":
        # Not thinner: a thick bar is a one.
        aspect = rng.uniform(0.45, 0.75)
        corners = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect], [-1, -aspect]])
        strokes = [_rotate(corners, rng)]
    elif kind == "diamond":
        strokes = [np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0], [0, -1]])]
    elif kind == "star":
        strokes = [_regular_polygon(int(rng.integers(5, 7)), rng, star=True)]
    elif kind == "cross":
        strokes = [np.array([[-1, -1], [1, 1]]), np.array([[1, -1], [-1, 1]])]
    elif kind == "plus":
        strokes = [np.array([[-1, 0], [1, 0]]), np.array([[0, -1], [0, 1]])]
    elif kind == "arrow":
        head = rng.uniform(0.3, 0.6)
        arrow = [
            np.array([[-1, 0], [1, 0]]),
            np.array([[1 - head, -head], [1, 0], [1 - head, head]]),
        ]
        strokes = [
            _rotate(s, rng, angle) for s, angle in zip(arrow, [rng.uniform(0, 2 * math.pi)] * 2)
        ]
    else:  # hash
        strokes = [
            np.array([[-0.4, -1], [-0.4, 1]]),
            np.array([[0.4, -1], [0.4, 1]]),
            np.array([[-1, -0.4], [1, -0.4]]),
            np.array([[-1, 0.4], [1, 0.4]]),
        ]
    centre, half = _CANVAS / 2, _CANVAS / 2 - 8
    strokes = [centre + half * s for s in strokes]
    if kind in ("triangle", "square", "rectangle", "diamond", "star") and rng.random() < 0.3:
        image = Image.new("L", (_CANVAS, _CANVAS), 0)
        ImageDraw.Draw(image).polygon([tuple(p) for p in strokes[0].tolist()], fill=255)
        return np.asarray(image, dtype=np.float32) / 255.0
    return _draw(strokes, int(rng.integers(3, 7)))


def _rotate(points: np.ndarray, rng: np.random.Generator, angle: float | None = None) -> np.ndarray:
    angle = rng.uniform(0, 2 * math.pi) if angle is None else angle
    c, s = math.cos(angle), math.sin(angle)
    rotated: np.ndarray = np.asarray(points, dtype=np.float64) @ np.array([[c, s], [-s, c]])
    return rotated


# ---------------------------------------------------------------------------------------------
# Compositions of training digits


def _digit_ink(row: np.ndarray) -> np.ndarray:
    return _ink_crop(row.reshape(MNIST_SIDE, MNIST_SIDE))


def fragment(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """The left or right 30-65% of a digit's ink (None when that leaves a narrow upright bar,
    which would be a one, hardly any ink, or most of it)."""
    ink = _digit_ink(digit)
    height, width = ink.shape
    keep = max(1, round(width * rng.uniform(*FRAGMENT_WIDTH)))
    part = ink[:, :keep] if rng.random() < 0.5 else ink[:, width - keep :]
    part = _ink_crop(part)
    # Most of a digit's ink is still that digit (a 7 without the start of its bar).
    if part.size == 0 or not 0.2 * ink.sum() <= part.sum() <= 0.6 * ink.sum():
        return None
    if part.shape[1] < 0.35 * part.shape[0]:
        return None
    return part


def _side_by_side(left: np.ndarray, right: np.ndarray, gap: int, shift: int) -> np.ndarray:
    """Two inks on one canvas, ``gap`` columns apart (overlapping when negative), the right one
    ``shift`` rows lower; overlapping ink takes the maximum."""
    top_right = max(shift, 0)
    top_left = max(-shift, 0)
    height = max(top_left + left.shape[0], top_right + right.shape[0])
    start = left.shape[1] + gap
    width = max(left.shape[1], start + right.shape[1])
    offset = max(-start, 0)
    canvas = np.zeros((height, width + offset), np.float32)
    canvas[top_left : top_left + left.shape[0], offset : offset + left.shape[1]] = left
    region = canvas[
        top_right : top_right + right.shape[0],
        offset + start : offset + start + right.shape[1],
    ]
    np.maximum(region, right, out=region)
    return canvas


def pair(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two digits side by side (touching, overlapping or a few pixels apart), to be squeezed
    into one frame."""
    return _side_by_side(
        _digit_ink(first),
        _digit_ink(second),
        int(rng.integers(PAIR_GAP[0], PAIR_GAP[1] + 1)),
        int(rng.integers(-2, 3)),
    )


def sliver(digit: np.ndarray, neighbour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``digit`` with the facing edge of ``neighbour`` (8-25% of its width) beside it, on the
    left or the right."""
    ink, other = _digit_ink(digit), _digit_ink(neighbour)
    keep = max(1, round(other.shape[1] * rng.uniform(*SLIVER_WIDTH)))
    gap = int(rng.integers(SLIVER_GAP[0], SLIVER_GAP[1] + 1))
    shift = int(rng.integers(-2, 3))
    if rng.random() < 0.5:  # the neighbour on the left: its right edge shows
        return _side_by_side(other[:, other.shape[1] - keep :], ink, gap, shift)
    return _side_by_side(ink, other[:, :keep], gap, shift)


# ---------------------------------------------------------------------------------------------
# The composer


class NonDigitComposer:
    """Composes an epoch's extra images for the reader from ``digits`` (n, 784) float32 in
    [0, 1] with ``labels`` (n,): training digits only (pass nothing else), and DejaVu glyphs.

    ``compose(epoch, n_non_digits, n_slivers)`` gives float32 (m, 784) images and int64 (m,)
    labels: ``not_a_digit`` (the class index) for the non-digits, the digit for the slivers.
    """

    def __init__(
        self,
        digits: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int,
        not_a_digit: int = 10,
        fonts: Sequence[Path] | None = None,
    ) -> None:
        self.digits = np.asarray(digits, dtype=np.float32).reshape(len(digits), -1)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seed = int(seed)
        self.not_a_digit = int(not_a_digit)
        fonts = tuple(fonts) if fonts is not None else tuple(find_fonts(DEJAVU))
        self.glyphs = glyph_pool(fonts, LETTERS + SYMBOLS)
        # Fragments of ones are ones; pairs and slivers may use any digit.
        self._not_one = np.flatnonzero(self.labels != 1)
        self._segments: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def segment_pool(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The number reader's crops of lines composed from the digits, built once (it does
        not depend on the epoch): wrong crops (n, 28, 28), right crops (m, 28, 28) and the
        right crops' digits (m,)."""
        if self._segments is None:
            from digitnet.training.segments import labelled_spans

            rng = np.random.default_rng((self.seed, _SEGMENT_SALT))
            n_lines = max(1, min(MAX_LINES, len(self.digits) // LINE_DIGITS))
            wrong, right, digits = [], [], []
            for _ in range(n_lines):
                length = int(rng.integers(LINE_LENGTHS[0], LINE_LENGTHS[1] + 1))
                chosen = rng.integers(len(self.digits), size=length)
                try:
                    spans = labelled_spans(
                        [self.digits[i].reshape(MNIST_SIDE, MNIST_SIDE) for i in chosen],
                        [int(self.labels[i]) for i in chosen],
                        rng,
                        self.not_a_digit,
                    )
                except NoDigitFound:
                    continue
                bad = np.flatnonzero(spans.labels == self.not_a_digit)
                bad = rng.permutation(bad)[:WRONG_PER_LINE]
                good = np.flatnonzero(spans.right)
                wrong.append(spans.images[bad])
                right.append(spans.images[good])
                digits.append(spans.labels[good])
            empty = np.zeros((0, MNIST_SIDE, MNIST_SIDE), np.float32)
            self._segments = (
                np.concatenate([empty, *wrong]),
                np.concatenate([empty, *right]),
                np.concatenate([np.zeros(0, np.int64), *digits]),
            )
        return self._segments

    def rng(self, epoch: int, part: int = 0) -> np.random.Generator:
        return np.random.default_rng((self.seed, int(epoch), _SALT, int(part)))

    def compose(
        self,
        epoch: int,
        n_non_digits: int,
        n_slivers: int,
        n_restyled: int = 0,
        *,
        workers: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's images, in EPOCH_PARTS parts of its own random stream each, so that
        they are the same whatever the number of processes composing them: ``workers``
        (default: one per usable CPU where processes fork, else 1). Training waits while
        they are composed, so the cores it leaves idle compose them."""
        self.segment_pool()  # built once, here, rather than in every process
        counts = [
            tuple(_share(total, part) for total in (n_non_digits, n_slivers, n_restyled))
            for part in range(EPOCH_PARTS)
        ]
        workers = (usable_cpus() if FORKS else 1) if workers is None else workers
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if workers == 1 or not FORKS:
            parts = [self._compose_part(epoch, part, *counts[part]) for part in range(EPOCH_PARTS)]
        else:
            global _COMPOSER
            _COMPOSER = self
            try:
                with ProcessPoolExecutor(
                    min(workers, EPOCH_PARTS),
                    mp_context=multiprocessing.get_context("fork"),
                ) as executor:
                    parts = list(
                        executor.map(
                            _compose_part_in_worker,
                            [epoch] * EPOCH_PARTS,
                            range(EPOCH_PARTS),
                            counts,
                        )
                    )
            finally:
                _COMPOSER = None
        # Non-digits first, then each kind of digit, as one stream would have given them.
        groups = range(len(parts[0]))
        X = np.concatenate([part[group][0] for group in groups for part in parts])
        y = np.concatenate([part[group][1] for group in groups for part in parts])
        return X.reshape(-1, MNIST_SIDE * MNIST_SIDE).astype(np.float32), y

    def _compose_part(
        self, epoch: int, part: int, n_non_digits: int, n_slivers: int, n_restyled: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """One part of an epoch: (images, labels) of its non-digits, digits with slivers,
        segmentation crops of digits and restyled digits."""
        rng = self.rng(epoch, part)
        kinds = list(MIX)
        counts = rng.multinomial(n_non_digits, [MIX[k] for k in kinds])
        images = [self.non_digits(kind, int(count), rng) for kind, count in zip(kinds, counts)]
        n_segment_digits = round(SEGMENT_DIGITS * n_slivers)
        return [
            (
                np.concatenate([np.zeros((0, MNIST_SIDE, MNIST_SIDE), np.float32), *images]),
                np.full(n_non_digits, self.not_a_digit, np.int64),
            ),
            self.slivers(n_slivers - n_segment_digits, rng),
            self.segment_digits(n_segment_digits, rng),
            self.restyled(n_restyled, rng),
        ]

    def restyled(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` training digits redrawn with crisp strokes: upsampled 2-4x with Lanczos,
        thresholded softly at a random level (thinner or bolder strokes), then in
        PEN_REDRAWN of them redrawn with an even pen, in SMALL_SCANNED reduced to a small
        scan; placed as ``preprocess_image`` places ink. float32 (n, 28, 28) and their
        labels."""
        out = np.zeros((n, MNIST_SIDE, MNIST_SIDE), np.float32)
        chosen = rng.integers(len(self.digits), size=n)
        for i, index in enumerate(chosen):
            digit = self.digits[index].reshape(MNIST_SIDE, MNIST_SIDE)
            size = int(rng.integers(2 * MNIST_SIDE, 4 * MNIST_SIDE + 1))
            big = Image.fromarray(digit).resize((size, size), Image.Resampling.LANCZOS)
            level, softness = rng.uniform(0.25, 0.6), rng.uniform(0.03, 0.12)
            ink = np.clip((np.asarray(big, np.float32) - level) / softness + 0.5, 0.0, 1.0)
            style = rng.random()
            if style < PEN_REDRAWN:
                ink = pen_redrawn(ink, rng)
            elif style < PEN_REDRAWN + SMALL_SCANNED:
                ink = small_scanned(ink, rng)
            try:
                out[i] = ink_to_mnist(ink)
            except NoDigitFound:
                out[i] = digit
        return out, self.labels[chosen]

    def segment_digits(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` whole digits as the reader's segmentation crops them: float32 (n, 28, 28)
        and their labels (digits with slivers when the pool holds none)."""
        if not n:
            return self.slivers(0, rng)
        _, right, digits = self.segment_pool()
        if not len(right):
            return self.slivers(n, rng)
        chosen = rng.integers(len(right), size=n)
        return right[chosen], digits[chosen]

    def non_digits(self, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` non-digits of one ``kind`` (a key of ``MIX``): float32 (n, 28, 28)."""
        if kind == "segment" and n:
            wrong = self.segment_pool()[0]
            if len(wrong):
                return wrong[rng.integers(len(wrong), size=n)]
            kind = "pair"
        out = np.zeros((n, MNIST_SIDE, MNIST_SIDE), np.float32)
        made = 0
        while made < n:
            ink = self._draw_one(kind, rng)
            if ink is None:
                continue
            try:
                out[made] = ink_to_mnist(ink)
            except NoDigitFound:
                continue
            made += 1
        return out

    def _draw_one(self, kind: str, rng: np.random.Generator) -> np.ndarray | None:
        if kind == "glyph":
            return self.glyphs[int(rng.integers(len(self.glyphs)))]
        if kind == "shape":
            return shape(rng)
        if kind == "scribble":
            return scribble(rng)
        if kind == "fragment":
            return fragment(self.digits[self._not_one[rng.integers(len(self._not_one))]], rng)
        if kind == "pair":
            first, second = rng.integers(len(self.digits), size=2)
            return pair(self.digits[first], self.digits[second], rng)
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(MIX)}")

    def slivers(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` digits with a neighbour's sliver: float32 (n, 28, 28) and their labels."""
        out = np.zeros((n, MNIST_SIDE, MNIST_SIDE), np.float32)
        chosen = rng.integers(len(self.digits), size=(n, 2))
        for i, (digit, neighbour) in enumerate(chosen):
            try:
                out[i] = ink_to_mnist(sliver(self.digits[digit], self.digits[neighbour], rng))
            except NoDigitFound:  # cannot be centred: the digit alone
                out[i] = ink_to_mnist(_digit_ink(self.digits[digit]))
        return out, self.labels[chosen[:, 0]]


def _share(total: int, part: int) -> int:
    """Part ``part``'s share of ``total`` images split into EPOCH_PARTS parts."""
    return (total * (part + 1)) // EPOCH_PARTS - (total * part) // EPOCH_PARTS


def _compose_part_in_worker(
    epoch: int, part: int, counts: tuple[int, int, int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    if _COMPOSER is None:
        raise RuntimeError("the composer is passed to forked processes only")
    return _COMPOSER._compose_part(epoch, part, *counts)


def extra_counts(n_digits: int, non_digits: float) -> tuple[int, int, int]:
    """(non-digits, digits with a sliver, restyled digits) composed per epoch for ``n_digits``
    training digits and ``non_digits`` non-digits per training digit."""
    n_non_digits = round(non_digits * n_digits)
    return (
        n_non_digits,
        round(SLIVERS_PER_NON_DIGIT * n_non_digits),
        round(RESTYLED_PER_NON_DIGIT * n_non_digits),
    )


def with_class_column(y: np.ndarray) -> np.ndarray:
    """One-hot ``y`` (n, k) with an empty column k added for "not a digit": (n, k + 1)."""
    return np.concatenate([y, np.zeros((len(y), 1), y.dtype)], axis=1)


# compose()'s epochs count from 1: epoch 0 is the calibration set's.
_CALIBRATION_EPOCH = 0


def calibration_set(
    X: np.ndarray, labels: np.ndarray, seed: int, non_digits: float, not_a_digit: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits ``X`` (n, 784) with ``labels`` (n,), plus non-digits and slivers composed
    from them in the training mix (``extra_counts``), fixed by ``seed``: what a reader's
    confidence is calibrated on (the training run's and ``digitnet calibrate``'s)."""
    composer = NonDigitComposer(X, labels, seed=seed, not_a_digit=not_a_digit)
    X_extra, y_extra = composer.compose(_CALIBRATION_EPOCH, *extra_counts(len(X), non_digits))
    return (
        np.concatenate([np.asarray(X, np.float32).reshape(len(X), -1), X_extra]),
        np.concatenate([np.asarray(labels, np.int64), y_extra]),
    )
