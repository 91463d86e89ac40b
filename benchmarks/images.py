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
        [--data-dir DIR] [--kinds photo_jpeg,...] [--workers N]

Rows:
    28x28           the test digits as they are (the baseline)
    28x28 re-centred the same digits through preprocess_image (re-cropped, re-centred)
    <kind>          renderings through preprocess_image; an image the preprocessing refuses
                    (NoDigitFound, ImageError) counts as wrong and is listed under "refused"

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
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


def score(
    model: Any, digits: np.ndarray, labels: np.ndarray, prepared: Sequence[Prepared]
) -> list[Row]:
    """Rows of the table for one model: the untouched digits, then each prepared kind."""
    from digitnet.inference.calibration import expected_calibration_error

    labels = np.asarray(labels)
    baseline = np.asarray(
        model.predict_proba(digits.reshape(len(digits), 784).astype(np.float32) / 255.0)
    )
    rows = [
        Row(
            BASELINE,
            float(np.mean(baseline.argmax(axis=1) == labels)),
            len(digits),
            ece=expected_calibration_error(baseline.max(axis=1), baseline.argmax(axis=1) == labels),
        )
    ]
    for kind in prepared:
        probabilities = np.asarray(model.predict_proba(kind.images.reshape(len(labels), 784)))
        answered = ~kind.refused
        right = probabilities.argmax(axis=1) == labels
        ece = (
            expected_calibration_error(probabilities.max(axis=1)[answered], right[answered])
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
    if row.kind == BASELINE:
        return []
    reasons = []
    if 100.0 * (row.accuracy - baseline) < -GOAL_POINTS:
        reasons.append("accuracy")
    if row.no_digit > GOAL_NO_DIGIT * row.count:
        reasons.append("no digit")
    return reasons


def format_table(rows: Sequence[Row]) -> str:
    """The table as text: kind, accuracy %, delta in points against the 28x28 row, refused (all),
    of them "no digit found", ECE %, ms/image, and whether the reading goal is met."""
    baseline = next(row.accuracy for row in rows if row.kind == BASELINE)
    width = max(len(row.kind) for row in rows)
    lines = [
        f"{'kind':<{width}}  {'accuracy':>8}  {'delta':>6}  {'refused':>7}  {'no digit':>8}  "
        f"{'ECE':>6}  {'ms/image':>8}  goal"
    ]
    for row in rows:
        delta = 100.0 * (row.accuracy - baseline)
        ms = f"{1000.0 * row.seconds / row.count:8.1f}" if row.seconds else f"{'':8}"
        ece = f"{100.0 * row.ece:5.2f}%" if not math.isnan(row.ece) else f"{'':6}"
        goal = "" if row.kind == BASELINE else ("MISSED" if _shortfalls(row, baseline) else "ok")
        lines.append(
            f"{row.kind:<{width}}  {100.0 * row.accuracy:7.2f}%  {delta:+6.2f}  {row.refused:>7} "
            f" {row.no_digit:>8}  {ece}  {ms}  {goal}"
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
    prepared = prepare(digits, seed=args.seed, kinds=kinds, workers=max(1, args.workers))
    print(
        f"{len(digits)} MNIST test digits, seed {args.seed}: rendered and preprocessed in "
        f"{time.perf_counter() - started:.0f} s on {max(1, args.workers)} worker(s)"
    )
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
