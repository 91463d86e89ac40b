"""Throughput and latency of ``digitnet serve`` for single-digit predictions, by worker count.

For each ``--workers`` count (default 1 and 2, side by side), starts the server through the
real CLI (``python -m digitnet serve --workers N``) in a subprocess, then keeps
``--concurrency`` keep-alive HTTP/1.1 connections busy for ``--duration`` seconds with
``POST /v1/models/digitnet:predict`` carrying ``{"instances": [784 floats]}``, and prints
requests per second, latency percentiles, errors, and the CPU each side used (the server's
summed over its processes).

The client is one thread multiplexing raw sockets with ``selectors`` and sending pre-encoded
request bytes: it costs a few tens of microseconds per request, so on a 2-core machine the
server keeps most of a core to itself. Every response is checked for status 200 and a complete
body; anything else counts as an error (and makes the exit status 1).

    python benchmarks/serve.py                       # random weights, seed architecture
    python benchmarks/serve.py --model seed.safetensors --duration 10 --concurrency 8
    python benchmarks/serve.py --workers 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PATH = "/v1/models/digitnet:predict"
# The targets of issue 5, for the seed model on a 2-core machine (client and server together).
TARGET_REQUESTS_PER_SECOND = 1000
TARGET_P99_MS = 25.0


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        help="model file to serve (default: a seed-shaped "
        "model with random weights: same work per request as a trained one)",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured (30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (5)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument(
        "--workers",
        default="1,2",
        help="worker process counts to measure, comma-separated (1,2)",
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument(
        "--quiet-server",
        action="store_true",
        help="run the server without its per-request log line",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    return parser.parse_args(argv)


def random_seed_model(path: Path) -> Path:
    from digitnet.inference.model import Model
    from digitnet.inference.modelfile import save_model
    from digitnet.models import architectures

    architecture = architectures.seed_architecture()
    rng = np.random.default_rng(0)
    parameters = {
        name: rng.normal(0, 0.05, shape).astype(np.float32)
        for name, shape in architectures.parameter_shapes(architecture).items()
    }
    save_model(Model(architecture, parameters, {"training": {"model": "seed"}}), path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    model: Path, port: int, quiet: bool, log_path: Path, workers: int = 1
) -> subprocess.Popen:
    command = [sys.executable, "-m", "digitnet", "serve", str(model), "--port", str(port)]
    command += ["--workers", str(workers)]
    if quiet:
        command.append("--quiet")
    log = open(log_path, "wb")  # a pipe nobody reads would fill up and stall the server
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def wait_until_ready(
    process: subprocess.Popen, port: int, log_path: Path, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"the server exited with {process.returncode}:\n"
                f"{log_path.read_text(errors='replace')}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the server did not answer within {timeout:.0f} s")


def request_bytes(port: int) -> bytes:
    """One pre-encoded request: an MNIST-like digit as 784 floats with 4 decimals."""
    rng = np.random.default_rng(1)
    image = np.zeros((28, 28))
    image[6:22, 12:16] = rng.uniform(0.6, 1.0, (16, 4))  # a "1"
    body = json.dumps({"instances": [np.round(image.reshape(-1), 4).tolist()]}).encode()
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Connection:
    sock: socket.socket
    sent_at: int = 0
    buffer: bytearray = field(default_factory=bytearray)


@dataclass
class Results:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(text)


def _complete_response(buffer: bytearray) -> tuple[int, int] | None:
    """(status, total length) once ``buffer`` holds a whole response, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length = next(
        (
            int(line.split(":", 1)[1])
            for line in head[1:]
            if line.lower().startswith("content-length:")
        ),
        0,
    )
    total = end + 4 + length
    return (status, total) if len(buffer) >= total else None


def run_load(
    port: int, concurrency: int, warmup: float, duration: float, payload: bytes
) -> tuple[Results, float]:
    """Keep ``concurrency`` requests in flight; returns results of the measured window and
    its length in seconds."""
    selector = selectors.DefaultSelector()
    connections = []
    for _ in range(concurrency):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        connection = Connection(sock)
        connections.append(connection)
        selector.register(sock, selectors.EVENT_READ, connection)
    results = Results()
    start = time.perf_counter_ns()
    measure_from = start + int(warmup * 1e9)
    stop_at = measure_from + int(duration * 1e9)
    for connection in connections:
        connection.sent_at = time.perf_counter_ns()
        connection.sock.sendall(payload)
    in_flight = concurrency
    while in_flight:
        for key, _ in selector.select(timeout=5.0) or [(None, None)]:
            if key is None:
                raise SystemExit("no response for 5 s: the server hangs")
            connection = key.data
            try:
                chunk = connection.sock.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise SystemExit("the server closed a connection")
            connection.buffer += chunk
            done = _complete_response(connection.buffer)
            if done is None:
                continue
            status, total = done
            now = time.perf_counter_ns()
            if connection.sent_at >= measure_from and now <= stop_at:
                results.latencies_ns.append(now - connection.sent_at)
                if status != 200:
                    results.error(bytes(connection.buffer[:total]).decode("latin-1")[-300:])
            del connection.buffer[:total]
            if now < stop_at:
                connection.sent_at = now
                connection.sock.sendall(payload)  # small: fits the socket buffer at once
            else:
                in_flight -= 1
    for connection in connections:
        connection.sock.close()
    return results, duration


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants, from /proc (0 where /proc is
    missing)."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def check_answer(port: int, payload: bytes) -> None:
    body = payload.split(b"\r\n\r\n", 1)[1]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{PATH}", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.loads(response.read())
    row = answer["predictions"][0]
    if len(row) != 10 or abs(sum(row) - 1) > 1e-4:
        raise SystemExit(f"unexpected answer: {answer}")


