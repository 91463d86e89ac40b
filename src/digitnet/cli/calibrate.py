"""``digitnet calibrate``: fit a model file's confidence calibration on its held-out images."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "calibrate a model's confidences on images it did not train on (never the test set)"


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "calibrate",
        help=HELP,
        description=HELP + ". Finds the model's validation (or calibration) images again from "
        "the settings its file records, fits a temperature for its logits and the 'low "
        "confidence' threshold there, and rewrites the file atomically (or writes --output).",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a model file")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four MNIST files (else $DIGITNET_DATA_DIR, the cache, or a download)",
    )
    parser.add_argument(
        "--output", type=Path, help="write the calibrated model here instead of over MODEL"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from digitnet.data.holdout import splits_of_model
    from digitnet.inference.calibration import calibrate, describe_calibration
    from digitnet.inference.modelfile import load_model, save_model

    model = load_model(args.model)
    held_out, X, y = splits_of_model(model.metadata, args.data_dir).held_out()
    labels = y.argmax(axis=1)
    if model.not_a_digit_class is not None:
        # As the training run did: the held-out digits and non-digits composed from them.
        from digitnet.training.nondigits import calibration_set

        training = model.metadata["training"]
        X, labels = calibration_set(
            X, labels, training["seed"], training["non_digits"], model.not_a_digit_class
        )
    calibrated = calibrate(model, X, labels, held_out)
    output = args.output or args.model
    save_model(calibrated, output)
    print(describe_calibration(calibrated))
    print(f"Saved the calibrated model to {output}")
    return 0
