"""``digitnet read``: read the number written on one line in image files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "read the number (1 to 12 digits on one line) in each image or folder of images"


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "read",
        help=HELP,
        description=HELP + ". The line's ink is split into digits by trying the ways it could "
        "be split and letting the model score each. Prints PATH<TAB>NUMBER<TAB>CONFIDENCE per "
        "image (the confidence is the product of the digits'); images that fail are reported "
        "on stderr and make the exit status 1.",
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
        help="print a JSON array: {file, number, confidence, digits: [{digit, confidence, "
        "box: [x0, y0, x1, y1]}]} or {file, error} per image",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from digitnet.cli.common import printable
    from digitnet.errors import ImageError
    from digitnet.inference.modelfile import load_model
    from digitnet.inference.predict import ImagePrediction, iter_image_files, no_images_found
    from digitnet.inference.reading import read_number

    model = load_model(args.model)
    count = failed = 0
    # As `predict` does: each answer is written and flushed as it comes, in input order.
    for item in iter_image_files(args.images):
        result: dict[str, Any]
        if isinstance(item, ImagePrediction):  # a folder that could not be listed
            result = item.to_json()
        else:
            try:
                result = {"file": item, **read_number(model, item, name=item).to_json()}
            except ImageError as error:
                result = {"file": item, "error": str(error)}
        count += 1
        failed += "error" in result
        if args.json:
            sys.stdout.write(("[\n" if count == 1 else ",\n") + json.dumps(result))
        elif "error" in result:
            print(f"digitnet read: {printable(result['error'])}", file=sys.stderr)
        else:
            # File names are escaped: a tab or newline in one must not forge a column or a line.
            number = result["number"] if result["number"] is not None else "not a digit"
            print(f"{printable(result['file'])}\t{number}\t{result['confidence']:.4f}")
        sys.stdout.flush()
    if not count:
        raise no_images_found()
    if args.json:
        print("\n]")
    return 1 if failed else 0
