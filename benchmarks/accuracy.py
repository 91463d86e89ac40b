"""Train each model with its defaults and print validation/test accuracy, epochs and seconds.

    python benchmarks/accuracy.py [--models seed,mlp,cnn] [--seeds 1,2,3] [--data-dir DIR]

Every run uses the model's own defaults (see ``digitnet.training.PRESETS``): the test set is
read once per run, after training, and no choice is made on it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

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
    args = parser.parse_args(argv)

    from digitnet.training.runs import TrainConfig, train_and_evaluate

    rows = []
    for model in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            config = TrainConfig(model=model, seed=seed, epochs=args.epochs)
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

    print("| model | seed | validation % | test % | epochs (best) | train s | total s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model, seed, val, test, epochs, best, train_s, total_s in rows:
        val_text = "-" if val is None else f"{val * 100:.2f}"
        print(
            f"| {model} | {seed} | {val_text} | {test * 100:.2f} | {epochs} ({best}) | "
            f"{train_s:.0f} | {total_s:.0f} |"
        )
    for model in dict.fromkeys(row[0] for row in rows):
        tests = [row[3] * 100 for row in rows if row[0] == model]
        if len(tests) > 1:
            print(
                f"| {model} | mean of {len(tests)} | | {statistics.mean(tests):.2f} "
                f"(min {min(tests):.2f}) | | | |"
            )
    print()
    print("| reference | test % |")
    print("| --- | --- |")
    for name, accuracy in REFERENCES:
        print(f"| {name} | {accuracy} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
