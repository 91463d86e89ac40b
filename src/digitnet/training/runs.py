"""Train a named model end to end: data, validation split, epochs, checkpoints, model file.

``train_and_evaluate(config, workdir)`` is what ``digitnet train`` runs. It holds out a
validation set from the training data, keeps the weights that do best on it (early stopping
watches it too), writes a checkpoint atomically after every epoch so ``resume=True`` continues
an interrupted run to the same result, and touches the test set once, for the final report.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitnet.atomic import remove_leftovers
from digitnet.data.holdout import Splits, make_splits
from digitnet.errors import ConfigError, DigitnetError, ModelFileError
from digitnet.inference.calibration import calibrate, describe_calibration
from digitnet.inference.model import Model
from digitnet.inference.modelfile import CHECKPOINT_KIND, base_header, read_bundle, write_bundle
from digitnet.models import architectures
from digitnet.models.choices import (
    COSTS,
    DEFAULT_CLUSTER_TIMEOUT,
    MODEL_NAMES,
    PRECISIONS,
    SCHEDULES,
    SOURCES,
    SPLITS,
    STRATEGIES,
    Boolean,
    Constraint,
    Interval,
    check,
)
from digitnet.models.classes import READER_CLASSES
from digitnet.models.presets import FLOAT32_PRESETS, PRESETS

if TYPE_CHECKING:  # the engine imports TensorFlow: only inside train_and_evaluate at run time
    from digitnet.training.engine import Fitter

# What every setting must be (the choice lists live in digitnet.models.choices).
_CONSTRAINTS: dict[str, Constraint] = {
    "model": MODEL_NAMES,
    "cost": COSTS,
    "learning_rate": Interval(float, 0, 10, "neither"),
    "schedule": SCHEDULES,
    "epochs": Interval(int, 1, None),
    "batch_size": Interval(int, 1, None),
    "l2": Interval(float, 0, 1, "left"),
    "dropout": Interval(float, 0, 1, "left"),
    "label_smoothing": Interval(float, 0, 1, "left"),
    "augment": Boolean(),
    "split": SPLITS,
    "source": SOURCES,
    "val_size": Interval(int, 0, None),
    "calibration_size": Interval(int, 0, None),
    "patience": Interval(int, 0, None, note="0: off"),
    "seed": Interval(int, 0, 2**31, "left"),
    "precision": PRECISIONS,
    "strategy": STRATEGIES,
    "devices": Interval(int, 1, None),
    "non_digits": Interval(float, 0, 10, note="0: digits only"),
    "line_steps": Interval(int, 0, None, note="0: no line network"),
}


@dataclass
class TrainConfig:
    """Everything that decides a training run. ``None`` means the named model's default."""

    model: str = "seed"
    layout: list[int] | None = None
    cost: str | None = None
    learning_rate: float | None = None
    schedule: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    l2: float | None = None
    dropout: float | None = None
    label_smoothing: float | None = None
    augment: bool | None = None
    split: str | None = None
    source: str = "idx"
    val_size: int | None = None
    calibration_size: int | None = None
    patience: int | None = None
    precision: str | None = None
    seed: int = 1
    dry_run: bool = False
    strategy: str = "default"
    devices: int | None = None
    # Non-digits composed per epoch, as a fraction of the training digits; above 0 the model
    # gets an eleventh output, "not a digit" (``digitnet.training.nondigits``).
    non_digits: float | None = None
    # Batches the line network (``digitnet.training.line_reader``) trains on after the
    # classifier; above 0 the model file carries it and reads numbers with it.
    line_steps: int | None = None

    def resolved(self) -> ResolvedConfig:
        """A copy with every default filled in from the model's preset, checked."""
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}: choose {MODEL_NAMES.describe()}")
        values = dataclasses.asdict(self)
        for name, default in PRESETS[self.model].items():
            if values[name] is None:
                values[name] = default
        if self.model in FLOAT32_PRESETS and compute_dtype(values["precision"]) is None:
            for name, default in FLOAT32_PRESETS[self.model].items():
                if getattr(self, name) is None:
                    values[name] = default
        return ResolvedConfig(**values)

    def validate(self) -> None:
        for name, constraint in _CONSTRAINTS.items():
            value = getattr(self, name)
            if value is not None:
                check(name, value, constraint)
        if self.layout is not None and self.model in ("cnn", "reader"):
            raise ConfigError("--layout describes dense layers; the cnn model does not take one")

    def architecture(self, n_classes: int | None = None) -> dict[str, Any]:
        """The network to train: the named model, resized by ``layout`` and with ``n_classes``
        outputs (the data's number of classes; default 10)."""
        architecture = architectures.named_architecture(
            self.model, self.layout, self.dropout, n_classes
        )
        # The output follows the cost: squared error on sigmoids (the tutorial), or
        # cross-entropy on a softmax.
        architecture["layers"][-1]["activation"] = "sigmoid" if self.cost == "mse" else "softmax"
        return architecture

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Settings that stay None in a resolved config: no preset fills them.
_OPTIONAL = ("layout", "devices")


