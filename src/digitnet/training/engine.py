"""The training engine behind ``train_parameters`` and ``train_and_evaluate``.

Speed comes from keeping Python out of the inner loop: the data lives in TensorFlow tensors,
and a chunk of mini-batches (by default a whole epoch) runs as one compiled ``tf.function``
loop of gather, forward pass, gradient and Adam update. Randomness is stateless and keyed by
(seed, epoch) for shuffling and (seed, step) for dropout and augmentation, so a run resumed
from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from digitnet.errors import ConfigError, TrainingError
from digitnet.models import architectures
from digitnet.models.choices import SCHEDULES, check
from digitnet.training.network import calculate_cost, forward_propagation, initialize_parameters

Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def make_learning_rate(
    learning_rate: float, schedule: str, total_steps: int, warmup_steps: int = 0
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A Keras schedule over optimiser steps, one of ``SCHEDULES``."""
    check("schedule", schedule, SCHEDULES)
    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            learning_rate if warmup_steps == 0 else learning_rate / 10,
            max(total_steps, 1),
            alpha=0.01,
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    if schedule == "onecycle":
        # Linear warm-up over the first 20% of steps, then cosine annealing to 1% of the peak.
        warmup = max(int(0.2 * total_steps), 1)
        return keras.optimizers.schedules.CosineDecay(
            learning_rate / 10,
            max(total_steps - warmup, 1),
            alpha=0.01,
            warmup_target=learning_rate,
            warmup_steps=warmup,
        )
    raise AssertionError(f"SCHEDULES has {schedule!r}, make_learning_rate does not")


