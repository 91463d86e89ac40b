"""Training the reader's line network: numbers composed from training digits, read with CTC.

``compose_lines`` lays training digits out on lines the way people write numbers
(``digitnet.data.lines``), roughens them the way pens, scanners and cameras do (thicker and
thinner strokes, blur, low resolution, a tilted line), and turns each into the line image the
reader will give the network (``digitnet.inference.line_reading.line_image``).
``train_line_network`` fits ``line_architecture`` to them with CTC loss: the network learns to
read the digits of a line in order without being told where each one is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from PIL import Image
from scipy import ndimage

from digitnet.data.lines import compose_number
from digitnet.inference.line_reading import BLANK, LineNetwork, line_image
from digitnet.models.architectures import LINE_HEIGHT, line_architecture
from digitnet.training.network import forward_propagation, initialize_parameters

__all__ = ["LinePool", "compose_lines", "roughen", "train_line_network"]

MAX_TRAINING_DIGITS = 8
"""Training lines hold 1 to this many digits; the network is convolutional, so it reads
longer lines with the same weights."""
# Line images wider than this are composed again (1 in 1,000 of 8-digit lines).
_MAX_WIDTH = 256
# Lines are batched with others of about their width: these are the batches' widths.
_BUCKETS = (64, 96, 128, 160, 192, 224, 256)
POOL_LINES = 40_000
"""Lines composed for a training run (about 50 s on one core)."""
DRY_RUN_LINES = 128
DRY_RUN_STEPS = 2
"""A dry run (``digitnet train --dry-run``) composes this few lines and trains on this few
batches: it tries the path, not the network."""
BATCH_SIZE = 64
LEARNING_RATE = 2e-3


@dataclass
class LinePool:
    """Composed training lines: ``images`` (n, LINE_HEIGHT, 256) uint8 line images (zero
    right of ``widths``), ``labels`` (n, MAX_TRAINING_DIGITS) int32 digits, -1 past
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
    mask = big > 0.5
    # The ridge of the distance to the background runs along each stroke's middle.
    depth = ndimage.distance_transform_edt(mask)
    ridge = mask & (depth >= ndimage.maximum_filter(depth, size=3))
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


def compose_lines(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> LinePool:
    """``n`` lines of 1 to MAX_TRAINING_DIGITS digits drawn from ``images`` (m, 28, 28) or
    (m, 784), labelled by ``labels`` (m,) ints; the same ``seed`` composes the same lines."""
    digits = np.asarray(images).reshape(-1, 28, 28)
    pool = LinePool(
        np.zeros((n, LINE_HEIGHT, _MAX_WIDTH), np.uint8),
        np.zeros(n, np.int32),
        np.full((n, MAX_TRAINING_DIGITS), -1, np.int32),
        np.zeros(n, np.int32),
    )
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        length = int(rng.integers(1, MAX_TRAINING_DIGITS + 1))
        while True:
            chosen = rng.integers(0, len(digits), size=length)
            line = compose_number(list(digits[chosen]), rng).image
            image = line_image(roughen(line, rng))
            if image is not None and image.values.shape[1] <= _MAX_WIDTH:
                break
        width = image.values.shape[1]
        pool.images[index, :, :width] = np.round(image.values * 255)
        pool.widths[index] = width
        pool.labels[index, :length] = labels[chosen]
        pool.lengths[index] = length
    return pool


def train_line_network(
    pool: LinePool,
    *,
    steps: int,
    seed: int = 1,
    compute_dtype: str | None = None,
    log: Callable[[str], None] = print,
) -> LineNetwork:
    """Fit ``line_architecture`` to ``pool`` with CTC loss for ``steps`` batches of
    BATCH_SIZE lines (Adam, cosine-decayed rate), each batch lines of about one width.
    ``compute_dtype="bfloat16"`` runs the convolutions in bfloat16."""
    architecture = line_architecture()
    parameters = initialize_parameters(architecture, seed=seed)
    trainable = [value for value in parameters.values() if value.trainable]
    rate = tf.keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps, alpha=0.02)
    optimizer = tf.keras.optimizers.Adam(rate)
    dtype = tf.as_dtype(compute_dtype) if compute_dtype else None

    @tf.function(reduce_retracing=True)
    def step(lines: tf.Tensor, labels: tf.Tensor, lengths: tf.Tensor, dropout_seed: tf.Tensor):
        with tf.GradientTape() as tape:
            _, logits = forward_propagation(
                lines[..., None],
                parameters,
                architecture,
                training=True,
                seed=dropout_seed,
                return_logits=True,
                compute_dtype=dtype,
            )
            logits = logits[:, 0]
            columns = tf.fill([tf.shape(lines)[0]], tf.shape(logits)[1])
            loss = tf.reduce_mean(
                tf.nn.ctc_loss(
                    labels, logits, lengths, columns, logits_time_major=False, blank_index=BLANK
                )
            )
        optimizer.apply_gradients(zip(tape.gradient(loss, trainable), trainable))
        return loss

    buckets = np.searchsorted(_BUCKETS, pool.widths)
    rng = np.random.default_rng(seed)
    done, losses, start = 0, [], time.perf_counter()
    while done < steps:
        batches = []
        for bucket, width in enumerate(_BUCKETS):
            members = rng.permutation(np.flatnonzero(buckets == bucket))
            # A bucket's last batch may be short: a small pool still trains.
            batches += [
                (width, members[i : i + BATCH_SIZE]) for i in range(0, len(members), BATCH_SIZE)
            ]
        if not batches:
            raise ValueError("the line pool is empty")
        for which in rng.permutation(len(batches)):
            width, members = batches[which]
            lines = pool.images[members, :, :width].astype(np.float32) / 255.0
            labels = np.maximum(pool.labels[members], 0)
            loss = step(
                tf.constant(lines),
                tf.constant(labels),
                tf.constant(pool.lengths[members]),
                tf.constant([done, seed], tf.int32),
            )
            # Kept as tensors: reading each loss back would wait for its step to finish
            # before the next batch is prepared.
            losses.append(loss)
            done += 1
            if done % 500 == 0 or done == steps:
                mean_loss = float(tf.reduce_mean(tf.stack(losses)))
                losses.clear()
                log(
                    f"line network: step {done}/{steps}, CTC loss {mean_loss:.3f}, "
                    f"{time.perf_counter() - start:.0f} s"
                )
            if done == steps:
                break
    return LineNetwork(architecture, {name: value.numpy() for name, value in parameters.items()})