@dataclass(kw_only=True)
class ResolvedConfig(TrainConfig):
    """A ``TrainConfig`` with every preset setting filled in (``TrainConfig.resolved``): what
    a run uses, typed without the ``None`` that stands for "the model's default"."""

    cost: str
    learning_rate: float
    schedule: str
    epochs: int
    batch_size: int
    l2: float
    dropout: float
    label_smoothing: float
    augment: bool
    split: str
    val_size: int
    calibration_size: int
    patience: int
    precision: str
    non_digits: float
    line_steps: int

    def __post_init__(self) -> None:
        unset = [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in _OPTIONAL and getattr(self, f.name) is None
        ]
        if unset:
            raise ConfigError(f"settings {unset} are not resolved: use TrainConfig.resolved()")
        self.validate()


@dataclass
class TrainResult:
    """What a run produced: the model (best validation weights) and its report."""

    model: Model
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunState:
    """Where a run stands after ``epoch`` epochs: what a checkpoint holds besides the current
    weights and the optimizer's state.

    Attributes:
        epoch: epochs done.
        history: one record per epoch (``epoch``, ``cost``, ``learning_rate``, ``seconds``,
            and ``val_accuracy`` / ``val_cost`` with a validation set).
        best: the parameters of the best epoch so far (None without a validation set).
        best_key: how good they were, (validation accuracy, -validation cost).
        best_epoch: their epoch (0: none yet).
        stale_epochs: epochs since the validation result last improved.
        seconds: training time so far, over all sessions of the run.
    """

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, np.ndarray] | None = None
    best_key: tuple[float, float] | None = None
    best_epoch: int = 0
    stale_epochs: int = 0
    seconds: float = 0.0

    def add(self, record: dict[str, Any], parameters: Callable[[], dict[str, np.ndarray]]) -> None:
        """Count the epoch ``record`` describes; ``parameters()`` (copies of the current
        weights) are kept when they do best on validation (ties: the lower cost)."""
        self.epoch = record["epoch"]
        self.seconds += record["seconds"]
        self.history.append(record)
        if "val_accuracy" not in record:
            return
        key = (record["val_accuracy"], -record["val_cost"])
        if self.best_key is None or key > self.best_key:
            self.best, self.best_key = parameters(), key
            self.best_epoch, self.stale_epochs = record["epoch"], 0
        else:
            self.stale_epochs += 1

    def header(self) -> dict[str, Any]:
        """Everything but ``best`` (stored as tensors), for a checkpoint's JSON header."""
        return {
            "epoch": self.epoch,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_key": None if self.best_key is None else list(self.best_key),
            "stale_epochs": self.stale_epochs,
            "seconds": self.seconds,
        }

    @classmethod
    def from_header(cls, header: dict[str, Any], best: dict[str, np.ndarray] | None) -> RunState:
        best_key = header.get("best_key")
        return cls(
            epoch=header["epoch"],
            history=header["history"],
            best=best,
            best_key=None if best_key is None else (best_key[0], best_key[1]),
            best_epoch=header["best_epoch"],
            stale_epochs=header["stale_epochs"],
            seconds=header["seconds"],
        )


def _print(message: str) -> None:
    print(message, flush=True)


