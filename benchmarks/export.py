"""Exported models against digitnet's own NumPy path: size, accuracy, agreement, latency.

    python benchmarks/export.py --models seed.safetensors,mlp.safetensors,cnn.safetensors
    ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell python benchmarks/export.py --models ...

Each model is exported (``digitnet.training.export``) as a SavedModel, a TFLite file
(float32 and int8) and ONNX, then each is run by its own runtime on the model's whole test
set: ``tf.saved_model.load``'s ``serving_default`` signature, LiteRT's interpreter
(``ai-edge-litert``; TensorFlow's ``tf.lite.Interpreter`` where it has no wheel) and ONNX
Runtime (CPU). For each the table gives the file size, the test accuracy, how often its label
equals digitnet's and the largest difference in any probability, the latency of one image
(p50, p99: a Python call with a [1, 28, 28] array, output read back) and the time for 10,000
images in one call.

Fair thread settings: for one image every runtime gets one thread (ONNX Runtime
``intra_op_num_threads=1``, LiteRT ``num_threads=1``; digitnet's NumPy path runs one image on
one thread anyway, TensorFlow keeps its defaults); for batches each gets its default (ONNX
Runtime: one thread per physical core; LiteRT: ``num_threads`` = the CPU count, as it
otherwise uses one; digitnet: its blocks on worker threads). Each runtime is measured in a fresh
process (this script with ``--worker``), one after another, so no framework's threads or imports
compete with another's. Other processes on the machine still do: every runtime is measured in
``--rounds`` rounds (default 2, the order reversed from one round to the next) and keeps its
best, and the load average is printed with the table.

``ONEDNN_MAX_CPU_ISA=AVX2`` holds TensorFlow's oneDNN kernels to AVX2 and
``OPENBLAS_CORETYPE=Haswell`` NumPy's OpenBLAS; ONNX Runtime and LiteRT (XNNPACK) pick their
kernels from the CPU's flags and have no such switch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = ("digitnet", "savedmodel", "tflite", "tflite-int8", "onnx")
# What each runtime reads: (export format, quantization); digitnet reads the model file.
EXPORTS = {
    "savedmodel": ("savedmodel", None),
    "tflite": ("tflite", None),
    "tflite-int8": ("tflite", "int8"),
    "onnx": ("onnx", None),
}
BATCH = 10_000


def litert_interpreter(path: str | os.PathLike[str], num_threads: int | None = None) -> Any:
    """LiteRT's interpreter on a .tflite file: ``ai-edge-litert``'s, or TensorFlow's
    ``tf.lite.Interpreter`` on platforms LiteRT publishes no wheel for."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - only where ai-edge-litert has no wheel
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path), num_threads=num_threads)


def litert_name() -> str:
    try:
        import ai_edge_litert
    except ImportError:  # pragma: no cover
        return "tf.lite.Interpreter"
    return f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '')}".strip()


# --------------------------------------------------------------------------------------------
# Runtimes: each gives (one-image function, batch function), both images [n, 28, 28] ->
# probabilities [n, 10].


def _digitnet(path: str) -> tuple[Any, Any]:
    from digitnet.inference.modelfile import load_model

    model = load_model(path)

    def run(images: np.ndarray) -> np.ndarray:
        return model.predict_proba(images.reshape(len(images), -1))

    return run, run


