"""Lines to train the reader's line network on: numbers composed from training digits.

``compose_lines`` lays training digits out on lines the way people write numbers
(``digitnet.data.lines``), roughens them the way pens, scanners and cameras do (thicker and
thinner strokes, blur, low resolution, a tilted line), and turns each into the line image the
reader will give the network (``digitnet.inference.line_reading.line_image``). Every line has
its own random stream, so the pool is the same however many processes compose it.

No TensorFlow: the processes that compose lines start without it.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from digitnet.data.lines import compose_number
from digitnet.inference.batch import usable_cpus
from digitnet.inference.line_reading import line_image
from digitnet.models.architectures import LINE_HEIGHT
from digitnet.training.nondigits import FORKS, stroke_middles

__all__ = [
    "DRY_RUN_LINES",
    "MAX_LINE_WIDTH",
    "MAX_TRAINING_DIGITS",
    "POOL_LINES",
    "LinePool",
    "compose_lines",
    "roughen",
]

MAX_TRAINING_DIGITS = 8
"""Training lines hold 1 to this many digits; the network is convolutional, so it reads
longer lines with the same weights."""
MAX_LINE_WIDTH = 256
"""Line images wider than this, px, are composed again (1 in 1,000 of 8-digit lines)."""
POOL_LINES = 120_000
"""Lines composed for a training run: about 160 s on one core, 1 GB. The reader's 6,500
batches of 64 see each line three and a half times. From a pool of 40,000, 5,000 batches (eight
times each) learned the lines by heart (CTC loss 0.11 against 0.32 from this pool) and read
1,440 numbers of 4 and 8 validation digits 86.2 % exact, against 90.2 % from this pool."""
DRY_RUN_LINES = 128
"""A dry run (``digitnet train --dry-run``) composes this few lines: it tries the path, not
the network."""
# Lines a work process composes per task: enough to outweigh sending them back.
_CHUNK = 2_000
# Forked where the system has fork (Linux): a spawned process would first run the caller's
# script again, which in a script without an `if __name__ == "__main__":` guard means its
# whole training run, in every process. Forking a process that runs TensorFlow is safe here
# because the children run only NumPy, Pillow and SciPy code, never TensorFlow's thread
# pools (a test composes lines after TensorFlow has run, from an unguarded script).
_START_METHOD = "fork" if FORKS else "spawn"


@dataclass
class LinePool:
    """Composed training lines: ``images`` (n, LINE_HEIGHT, MAX_LINE_WIDTH) uint8 line images
    (zero right of ``widths``), ``labels`` (n, MAX_TRAINING_DIGITS) int32 digits, -1 past
    ``lengths`` (n,) digits."""

    images: np.ndarray
    widths: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray


def _thin(line: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The strokes redrawn 1-2 px wide along their middles, as a fine pen draws them."""
    height, width = line.shape
    big = np.asarray(
        Image.fromarray(line).resize((width * 3, height * 3), Image.Resampling.BILINEAR)
    )
    ridge = stroke_middles(big > 0.5)
    if rng.random() < 0.5:
        ridge = ndimage.binary_dilation(ridge)
    drawn = ndimage.gaussian_filter(ridge.astype(np.float32), 0.7)
    return np.asarray(Image.fromarray(drawn).resize((width, height), Image.Resampling.BOX))