def load_splits(
    config: ResolvedConfig, data_dir: str | os.PathLike[str] | None = None
) -> tuple[Splits, dict[str, Any]]:
    """Training, validation, calibration and test arrays for ``config`` (resolved), and the
    ``data`` record of the model file (with the training arrays' fingerprint)."""
    from digitnet.data.mnist import dataset_fingerprint, load_mnist

    X_train, X_test, y_train, y_test = load_mnist(
        split=config.split, data_dir=data_dir, source=config.source
    )
    splits = make_splits(
        X_train,
        y_train,
        X_test,
        y_test,
        val_size=config.val_size,
        calibration_size=config.calibration_size,
        seed=config.seed,
        dry_run=config.dry_run,
        batch_size=config.batch_size,
    )
    data = {
        "source": config.source,
        "split": config.split,
        "n_train": len(splits.X_train),
        "n_validation": len(splits.X_val),
        "n_calibration": len(splits.X_calibration),
        "n_test": len(splits.X_test),
        "sha256": dataset_fingerprint(splits.X_train, splits.y_train),
    }
    return splits, data


def load_data(
    config: ResolvedConfig, data_dir: str | os.PathLike[str] | None = None
) -> tuple[
    tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], dict[str, Any]
]:
    """Training, validation and test arrays for ``config`` (resolved) and their fingerprint."""
    s, data = load_splits(config, data_dir)
    return (s.X_train, s.y_train, s.X_val, s.y_val, s.X_test, s.y_test), data


# Where a run trains may change when it resumes (a bigger machine, more workers): the
# strategy only changes how each global batch's gradient is summed.
_NOT_COMPARED = ("dry_run", "strategy", "devices", "line_steps")


def _comparable(config_json: dict[str, Any]) -> dict[str, Any]:
    # Data location is where to find the files, not what was trained; the checksum covers that.
    return {k: v for k, v in config_json.items() if k not in _NOT_COMPARED}


