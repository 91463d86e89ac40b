"""Train each model with its defaults and print validation/test accuracy, epochs and seconds.

    python benchmarks/accuracy.py [--models seed,mlp,cnn] [--seeds 1,2,3] [--data-dir DIR]
    python benchmarks/accuracy.py --models cnn --seeds 1,2,3 --isa avx2   # a plain CPU's run

Every run uses the model's own defaults (see ``digitnet.training.PRESETS``): the test set is
read once per run, after training, and no choice is made on it. Besides the total, each row
gives the training time until validation accuracy first reached ``--target`` (99.6 %: the
cnn's goal), counted over whole epochs. ``--isa avx2`` holds oneDNN, OpenBLAS and NumPy to
AVX2 (as ``speed.py`` does) and so trains in float32 where the preset says "auto", as a CPU
without AMX or AVX-512 BF16 units would; the instruction sets in use are printed first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from speed import ISA_ENVIRONMENTS, machine, worker_isa

REFERENCES = [
    ("Keras MLP example (784-512-512-10, dropout)", "98.40"),
    ("Keras convnet example", "~99.2"),
    ("PyTorch MNIST example", "~99.2"),
    ("Flax MNIST example", "99.17"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="seed,mlp,cnn")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, help="override every model's epochs (quick look)")
    parser.add_argument("--isa", choices=sorted(ISA_ENVIRONMENTS), default="native")
    parser.add_argument(
        "--target", type=float, default=99.6, help="validation accuracy, %%, to time (99.6)"
    )
    args = parser.parse_args(argv)

    # Before NumPy, OpenBLAS or TensorFlow load: they read these once.
    os.environ.update(ISA_ENVIRONMENTS[args.isa])
    precision = "float32" if args.isa == "avx2" else None
    isa = worker_isa({})
    print(
        f"# {machine()['cpu']}, flags {' '.join(isa['cpu_flags'])}; oneDNN {isa['onednn']}; "
        f"OpenBLAS {isa['openblas']}; NumPy {isa['numpy_simd']}",
        file=sys.stderr,
        flush=True,
    )

    from digitnet.training.runs import TrainConfig, train_and_evaluate

    rows = []
    for model in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            config = TrainConfig(model=model, seed=seed, epochs=args.epochs, precision=precision)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as workdir:
                result = train_and_evaluate(
                    config, workdir, data_dir=args.data_dir, log=lambda line: None
                )
            seconds = time.perf_counter() - started
            metrics = result.metrics
            rows.append(
                (
                    model,
                    seed,
                    metrics.get("val_accuracy"),
                    metrics["test_accuracy"],
                    metrics["epochs"],
                    metrics["best_epoch"],
                    metrics["train_seconds"],
                    _seconds_to_reach(result.history, args.target / 100),
                    seconds,
                )
            )
            val = (
                "-"
                if metrics.get("val_accuracy") is None
                else f"{metrics['val_accuracy'] * 100:.2f}"
            )
            print(
                f"# {model} seed {seed}: val {val} test {metrics['test_accuracy'] * 100:.2f} "
                f"in {seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    print(
        f"| model | seed | validation % | test % | epochs (best) | train s | "
        f"to {args.target:g} % val, s | total s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, seed, val, test, epochs, best, train_s, reach_s, total_s in rows:
        val_text = "-" if val is None else f"{val * 100:.2f}"
        reach_text = (
            f"{reach_s:.0f}" if reach_s is not None else "-" if val is None else "not reached"
        )
        print(
            f"| {model} | {seed} | {val_text} | {test * 100:.2f} | {epochs} ({best}) | "
            f"{train_s:.0f} | {reach_text} | {total_s:.0f} |"
        )
    for model in dict.fromkeys(row[0] for row in rows):
        tests = [row[3] * 100 for row in rows if row[0] == model]
        if len(tests) > 1:
            print(
                f"| {model} | mean of {len(tests)} | | {statistics.mean(tests):.2f} "
                f"(min {min(tests):.2f}) | | | | |"
            )
    print()
    print("| reference | test % |")
    print("| --- | --- |")
    for name, accuracy in REFERENCES:
        print(f"| {name} | {accuracy} |")
    return 0


def _seconds_to_reach(history: list[dict], accuracy: float) -> float | None:
    """Training seconds until the end of the first epoch whose validation accuracy reached
    ``accuracy`` (a fraction); None if none did or the run had no validation set."""
    elapsed = 0.0
    for record in history:
        elapsed += record["seconds"]
        if (record.get("val_accuracy") or 0.0) >= accuracy:
            return elapsed
    return None


if __name__ == "__main__":
    raise SystemExit(main())
