"""Reading whole numbers: numbers composed from MNIST test digits, rendered every way people do.

Each number of 1 to 8 digits is composed from MNIST **test** digits the way people write them
on one line (``compose_number``): gaps between neighbours from -20 % to +60 % of a digit's
width, a quarter of the neighbouring pairs touching or overlapping, heights varying by 15 %,
a baseline that drifts and tilts, and a slant. The line is then rendered with every kind of
``renderings`` (phone photo, canvas export, pens, pencil, tight crops, small scans, fax, ruled
paper, ...), encoded, and read back by ``digitnet.read_number`` exactly as ``digitnet read``
would. The row ``line`` is the composed line itself, white ink on black as MNIST stores its
digits (the untouched rendering).

    python benchmarks/read_numbers.py MODEL_FILE [--n 40] [--lengths 1-8] [--kinds photo_jpeg,...]
        [--seed 0] [--workers N] [--quick] [--data-dir DIR] [--show-errors K]

Printed: exact whole-number accuracy by rendering kind and length, and per-digit accuracy
(each reading aligned to the truth by edit distance; a digit counts when the alignment matches
it, so a missed or extra digit costs one, not the rest of the number). Images the reader
refuses (no digit found, not a digit) count as wrong. The targets: on 4-digit numbers at least
97 % exact for the untouched line and 95 % for every other kind; per-digit accuracy at least
99.3 %.

Everything is seeded per (seed, length, number, kind): a run is reproducible, does not depend
on the number of workers, and a kind's images do not change when other kinds are added.
``--quick``: 10 numbers each of 1, 4 and 8 digits.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from digitnet.data.lines import compose_number

UNTOUCHED = "line"
GOAL_EXACT_UNTOUCHED = 0.97
GOAL_EXACT_OTHER = 0.95
GOAL_PER_DIGIT = 0.993
GOAL_LENGTH = 4
# Numbers per task handed to a worker process.
CHUNK = 5


@dataclass
class Outcome:
    kind: str
    length: int
    truth: str
    read: str | None
    error: str | None = None


def matches(truth: str, read: str | None) -> int:
    """Digits of ``truth`` matched in an optimal edit-distance alignment with ``read``."""
    if not read:
        return 0
    rows, cols = len(truth) + 1, len(read) + 1
    # (distance, -matches): fewest edits first, then most matches among them.
    cost = [[(0, 0)] * cols for _ in range(rows)]
    for i in range(rows):
        cost[i][0] = (i, 0)
    for j in range(cols):
        cost[0][j] = (j, 0)
    for i in range(1, rows):
        for j in range(1, cols):
            same = truth[i - 1] == read[j - 1]
            diagonal = cost[i - 1][j - 1]
            cost[i][j] = min(
                (diagonal[0] + (0 if same else 1), diagonal[1] - (1 if same else 0)),
                (cost[i - 1][j][0] + 1, cost[i - 1][j][1]),
                (cost[i][j - 1][0] + 1, cost[i][j - 1][1]),
            )
    return -cost[-1][-1][1]


def number_digits(
    seed: int, length: int, index: int, images: np.ndarray, labels: np.ndarray
) -> tuple[list[np.ndarray], str, np.random.Generator]:
    rng = np.random.default_rng([seed, length, index])
    chosen = rng.integers(0, len(images), size=length)
    return [images[i] for i in chosen], "".join(str(int(labels[i])) for i in chosen), rng


_WORKER: dict[str, Any] = {}


def _init(model_path: str, images: np.ndarray, labels: np.ndarray) -> None:
    from digitnet.inference.modelfile import load_model

    _WORKER.update(model=load_model(model_path), images=images, labels=labels)


def _task(seed: int, length: int, indices: list[int], kinds: list[str]) -> list[Outcome]:
    from digitnet.errors import ImageError
    from digitnet.inference.reading import read_number
    from renderings import RENDERINGS

    model, images, labels = _WORKER["model"], _WORKER["images"], _WORKER["labels"]
    outcomes = []
    for index in indices:
        digits, truth, rng = number_digits(seed, length, index, images, labels)
        line = compose_number(digits, rng).image
        for kind in kinds:
            if kind == UNTOUCHED:
                image: Any = line
            else:
                kind_index = list(RENDERINGS).index(kind)
                render_rng = np.random.default_rng([seed, length, index, kind_index])
                image = RENDERINGS[kind](line, render_rng).data
            try:
                reading = read_number(model, image, name=f"{kind}[{length}, {index}]")
            except ImageError as error:
                outcomes.append(Outcome(kind, length, truth, None, str(error)))
                continue
            outcomes.append(Outcome(kind, length, truth, reading.number, reading.reason))
    return outcomes


def run(
    model_path: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    lengths: Sequence[int],
    n: int,
    kinds: list[str],
    seed: int = 0,
    workers: int = 1,
) -> list[Outcome]:
    tasks = [
        (seed, length, list(range(start, min(start + CHUNK, n))), kinds)
        for length in lengths
        for start in range(0, n, CHUNK)
    ]
    if workers <= 1:
        _init(model_path, images, labels)
        return [outcome for task in tasks for outcome in _task(*task)]
    # Forked workers inherit the imported modules and sys.path (where `renderings` lives).
    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init, initargs=(model_path, images, labels)
    ) as pool:
        futures = [pool.submit(_task, *task) for task in tasks]
        return [outcome for future in futures for outcome in future.result()]


def format_tables(outcomes: Sequence[Outcome], kinds: Sequence[str], lengths: Sequence[int]) -> str:
    header = ["kind"] + [f"{length} digits" for length in lengths] + ["all", "per digit"]
    rows = [header, ["---"] * len(header)]
    for kind in list(kinds) + ["all kinds"]:
        mine = [o for o in outcomes if kind == "all kinds" or o.kind == kind]
        cells = [kind]
        for length in lengths:
            those = [o for o in mine if o.length == length]
            cells.append(_percent(sum(o.read == o.truth for o in those), len(those)))
        cells.append(_percent(sum(o.read == o.truth for o in mine), len(mine)))
        matched = sum(matches(o.truth, o.read) for o in mine)
        cells.append(_percent(matched, sum(len(o.truth) for o in mine), 2))
        rows.append(cells)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _percent(count: int, total: int, decimals: int = 1) -> str:
    return "-" if total == 0 else f"{100 * count / total:.{decimals}f} %"


def interval(count: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % for the default ``z``) of a share ``count / total``:
    where the share of all such numbers lies, given this sample. (0, 1) when ``total`` is 0."""
    if total == 0:
        return 0.0, 1.0
    share = count / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    half /= 1 + z * z / total
    return max(0.0, centre - half), min(1.0, centre + half)