def roughen(line: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A composed line (h, w) float32 in [0, 1] as a photo, scan or pen might leave it (the
    shape may change when it is tilted)."""
    line = np.asarray(line, np.float32)
    if rng.random() < 0.3:
        turned = Image.fromarray(line).rotate(
            rng.uniform(-10.0, 10.0), Image.Resampling.BICUBIC, expand=True, fillcolor=0.0
        )
        line = np.clip(np.asarray(turned, np.float32), 0.0, 1.0)
    stroke = rng.random()
    if stroke < 0.15:
        line = _thin(line, rng)
    elif stroke < 0.3:
        line = ndimage.grey_dilation(line, size=(2, 2))
    elif stroke < 0.4:
        line = ndimage.grey_erosion(line, size=(2, 1) if rng.random() < 0.5 else (1, 2))
    if rng.random() < 0.25:
        line = ndimage.gaussian_filter(line, rng.uniform(0.3, 1.0))
    if rng.random() < 0.3:
        factor = rng.uniform(0.35, 0.8)
        height, width = line.shape
        small = Image.fromarray(line).resize(
            (max(2, round(width * factor)), max(2, round(height * factor))),
            Image.Resampling.BOX,
        )
        if rng.random() < 0.5:
            small = small.resize((width, height), Image.Resampling.BILINEAR)
        line = np.asarray(small, np.float32)
    if rng.random() < 0.15:
        line = line * rng.uniform(0.5, 1.0)
    return np.clip(line, 0.0, 1.0).astype(np.float32)


def compose_lines(
    images: np.ndarray, labels: np.ndarray, n: int, seed: int, *, workers: int | None = None
) -> LinePool:
    """``n`` lines of 1 to MAX_TRAINING_DIGITS digits drawn from ``images`` (m, 28, 28) or
    (m, 784), labelled by ``labels`` (m,) ints; the same ``seed`` composes the same lines.

    ``workers`` processes compose them (default: one per usable CPU; 1: this process only).
    """
    digits = np.ascontiguousarray(np.asarray(images).reshape(-1, 28, 28))
    labels = np.asarray(labels)
    workers = usable_cpus() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    pool = _empty_pool(n)
    starts = range(0, n, _CHUNK)
    if workers == 1 or n <= _CHUNK:
        _fill(pool, 0, _compose(digits, labels, seed, 0, n))
        return pool
    with ProcessPoolExecutor(
        min(workers, len(starts)),
        mp_context=multiprocessing.get_context(_START_METHOD),
        initializer=_start_worker,
        initargs=(digits, labels),
    ) as executor:
        futures = [
            executor.submit(_compose_in_worker, seed, start, min(start + _CHUNK, n))
            for start in starts
        ]
        for start, future in zip(starts, futures):
            _fill(pool, start, future.result())
    return pool


def _empty_pool(n: int) -> LinePool:
    return LinePool(
        np.zeros((n, LINE_HEIGHT, MAX_LINE_WIDTH), np.uint8),
        np.zeros(n, np.int32),
        np.full((n, MAX_TRAINING_DIGITS), -1, np.int32),
        np.zeros(n, np.int32),
    )


def _fill(pool: LinePool, start: int, part: LinePool) -> None:
    stop = start + len(part.widths)
    pool.images[start:stop] = part.images
    pool.widths[start:stop] = part.widths
    pool.labels[start:stop] = part.labels
    pool.lengths[start:stop] = part.lengths


def _compose(digits: np.ndarray, labels: np.ndarray, seed: int, start: int, stop: int) -> LinePool:
    """Lines ``start`` to ``stop`` - 1 of the pool ``seed`` composes."""
    part = _empty_pool(stop - start)
    for row, index in enumerate(range(start, stop)):
        rng = np.random.default_rng([seed, index])
        length = int(rng.integers(1, MAX_TRAINING_DIGITS + 1))
        while True:
            chosen = rng.integers(0, len(digits), size=length)
            line = compose_number(list(digits[chosen]), rng).image
            image = line_image(roughen(line, rng))
            if image is not None and image.values.shape[1] <= MAX_LINE_WIDTH:
                break
        width = image.values.shape[1]
        part.images[row, :, :width] = np.round(image.values * 255)
        part.widths[row] = width
        part.labels[row, :length] = labels[chosen]
        part.lengths[row] = length
    return part


_WORKER: dict[str, Any] = {}


def _start_worker(digits: np.ndarray, labels: np.ndarray) -> None:
    _WORKER.update(digits=digits, labels=labels)


def _compose_in_worker(seed: int, start: int, stop: int) -> LinePool:
    return _compose(_WORKER["digits"], _WORKER["labels"], seed, start, stop)