def train_and_evaluate(
    config: TrainConfig,
    workdir: str | Path,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    save_model_path: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] = _print,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    cluster_timeout: float = DEFAULT_CLUSTER_TIMEOUT,
    tensorboard: str | Path | None = None,
) -> TrainResult:
    """Train ``config`` with its validation split, checkpoints in ``workdir``, then test once.

    Args:
        config: settings; ``None`` fields take the named model's defaults.
        workdir: folder for ``checkpoint.safetensors`` (written atomically every epoch).
        data_dir: where the MNIST files are (else ``DIGITNET_DATA_DIR``, cache, download).
        resume: continue from the checkpoint in ``workdir``; the settings must match it.
        save_model_path: write the final model file there (atomically).
        progress: show a progress bar on stderr while training.
        log: receives the tutorial's lines (``Cost after epoch N: C`` ...).
        on_epoch_end: called as ``on_epoch_end(epoch, record)`` after each epoch's checkpoint
            is written, with that epoch's history record (``cost``, ``learning_rate``,
            ``val_accuracy`` ...); for progress displays or TensorBoard. What it raises ends
            the run, which ``resume=True`` then continues.
        tensorboard: write TensorBoard event files into this folder (``train``,
            ``validation``); see ``digitnet.training.tensorboard``.
        cluster_timeout: ``strategy="multiworker"``: seconds to wait for every worker of
            ``TF_CONFIG`` to join before failing with a ConfigError.

    Under ``strategy="multiworker"`` every worker runs this with the same settings; only the
    chief writes the checkpoint, the TensorBoard log and the model file, and with
    ``resume=True`` every worker reads the checkpoint from ``workdir`` (which must then be
    storage they all see).

    Returns:
        A ``TrainResult`` whose model holds the weights that did best on validation (the
        last epoch's when there is no validation set).
    """
    from digitnet.training.cluster import check_settings

    config = config.resolved()
    # Before TensorFlow loads (seconds): a mistake in TF_CONFIG is reported at once.
    check_settings(config.strategy, config.devices, cluster_timeout, os.environ.get("TF_CONFIG"))

    import keras
    import tensorflow as tf

    from digitnet.training.distribute import (
        CLUSTER_ERRORS,
        describe,
        is_chief,
        lost_task,
        make_strategy,
    )
    from digitnet.training.engine import Fitter, make_learning_rate
    from digitnet.training.tensorboard import TensorBoardLog

    # First: logical devices and a cluster can only be set up before TensorFlow starts.
    strategy = make_strategy(
        config.strategy, devices=config.devices, cluster_timeout=cluster_timeout
    )
    chief = is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    splits, data = load_splits(config, data_dir)
    X_train, y_train, X_val, y_val = splits.X_train, splits.y_train, splits.X_val, splits.y_val
    X_test, y_test = splits.X_test, splits.y_test
    composer = None
    n_extra = (0, 0, 0)
    if config.non_digits:
        from digitnet.training.nondigits import NonDigitComposer, extra_counts, with_class_column

        # The test and validation sets stay digits only: their accuracy counts a refused
        # digit as a mistake.
        y_train, y_val, y_test = (with_class_column(y) for y in (y_train, y_val, y_test))
        composer = NonDigitComposer(
            X_train, y_train.argmax(axis=1), seed=config.seed, not_a_digit=y_train.shape[1] - 1
        )
        n_extra = extra_counts(len(X_train), config.non_digits)
    architecture = config.architecture(n_classes=y_train.shape[1])
    steps_per_epoch = max((len(X_train) + sum(n_extra)) // config.batch_size, 1)
    fitter = Fitter(
        architecture,
        cost=config.cost,
        l2=config.l2,
        label_smoothing=config.label_smoothing,
        batch_size=config.batch_size,
        seed=config.seed,
        compute_dtype=compute_dtype(config.precision),
        learning_rate=make_learning_rate(
            config.learning_rate, config.schedule, steps_per_epoch * config.epochs
        ),
        augment=_augment(config),
        strategy=strategy,
    )
    checkpoint_path = Path(workdir) / "checkpoint.safetensors"

    # The first epoch's images, composed early to set the output bias, wait here for it.
    composed: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def epoch_data(epoch: int, *, keep: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The training digits, plus the epoch's composed images when there are any; with
        ``keep``, held for the epoch's own call (composing one takes seconds)."""
        if composer is None:
            return X_train, y_train
        if epoch in composed:
            return composed.pop(epoch)
        X_extra, labels = composer.compose(epoch, *n_extra)
        y_extra = np.eye(y_train.shape[1], dtype=np.float32)[labels]
        data = np.concatenate([X_train, X_extra]), np.concatenate([y_train, y_extra])
        if keep:
            composed[epoch] = data
        return data

    state = RunState()
    if chief:
        # A run killed while saving its checkpoint leaves the unfinished copy beside it.
        remove_leftovers(checkpoint_path)
    if resume:
        state = _restore(checkpoint_path, fitter, config, data)
        log(f"Resuming after epoch {state.epoch} from {checkpoint_path}")
    else:
        fitter.set_output_bias_from_labels(epoch_data(1, keep=True)[1])

    # With composed images each epoch brings its own data.
    digits_only = fitter.dataset(X_train, y_train) if composer is None else None

    def epoch_tensors(epoch: int) -> Any:
        return digits_only if digits_only is not None else fitter.dataset(*epoch_data(epoch))

    board = None
    if tensorboard is not None and chief:
        board = TensorBoardLog(tensorboard, config.to_json(), X_train, y_train, X_val, y_val)
    with _progress_bar(progress, config.epochs, steps_per_epoch) as advance:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            started = time.perf_counter()
            try:
                cost = fitter.train_epoch(epoch_tensors(epoch), epoch, progress=advance(epoch))
            except CLUSTER_ERRORS as error:
                if strategy is None:
                    raise
                raise lost_task(error, epoch) from None
            record = {
                "epoch": epoch,
                "cost": cost,
                "accuracy": fitter.epoch_accuracy,
                "learning_rate": float(fitter.optimizer.learning_rate.numpy()),
            }
            line = f"Cost after epoch {epoch}: {cost}"
            if len(X_val):
                record.update({f"val_{k}": v for k, v in fitter.evaluate(X_val, y_val).items()})
                line += f"  (validation accuracy {record['val_accuracy'] * 100:.2f} %)"
            record["seconds"] = time.perf_counter() - started
            state.add(record, fitter.parameters)
            if board is not None:
                board.write_epoch(record, fitter)
            log(line)
            if chief:
                _save_checkpoint(checkpoint_path, fitter, config, data, state)
            if on_epoch_end is not None:
                on_epoch_end(epoch, dict(record))
            if config.patience and state.stale_epochs >= config.patience:
                log(f"Early stopping: no validation improvement for {config.patience} epochs")
                break
    log("Training complete!")

    if state.best is not None:
        fitter.set_parameters(state.best)
    metrics = {
        "train_accuracy": fitter.accuracy(X_train, y_train),
        "test_accuracy": fitter.accuracy(X_test, y_test),
        "epochs": state.epoch,
        "best_epoch": state.best_epoch or state.epoch,
        "train_seconds": state.seconds,
        **describe(strategy),
    }
    if len(X_val):
        metrics["val_accuracy"] = fitter.accuracy(X_val, y_val)
    log(f"Accuracy on the training set: {metrics['train_accuracy'] * 100:.2f} %")
    if len(X_val):
        log(
            f"Accuracy on the validation set: {metrics['val_accuracy'] * 100:.2f} % "
            f"(weights of epoch {metrics['best_epoch']})"
        )
    log(f"Accuracy on the test set: {metrics['test_accuracy'] * 100:.2f} %")

    metadata: dict[str, Any] = {
        "training": config.to_json(),
        "metrics": metrics,
        "history": state.history,
        "data": data,
    }
    if composer is not None:
        metadata["classes"] = list(READER_CLASSES)
    model = Model(architecture, fitter.parameters(), metadata)
    held_out, X_held, y_held = splits.held_out()
    if len(X_held):
        labels_held = y_held.argmax(axis=1)
        if composer is not None:
            from digitnet.training.nondigits import calibration_set

            X_held, labels_held = calibration_set(
                X_held, labels_held, config.seed, config.non_digits
            )
        model = calibrate(model, X_held, labels_held, held_out)
        log(describe_calibration(model))
    if config.line_steps and chief:
        model = _with_line_network(model, config, X_train, y_train, log)
    if save_model_path is not None and chief:
        from digitnet.inference.modelfile import save_model

        save_model(model, save_model_path)
        log(f"Saved the model to {save_model_path}")
    elif save_model_path is not None:
        log("The chief saves the model")
    return TrainResult(model, state.history, metrics)


def _with_line_network(
    model: Model,
    config: ResolvedConfig,
    X_train: np.ndarray,
    y_train: np.ndarray,
    log: Callable[[str], None],
) -> Model:
    """``model`` with a line network trained on lines composed from the training digits (the
    training split only: the validation and test digits never appear in them)."""
    from digitnet.training.line_pool import DRY_RUN_LINES, POOL_LINES, compose_lines
    from digitnet.training.line_reader import DRY_RUN_STEPS, train_line_network

    started = time.perf_counter()
    n_lines = DRY_RUN_LINES if config.dry_run else POOL_LINES
    steps = min(config.line_steps, DRY_RUN_STEPS) if config.dry_run else config.line_steps
    pool = compose_lines(X_train, y_train.argmax(axis=1), n_lines, config.seed)
    log(f"line network: composed {n_lines:,} lines in {time.perf_counter() - started:.0f} s")
    network = train_line_network(
        pool,
        steps=steps,
        seed=config.seed,
        compute_dtype=compute_dtype(config.precision),
        log=log,
    )
    metrics = {**model.metadata["metrics"], "line_seconds": time.perf_counter() - started}
    return model.with_metadata(metrics=metrics).with_line_network(network)


# oneDNN instruction sets without bfloat16 arithmetic units: with ONEDNN_MAX_CPU_ISA capped to
# one of these (as on a plain AVX2 CPU), bfloat16 would be emulated and slower than float32.
_ONEDNN_ISAS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
)


def onednn_allows_bfloat16() -> bool:
    """False when ``ONEDNN_MAX_CPU_ISA`` holds oneDNN below its bfloat16 kernels.

    TensorFlow still sends bfloat16 products to oneDNN on a CPU that has the units, and oneDNN
    then aborts the process ("could not create a primitive descriptor").
    """
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() not in _ONEDNN_ISAS_WITHOUT_BF16


def bfloat16_is_fast() -> bool:
    """True on CPUs with AMX or AVX-512 BF16 units, where bfloat16 products run several times
    faster than float32 (elsewhere bfloat16 is emulated and slower), unless oneDNN is held
    below them with ``ONEDNN_MAX_CPU_ISA``."""
    if not onednn_allows_bfloat16():
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def compute_dtype(precision: str) -> str | None:
    """The dtype training computes in: None (the parameters' float32) or "bfloat16"."""
    if precision == "auto":
        return "bfloat16" if bfloat16_is_fast() else None
    if precision == "bfloat16" and not onednn_allows_bfloat16():
        raise ConfigError(
            f"precision bfloat16 cannot run with ONEDNN_MAX_CPU_ISA="
            f"{os.environ['ONEDNN_MAX_CPU_ISA']} (oneDNN has no bfloat16 kernels below "
            "AVX512_CORE_BF16): use --precision float32 or auto, or unset the variable"
        )
    return "bfloat16" if precision == "bfloat16" else None


def _augment(config: ResolvedConfig) -> Any:
    if not config.augment:
        return None
    from digitnet.training.augment import augment_from_config

    return augment_from_config({})


def _save_checkpoint(
    path: Path, fitter: Fitter, config: ResolvedConfig, data: dict[str, Any], state: RunState
) -> None:
    tensors = {f"parameters/{k}": v for k, v in fitter.parameters().items()}
    tensors.update({f"optimizer/{k}": v for k, v in fitter.optimizer_state().items()})
    if state.best is not None:
        tensors.update({f"best/{k}": v for k, v in state.best.items()})
    write_bundle(
        path,
        CHECKPOINT_KIND,
        tensors,
        base_header(config=config.to_json(), data=data, **state.header()),
    )


def _restore(path: Path, fitter: Fitter, config: ResolvedConfig, data: dict[str, Any]) -> RunState:
    if not path.exists():
        raise ModelFileError(
            f"no checkpoint to resume at {path}: start without --resume, or "
            f"point --workdir at the run's folder"
        )
    tensors, header = read_bundle(path, CHECKPOINT_KIND)
    check_checkpoint_header(path, header)
    # Checkpoints from before calibration_size and non_digits existed held nothing out for
    # calibration and trained on digits only.
    saved = _comparable({"calibration_size": 0, "non_digits": 0.0, **header["config"]})
    current = _comparable(config.to_json())
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        # A crafted file may hold thousands of settings, or huge ones: the message stays short.
        details = ", ".join(
            f"{k[:40]!r}: {_short(saved.get(k))} -> {_short(current.get(k))}" for k in changed[:5]
        ) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise DigitnetError(
            f"the checkpoint in {path} was made with other settings ({details});"
            f" resume with the same settings or start a new --workdir"
        )
    if header["data"].get("sha256") != data["sha256"]:
        raise DigitnetError(
            f"the checkpoint in {path} was trained on other data "
            f"(checksum differs); resume with the same data"
        )

    expected = {f"parameters/{k}": v for k, v in fitter.parameters().items()}
    expected.update({f"optimizer/{k}": v for k, v in fitter.optimizer_state().items()})
    check_checkpoint_tensors(path, tensors, header, expected)

    def group(prefix: str) -> dict[str, Any]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    fitter.set_parameters(group("parameters/"))
    fitter.set_optimizer_state(group("optimizer/"))
    return RunState.from_header(header, group("best/") or None)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# The header fields a checkpoint must hold, and what each must be.
_HEADER_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "config": ("an object of settings", lambda value: isinstance(value, dict)),
    "data": ("an object describing the data", lambda value: isinstance(value, dict)),
    "epoch": ("a count of epochs", _is_count),
    "history": (
        "a list of epoch records",
        lambda value: (
            isinstance(value, list)
            and all(
                isinstance(record, dict)
                and {"epoch", "cost", "seconds"} <= record.keys()
                and all(_is_number(item) for item in record.values())
                for record in value
            )
        ),
    ),
    "best_epoch": ("a count of epochs", _is_count),
    "best_key": (
        "null or two numbers",
        lambda value: (
            value is None
            or (isinstance(value, list) and len(value) == 2 and all(map(_is_number, value)))
        ),
    ),
    "stale_epochs": ("a count of epochs", _is_count),
    "seconds": ("a number of seconds", lambda value: _is_number(value) and value >= 0),
}


