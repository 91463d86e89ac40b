"""``digitnet export``: a model file as a TensorFlow SavedModel, a TFLite file or ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a model for TensorFlow Serving (SavedModel), LiteRT (TFLite) or ONNX Runtime"


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    # The table of formats imports no TensorFlow; only writing a SavedModel or TFLite file does.
    from digitnet.training.export import FORMATS, QUANTIZATIONS

    formats = "; ".join(f"{name}: {row.summary}" for name, row in FORMATS.items())
    parser = subparsers.add_parser(
        "export",
        help=HELP,
        description=HELP + ". Every format takes float32 images [n, 28, 28] in [0, 1] (MNIST "
        "form) named 'images' and returns the ten class probabilities named 'probabilities', "
        "as `digitnet serve` does. An existing output is replaced only if it is an earlier "
        "export in the same format.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a model file")
    parser.add_argument(
        "--format",
        required=True,
        metavar="|".join(FORMATS),
        help=formats,
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="where to write: a file (tflite, onnx) or TensorFlow Serving's model folder "
        "(savedmodel: the export goes into PATH/VERSION/). Default: beside MODEL, named after "
        "it (cnn.tflite, cnn.int8.tflite, cnn.onnx, cnn/1/)",
    )
    parser.add_argument(
        "--quantize",
        metavar="|".join(QUANTIZATIONS),
        help="int8: integer weights and activations, calibrated on training images "
        "(tflite only; inputs and outputs stay float32)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="MNIST folder for --quantize's training images (else $DIGITNET_DATA_DIR, the "
        "cache, or a download)",
    )
    parser.add_argument(
        "--model-version",
        type=int,
        metavar="N",
        help="savedmodel: the version folder under PATH (default: 1); TensorFlow Serving "
        "serves the highest",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from digitnet.inference.modelfile import load_model
    from digitnet.training.export import default_output, export_model, get_format

    get_format(args.format)  # an unknown format is refused before the model is read
    model = load_model(args.model)
    out = args.out or default_output(args.model, args.format, args.quantize)
    target = export_model(
        model,
        args.format,
        out,
        quantize=args.quantize,
        data_dir=args.data_dir,
        model_version=args.model_version,
    )
    size = (
        sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
        if target.is_dir()
        else target.stat().st_size
    )
    kind = f"{args.format} ({args.quantize})" if args.quantize else args.format
    print(f"Wrote {kind} to {target} ({size / 1e6:.2f} MB)")
    if get_format(args.format).versioned:
        print(
            f"Serve it: tensorflow_model_server --rest_api_port=8501 --model_name=digitnet "
            f"--model_base_path={out.resolve()}"
        )
    return 0