def goal_verdicts(outcomes: Sequence[Outcome], kinds: Sequence[str]) -> list[tuple[str, str]]:
    """Each kind's 4-digit exact share against its goal, and the per-digit share against
    GOAL_PER_DIGIT: (``"missed"``, ``"unsure"`` or ``"met"``, text), where "unsure" is a share
    at or above the goal whose 95 % interval reaches below it (with 40 numbers a kind's share
    is uncertain by about +-5 points, so one more or one fewer misreading can decide it).
    Per-digit intervals treat digits as independent, so they are somewhat too narrow."""
    verdicts = []
    checks = []
    for kind in kinds:
        those = [o for o in outcomes if o.kind == kind and o.length == GOAL_LENGTH]
        if those:
            goal = GOAL_EXACT_UNTOUCHED if kind == UNTOUCHED else GOAL_EXACT_OTHER
            count = sum(o.read == o.truth for o in those)
            checks.append((kind, count, len(those), goal, 1))
    total = sum(len(o.truth) for o in outcomes)
    if total:
        count = sum(matches(o.truth, o.read) for o in outcomes)
        checks.append(("per digit", count, total, GOAL_PER_DIGIT, 2))
    for name, count, total, goal, decimals in checks:
        share = count / total
        low, high = interval(count, total)
        verdict = "missed" if share < goal else "unsure" if low < goal else "met"
        sign = "<" if share < goal else ">="
        verdicts.append(
            (
                verdict,
                f"{name} {100 * share:.{decimals}f} % {sign} {100 * goal:g} % "
                f"(95 % interval {100 * low:.{decimals}f}-{100 * high:.{decimals}f} %)",
            )
        )
    return verdicts


def _lengths(text: str) -> list[int]:
    values: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        values.extend(range(int(first), int(last or first) + 1))
    if not values or min(values) < 1 or max(values) > 12:
        raise argparse.ArgumentTypeError("lengths must lie between 1 and 12")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("model_file", metavar="MODEL_FILE", help="a model file")
    parser.add_argument("--n", type=int, default=40, help="numbers per length (default 40)")
    parser.add_argument(
        "--lengths", type=_lengths, default=list(range(1, 9)), help="e.g. 1-8 or 1,4,8"
    )
    parser.add_argument("--kinds", default=None, help="comma-separated kinds (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything (default 0)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: one per core)"
    )
    parser.add_argument("--quick", action="store_true", help="10 numbers each of 1, 4, 8 digits")
    parser.add_argument(
        "--data-dir", default=None, help="MNIST IDX files (default: DIGITNET_DATA_DIR or cache)"
    )
    parser.add_argument(
        "--show-errors", type=int, default=0, metavar="K", help="print K misreadings per kind"
    )
    args = parser.parse_args(argv)

    from digitnet.data.mnist import load_mnist_arrays
    from digitnet.errors import DigitnetError
    from renderings import RENDERINGS

    kinds = [UNTOUCHED] + list(RENDERINGS)
    if args.kinds is not None:
        kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
        unknown = sorted(set(kinds) - set(RENDERINGS) - {UNTOUCHED})
        if unknown:
            parser.error(f"unknown kinds {', '.join(unknown)}")
    lengths, n = args.lengths, args.n
    if args.quick:
        lengths, n = [1, 4, 8], 10
    try:
        arrays = load_mnist_arrays(args.data_dir)
    except DigitnetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    outcomes = run(
        args.model_file,
        arrays.test_images,
        arrays.test_labels,
        lengths=lengths,
        n=n,
        kinds=kinds,
        seed=args.seed,
        workers=max(1, args.workers),
    )
    print(
        f"{args.model_file}: {n} numbers per length, {len(kinds)} kinds, seed {args.seed}: "
        f"{len(outcomes)} images read in {time.perf_counter() - started:.0f} s on "
        f"{max(1, args.workers)} worker(s)"
    )
    print(format_tables(outcomes, kinds, lengths))
    if args.show_errors:
        for kind in kinds:
            wrong = [o for o in outcomes if o.kind == kind and o.read != o.truth]
            for o in wrong[: args.show_errors]:
                print(f"  {kind}: {o.truth} read {o.read}" + (f" ({o.error})" if o.error else ""))
    if GOAL_LENGTH in lengths:
        verdicts = goal_verdicts(outcomes, kinds)
        missed = [text for verdict, text in verdicts if verdict == "missed"]
        unsure = [text for verdict, text in verdicts if verdict == "unsure"]
        print("targets missed: " + "; ".join(missed) if missed else "targets met")
        if unsure:
            print("met, but within sampling error (run more --n): " + "; ".join(unsure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