def _savedmodel(path: str) -> tuple[Any, Any]:
    import tensorflow as tf

    from digitnet.serving.server import INPUT_NAME, OUTPUT_NAME, SIGNATURE_NAME

    signature = tf.saved_model.load(path).signatures[SIGNATURE_NAME]

    def run(images: np.ndarray) -> np.ndarray:
        return signature(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()

    return run, run


def _tflite(path: str) -> tuple[Any, Any]:
    from digitnet.serving.server import OUTPUT_NAME, SIGNATURE_NAME

    single = litert_interpreter(path, num_threads=1)
    single.allocate_tensors()
    (single_input,) = single.get_input_details()
    (single_output,) = single.get_output_details()

    def one(images: np.ndarray) -> np.ndarray:
        single.set_tensor(single_input["index"], images)
        single.invoke()
        return single.get_tensor(single_output["index"])

    runner = litert_interpreter(path, num_threads=os.cpu_count()).get_signature_runner(
        SIGNATURE_NAME
    )

    def batch(images: np.ndarray) -> np.ndarray:
        # The signature runner resizes the input to the batch when its shape changes.
        return runner(images=images)[OUTPUT_NAME]

    return one, batch


def _onnx(path: str) -> tuple[Any, Any]:
    import onnxruntime as ort

    from digitnet.serving.server import INPUT_NAME

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    single = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    default = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def one(images: np.ndarray) -> np.ndarray:
        return single.run(None, {INPUT_NAME: images})[0]

    def batch(images: np.ndarray) -> np.ndarray:
        return default.run(None, {INPUT_NAME: images})[0]

    return one, batch


RUNNERS = {
    "digitnet": _digitnet,
    "savedmodel": _savedmodel,
    "tflite": _tflite,
    "tflite-int8": _tflite,
    "onnx": _onnx,
}


def worker(options: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: probabilities on the whole test set, then the timings."""
    images = np.load(options["images"])
    one, batch = RUNNERS[options["runtime"]](options["path"])
    probabilities = np.concatenate(
        [batch(images[start : start + BATCH]) for start in range(0, len(images), BATCH)]
    )
    np.save(options["probabilities"], probabilities)
    calls = options["single_calls"]
    for index in range(min(calls, 1000)):  # warm caches, allocators and lazy initialisation
        one(images[index % len(images)][None])
    times = []
    for index in range(calls):
        image = images[index % len(images)][None]
        started = time.perf_counter_ns()
        one(image)
        times.append(time.perf_counter_ns() - started)
    block = images[:BATCH]  # warmed up by the pass over the test set above
    batch_times = []
    for _ in range(options["batch_repeats"]):
        started = time.perf_counter()
        batch(block)
        batch_times.append(time.perf_counter() - started)
    return {
        "p50_us": float(np.percentile(times, 50)) / 1000,
        "p99_us": float(np.percentile(times, 99)) / 1000,
        # Interference only ever slows a run down: the best repeat is the runtime's own figure.
        "batch_ms": min(batch_times) * 1000,
        "batch_images": len(block),
    }


# --------------------------------------------------------------------------------------------
# The driver.


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


def cpu_description() -> str:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    present = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if flag in flags]
    return f"{name}, {os.cpu_count()} cores, flags: {' '.join(present) or 'unknown'}"


def run_worker(options: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(options)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"worker {options['runtime']} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_model(path: Path, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    from digitnet.inference.evaluation import test_set_for
    from digitnet.inference.modelfile import load_model
    from digitnet.training.export import export_model

    model = load_model(path)
    X_test, labels = test_set_for(model, args.data_dir)
    images = X_test.reshape(len(X_test), 28, 28)
    np.save(workdir / "images.npy", images)
    paths = {"digitnet": path}
    for runtime, (format, quantize) in EXPORTS.items():
        started = time.perf_counter()
        out = workdir / f"{path.stem}-{runtime}"
        if format != "savedmodel":
            out = out.with_suffix(".tflite" if format == "tflite" else ".onnx")
        paths[runtime] = export_model(model, format, out, quantize=quantize, data_dir=args.data_dir)
        print(f"  exported {runtime} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    reference = model.predict_proba(X_test)
    results: dict[str, list[dict[str, Any]]] = {runtime: [] for runtime in RUNTIMES}
    # Round after round, the order reversed each time, so every runtime meets the machine's
    # other load at different moments; each keeps its best round (interference only slows).
    for round_ in range(args.rounds):
        for runtime in RUNTIMES if round_ % 2 == 0 else RUNTIMES[::-1]:
            options = {
                "runtime": runtime,
                "path": str(paths[runtime]),
                "images": str(workdir / "images.npy"),
                "probabilities": str(workdir / f"{runtime}.npy"),
                "single_calls": args.single_calls,
                "batch_repeats": args.batch_repeats,
            }
            results[runtime].append(run_worker(options))
            print(f"  measured {runtime}, round {round_ + 1}", file=sys.stderr)
    rows = []
    for runtime in RUNTIMES:
        probabilities = np.load(workdir / f"{runtime}.npy")
        predicted = probabilities.argmax(axis=1)
        same = predicted == reference.argmax(axis=1)
        best = min(results[runtime], key=lambda result: result["p50_us"])
        rows.append(
            {
                "model": path.stem,
                "runtime": runtime,
                "size_bytes": _size(Path(paths[runtime])),
                "accuracy": float(np.mean(predicted == labels)),
                "n": len(labels),
                "same_labels": int(same.sum()),
                "max_abs_difference": float(np.abs(probabilities - reference).max()),
                **best,
                "batch_ms": min(result["batch_ms"] for result in results[runtime]),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | runtime | size | test accuracy | same label as digitnet | max prob. diff "
        "| one image p50 / p99, µs | 10,000 images, ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['runtime']} | {row['size_bytes'] / 1e6:.2f} MB "
            f"| {row['accuracy'] * 100:.2f} % | {row['same_labels']:,} / {row['n']:,} "
            f"| {row['max_abs_difference']:.1e} | {row['p50_us']:,.1f} / {row['p99_us']:,.1f} "
            f"| {row['batch_ms']:,.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", help="comma-separated model files")
    parser.add_argument("--data-dir", help="MNIST folder (else $DIGITNET_DATA_DIR)")
    parser.add_argument("--single-calls", type=int, default=2000, help="one-image calls timed")
    parser.add_argument("--batch-repeats", type=int, default=3, help="10,000-image calls timed")
    parser.add_argument(
        "--rounds", type=int, default=2, help="measurements of each runtime (the best is kept)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if not args.models:
        parser.error("--models is required")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    load_at_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="digitnet-export-bench-"))
    try:
        for name in args.models.split(","):
            print(f"{name}:", file=sys.stderr)
            rows += measure_model(Path(name), args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    held = {
        key: os.environ[key]
        for key in ("ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE")
        if key in os.environ
    }
    print(f"CPU: {cpu_description()}")
    print(f"instruction sets held back: {held or 'none'}; LiteRT: {litert_name()}")
    print(
        f"load average at the start: {load_at_start}; at the end: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
