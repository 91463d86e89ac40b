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
    from digitnet.inference.predict import IMAGE_SUFFIXES, expand_inputs
    from digitnet.inference.reading import read_number

    model = load_model(args.model)
    results: list[dict[str, Any]] = []
    for item in args.images:
        try:
            files = expand_inputs([item])
        except OSError as error:
            results.append(
                {"file": str(item), "error": f"cannot list {item}: {error.strerror or error}"}
            )
            continue
        for path in files:
            try:
                reading = read_number(model, path, name=str(path))
            except ImageError as error:
                results.append({"file": str(path), "error": str(error)})
                continue
            results.append({"file": str(path), **reading.to_json()})
    if not results:
        raise ImageError(
            f"no images found in the given folders (looked for {' '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if args.json:
        print(json.dumps(results))
    else:
        for result in results:
            # File names are escaped: a tab or newline in one must not forge a column or a line.
            if "error" in result:
                print(f"digitnet read: {printable(result['error'])}", file=sys.stderr)
            else:
                number = result["number"] if result["number"] is not None else "not a digit"
                print(f"{printable(result['file'])}\t{number}\t{result['confidence']:.4f}")
    return 0 if all("error" not in result for result in results) else 1
