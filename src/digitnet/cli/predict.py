"""``digitnet predict``: read digits from image files (photos, scans, drawings)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from digitnet.cli import common

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
        "{file, error} per image (digit null, not_a_digit true and a reason when a model "
        'with a "not a digit" class refuses the image)',
    )
    parser.add_argument(
        "--save-preprocessed",
        type=Path,
        metavar="DIR",
        help="write the 28x28 image the model saw for each input, as PNG",
    )
    parser.add_argument(
        "--jobs",
        type=common.positive_int,
        metavar="N",
        help="work processes for large folders (default: one per usable CPU); up to "
        "256 images are read in this process",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from digitnet.cli.common import check_writable_directory, printable
    from digitnet.inference.batch import predict_files, usable_cpus
    from digitnet.inference.modelfile import load_model
    from digitnet.inference.predict import no_images_found

    if args.save_preprocessed:
        check_writable_directory(args.save_preprocessed, "--save-preprocessed")
    model = load_model(args.model)
    jobs = args.jobs or usable_cpus()
    saved: set[str] = set()
    count = failed = 0
    # Each answer is written and flushed as it comes, in input order: a reader of a
    # 100,000-image run sees the first ones at once (a flush costs far less than an image).
    for result in predict_files(
        model, args.images, jobs=jobs, keep_images=bool(args.save_preprocessed)
    ):
        count += 1
        failed += not result.ok
        if args.save_preprocessed:
            save_preprocessed([result], args.save_preprocessed, saved)
        if args.json:
            sys.stdout.write(("[\n" if count == 1 else ",\n") + json.dumps(result.to_json()))
        elif result.not_a_digit:
            print(f"{printable(result.file)}\tnot a digit\t{result.confidence:.4f}")
        elif result.several_digits:
            print(
                f"{printable(result.file)}\tseveral digits {result.number}\t{result.confidence:.4f}"
            )
        elif result.ok:
            # File names are escaped: a tab or newline in one must not forge a column or a line.
            mark = "\tlow confidence" if result.low_confidence else ""
            print(f"{printable(result.file)}\t{result.digit}\t{result.confidence:.4f}{mark}")
        else:
            print(f"digitnet predict: {printable(str(result.error))}", file=sys.stderr)
        sys.stdout.flush()
    if not count:
        raise no_images_found()
    if args.json:
        print("\n]")
    sys.stdout.flush()
    return 1 if failed else 0


def save_preprocessed(
    results: Iterable[ImagePrediction], directory: Path, used: set[str] | None = None
) -> None:
    """Write each model input as a 28x28 greyscale PNG named after its source file; ``used``
    holds the names already written (by earlier calls), which a repeated stem does not take."""
    import io

    import numpy as np
    from PIL import Image

    from digitnet.atomic import atomic_write_bytes

    used = set() if used is None else used
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
