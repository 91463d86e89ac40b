"""``digitnet predict``: read digits from image files (photos, scans, drawings)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from digitnet.inference.predict import ImagePrediction

HELP = "predict the digit in each image (PNG, JPEG, GIF, BMP, TIFF, WebP) or folder of images"


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help=HELP,
        description=HELP + ". Each image is brought into MNIST's form first (ink found, "
        "cropped, fitted into 20x20, centred by mass in 28x28). Prints PATH<TAB>DIGIT<TAB>"
        "CONFIDENCE per image; images that fail are reported on stderr and make the exit "
        "status 1.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a model file")
    parser.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE_OR_DIR",
        help="image files, or folders whose images are all read",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array: {file, digit, confidence, probabilities} or "
        "{file, error} per image",
    )
    parser.add_argument(
        "--save-preprocessed",
        type=Path,
        metavar="DIR",
        help="write the 28x28 image the model saw for each input, as PNG",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from digitnet.cli.common import check_writable_directory, printable
    from digitnet.errors import ImageError
    from digitnet.inference.modelfile import load_model
    from digitnet.inference.predict import predict_images

    if args.save_preprocessed:
        check_writable_directory(args.save_preprocessed, "--save-preprocessed")
    model = load_model(args.model)
    results = predict_images(model, args.images)
    if not results:
        raise ImageError(
            "no images found in the given folders "
            "(looked for .png .jpg .jpeg .gif .bmp .tif .tiff .webp)"
        )
    if args.save_preprocessed:
        save_preprocessed(results, args.save_preprocessed)
    if args.json:
        print(json.dumps([result.to_json() for result in results]))
    else:
        for result in results:
            # File names are escaped: a tab or newline in one must not forge a column or a line.
            if result.several_digits:
                print(
                    f"{printable(result.file)}\tseveral digits {result.number}"
                    f"\t{result.confidence:.4f}"
                )
            elif result.ok:
                mark = "\tlow confidence" if result.low_confidence else ""
                print(f"{printable(result.file)}\t{result.digit}\t{result.confidence:.4f}{mark}")
            else:
                print(f"digitnet predict: {printable(str(result.error))}", file=sys.stderr)
    return 0 if all(result.ok for result in results) else 1


def save_preprocessed(results: Sequence[ImagePrediction], directory: Path) -> None:
    """Write each model input as a 28x28 greyscale PNG named after its source file."""
    import io

    import numpy as np
    from PIL import Image

    from digitnet.atomic import atomic_write_bytes

    used: set[str] = set()
    for result in results:
        if result.image is None:
            continue
        stem = Path(result.file).stem or "image"
        name, counter = f"{stem}.png", 1
        while name in used:
            counter += 1
            name = f"{stem}-{counter}.png"
        used.add(name)
        buffer = io.BytesIO()
        pixels = np.clip(result.image * 255.0 + 0.5, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        atomic_write_bytes(directory / name, buffer.getvalue())
