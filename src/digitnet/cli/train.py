"""``digitnet train``: train a model on MNIST; the defaults replay the tutorial's run."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train a model on MNIST (defaults: the tutorial's network and settings)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help=HELP,
        description=HELP + ". Settings left out take the chosen model's "
        "defaults (see the README's results table).",
    )
    parser.add_argument(
        "--model",
        choices=("seed", "mlp", "cnn"),
        default="seed",
        help="seed: the tutorial's 784-100-100-60-10 network; mlp: a wide "
        "dropout MLP; cnn: a batch-normalised CNN (default: seed)",
    )
    parser.add_argument(
        "--layout",
        metavar="SIZES",
        help="dense layer sizes, input first, e.g. 784,100,100,60,10 (seed and mlp only)",
    )
    parser.add_argument("--epochs", type=int, help="passes over the training data")
    parser.add_argument(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        type=float,
        help="Adam's (peak) learning rate",
    )
    parser.add_argument("--batch-size", type=int, help="samples per optimiser step")
    parser.add_argument(
        "--schedule",
        choices=("constant", "cosine", "onecycle"),
        help="learning-rate schedule over the run",
    )
    parser.add_argument(
        "--cost",
        choices=("mse", "cross_entropy"),
        help="mse: squared error on sigmoid outputs (the tutorial's); "
        "cross_entropy: softmax with cross-entropy",
    )
    parser.add_argument("--l2", type=float, help="L2 penalty on the weights, e.g. 1e-5")
    parser.add_argument("--dropout", type=float, help="dropout rate between layers, e.g. 0.3")
    parser.add_argument("--label-smoothing", type=float, help="e.g. 0.1")
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random shifts, rotations and elastic distortion while training",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        help="arithmetic for training: bfloat16 is several times faster on CPUs "
        "with AMX; auto picks it there (weights and the "
        "saved model stay float32)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seeds initialisation, shuffling, dropout and augmentation (default: 1)",
    )
    parser.add_argument(
        "--split",
        choices=("seed", "official"),
        help="seed: the tutorial's 56,000/14,000 split of all 70,000 images; "
        "official: MNIST's 60,000/10,000",
    )
    parser.add_argument(
        "--val-size", type=int, help="training images held out for validation (mlp/cnn: 5000)"
    )
    parser.add_argument(
        "--calibration-size",
        type=int,
        help="training images held out to calibrate the confidence when there is no validation "
        "set (seed: 2000); the validation set serves otherwise",
    )
    parser.add_argument(
        "--patience",
        type=int,
        help="stop after this many epochs without validation improvement (0: never)",
    )
    parser.add_argument(
        "--source",
        choices=("idx", "openml"),
        default="idx",
        help="idx: the MNIST files; openml: scikit-learn's fetch_openml",
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
        "--dry-run",
        action="store_true",
        help="train on a few batches only, to check that everything runs",
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
        seed=args.seed,
        dry_run=args.dry_run,
    )
    workdir = args.workdir or Path("runs") / f"{args.model}-seed{args.seed}"
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    train_and_evaluate(
        config,
        workdir,
        data_dir=args.data_dir,
        resume=args.resume,
        save_model_path=args.save_model,
        progress=progress,
    )
    return 0