def figures_of(results: Results, seconds: float, server_cpu: float, client_cpu: float) -> dict:
    latencies = np.array(results.latencies_ns, dtype=np.float64) / 1e6
    count = len(latencies)
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) if count else (float("nan"),) * 3
    figures = {
        "requests": count,
        "errors": results.errors,
        "requests_per_second": count / seconds,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": float(latencies.max()) if count else float("nan"),
        "server_cpu_percent": 100 * server_cpu / seconds,
        "client_cpu_percent": 100 * client_cpu / seconds,
        # CPU time per request: unlike req/s, it barely moves when other processes
        # share the cores, and 1e6 / it is what one free core could serve.
        "server_cpu_us_per_request": 1e6 * server_cpu / count if count else float("nan"),
        "error_examples": results.error_examples,
    }
    return figures


def report(
    runs: dict[int, dict], seconds: float, concurrency: int, model_label: str, load_before: float
) -> None:
    print(
        f"digitnet serve: POST {PATH}, one digit (784 floats) per request, "
        f"{concurrency} concurrent clients, {seconds:.0f} s per row, {model_label}"
    )
    print(
        f"{'workers':>7} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'server CPU':>11} {'us/req':>7} {'client CPU':>11}"
    )
    for workers, figures in runs.items():
        print(
            f"{workers:>7} {figures['requests']:>9,} {figures['errors']:>7} "
            f"{figures['requests_per_second']:>8,.0f} {figures['p50_ms']:>7.2f} "
            f"{figures['p90_ms']:>7.2f} {figures['p99_ms']:>7.2f} {figures['max_ms']:>7.2f} "
            f"{figures['server_cpu_percent']:>10.0f}% "
            f"{figures['server_cpu_us_per_request']:>7.0f} {figures['client_cpu_percent']:>10.0f}%"
        )
    if 1 in runs and len(runs) > 1:
        base = runs[1]["requests_per_second"]
        scaling = ", ".join(
            f"{workers} workers {figures['requests_per_second'] / base:.2f}x"
            for workers, figures in runs.items()
            if workers != 1
        )
        print(f"scaling against 1 worker: {scaling}")
    print(
        f"load average before the runs: {load_before:.1f} on {os.cpu_count()} cores, client "
        f"included (other processes lower req/s and raise p99)"
    )
    for workers, figures in runs.items():
        met = (
            figures["requests_per_second"] >= TARGET_REQUESTS_PER_SECOND
            and figures["p99_ms"] <= TARGET_P99_MS
            and figures["errors"] == 0
        )
        print(
            f"target with {workers} worker(s) (>= {TARGET_REQUESTS_PER_SECOND:,} req/s, "
            f"p99 <= {TARGET_P99_MS:g} ms, no errors): {'met' if met else 'NOT met'}"
        )
        for example in figures["error_examples"]:
            print(f"error response: {example!r}")


def measure(args: argparse.Namespace, model: Path, workers: int, scratch: Path) -> dict:
    port = args.port or free_port()
    log_path = scratch / f"server-{workers}.log"
    process = start_server(model, port, args.quiet_server, log_path, workers)
    try:
        wait_until_ready(process, port, log_path)
        payload = request_bytes(port)
        check_answer(port, payload)
        server_before = cpu_seconds(process.pid)
        client_before = time.process_time()
        results, seconds = run_load(port, args.concurrency, args.warmup, args.duration, payload)
        # The warm-up is included in both CPU readings; it is short next to the run.
        server_cpu = cpu_seconds(process.pid) - server_before
        client_cpu = time.process_time() - client_before
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
    share = seconds / (seconds + args.warmup)
    return figures_of(results, seconds, server_cpu * share, client_cpu * share)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    load_before = os.getloadavg()[0]
    worker_counts = [int(part) for part in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="digitnet-bench-") as scratch_name:
        scratch = Path(scratch_name)
        model = args.model or random_seed_model(scratch / "seed-random.safetensors")
        model_label = str(args.model) if args.model else "seed architecture, random weights"
        runs = {workers: measure(args, model, workers, scratch) for workers in worker_counts}
    report(runs, args.duration, args.concurrency, model_label, load_before)
    if args.json:
        print(json.dumps(runs))
    return 1 if any(figures["errors"] for figures in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
