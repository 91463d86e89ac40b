"""Throughput and memory of ``digitnet predict MODEL DIR --json`` on a folder of many PNG files.

Writes ``--count`` MNIST test digits (cycling through the 10,000) as 28x28 PNG files into a
temporary folder, then runs the real CLI on it, output redirected to a file, once per
``--jobs`` setting (1 and every usable CPU by default). For each run it reports wall time,
images/s, when the first answer reached the file, and the peak resident memory of the whole
process tree (the CLI and its work processes, sampled from /proc every 0.1 s); then checks the
output: valid JSON, one answer per file in folder order, accuracy against the test labels, and
the same digits from every run. CPU seconds over wall seconds is how many cores a run got:
on a machine shared with other jobs, more --jobs than that cannot help.

    python benchmarks/batch_predict.py --model cnn.safetensors            # 100,000 files
    python benchmarks/batch_predict.py --model seed.safetensors --quick   # 10,000 files

Needs MNIST (``DIGITNET_DATA_DIR`` or ``--data-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from serve import random_seed_model
from soak import resident_mb


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model file (default: random seed weights)")
    parser.add_argument("--count", type=int, default=100_000, help="PNG files (100,000)")
    parser.add_argument("--quick", action="store_true", help="10,000 files")
    parser.add_argument(
        "--jobs", default="", help="comma-separated --jobs values (default: 1 and all CPUs)"
    )
    parser.add_argument("--data-dir", help="MNIST directory (default: DIGITNET_DATA_DIR)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    return parser.parse_args(argv)


def write_pngs(folder: Path, images: np.ndarray, count: int) -> None:
    """``count`` files NNNNNN.png, file i holding test digit i % len(images) (white on black)."""
    from PIL import Image

    pixels = np.clip(images.reshape(-1, 28, 28) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    for index in range(count):
        Image.fromarray(pixels[index % len(pixels)], mode="L").save(folder / f"{index:06d}.png")


def run_cli(model: Path, folder: Path, jobs: int, out: Path) -> dict[str, float]:
    """Run ``digitnet predict`` once; wall seconds, first-answer seconds, peak tree RSS (MB),
    and CPU seconds of the tree (the command and its work processes, which it waits for)."""
    command = [sys.executable, "-m", "digitnet", "predict", str(model), str(folder)]
    command += ["--json", "--jobs", str(jobs)]
    peak = 0.0
    first = float("nan")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(out, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink)
        while process.poll() is None:
            peak = max(peak, resident_mb(process.pid))
            # "[\n" comes with the first answer, never before it.
            if first != first and out.stat().st_size > 2:
                first = time.perf_counter() - started
            time.sleep(0.1)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if process.returncode not in (0, 1):
        raise SystemExit(f"digitnet predict --jobs {jobs} failed with status {process.returncode}")
    return {"wall_s": wall, "first_answer_s": first, "peak_rss_mb": peak, "cpu_s": cpu}


def check_output(out: Path, folder: Path, labels: np.ndarray, count: int) -> tuple[list, float]:
    """The digits (None for errors) in file order, and their accuracy; exits on a wrong file."""
    answers = json.loads(out.read_bytes())
    if len(answers) != count:
        raise SystemExit(f"{out}: {len(answers)} answers for {count} files")
    digits = []
    for index, answer in enumerate(answers):
        if answer["file"] != str(folder / f"{index:06d}.png"):
            raise SystemExit(f"{out}: answer {index} is for {answer['file']}, out of order")
        digits.append(answer.get("digit"))
    truth = labels[np.arange(count) % len(labels)]
    accuracy = float(np.mean([digit == label for digit, label in zip(digits, truth, strict=True)]))
    return digits, accuracy


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    from digitnet.data.mnist import load_mnist
    from digitnet.inference.batch import usable_cpus

    count = 10_000 if args.quick else args.count
    cpus = usable_cpus()
    jobs_list = [int(value) for value in args.jobs.split(",") if value] or sorted({1, cpus})
    _, X_test, _, y_test = load_mnist(split="official", data_dir=args.data_dir)
    labels = y_test.argmax(axis=1)
    figures: dict = {"count": count, "cpu": cpu_name(), "usable_cpus": cpus, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="digitnet-batch-") as scratch_name:
        scratch = Path(scratch_name)
        model = args.model or random_seed_model(scratch / "seed-random.safetensors")
        folder = scratch / "images"
        folder.mkdir()
        started = time.perf_counter()
        write_pngs(folder, X_test, count)
        seconds = time.perf_counter() - started
        print(f"wrote {count:,} PNG files in {seconds:.0f} s", file=sys.stderr)
        reference = None
        load_before = os.getloadavg()
        for jobs in jobs_list:
            out = scratch / f"out-{jobs}.json"
            print(f"digitnet predict --jobs {jobs} ...", file=sys.stderr)
            run = run_cli(model, folder, jobs, out)
            digits, accuracy = check_output(out, folder, labels, count)
            run.update(images_per_s=count / run["wall_s"], accuracy=accuracy)
            run["same_digits_as_first_run"] = reference is None or digits == reference
            reference = reference or digits
            figures["runs"][jobs] = run
            out.unlink()
        load_after = os.getloadavg()
    print(f"\ndigitnet predict {model.name} DIR --json: {count:,} PNG files of 28x28 px")
    print(f"{cpu_name()}, {cpus} usable CPUs, shared machine")
    print(f"{'jobs':>5} {'wall s':>8} {'images/s':>9} {'first s':>8} {'peak MB':>8} "
          f"{'CPU s':>7} {'accuracy':>9}")  # fmt: skip
    for jobs, run in figures["runs"].items():
        print(
            f"{jobs:>5} {run['wall_s']:>8.1f} {run['images_per_s']:>9.0f} "
            f"{run['first_answer_s']:>8.2f} {run['peak_rss_mb']:>8.0f} {run['cpu_s']:>7.0f} "
            f"{run['accuracy'] * 100:>8.2f}%"
            + ("" if run["same_digits_as_first_run"] else "  (digits differ from the first run)")
        )
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min)")
    if args.json:
        print(json.dumps(figures))
    same = all(run["same_digits_as_first_run"] for run in figures["runs"].values())
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
