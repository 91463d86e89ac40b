"""Accuracy and calibration of trained models on realistic renderings of MNIST test digits.

Each of the first ``--n`` MNIST test digits is rendered the way people really produce digit
images (``renderings``: phone photos, canvas exports, pens and pencil, tight crops, small scans,
faxes, ruled paper, photos at an angle or badly exposed), encoded, read back and preprocessed
by ``digitnet.inference.preprocess`` exactly as ``digitnet predict`` would, and classified by
each model given. Per kind the table gives the accuracy, its delta against the untouched 28x28
digits, the refusals (``no digit`` found, and other image errors) and the expected calibration
error (15 bins, over the images that were answered). The goals: every kind within 1.0 point of
the 28x28 digits, at most 0.1 % answered "no digit found", ECE at most 1.5 %.

    python benchmarks/images.py MODEL_FILE [MODEL_FILE ...] [--n 10000] [--seed 0]
        [--data-dir DIR] [--kinds photo_jpeg,...] [--workers N] [--scribbles 1000]

Rows:
    28x28           the test digits as they are (the baseline)
    28x28 re-centred the same digits through preprocess_image (re-cropped, re-centred)
    <kind>          renderings through preprocess_image; an image the preprocessing refuses
                    (NoDigitFound, ImageError) counts as wrong and is listed under "refused"

A model with a "not a digit" class (``digitnet train --model reader``) gets a column of the
digits it answered "not a digit" (goal: at most 0.5 % of any kind), and a second table:
the share of non-digits it refuses (answered "not a digit", or no ink found): ``--scribbles``
random scribbles (goal: 95 %), and the letters A-Z and a-z in Liberation Sans, Serif and Mono,
regular, bold and italic, printed and hand-drawn (goal: 80 %; letters that are digits' twins,
``digitnet.models.classes.TWIN_LETTERS``, apart), with its MNIST test accuracy on all 10,000
digits. The reader never trained on these: its non-digits come from the DejaVu fonts and
another scribble generator.

Renderings are seeded per (seed, kind, digit), so a run is reproducible, does not depend on
the number of workers, and a kind's images do not change when other kinds are added. Rendering
and preprocessing, the slow part, run once for all models in a pool of worker processes (one
per core): about 18 ms of CPU per image, so 10,000 digits of all kinds take about 30 minutes on
two idle cores (measured on a shared machine, from CPU time).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

GOAL_POINTS = 1.0
GOAL_NO_DIGIT = 0.001
GOAL_ECE = 0.015
BASELINE = "28x28"
RECENTRED = "28x28 re-centred"
# Digits per task handed to a worker process: large enough that pickling is negligible, small
# enough that both cores stay busy to the end.
CHUNK = 200


@dataclass
class Row:
    """One line of the table. ``accuracy`` and ``ece`` in [0, 1]; ``seconds`` spent rendering +
    preprocessing; ``refused`` counts every refusal, ``no_digit`` those that said "no digit
    found"."""

    kind: str
    accuracy: float
    count: int
    refused: int = 0
    seconds: float = 0.0
    no_digit: int = 0
    ece: float = float("nan")
    # Digits a model with a "not a digit" class answered "not a digit" (None: no such class).
    not_a_digit: int | None = None


@dataclass
class Prepared:
    """One kind's preprocessed images: float32 (n, 28, 28) (zeros where refused), ``errors``
    (n,) the refusal message or None, ``no_digit`` (n,) bool."""

    kind: str
    images: np.ndarray
    errors: list[str | None]
    no_digit: np.ndarray
    seconds: float = 0.0
    refused: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.refused = np.array([error is not None for error in self.errors], bool)


