"""One training run under each strategy, side by side: test accuracy, training and wall seconds.

    python benchmarks/distribute.py [--model seed] [--epochs 5] [--devices 2] [--data-dir DIR]
                                    [-- EXTRA TRAIN FLAGS]

Each run is its own ``digitnet train`` process with the same settings: ``default`` (one
device), ``mirrored`` over ``--devices`` local devices (logical CPU devices on a machine
without GPUs) and ``multiworker`` with ``--devices`` worker processes on 127.0.0.1, the cluster
a single machine stands in for. Training seconds are those the model file records; wall
seconds include TensorFlow's start-up and, for multiworker, the cluster forming. On one CPU
this measures what distribution costs, not what it gains: every replica shares the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run(strategy: str, args: argparse.Namespace, extra: list[str], folder: Path) -> dict[str, Any]:
    """Train under ``strategy``; the chief's metrics plus wall seconds."""
    from digitnet.inference.modelfile import load_model

    command = [sys.executable, "-m", "digitnet", "train", "--model", args.model, "--seed", "1"]
    command += ["--strategy", strategy]
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    tasks = 1
    if strategy == "mirrored":
        command += ["--devices", str(args.devices)]
    if strategy == "multiworker":
        tasks = args.devices
    ports = free_ports(tasks)
    workers = [f"127.0.0.1:{port}" for port in ports]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    processes = []
    started = time.perf_counter()
    for index in range(tasks):
        task_env = dict(env)
        if strategy == "multiworker":
            task_env["TF_CONFIG"] = json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            )
        model = folder / f"{strategy}-{index}.safetensors"
        processes.append(
            subprocess.Popen(
                [*command, *extra, "--workdir", str(folder / f"{strategy}-{index}")]
                + ["--save-model", str(model)],
                env=task_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=3600)
            if process.returncode:
                raise SystemExit(f"{strategy} failed:\n{stderr[-3000:]}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    wall = time.perf_counter() - started
    metrics = load_model(folder / f"{strategy}-0.safetensors").metadata["metrics"]
    return {**metrics, "wall_seconds": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="seed")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--devices", type=int, default=2, help="replicas, and workers")
    parser.add_argument("--data-dir")
    parser.add_argument("--strategies", default="default,mirrored,multiworker")
    args, extra = parser.parse_known_args(argv)
    extra = [flag for flag in extra if flag != "--"]

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for strategy in args.strategies.split(","):
            metrics = run(strategy, args, extra, Path(folder))
            rows.append((strategy, metrics))
            print(f"# {strategy}: {metrics['test_accuracy'] * 100:.2f} %", file=sys.stderr)

    print(f"`{args.model}`, {args.epochs} epochs, {' '.join(extra) or 'its defaults'}:")
    print()
    print("| strategy | replicas | test % | training s | wall s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for strategy, metrics in rows:
        print(
            f"| {strategy} | {metrics.get('replicas', 1)} | {metrics['test_accuracy'] * 100:.2f} "
            f"| {metrics['train_seconds']:.1f} | {metrics['wall_seconds']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
