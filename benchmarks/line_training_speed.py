"""How long one training batch of the reader's line network takes, with CTC's labels given
sparse (as ``digitnet.training.line_reader`` gives them) and dense, side by side in one run.

``tf.nn.ctc_loss`` runs TensorFlow's compiled CTC kernel when the labels are a SparseTensor
and a loop over the line's columns in graph ops when they are dense. Both score the same
batches of lines composed from training digits (bucketed by width as in training), alternately,
``--rounds`` times; the table gives each round's mean milliseconds per batch and the ratio of
the medians.

    python benchmarks/line_training_speed.py [--precision bfloat16|float32] [--batches 150]
    ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell \\
        python benchmarks/line_training_speed.py --precision float32   # an AVX2-only CPU

Needs MNIST (``DIGITNET_DATA_DIR`` or ``--data-dir``). About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--batches", type=int, default=150, help="batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("DIGITNET_DATA_DIR"))
    args = parser.parse_args(argv)

    import tensorflow as tf

    from digitnet.data.mnist import load_mnist_arrays
    from digitnet.inference.line_reading import BLANK
    from digitnet.models.architectures import line_architecture
    from digitnet.training import line_reader
    from digitnet.training.line_pool import compose_lines
    from digitnet.training.network import forward_propagation, initialize_parameters

    arrays = load_mnist_arrays(args.data_dir)
    pool = compose_lines(arrays.train_images[:30000], arrays.train_labels[:30000], 20000, seed=1)
    architecture = line_architecture()
    parameters = initialize_parameters(architecture, seed=1)
    trainable = [value for value in parameters.values() if value.trainable]
    optimizer = tf.keras.optimizers.Adam(line_reader.LEARNING_RATE)
    compute_dtype = tf.bfloat16 if args.precision == "bfloat16" else None

    def training_step(sparse: bool) -> Callable[..., Any]:
        @tf.function(reduce_retracing=True)
        def step(lines: tf.Tensor, labels: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                _, logits = forward_propagation(
                    lines[..., None],
                    parameters,
                    architecture,
                    training=True,
                    seed=tf.constant([0, 1]),
                    return_logits=True,
                    compute_dtype=compute_dtype,
                )
                logits = logits[:, 0]
                columns = tf.fill([tf.shape(lines)[0]], tf.shape(logits)[1])
                given = line_reader.sparse_labels(labels, lengths) if sparse else labels
                loss = tf.reduce_mean(
                    tf.nn.ctc_loss(
                        given,
                        logits,
                        None if sparse else lengths,
                        columns,
                        logits_time_major=False,
                        blank_index=BLANK,
                    )
                )
            optimizer.apply_gradients(zip(tape.gradient(loss, trainable), trainable))
            return loss

        return step

    rng = np.random.default_rng(0)
    buckets = np.searchsorted(line_reader._BUCKETS, pool.widths)
    batches = []
    for bucket, width in enumerate(line_reader._BUCKETS):
        members = rng.permutation(np.flatnonzero(buckets == bucket))
        size = line_reader.BATCH_SIZE
        batches += [(width, members[i : i + size]) for i in range(0, len(members) - size + 1, size)]
    chosen = [batches[i] for i in rng.permutation(len(batches))[: args.batches]]
    data = [
        (
            tf.constant(pool.images[members, :, :width].astype(np.float32) / 255.0),
            tf.constant(np.maximum(pool.labels[members], 0)),
            tf.constant(pool.lengths[members]),
        )
        for width, members in chosen
    ]
    steps = {"sparse labels": training_step(True), "dense labels": training_step(False)}
    for step in steps.values():
        for batch in data:  # traces each width once, outside the timing
            step(*batch)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for batch in data:
                step(*batch).numpy()
            times[name].append((time.perf_counter() - start) / len(data) * 1000)

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "the CPU's own")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {isa} ISA")
    print(f"{args.precision}, {len(data)} batches of {line_reader.BATCH_SIZE} lines per round")
    print("| CTC labels | ms per batch, each round | median |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        rounds = " / ".join(f"{value:.1f}" for value in values)
        print(f"| {name} | {rounds} | {np.median(values):.1f} |")
    ratio = np.median(times["dense labels"]) / np.median(times["sparse labels"])
    print(f"dense / sparse: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
