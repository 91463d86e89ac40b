"""``digitnet train``: train a model on MNIST; the defaults replay the tutorial's run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from digitnet.models.choices import (
    COSTS,
    DEFAULT_CLUSTER_TIMEOUT,
    MODEL_NAMES,
    PRECISIONS,
    SCHEDULES,
    SOURCES,
    SPLITS,
    STRATEGIES,
)
from digitnet.models.presets import preset_defaults

HELP = "train a model on MNIST (defaults: the tutorial's network and settings)"


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help=HELP,
        description=HELP + ". Settings left out take the chosen model's "
        "defaults (see the README's results table).",
    )
    parser.add_argument(
        "--model",
        choices=MODEL_NAMES,
        default="seed",
        help=f"{MODEL_NAMES.help()} (default: seed)",
    )
    parser.add_argument(
        "--layout",
        metavar="SIZES",
        help="dense layer sizes, input first, e.g. 784,100,100,60,10 (seed and mlp only; the "
        "last is the data's number of classes)",
    )

    def preset(setting: str, text: str, **options: Any) -> None:
        """A flag whose default is the chosen model's preset, shown in its help."""
        flag = "--" + setting.replace("_", "-")
        help_text = f"{text} (default: {preset_defaults(setting)})"
        parser.add_argument(flag, help=help_text, **options)

    preset("epochs", "passes over the training data", type=int)
    parser.add_argument(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        type=float,
        help=f"Adam's (peak) learning rate (default: {preset_defaults('learning_rate')})",
    )
    preset("batch_size", "samples per optimiser step", type=int)
    preset("schedule", f"learning-rate schedule: {SCHEDULES.help()}", choices=SCHEDULES)
    preset("cost", COSTS.help(), choices=COSTS)
    preset("l2", "L2 penalty on the weights, e.g. 1e-5", type=float)
    preset("dropout", "dropout rate between layers, e.g. 0.3", type=float)
    preset("label_smoothing", "fraction of the target spread over all classes", type=float)
    preset(
        "augment",
        "random shifts, rotations and elastic distortion while training",
        action=argparse.BooleanOptionalAction,
        default=None,
    )
    preset(
        "precision",
        f"arithmetic for training: {PRECISIONS.help()}; weights and the saved model stay float32",
        choices=PRECISIONS,
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seeds initialisation, shuffling, dropout and augmentation (default: 1)",
    )
    preset("split", SPLITS.help(), choices=SPLITS)
    preset("val_size", "training images held out for validation", type=int)
    preset(
        "calibration_size",
        "training images held out to calibrate the confidence when there is no validation set "
        "(the validation set serves otherwise)",
        type=int,
    )
    preset(
        "non_digits",
        "non-digits composed per epoch per training digit; above 0 the model gets an 11th "
        'output, "not a digit"',
        type=float,
    )
    preset(
        "line_steps",
        "batches of 64 composed lines the line network, which reads whole numbers, trains on "
        "after the classifier (0: none)",
        type=int,
    )
    preset(
        "patience",
        "stop after this many epochs without validation improvement (0: never)",
        type=int,
    )
    parser.add_argument(
        "--source", choices=SOURCES, default="idx", help=f"{SOURCES.help()} (default: idx)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four MNIST files (else $DIGITNET_DATA_DIR, the cache, or a download)",
    )
    parser.add_argument(
        "--save-model",
        type=Path,
        metavar="PATH",
        help="write the trained model here (e.g. seed.safetensors)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="folder for the per-epoch checkpoint (default: runs/MODEL-seedN)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the interrupted run in --workdir"
    )
    parser.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help="write TensorBoard logs (per-epoch cost, accuracy, learning rate, weight "
        "histograms, validation mistakes) into DIR/train and DIR/validation; view them with "
        "`tensorboard --logdir DIR`",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="train on a few batches only, to check that everything runs",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="default",
        help=f"where to train: {STRATEGIES.help()} (default: default). --batch-size stays the "
        "global batch, split evenly over the replicas; the learning rate is not rescaled",
    )
    parser.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="--strategy mirrored: mirror over N local devices (default: every GPU, else the "
        "CPU; N > 1 without GPUs splits the CPU into N logical devices, for tests)",
    )
    parser.add_argument(
        "--cluster-timeout",
        type=float,
        default=DEFAULT_CLUSTER_TIMEOUT,
        metavar="SECONDS",
        help="--strategy multiworker: fail if a TF_CONFIG task has not joined after this long "
        f"(default: {DEFAULT_CLUSTER_TIMEOUT:g})",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import sys

    from digitnet.cli.common import check_writable_directory, check_writable_file
    from digitnet.inference.modelfile import signing_key

    workdir = args.workdir or Path("runs") / f"{args.model}-seed{args.seed}"
    # Before TensorFlow is even imported: an unwritable target, or a key too short to sign
    # with, must not cost a training run.
    if args.save_model is not None:
        check_writable_file(args.save_model, "--save-model")
    check_writable_directory(workdir, "--workdir")
    signing_key()

    from digitnet.models.architectures import parse_layout
    from digitnet.training.runs import TrainConfig, train_and_evaluate

    config = TrainConfig(
        model=args.model,
        layout=parse_layout(args.layout) if args.layout else None,
        cost=args.cost,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        epochs=1 if args.dry_run and args.epochs is None else args.epochs,
        batch_size=args.batch_size,
        l2=args.l2,
        dropout=args.dropout,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        split=args.split,
        precision=args.precision,
        source=args.source,
        val_size=args.val_size,
        calibration_size=args.calibration_size,
        patience=args.patience,
        non_digits=args.non_digits,
        line_steps=args.line_steps,
        seed=args.seed,
        dry_run=args.dry_run,
        strategy=args.strategy,
        devices=args.devices,
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    train_and_evaluate(
        config,
        workdir,
        data_dir=args.data_dir,
        resume=args.resume,
        save_model_path=args.save_model,
        progress=progress,
        cluster_timeout=args.cluster_timeout,
        tensorboard=args.tensorboard,
    )
    return 0
