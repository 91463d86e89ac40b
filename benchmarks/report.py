"""How long ``digitnet report MODEL`` takes, where the time goes, and that it imports no
TensorFlow.

Each run is a fresh process (as a user runs the command) that times its phases: start-up and
imports, loading the model and the test set, the NumPy forward pass over the test set, the
numbers, and drawing and writing the figures and the page. Wall and CPU seconds are printed
per phase (median over the runs) with the load average: the target is under 30 s on 2 cores,
and other processes on the cores show as wall time well above CPU time.

    python benchmarks/report.py /work/models/cnn.safetensors --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 30.0

# Runs in the child: the phases of build_report, timed one by one.
CHILD = r"""
import json, resource, sys, time
def clock():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime
marks = [("start", *clock())]
def mark(name):
    marks.append((name, *clock()))
from digitnet.inference import report
from digitnet.inference.evaluation import test_set_for
from digitnet.inference.modelfile import load_model
mark("imports")
model = load_model(sys.argv[1])
X, labels = test_set_for(model, sys.argv[3] or None)
mark("model and test set")
probabilities = model.predict_proba(X)
mark("forward pass")
report.build_report(model, sys.argv[2], sys.argv[3] or None)
mark("report (forward pass again, figures, page)")
print(json.dumps({"marks": marks, "tensorflow": "tensorflow" in sys.modules, "n": len(X)}))
"""


def run_once(model: Path, data_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(model), out, data_dir],
            capture_output=True,
            text=True,
            check=True,
        )
        total = time.perf_counter() - started
    answer = json.loads(result.stdout.splitlines()[-1])
    phases = {}
    for (_, wall0, cpu0), (name, wall1, cpu1) in zip(answer["marks"], answer["marks"][1:]):
        phases[name] = (wall1 - wall0, cpu1 - cpu0)
    return {"total": total, "phases": phases, "tensorflow": answer["tensorflow"], "n": answer["n"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a model file")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes timed (3)")
    parser.add_argument("--data-dir", default=os.environ.get("DIGITNET_DATA_DIR", ""))
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    runs = [run_once(args.model, args.data_dir) for _ in range(args.runs)]
    print(
        f"digitnet report {args.model.name}: {runs[0]['n']:,} test images, {args.runs} runs, "
        f"{os.cpu_count()} cores, load average {load:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    print(f"{'phase':<44} {'wall s':>8} {'CPU s':>8}")
    for name in runs[0]["phases"]:
        wall = statistics.median(run["phases"][name][0] for run in runs)
        cpu = statistics.median(run["phases"][name][1] for run in runs)
        print(f"{name:<44} {wall:8.2f} {cpu:8.2f}")
    # The child runs the forward pass twice (once alone, to time it); the command runs it once.
    wall = [run["total"] - run["phases"]["forward pass"][0] for run in runs]
    cpu = [
        sum(c for _, c in run["phases"].values()) - run["phases"]["forward pass"][1] for run in runs
    ]
    print(
        f"{'digitnet report, start to finish':<44} {statistics.median(wall):8.2f} "
        f"{statistics.median(cpu):8.2f}   (target: under {TARGET_SECONDS:g} s)"
    )
    imported = any(run["tensorflow"] for run in runs)
    print(f"TensorFlow imported: {'yes' if imported else 'no'}")
    return 1 if imported else 0


if __name__ == "__main__":
    raise SystemExit(main())
