"""Training the reader's line network: numbers composed from training digits, read with CTC.

``train_line_network`` fits ``line_architecture`` to the lines of a ``LinePool``
(``digitnet.training.line_pool``) with CTC loss: the network learns to
read the digits of a line in order without being told where each one is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from digitnet.inference.line_reading import BLANK, LineNetwork
from digitnet.models.architectures import line_architecture
from digitnet.training.line_pool import MAX_LINE_WIDTH, LinePool
from digitnet.training.network import forward_propagation, initialize_parameters

__all__ = ["sparse_labels", "train_line_network"]

# Lines are batched with others of about their width: these are the batches' widths.
_BUCKETS = (64, 96, 128, 160, 192, 224, MAX_LINE_WIDTH)
DRY_RUN_STEPS = 2
"""A dry run (``digitnet train --dry-run``) trains on this few batches: it tries the path, not
the network."""
BATCH_SIZE = 64
LEARNING_RATE = 2e-3


def sparse_labels(labels: tf.Tensor, lengths: tf.Tensor) -> tf.SparseTensor:
    """The first ``lengths[i]`` labels of each row of ``labels`` (lines, longest) int32, the
    padding after them dropped, as a SparseTensor.

    CTC loss given its labels this way runs TensorFlow's compiled kernel; given them dense it
    runs a loop over the columns in graph ops, which made a batch of 64 lines 160 px wide 4x
    slower to score and a whole training step 13 % slower in bfloat16, 5 % in float32
    (``benchmarks/line_training_speed.py``)."""
    kept = tf.where(tf.sequence_mask(lengths, tf.shape(labels)[1]))
    return tf.SparseTensor(kept, tf.gather_nd(labels, kept), tf.shape(labels, out_type=tf.int64))


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
                    sparse_labels(labels, lengths),
                    logits,
                    None,
                    columns,
                    logits_time_major=False,
                    blank_index=BLANK,
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