def accuracy_of(model: Any, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``images`` (n, 28, 28) float32 MNIST form that ``model`` labels correctly."""
    probabilities = np.asarray(
        model.predict_proba(images.reshape(len(images), 784).astype(np.float32))
    )
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def answers_of(model: Any, probabilities: np.ndarray) -> np.ndarray:
    """The classes ``model`` answers for ``probabilities`` (n, k): a digitnet model's own rule
    (a reader refuses only above its calibrated threshold), else the most likely class."""
    if hasattr(model, "answers"):
        chosen: np.ndarray = model.answers(probabilities)
        return chosen
    best: np.ndarray = probabilities.argmax(axis=1)
    return best


def rendering_seed(seed: int, kind_index: int, digit_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind_index, digit_index])


def preprocessed_kind(
    make_image: Callable[[np.ndarray, int], object], digits: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """Preprocess ``make_image(digit, index)`` for every digit, in this process.

    Returns (images float32 (n, 28, 28), refused bool (n,), seconds). A refused image stays
    all zeros and is scored wrong whatever the model says about it.
    """
    images, errors, _, seconds = _preprocess(make_image, digits, name, 0)
    return images, np.array([e is not None for e in errors], bool), seconds


def _preprocess(
    make_image: Callable[[np.ndarray, int], object], digits: np.ndarray, name: str, offset: int
) -> tuple[np.ndarray, list[str | None], np.ndarray, float]:
    from digitnet.errors import ImageError, NoDigitFound
    from digitnet.inference.preprocess import preprocess_image

    images = np.zeros((len(digits), 28, 28), np.float32)
    errors: list[str | None] = [None] * len(digits)
    no_digit = np.zeros(len(digits), bool)
    start = time.perf_counter()
    for position, digit in enumerate(digits):
        index = offset + position
        try:
            images[position] = preprocess_image(make_image(digit, index), name=f"{name}[{index}]")
        except NoDigitFound as error:
            errors[position], no_digit[position] = str(error), True
        except ImageError as error:
            errors[position] = str(error)
    return images, errors, no_digit, time.perf_counter() - start


def _make_image(kind: str, seed: int) -> Callable[[np.ndarray, int], object]:
    if kind == RECENTRED:
        return lambda digit, index: digit
    from renderings import RENDERINGS

    function = RENDERINGS[kind]
    kind_index = list(RENDERINGS).index(kind)
    return lambda digit, index: function(digit, rendering_seed(seed, kind_index, index)).data


def _chunk_task(
    kind: str, seed: int, digits: np.ndarray, offset: int
) -> tuple[np.ndarray, list[str | None], np.ndarray, float]:
    return _preprocess(_make_image(kind, seed), digits, kind, offset)


def prepare(
    digits: np.ndarray,
    *,
    seed: int = 0,
    kinds: Sequence[str] | None = None,
    workers: int = 1,
    chunk: int = CHUNK,
) -> list[Prepared]:
    """Render and preprocess ``digits`` uint8 (n, 28, 28) as every kind (the re-centred 28x28
    digits first), on ``workers`` processes (1: in this process) in tasks of ``chunk`` digits."""
    from renderings import RENDERINGS

    kinds = [RECENTRED] + (list(RENDERINGS) if kinds is None else list(kinds))
    if workers <= 1 or len(digits) <= chunk:
        prepared = []
        for kind in kinds:
            images, errors, no_digit, seconds = _preprocess(
                _make_image(kind, seed), digits, kind, 0
            )
            prepared.append(Prepared(kind, images, errors, no_digit, seconds))
        return prepared
    # Forked workers inherit the imported modules and sys.path (where `renderings` lives).
    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    starts = range(0, len(digits), chunk)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {
            kind: [
                pool.submit(_chunk_task, kind, seed, digits[start : start + chunk], start)
                for start in starts
            ]
            for kind in kinds
        }
        prepared = []
        for kind in kinds:
            parts = [future.result() for future in futures[kind]]
            prepared.append(
                Prepared(
                    kind,
                    np.concatenate([part[0] for part in parts]),
                    [error for part in parts for error in part[1]],
                    np.concatenate([part[2] for part in parts]),
                    sum(part[3] for part in parts),
                )
            )
    return prepared


def preparation_key(n: int, seed: int, kinds: Sequence[str] | None) -> str:
    """What the prepared images depend on: the digits, the renderings' seed and kinds, and
    the source of the renderings and of the preprocessing (sha256, hex)."""
    import hashlib

    import renderings
    from digitnet.inference import preprocess

    digest = hashlib.sha256(repr((n, seed, None if kinds is None else list(kinds))).encode())
    for module in (renderings, preprocess):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()


def save_prepared(path: Path, key: str, prepared: Sequence[Prepared]) -> None:
    """Write ``prepared`` to ``path`` (.npz), atomically."""
    from digitnet.atomic import atomic_open

    arrays: dict[str, Any] = {"key": np.array(key), "kinds": np.array([k.kind for k in prepared])}
    for index, kind in enumerate(prepared):
        arrays[f"images{index}"] = kind.images
        arrays[f"errors{index}"] = np.array([error or "" for error in kind.errors])
        arrays[f"no_digit{index}"] = kind.no_digit
        arrays[f"seconds{index}"] = np.array(kind.seconds)
    with atomic_open(path, "wb") as file:
        np.savez_compressed(file, **arrays)


def load_prepared(path: Path, key: str) -> list[Prepared] | None:
    """The images ``save_prepared`` wrote to ``path``, or None if it is missing or was made
    from other digits, renderings or preprocessing."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as saved:
        if str(saved["key"]) != key:
            print(f"{path} holds images of another run or code version: making them again")
            return None
        return [
            Prepared(
                str(kind),
                saved[f"images{index}"],
                [str(error) or None for error in saved[f"errors{index}"]],
                saved[f"no_digit{index}"],
                float(saved[f"seconds{index}"]),
            )
            for index, kind in enumerate(saved["kinds"])
        ]


def score(
    model: Any, digits: np.ndarray, labels: np.ndarray, prepared: Sequence[Prepared]
) -> list[Row]:
    """Rows of the table for one model: the untouched digits, then each prepared kind."""
    from digitnet.inference.calibration import expected_calibration_error

    labels = np.asarray(labels)
    refusal = getattr(model, "not_a_digit_class", None)

    def refused(chosen: np.ndarray, answered: np.ndarray) -> int | None:
        if refusal is None:
            return None
        return int(((chosen == refusal) & answered).sum())

    def confidence(probabilities: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        values: np.ndarray = probabilities[np.arange(len(chosen)), chosen]
        return values

    baseline = np.asarray(
        model.predict_proba(digits.reshape(len(digits), 784).astype(np.float32) / 255.0)
    )
    chosen = answers_of(model, baseline)
    rows = [
        Row(
            BASELINE,
            float(np.mean(chosen == labels)),
            len(digits),
            ece=expected_calibration_error(confidence(baseline, chosen), chosen == labels),
            not_a_digit=refused(chosen, np.ones(len(labels), bool)),
        )
    ]
    for kind in prepared:
        probabilities = np.asarray(model.predict_proba(kind.images.reshape(len(labels), 784)))
        chosen = answers_of(model, probabilities)
        answered = ~kind.refused
        right = chosen == labels
        ece = (
            expected_calibration_error(confidence(probabilities, chosen)[answered], right[answered])
            if answered.any()
            else float("nan")
        )
        rows.append(
            Row(
                kind.kind,
                float((right & answered).mean()),
                len(labels),
                int(kind.refused.sum()),
                kind.seconds,
                int(kind.no_digit.sum()),
                ece,
                refused(chosen, answered),
            )
        )
    return rows


def evaluate(
    model: Any,
    digits: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    kinds: Sequence[str] | None = None,
    workers: int = 1,
) -> list[Row]:
    """Rows of the table for ``digits`` uint8 (n, 28, 28) with ``labels`` (n,)."""
    return score(model, digits, labels, prepare(digits, seed=seed, kinds=kinds, workers=workers))


def _shortfalls(row: Row, baseline: float) -> list[str]:
    reasons = []
    if row.not_a_digit is not None and row.not_a_digit > GOAL_DIGITS_REFUSED * row.count:
        reasons.append("not a digit")
    if row.kind == BASELINE:
        return reasons
    if 100.0 * (row.accuracy - baseline) < -GOAL_POINTS:
        reasons.append("accuracy")
    if row.no_digit > GOAL_NO_DIGIT * row.count:
        reasons.append("no digit")
    return reasons


def format_table(rows: Sequence[Row]) -> str:
    """The table as text: kind, accuracy %, delta in points against the 28x28 row, refused (all),
    of them "no digit found", ECE %, ms/image, and whether the reading goal is met; for a model
    with a "not a digit" class also the digits it answered "not a digit" (counted wrong in the
    accuracy)."""
    baseline = next(row.accuracy for row in rows if row.kind == BASELINE)
    width = max(len(row.kind) for row in rows)
    refusals = any(row.not_a_digit is not None for row in rows)
    lines = [
        f"{'kind':<{width}}  {'accuracy':>8}  {'delta':>6}  {'refused':>7}  {'no digit':>8}  "
        + (f"{'not a digit':>11}  " if refusals else "")
        + f"{'ECE':>6}  {'ms/image':>8}  goal"
    ]
    for row in rows:
        delta = 100.0 * (row.accuracy - baseline)
        ms = f"{1000.0 * row.seconds / row.count:8.1f}" if row.seconds else f"{'':8}"
        ece = f"{100.0 * row.ece:5.2f}%" if not math.isnan(row.ece) else f"{'':6}"
        goal = "MISSED" if _shortfalls(row, baseline) else ("" if row.kind == BASELINE else "ok")
        not_a_digit = f"{row.not_a_digit:>11}  " if refusals else ""
        lines.append(
            f"{row.kind:<{width}}  {100.0 * row.accuracy:7.2f}%  {delta:+6.2f}  {row.refused:>7} "
            f" {row.no_digit:>8}  {not_a_digit}{ece}  {ms}  {goal}"
        )
    return "\n".join(lines)


def missed(rows: Sequence[Row]) -> list[str]:
    """Kinds that miss the reading goal: more than GOAL_POINTS below the 28x28 accuracy, or
    more than GOAL_NO_DIGIT of the digits answered "no digit found"."""
    baseline = next(row.accuracy for row in rows if row.kind == BASELINE)
    return [row.kind for row in rows if _shortfalls(row, baseline)]


def miscalibrated(rows: Sequence[Row]) -> list[str]:
    """Rows whose expected calibration error is above GOAL_ECE."""
    return [row.kind for row in rows if not math.isnan(row.ece) and row.ece > GOAL_ECE]


# ---------------------------------------------------------------------------------------------
# Not a digit: what a model with a "not a digit" class refuses
#
# Nothing here was trained on: the reader learns from DejaVu glyphs and its own scribbles
# (digitnet.training.nondigits); these are Liberation glyphs and another scribble generator
# (a pen on a random walk of smoothly varying curvature rather than curves through random
# points). Every image is a dark-on-white page that goes through preprocess_image, as a user's
# file would.

GOAL_SCRIBBLES = 0.95
GOAL_LETTERS = 0.80
GOAL_DIGITS_REFUSED = 0.005
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Liberation's Sans, Serif and Mono, each regular, bold and italic.
FONT_STYLES = ("Regular", "Bold", "Italic")
HAND_DRAWN_PER_GLYPH = 2
_PAGE = 256


def _page(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``ink`` coverage (h, w) in [0, 1] placed at random on a white page: uint8 (256, 256)."""
    from renderings import _dark_on_white, _place

    return np.asarray(_dark_on_white(_place(ink, _PAGE, _PAGE, rng), rng))


def scribble_page(rng: np.random.Generator) -> np.ndarray:
    """One to three pen strokes, each a random walk whose curvature drifts smoothly (an
    Ornstein-Uhlenbeck process), 150-500 px long on a 256 px page: uint8 (256, 256)."""
    size = 200
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    width = int(rng.integers(3, 9))
    for _ in range(int(rng.integers(1, 4))):
        position = rng.uniform(40, size - 40, 2)
        heading, curvature = rng.uniform(0, 2 * math.pi), 0.0
        points = [tuple(position)]
        for _ in range(int(rng.integers(40, 100))):
            curvature = 0.85 * curvature + rng.normal(0, 0.15)
            heading += curvature
            step = rng.uniform(3, 6) * np.array([math.cos(heading), math.sin(heading)])
            position = position + step
            for axis in (0, 1):  # the pen turns back at the page's margin
                if not 10 <= position[axis] <= size - 10:
                    position[axis] = min(max(position[axis], 10), size - 10)
                    heading = math.pi - heading if axis == 0 else -heading
            points.append(tuple(position))
        draw.line(points, fill=255, width=width, joint="curve")
    return _page(np.asarray(image, np.float32) / 255.0, rng)


def liberation_fonts() -> list[Any]:
    """Liberation Sans, Serif and Mono in FONT_STYLES (9 files)."""
    from digitnet.training.nondigits import find_fonts

    fonts = [
        path
        for path in find_fonts("Liberation")
        if path.stem.split("-")[-1] in FONT_STYLES and "Narrow" not in path.stem
    ]
    if len(fonts) != 9:
        raise SystemExit(f"expected Liberation Sans, Serif and Mono in {FONT_STYLES}: {fonts}")
    return fonts


def _glyph(font_path: Any, char: str, pixels: int) -> np.ndarray:
    from PIL import ImageFont

    font = ImageFont.truetype(str(font_path), pixels)
    image = Image.new("L", (3 * pixels, 3 * pixels), 0)
    ImageDraw.Draw(image).text((pixels, pixels // 2), char, fill=255, font=font)
    ink = np.asarray(image, np.float32) / 255.0
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return ink[rows[0] - 4 : rows[-1] + 5, cols[0] - 4 : cols[-1] + 5]


def printed_letter(font_path: Any, char: str, rng: np.random.Generator) -> np.ndarray:
    """``char`` printed in the font at 60-150 px on a page: uint8 (256, 256)."""
    return _page(_glyph(font_path, char, int(rng.integers(60, 150))), rng)


def hand_drawn_letter(font_path: Any, char: str, rng: np.random.Generator) -> np.ndarray:
    """``char`` as if written by hand: the glyph's centre lines re-stroked with a pen of 4-9 px,
    each point moved by a smooth random field (jitter), then the whole elastically distorted:
    uint8 (256, 256)."""
    from scipy import ndimage

    from renderings import _skeleton, _smoothed_positions

    glyph = _glyph(font_path, char, 120)
    skeleton = _skeleton(glyph > 0.5)
    rows, cols = _smoothed_positions(skeleton)
    height, width = skeleton.shape

    def smooth_field(shape: tuple[int, int], rms: float, sigma: float) -> np.ndarray:
        """A smooth random displacement (shape) of ``rms`` pixels, correlated over ``sigma``."""
        field = ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma)
        return field * rms / max(float(field.std()), 1e-9)

    # Jitter: each centre-line point moves by about 3 px, smoothly along the stroke.
    rows = rows + smooth_field((height, width), 3.0, 12.0)
    cols = cols + smooth_field((height, width), 3.0, 12.0)
    margin = 10
    image = Image.new("L", (width + 2 * margin, height + 2 * margin), 0)
    draw = ImageDraw.Draw(image)
    pen = int(rng.integers(4, 10))
    for row, col in zip(*np.nonzero(skeleton)):
        for d_row, d_col in ((0, 1), (1, -1), (1, 0), (1, 1)):
            r, c = row + d_row, col + d_col
            if r < height and 0 <= c < width and skeleton[r, c]:
                start = (cols[row, col] + margin, rows[row, col] + margin)
                draw.line([start, (cols[r, c] + margin, rows[r, c] + margin)], fill=255, width=pen)
    ink = np.asarray(image, np.float32) / 255.0
    # Elastic distortion of the whole letter (Simard et al.): about 3 px RMS at this size.
    grid_rows, grid_cols = np.mgrid[0 : ink.shape[0], 0 : ink.shape[1]].astype(np.float64)
    distorted = ndimage.map_coordinates(
        ink,
        [
            grid_rows + smooth_field(ink.shape, 3.0, 15.0),
            grid_cols + smooth_field(ink.shape, 3.0, 15.0),
        ],
        order=1,
    )
    return _page(np.clip(distorted, 0, 1).astype(np.float32), rng)


@dataclass
class RefusalSet:
    """Non-digit images of one kind, preprocessed: float32 (n, 28, 28), ``no_digit`` (n,)
    the ones the preprocessing found no ink in (a refusal too), ``names`` (n,) what each is,
    ``twin`` (n,) whether it is a letter that is a digit's twin."""

    kind: str
    images: np.ndarray
    no_digit: np.ndarray
    names: list[str]
    twin: np.ndarray


def _preprocess_pages(pages: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    from digitnet.errors import NoDigitFound
    from digitnet.inference.preprocess import preprocess_image

    images = np.zeros((len(pages), 28, 28), np.float32)
    no_digit = np.zeros(len(pages), bool)
    for index, page in enumerate(pages):
        try:
            images[index] = preprocess_image(page, name=f"page {index}")
        except NoDigitFound:
            no_digit[index] = True
    return images, no_digit


def _refusal_task(kind: str, seed: int, items: list[tuple[int, Any, str]]) -> tuple[Any, ...]:
    pages = []
    for index, font, char in items:
        rng = np.random.default_rng([seed, 1000 + len(kind), index])
        if kind == "scribbles":
            pages.append(scribble_page(rng))
        elif kind == "printed letters":
            pages.append(printed_letter(font, char, rng))
        else:
            pages.append(hand_drawn_letter(font, char, rng))
    return _preprocess_pages(pages)


def refusal_sets(n_scribbles: int, seed: int = 0, workers: int = 1) -> list[RefusalSet]:
    """``n_scribbles`` scribbles, every letter in every Liberation font printed, and
    HAND_DRAWN_PER_GLYPH hand-drawn versions of each, preprocessed on ``workers`` processes."""
    from digitnet.models.classes import TWIN_LETTERS

    fonts = liberation_fonts()
    glyphs = [(font, char) for font in fonts for char in LETTERS]
    plan: dict[str, list[tuple[int, Any, str]]] = {
        "scribbles": [(i, None, "scribble") for i in range(n_scribbles)],
        "printed letters": [(i, font, char) for i, (font, char) in enumerate(glyphs)],
        "hand-drawn letters": [
            (i, font, char)
            for i, (font, char) in enumerate(
                [g for g in glyphs for _ in range(HAND_DRAWN_PER_GLYPH)]
            )
        ],
    }
    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    with ProcessPoolExecutor(max(1, workers), mp_context=context) as pool:
        futures = {
            kind: [
                pool.submit(_refusal_task, kind, seed, items[start : start + CHUNK])
                for start in range(0, len(items), CHUNK)
            ]
            for kind, items in plan.items()
        }
        sets = []
        for kind, items in plan.items():
            parts = [future.result() for future in futures[kind]]
            names = [char for _, _, char in items]
            sets.append(
                RefusalSet(
                    kind,
                    np.concatenate([part[0] for part in parts]),
                    np.concatenate([part[1] for part in parts]),
                    names,
                    np.array([name in TWIN_LETTERS and len(name) == 1 for name in names], bool),
                )
            )
    return sets


def refusal_table(model: Any, sets: Sequence[RefusalSet]) -> tuple[str, list[str]]:
    """The refusal rates of ``model`` (which has a "not a digit" class) on each set, letters
    split into twins and the rest, and the goals missed."""
    refusal = model.not_a_digit_class
    lines = [
        f"{'non-digits':<32}  {'images':>6}  {'refused':>8}  {'not a digit':>11}  "
        f"{'no digit':>8}  goal"
    ]
    missed_goals = []
    for refusal_set in sets:
        predicted = answers_of(model, model.predict_proba(refusal_set.images.reshape(-1, 784)))
        refused = (predicted == refusal) | refusal_set.no_digit
        groups = (
            [(refusal_set.kind, np.ones(len(refused), bool), GOAL_SCRIBBLES)]
            if refusal_set.kind == "scribbles"
            else [
                (f"{refusal_set.kind}, not twins", ~refusal_set.twin, GOAL_LETTERS),
                (f"{refusal_set.kind}, twins", refusal_set.twin, None),
            ]
        )
        for name, members, goal in groups:
            rate = float(refused[members].mean())
            verdict = "" if goal is None else ("ok" if rate >= goal else "MISSED")
            if verdict == "MISSED":
                missed_goals.append(name)
            lines.append(
                f"{name:<32}  {int(members.sum()):>6}  {100 * rate:7.2f}%  "
                f"{int((predicted[members] == refusal).sum()):>11}  "
                f"{int(refusal_set.no_digit[members].sum()):>8}  {verdict}"
            )
        if refusal_set.kind != "scribbles":
            read = [n for n, r in zip(refusal_set.names, refused) if not r]
            common = Counter(read).most_common(8)
            lines.append(
                f"{'':<4}read as digits most often: "
                + ", ".join(f"{name} {count}x" for name, count in common)
            )
    return "\n".join(lines), missed_goals


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "model_files",
        nargs="+",
        metavar="MODEL_FILE",
        help="model files written by `digitnet train --save-model`",
    )
    parser.add_argument(
        "--n", type=int, default=1000, help="number of MNIST test digits (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the renderings (default 0)")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory with the MNIST IDX files (default: DIGITNET_DATA_DIR or the cache)",
    )
    parser.add_argument(
        "--kinds", default=None, help="comma-separated rendering kinds (default: all)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes rendering and preprocessing (default: one per core)",
    )
    parser.add_argument(
        "--scribbles",
        type=int,
        default=1000,
        metavar="N",
        help='models with a "not a digit" class: scribbles to refuse (default 1000); the '
        "letters are every letter in every Liberation font, printed and hand-drawn",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="FILE",
        help="keep the rendered and preprocessed images in FILE (.npz) and reuse them while "
        "--n, --seed, --kinds, the renderings and the preprocessing stay the same: other "
        "models or calibrations are then scored in seconds",
    )
    parser.add_argument(
        "--show-refusals",
        type=int,
        default=0,
        metavar="K",
        help="print the first K refusal messages of each kind",
    )
    args = parser.parse_args(argv)

    from digitnet.data.mnist import load_mnist_arrays
    from digitnet.errors import DigitnetError
    from digitnet.inference import modelfile
    from renderings import RENDERINGS

    kinds = (
        None
        if args.kinds is None
        else [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    )
    unknown = sorted(set(kinds or []) - set(RENDERINGS))
    if unknown:
        parser.error(f"unknown kinds {', '.join(unknown)}; choose from {', '.join(RENDERINGS)}")
    if not 1 <= args.n <= 10000:
        parser.error("--n must be between 1 and 10000")
    try:
        models = [modelfile.load_model(path) for path in args.model_files]
        arrays = load_mnist_arrays(args.data_dir)
    except DigitnetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    digits, labels = arrays.test_images[: args.n], arrays.test_labels[: args.n]
    started = time.perf_counter()
    key = preparation_key(args.n, args.seed, kinds) if args.cache else ""
    prepared = load_prepared(args.cache, key) if args.cache else None
    if prepared is not None:
        print(
            f"{len(digits)} MNIST test digits, seed {args.seed}: preprocessed images from "
            f"{args.cache}"
        )
    else:
        prepared = prepare(digits, seed=args.seed, kinds=kinds, workers=max(1, args.workers))
        print(
            f"{len(digits)} MNIST test digits, seed {args.seed}: rendered and preprocessed in "
            f"{time.perf_counter() - started:.0f} s on {max(1, args.workers)} worker(s)"
        )
        if args.cache:
            save_prepared(args.cache, key, prepared)
    if args.show_refusals:
        for kind in prepared:
            messages = [error for error in kind.errors if error is not None]
            for message in messages[: args.show_refusals]:
                print(f"  {message}")
    for path, model in zip(args.model_files, models):
        rows = score(model, digits, labels, prepared)
        print(f"\n{path}")
        print(format_table(rows))
        goal = f"within {GOAL_POINTS} points of 28x28, at most {100 * GOAL_NO_DIGIT:g} % no digit"
        failed = missed(rows)
        if failed:
            print(f"goal ({goal}) missed by: {', '.join(failed)}")
        else:
            print(f"goal met: every kind {goal}")
        loose = miscalibrated(rows)
        if loose:
            print(f"ECE above {100 * GOAL_ECE:g} %: {', '.join(loose)}")
        else:
            print(f"calibrated: ECE at most {100 * GOAL_ECE:g} % on every row")
    refusing = [(p, m) for p, m in zip(args.model_files, models) if m.not_a_digit_class is not None]
    if refusing:
        started = time.perf_counter()
        sets = refusal_sets(args.scribbles, args.seed, max(1, args.workers))
        print(
            f"\nNot a digit: {args.scribbles} scribbles, {len(LETTERS)} letters x 9 Liberation "
            f"fonts printed and {HAND_DRAWN_PER_GLYPH}x hand-drawn, rendered and preprocessed in "
            f"{time.perf_counter() - started:.0f} s"
        )
        everything = arrays.test_images.reshape(-1, 784).astype(np.float32) / 255.0
        for path, model in refusing:
            table, missed_goals = refusal_table(model, sets)
            accuracy = accuracy_of(model, everything, arrays.test_labels)
            print(f"\n{path}: MNIST test accuracy {100 * accuracy:.2f} % of {len(everything):,}")
            print(table)
            goal = (
                f"at least {100 * GOAL_SCRIBBLES:g} % of scribbles and {100 * GOAL_LETTERS:g} % "
                "of letters (not twins) refused"
            )
            verdict = f"missed by: {', '.join(missed_goals)}" if missed_goals else "met"
            print(f"goal ({goal}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
