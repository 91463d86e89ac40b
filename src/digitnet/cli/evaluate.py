"""``digitnet evaluate``: a model's accuracy on the test set of the split it was trained on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = (
    "report test accuracy, calibration error, per-class precision/recall and the confusion matrix"
)


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help=HELP,
        description=HELP + ", on the test set of the split the model was trained with.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a model file")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four MNIST files (else $DIGITNET_DATA_DIR, the cache, or a download)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (accuracy and ece are fractions)"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from digitnet.inference.evaluation import evaluate_model, format_report, test_set_for
    from digitnet.inference.modelfile import load_model

    model = load_model(args.model)
    X_test, labels = test_set_for(model, args.data_dir)
    report = evaluate_model(model, X_test, labels)
    if args.json:
        report["model"] = str(args.model)
        report["split"] = model.metadata.get("data", {}).get("split")
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0