def _damaged(path: Path, what: str) -> ModelFileError:
    return ModelFileError(
        f"the checkpoint in {path} is damaged or was not written by this run: {what}; "
        "start a new --workdir"
    )


def check_checkpoint_header(path: Path, header: dict[str, Any]) -> None:
    """Refuse a checkpoint header whose fields are missing or of the wrong type (a file edited
    and checksummed again, or written by another program): a ModelFileError saying which,
    never a TypeError or KeyError later."""
    for name, (meaning, valid) in _HEADER_FIELDS.items():
        if name not in header:
            raise _damaged(path, f"its header has no {name!r}")
        if not valid(header[name]):
            raise _damaged(path, f"{name!r} in its header is not {meaning}")
    if len(header["history"]) != header["epoch"] or header["best_epoch"] > header["epoch"]:
        raise _damaged(path, "its history does not match its epoch count")


def check_checkpoint_tensors(
    path: Path,
    tensors: dict[str, np.ndarray],
    header: dict[str, Any],
    expected: dict[str, np.ndarray],
) -> None:
    """Refuse a checkpoint whose tensors are not exactly those this run would write.

    ``expected``: the tensors this run's model and optimiser hold (``parameters/NAME`` and
    ``optimizer/NNNN``), whose names, shapes and dtypes the checkpoint must match, with
    ``best/NAME`` for every parameter when the (checked) header names a best epoch. Wrong
    tensors get a ModelFileError saying which, never an exception from inside TensorFlow.
    """
    wanted = dict(expected)
    if header["best_key"] is not None:
        # The best epoch's weights are kept whenever there is a best epoch.
        parameters = {k: v for k, v in expected.items() if k.startswith("parameters/")}
        wanted.update({"best/" + k.removeprefix("parameters/"): v for k, v in parameters.items()})
    missing = sorted(set(wanted) - set(tensors))
    extra = sorted(set(tensors) - set(wanted))
    if missing:
        raise _damaged(
            path, f"it lacks tensor {missing[0]!r}" + (" and more" if missing[1:] else "")
        )
    if extra:
        raise _damaged(path, f"it holds tensor {extra[0][:80]!r}, which this model does not have")
    for name, reference in wanted.items():
        found = tensors[name]
        # safetensors stores a scalar (the optimiser's step count) as shape (1,).
        shape = (1,) if reference.shape == () else reference.shape
        if found.dtype != reference.dtype or found.shape not in (shape, reference.shape):
            raise _damaged(
                path,
                f"tensor {name!r} is {found.dtype} {list(found.shape)}, this model needs "
                f"{reference.dtype} {list(reference.shape)}",
            )


# advance(epoch) -> the progress(done, total) callback for that epoch's batches, or None.
Advance = Callable[[int], Callable[[int, int], None] | None]


def _no_progress(epoch: int) -> None:
    return None


def _progress_bar(
    enabled: bool, epochs: int, steps_per_epoch: int
) -> AbstractContextManager[Advance]:
    """A rich progress bar on stderr; the tutorial's lines still print cleanly above it."""
    if not enabled:
        return nullcontext(_no_progress)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    @contextmanager
    def bar() -> Iterator[Advance]:
        with Progress(
            TextColumn("epoch {task.fields[epoch]}/" + str(epochs)),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task("train", total=steps_per_epoch, epoch=1)

            def advance(epoch: int) -> Callable[[int, int], None]:
                progress.reset(task, total=steps_per_epoch, epoch=epoch)
                return lambda done, total: progress.update(task, completed=done)

            yield advance

    return bar()
