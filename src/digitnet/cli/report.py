"""``digitnet report``: figures and a web page of what a model learned and where it errs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "write figures and a web page on a model: learning curves, mistakes, calibration, weights"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help=HELP,
        description=HELP + ". Writes PNG figures, report.json and index.html (open it in a "
        "browser; it needs no network) for the test set of the split the model was trained "
        "with: learning curves from the model file's history, the confusion matrix and the "
        "most confused pairs, the misclassified digits (most confident first), precision, "
        "recall and F1 per class, a reliability diagram, and the first layer's weights.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a model file")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder to write into (default: MODEL's name without .safetensors, plus -report)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four MNIST files (else $DIGITNET_DATA_DIR, the cache, or a download)",
    )
    parser.set_defaults(run=run)
    return parser


def default_out(model: Path) -> Path:
    """``runs/cnn.safetensors`` -> ``runs/cnn-report``."""
    return model.with_name(model.name.removesuffix(".safetensors") + "-report")


def run(args: argparse.Namespace) -> int:
    from digitnet.inference.report import build_report

    index = build_report(args.model, args.out or default_out(args.model), args.data_dir)
    print(f"Wrote the report to {index}")
    return 0