class Fitter:
    """Parameters, optimiser and the compiled training loop for one architecture.

    Args:
        architecture: canonical architecture dict.
        cost: ``"mse"`` or ``"cross_entropy"``.
        learning_rate: a float or a Keras learning-rate schedule (over optimiser steps).
        l2: weight of the L2 penalty on weights.
        label_smoothing: fraction of the target mass spread over all classes.
        batch_size: samples per optimiser step; a trailing partial batch is skipped each epoch
            (every sample still takes part, as the order is reshuffled every epoch).
        seed: seeds initialisation, shuffling, dropout and augmentation.
        augment: optional in-graph ``augment(images (b, 784), seed (2,)) -> images``.
        jit_compile: compile each step (forward, gradient, Adam) with XLA. No faster on the
            CPUs measured: the seed network a little slower in float32, half as fast in bfloat16,
            the cnn a fifth as fast (XLA's CPU products and convolutions do not use oneDNN).
        compute_dtype: ``"bfloat16"`` to run products and convolutions in it (see
            ``forward_propagation``), or None for the parameters' float32.
    """

    def __init__(
        self,
        architecture: Mapping,
        *,
        cost: str = "mse",
        learning_rate=0.002,
        l2: float = 0.0,
        label_smoothing: float = 0.0,
        batch_size: int = 1000,
        seed: int = 1,
        augment: Augment | None = None,
        jit_compile: bool = False,
        compute_dtype: str | None = None,
    ):
        self.architecture = architectures.validate_architecture(architecture)
        self.cost, self.l2, self.label_smoothing = cost, float(l2), float(label_smoothing)
        self.batch_size, self.seed, self.augment = int(batch_size), int(seed), augment
        self.compute_dtype = tf.as_dtype(compute_dtype) if compute_dtype else None
        self.variables = initialize_parameters(self.architecture, seed=self.seed)
        self.trainable = [variable for variable in self.variables.values() if variable.trainable]
        self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
        self.optimizer.build(self.trainable)
        self._train_chunk = tf.function(self._train_chunk_python, reduce_retracing=True)
        # The step and the forward pass have no Python control flow that depends on tensors,
        # so AutoGraph need not rewrite them, nor everything they call (architecture checks,
        # the layers, the cost, Adam, augmentation): that rewriting was most of the 2 s the
        # first epoch took to trace. Only the loop over batches needs it.
        # XLA compiles the step alone: over the whole loop it would take the training set as an
        # argument and copy it on every call (a seed epoch took 45 s instead of 0.3).
        self._step_graph = (
            tf.function(self._step, jit_compile=True, autograph=False)
            if jit_compile
            else tf.autograph.experimental.do_not_convert(self._step)
        )
        self._forward = tf.function(
            lambda X: forward_propagation(X, self.variables, self.architecture),
            reduce_retracing=True,
            autograph=False,
        )
        self._stored_inputs: tuple[tf.Tensor, tf.Tensor] | None = None
        self.epoch_accuracy = float("nan")  # set by train_epoch

    # ------------------------------------------------------------------ data and training

    @staticmethod
    def dataset(X, y) -> tuple[tf.Tensor, tf.Tensor]:
        """Move ``X`` (n, features) and one-hot ``y`` (n, classes) into float32 tensors once."""
        return (
            tf.convert_to_tensor(np.asarray(X, dtype=np.float32)),
            tf.convert_to_tensor(np.asarray(y, dtype=np.float32)),
        )

    def _step(self, X_batch, y_batch, step_seed):
        if self.augment is not None:
            X_batch = self.augment(X_batch, step_seed)
        with tf.GradientTape() as tape:
            A_output, logits = forward_propagation(
                X_batch,
                self.variables,
                self.architecture,
                training=True,
                seed=step_seed,
                return_logits=True,
                compute_dtype=self.compute_dtype,
            )
            cost = calculate_cost(
                A_output,
                y_batch,
                self.variables,
                cost=self.cost,
                l2=self.l2,
                label_smoothing=self.label_smoothing,
                logits=logits,
            )
        gradients = tape.gradient(cost, self.trainable)
        self.optimizer.apply(gradients, self.trainable)
        # Right answers in the batch as trained (augmented, with dropout), as Keras's running
        # training accuracy counts them: free here, a second pass over the data is not.
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(A_output, axis=1), tf.argmax(y_batch, axis=1)), tf.float32)
        )
        return cost, correct

    def _train_chunk_python(self, X, y, order, first_batch, last_batch, size):
        """Train on batches ``first_batch .. last_batch - 1`` of ``order``; returns the sum of
        the batch costs and the number of samples answered right."""
        total = tf.constant(0.0, tf.float32)
        right = tf.constant(0.0, tf.float32)
        for batch in tf.range(first_batch, last_batch):
            indices = order[batch * size : (batch + 1) * size]
            step_seed = tf.stack(
                [tf.constant(self.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)]
            )
            cost, correct = self._step_graph(
                tf.gather(X, indices), tf.gather(y, indices), step_seed
            )
            total += cost
            right += correct
        return total, right

    def _training_inputs(self, X: tf.Tensor) -> tf.Tensor:
        """``X`` (n, features) as the training graph gathers it: in the compute dtype when
        the batches go straight into the network.

        Casting every batch inside the step took half as long as the seed network's matrix
        products (profiled: 0.8 against 1.5 ms a step), and gathering float32 rows moves twice
        the bytes: casting the whole set once per run makes bfloat16 epochs about a quarter
        faster. A cast of gathered rows equals the gathered cast rows, so training is
        bit-identical. Augmentation reads float32 images, so it keeps them.
        """
        if self.compute_dtype is None or self.augment is not None or X.dtype == self.compute_dtype:
            return X
        if self._stored_inputs is None or self._stored_inputs[0] is not X:
            self._stored_inputs = (X, tf.cast(X, self.compute_dtype))
        return self._stored_inputs[1]

    def batches_per_epoch(self, n: int) -> int:
        return max(n // self.batch_size, 1)

    def train_epoch(
        self,
        data: tuple[tf.Tensor, tf.Tensor],
        epoch: int,
        progress=None,
        chunks: int | None = None,
    ) -> float:
        """One pass over ``data`` in a fresh order; returns the mean batch cost.

        ``progress(done, total)`` is called after each chunk of batches, for progress bars.
        Afterwards ``epoch_accuracy`` holds the fraction of the epoch's samples answered right
        as they were trained on (augmented, with dropout).
        """
        X, y = data
        X = self._training_inputs(X)
        n = int(X.shape[0])
        batch_count = self.batches_per_epoch(n)
        # Small data (dry runs, tests): one batch of everything.
        size = tf.constant(min(self.batch_size, n), tf.int32)
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.constant([self.seed, epoch], tf.int64)
        )
        chunk_count = chunks or (min(batch_count, 10) if callable(progress) else 1)
        bounds = np.linspace(0, batch_count, chunk_count + 1).astype(int)
        total = right = 0.0
        for first, last in zip(bounds[:-1], bounds[1:]):
            if last > first:
                chunk_cost, chunk_right = self._train_chunk(
                    X, y, order, tf.constant(first, tf.int32), tf.constant(last, tf.int32), size
                )
                total += float(chunk_cost)
                right += float(chunk_right)
            if callable(progress):
                progress(int(last), batch_count)
        cost = total / batch_count
        self.epoch_accuracy = right / (batch_count * int(size))
        if not math.isfinite(cost):
            raise TrainingError(f"the cost became {cost} in epoch {epoch}: lower the learning rate")
        return cost

    def set_output_bias_from_labels(self, y) -> None:
        """Start the output layer at the class frequencies of one-hot ``y`` (n, classes).

        With zero biases a sigmoid output starts at 0.5 for every class, the squared error then
        drives all ten outputs down hard, and one or two can saturate near 0 for good (a whole
        digit never predicted: 81-88% test accuracy on some seeds). Starting each bias at the
        log-odds of its class frequency (about -2.2 for MNIST) removes that first push. For a
        softmax the matching start is the log frequency.
        """
        last = self.architecture["layers"][-1]
        k = architectures.layer_numbers(self.architecture)[-1]
        if not last["use_bias"]:
            return
        frequency = np.clip(np.asarray(y, dtype=np.float64).mean(axis=0), 1e-6, 1 - 1e-6)
        if last["activation"] == "sigmoid":
            bias = np.log(frequency / (1.0 - frequency))
        elif last["activation"] == "softmax":
            bias = np.log(frequency) - np.log(frequency).mean()
        else:
            return
        self.variables[f"b{k}"].assign(
            bias.reshape(self.variables[f"b{k}"].shape).astype(np.float32)
        )

    # ------------------------------------------------------------------ evaluation

    def outputs(self, X, batch_size: int = 10000) -> np.ndarray:
        """Output activations (n, classes) with the current parameters, in inference mode."""
        X = np.asarray(X, dtype=np.float32)
        return np.concatenate(
            [
                self._forward(tf.convert_to_tensor(X[i : i + batch_size])).numpy()
                for i in range(0, len(X), batch_size)
            ]
        )

    def accuracy(self, X, y) -> float:
        """Fraction of ``X`` whose highest output is the one-hot label in ``y``."""
        return float(np.mean(self.outputs(X).argmax(axis=1) == np.asarray(y).argmax(axis=1)))

    def evaluate(self, X, y) -> dict[str, float]:
        """Accuracy and cost (without the L2 term) on ``X``, ``y``."""
        outputs = self.outputs(X)
        y = np.asarray(y, dtype=np.float32)
        cost = calculate_cost(outputs, y, {}, cost=self.cost)
        return {"accuracy": float(np.mean(outputs.argmax(1) == y.argmax(1))), "cost": float(cost)}

    # ------------------------------------------------------------------ state

    def parameters(self) -> dict[str, np.ndarray]:
        """Current parameters as NumPy arrays (copies)."""
        return {name: variable.numpy() for name, variable in self.variables.items()}

    def set_parameters(self, parameters: Mapping[str, np.ndarray]) -> None:
        for name, variable in self.variables.items():
            variable.assign(parameters[name])

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimiser's variables (step count, Adam moments) by position."""
        return {
            f"{i:04d}": np.asarray(variable.numpy())
            for i, variable in enumerate(self.optimizer.variables)
        }

    def set_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        variables = self.optimizer.variables
        if len(state) != len(variables):
            raise ConfigError(
                f"the checkpoint holds {len(state)} optimiser variables, this "
                f"model needs {len(variables)}"
            )
        for i, variable in enumerate(variables):
            # safetensors stores a scalar (the step count) as shape (1,).
            variable.assign(np.reshape(state[f"{i:04d}"], variable.shape))
