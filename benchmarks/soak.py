"""Soak test of ``digitnet serve`` under hostile and friendly clients at once.

Starts the server through the real CLI (``python -m digitnet serve``) and keeps ``--clients``
keep-alive connections on 127.0.0.1 busy for ``--seconds``, each with one role:

    good numbers   one MNIST test digit as 784 floats on :predict          (most clients)
    good images    a rendered test digit as a PNG upload or as b64 on :predict
    huge           1,000 test digits in one 3.6 MB :predict body (valid, and slow to parse)
    bad            malformed and refused requests in turn: broken JSON, wrong shapes, values
                   out of range, NaN, bad base64, not an image, a foreign Host, a
                   cross-origin POST, a declared 6 MB body, a 40 KB header, unknown routes
    bombs          image and JSON bombs in turn: a 6300x6300 16-bit PNG (77 KB) and an RGBA
                   PNG of the same size, as uploads and as b64, and JSON nested 500 deep

A baseline phase first runs the good clients alone (``--baseline-seconds``), so that the delay
the hostile clients cause shows apart from what the shared machine costs anyway.

Every answer is checked: a good answer must equal what the local model says for the same
input (the digit, and the probabilities within 1e-4), a bad or bomb answer must be a 4xx
``{"error"}`` (or a correct 200). The report gives requests by kind, errors, 5xx answers
(the target is none), latency of the good kinds (the target is p99 under 50 ms), and the
resident memory of the server and its work processes after the warm-up and at the end (the
target is at most 10% growth).

    python benchmarks/soak.py --model seed.safetensors              # 16 clients, 120 s
    python benchmarks/soak.py --model seed.safetensors --seconds 20 --workers 2

Needs MNIST (``DIGITNET_DATA_DIR`` or ``--data-dir``). The client shares the machine's cores
with the server: on 2 cores its own CPU use raises the server's latency.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import selectors
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import renderings
from serve import free_port, process_tree, random_seed_model, wait_until_ready

PREDICT = "/v1/models/digitnet:predict"
TARGET_P99_MS = 50.0
TARGET_MEMORY_GROWTH = 0.10
# The roles of 16 clients; more clients add good-number ones.
ROLES = ["bombs", "bad", "huge", "good images", "good images"] + ["good numbers"] * 11


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model file (default: random seed weights)")
    parser.add_argument("--seconds", type=float, default=120.0, help="measured time (120)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before (10)")
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=20.0,
        help="seconds of good clients alone, before the warm-up (20; 0 skips it)",
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--workers", type=int, default=1, help="digitnet serve --workers (1)")
    parser.add_argument(
        "--serve-args", default="", help='more digitnet serve flags, e.g. "--work-processes 2"'
    )
    parser.add_argument(
        "--client-niceness",
        type=int,
        default=0,
        help="CPU priority the clients give up once the server runs (0; see nice(1)). On the "
        "server's own cores the clients take CPU time the server's answers need, which "
        "clients on other machines do not; 10 lets the server go first",
    )
    parser.add_argument("--data-dir", help="MNIST directory (default: DIGITNET_DATA_DIR)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass
class Request:
    """One request to send and how to judge its answer: ``check(status, body)`` returns an
    error description or None."""

    kind: str
    data: bytes
    check: Callable[[int, bytes], str | None]


def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str = "application/json",
    host: str = "127.0.0.1",
    extra: str = "",
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
    if body or method == "POST":
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def multipart(png: bytes) -> tuple[bytes, str]:
    boundary = "soakboundary7f3a"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def expect_probabilities(expected: np.ndarray, key: str = "predictions") -> Callable:
    """A check: 200 and probabilities equal to ``expected`` (n, 10) within 1e-4, same digits."""

    def check(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"status {status}: {body[:200]!r}"
        got = np.asarray(json.loads(body)[key], dtype=np.float64)
        if got.shape != expected.shape:
            return f"shape {got.shape}, expected {expected.shape}"
        if not np.array_equal(got.argmax(axis=1), expected.argmax(axis=1)):
            return "a digit differs from the local model's"
        if np.abs(got - expected).max() > 1e-4:
            return f"probabilities differ by {np.abs(got - expected).max():.2g}"
        return None

    return check


def expect_upload_answer(digit: int, probabilities: np.ndarray) -> Callable:
    def check(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"status {status}: {body[:200]!r}"
        answer = json.loads(body)
        if answer.get("digit") != digit:
            return f"digit {answer.get('digit')}, the local model says {digit}"
        if np.abs(np.asarray(answer["probabilities"]) - probabilities).max() > 1e-4:
            return "probabilities differ from the local model's"
        return None

    return check


def expect_error(*statuses: int, ok_too: bool = False) -> Callable:
    """A check: one of ``statuses`` with a JSON {"error": "..."} (or any 200 if ``ok_too``)."""

    def check(status: int, body: bytes) -> str | None:
        if ok_too and status == 200:
            return None
        if status not in statuses:
            return f"status {status}, expected {statuses}: {body[:200]!r}"
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return f"not a JSON error: {body[:200]!r}"
        return None if isinstance(message, str) and message else "empty error message"

    return check


def build_requests(model, images: np.ndarray) -> dict[str, list[Request]]:
    """Every role's requests, built and their answers computed once, before the run."""
    from PIL import Image, ImageDraw

    from digitnet.inference.predict import predict_image

    rows = np.round(images.reshape(len(images), -1).astype(np.float64), 4)
    expected = model.predict_proba(rows.astype(np.float32))
    good_numbers = [
        Request(
            "good numbers",
            http_request("POST", PREDICT, json.dumps({"instances": [row.tolist()]}).encode()),
            expect_probabilities(expected[index : index + 1]),
        )
        for index, row in enumerate(rows[:500])
    ]
    good_images = []
    rng = np.random.default_rng(0)
    for index in range(100):
        png = renderings.render("canvas_png", images[index], rng)
        local = predict_image(model, png)
        if not local.ok:
            continue
        probabilities = np.asarray(local.probabilities)
        body, content_type = multipart(png)
        good_images.append(
            Request(
                "good images",
                http_request("POST", "/api/predict", body, content_type),
                expect_upload_answer(int(local.digit), probabilities),  # type: ignore[arg-type]
            )
        )
        b64_body = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode()
        good_images.append(
            Request(
                "good images",
                http_request("POST", PREDICT, b64_body),
                expect_probabilities(probabilities[None]),
            )
        )
    batch = rows[:1000]
    huge_body = json.dumps({"instances": batch.tolist()}).encode()
    huge = [
        Request(
            "huge",
            http_request("POST", PREDICT, huge_body),
            expect_probabilities(model.predict_proba(batch.astype(np.float32))),
        )
    ]

    one = rows[0].tolist()
    bad_bodies = [
        b'{"instances": [',
        b'{"instances": [[NaN' + b", 0" * 783 + b"]]}",
        json.dumps({"instances": [one[:783]]}).encode(),
        json.dumps({"instances": [[2.0] * 784]}).encode(),
        json.dumps({"instances": [["0.5"] * 784]}).encode(),
        json.dumps({"instances": [{"b64": "!!!"}]}).encode(),
        json.dumps({"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}).encode(),
        json.dumps({"instances": [one] * 1001}).encode(),
        json.dumps({"signature_name": "x", "instances": [one]}).encode(),
    ]
    bad = [
        Request("bad", http_request("POST", PREDICT, body), expect_error(400))
        for body in bad_bodies
    ]
    single = json.dumps({"instances": [one]}).encode()
    bad += [
        Request(
            "bad",
            http_request("POST", PREDICT, single, host="rebind.example:8000"),
            expect_error(400),
        ),
        Request(
            "bad",
            http_request("POST", PREDICT, single, extra="Origin: http://evil.example\r\n"),
            expect_error(403),
        ),
        Request(
            "bad",
            http_request(
                "POST", "/api/predict", b"x", "text/plain", extra="Sec-Fetch-Site: cross-site\r\n"
            ),
            expect_error(403),
        ),
        Request(
            "bad",
            b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 6000000\r\n\r\n",
            expect_error(413),
        ),
        Request(
            "bad",
            http_request("GET", "/api/health", extra="X-Big: " + "a" * 40_000 + "\r\n"),
            expect_error(431),
        ),
        Request("bad", http_request("GET", "/no/such/route%0aforged"), expect_error(404)),
        Request("bad", http_request("GET", PREDICT), expect_error(405)),
        Request(
            "bad", http_request("POST", "/api/predict", b"text", "text/plain"), expect_error(415)
        ),
        Request(
            "bad",
            http_request("POST", "/api/predict", *multipart(b"\x89PNG\r\n\x1a\n broken")),
            expect_error(400),
        ),
    ]

    def png_bytes(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", optimize=True)
        return buffer.getvalue()

    side = 6300
    deep = Image.new("I;16", (side, side), 0)
    ImageDraw.Draw(deep).rectangle(
        [side // 2 - 200, side // 4, side // 2 + 200, 3 * side // 4], 65535
    )
    rgba = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    ImageDraw.Draw(rgba).rectangle(
        [side // 2 - 200, side // 4, side // 2 + 200, 3 * side // 4], (0, 0, 0, 255)
    )
    bombs = []
    for png in (png_bytes(deep), png_bytes(rgba)):
        bombs.append(
            Request(
                "bombs",
                http_request("POST", "/api/predict", *multipart(png)),
                expect_error(400, ok_too=True),
            )
        )
        b64_body = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode()
        bombs.append(
            Request(
                "bombs", http_request("POST", PREDICT, b64_body), expect_error(400, ok_too=True)
            )
        )
        del png
    del deep, rgba
    for deep_body in (
        b'{"instances": ' + b"[" * 500 + b"]" * 500 + b"}",
        b"[" * 500 + b"]" * 500,
        b'{"instances": [' + b'{"images": ' * 300 + b"1" + b"}" * 300 + b"]}",
    ):
        bombs.append(Request("bombs", http_request("POST", PREDICT, deep_body), expect_error(400)))
    return {
        "good numbers": good_numbers,
        "good images": good_images,
        "huge": huge,
        "bad": bad,
        "bombs": bombs,
    }


# ---------------------------------------------------------------------------------------------
# The clients: one thread multiplexing non-blocking sockets


@dataclass
class Client:
    role: str
    requests: Iterator[Request]
    port: int
    sock: socket.socket | None = None
    out: bytearray = field(default_factory=bytearray)
    inbox: bytearray = field(default_factory=bytearray)
    current: Request | None = None
    sent_at: int = 0
    writing: bool = False

    def connect(self, selector: selectors.BaseSelector) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        selector.register(self.sock, selectors.EVENT_READ, self)
        self.inbox.clear()
        self.out.clear()
        self.writing = False

    def send(self, request: Request, selector: selectors.BaseSelector) -> None:
        """Queue ``request``: as much as the socket takes now, the rest when it is writable."""
        assert self.sock is not None
        self.current = request
        self.sent_at = time.perf_counter_ns()
        self.out += request.data
        self.flush(selector)

    def flush(self, selector: selectors.BaseSelector) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.out)
            del self.out[:sent]
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            self.out.clear()  # the server closed early (e.g. 431): its answer is to be read
        wanted = bool(self.out)
        if wanted != self.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
            selector.modify(self.sock, events, self)
            self.writing = wanted

    def close(self, selector: selectors.BaseSelector) -> None:
        if self.sock is not None:
            selector.unregister(self.sock)
            self.sock.close()
            self.sock = None


@dataclass
class Results:
    counts: Counter = field(default_factory=Counter)
    statuses: dict = field(default_factory=lambda: defaultdict(Counter))
    latencies_ms: dict = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)
    error_examples: list = field(default_factory=list)
    server_errors: int = 0


def _response(buffer: bytearray) -> tuple[int, bytes, bool, int] | None:
    """(status, body, closes, total length) once ``buffer`` holds a whole response."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0"))
    total = end + 4 + length
    if len(buffer) < total:
        return None
    closes = headers.get("connection", "").lower() == "close"
    return status, bytes(buffer[end + 4 : total]), closes, total


def run_clients(clients: list[Client], seconds: float, on_tick: Callable[[float], None]) -> Results:
    selector = selectors.DefaultSelector()
    results = Results()
    start = time.monotonic()
    stop_at = start + seconds
    next_tick = start + 1.0

    for client in clients:
        client.connect(selector)
        client.send(next(client.requests), selector)
    active = len(clients)
    while active:
        now = time.monotonic()
        if now >= next_tick:
            on_tick(now - start)
            next_tick += 1.0
        for key, events in selector.select(timeout=0.5):
            client: Client = key.data
            sock = client.sock
            assert sock is not None
            if events & selectors.EVENT_WRITE and client.out:
                client.flush(selector)
            if not events & selectors.EVENT_READ:
                continue
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            client.inbox += chunk
            done = _response(client.inbox)
            if done is None and chunk:
                continue
            request = client.current
            assert request is not None
            if done is None:
                results.errors[request.kind] += 1
                results.counts[request.kind] += 1
                if len(results.error_examples) < 10:
                    results.error_examples.append(f"{request.kind}: connection closed, no answer")
                closes = True
            else:
                status, body, closes, _ = done
                elapsed_ms = (time.perf_counter_ns() - client.sent_at) / 1e6
                results.counts[request.kind] += 1
                results.statuses[request.kind][status] += 1
                results.latencies_ms[request.kind].append(elapsed_ms)
                if status >= 500:
                    results.server_errors += 1
                problem = request.check(status, body)
                if problem is not None:
                    results.errors[request.kind] += 1
                    if len(results.error_examples) < 10:
                        results.error_examples.append(f"{request.kind}: {problem}")
            if closes or not chunk:
                client.close(selector)
                if time.monotonic() < stop_at:
                    client.connect(selector)
            else:
                client.inbox.clear()
            if time.monotonic() >= stop_at:
                if client.sock is not None:
                    client.close(selector)
                active -= 1
                continue
            client.send(next(client.requests), selector)
    return results


def cycle(requests: list[Request], seed: int) -> Iterator[Request]:
    rng = np.random.default_rng(seed)
    while True:
        yield from (requests[i] for i in rng.permutation(len(requests)))


# ---------------------------------------------------------------------------------------------
# Memory of the server's process tree, from /proc


def resident_by_process(pid: int) -> dict[int, float]:
    """Resident MB of ``pid`` and of each of its descendants."""
    sizes = {}
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes[member] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return sizes


def resident_mb(pid: int) -> float:
    return sum(resident_by_process(pid).values())


def describe_memory(pid: int) -> str:
    sizes = resident_by_process(pid)
    others = " + ".join(f"{mb:.0f}" for member, mb in sorted(sizes.items()) if member != pid)
    return f"{sum(sizes.values()):.0f} MB (server {sizes.get(pid, 0):.0f} + others {others})"


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    from digitnet.data.mnist import load_mnist
    from digitnet.inference.modelfile import load_model

    load_before = os.getloadavg()
    _, X_test, _, _ = load_mnist(split="official", data_dir=args.data_dir)
    images = X_test[:1000].reshape(-1, 28, 28)
    with tempfile.TemporaryDirectory(prefix="digitnet-soak-") as scratch_name:
        scratch = Path(scratch_name)
        model_path = args.model or random_seed_model(scratch / "seed-random.safetensors")
        model = load_model(model_path)
        print("building requests and their expected answers ...", file=sys.stderr)
        requests = build_requests(model, images)
        port = free_port()
        log_path = scratch / "server.log"
        command = [
            sys.executable, "-m", "digitnet", "serve", str(model_path),
            "--port", str(port), "--workers", str(args.workers), *shlex.split(args.serve_args),
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(process, port, log_path)
            if args.client_niceness:
                # After the server started: it and its work processes keep their priority.
                os.nice(args.client_niceness)
            roles = [ROLES[i] if i < len(ROLES) else "good numbers" for i in range(args.clients)]
            clients = [
                Client(role, cycle(requests[role], seed), port) for seed, role in enumerate(roles)
            ]
            memory: list[tuple[float, float]] = []

            def sample(elapsed: float) -> None:
                memory.append((elapsed, resident_mb(process.pid)))

            baseline = None
            if args.baseline_seconds > 0:
                print(f"good clients alone for {args.baseline_seconds:g} s ...", file=sys.stderr)
                good = [client for client in clients if client.role.startswith("good")]
                baseline = run_clients(good, args.baseline_seconds, lambda elapsed: None)
            print(f"warming up for {args.warmup:g} s ...", file=sys.stderr)
            run_clients(clients, args.warmup, sample)
            after_warmup = resident_mb(process.pid)
            print(f"memory after the warm-up: {describe_memory(process.pid)}", file=sys.stderr)
            memory.clear()
            print(f"measuring for {args.seconds:g} s ...", file=sys.stderr)
            started = time.monotonic()
            results = run_clients(clients, args.seconds, sample)
            elapsed = time.monotonic() - started
            at_end = resident_mb(process.pid)
            print(f"memory at the end: {describe_memory(process.pid)}", file=sys.stderr)
            load_after = os.getloadavg()
        finally:
            process.send_signal(2)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        server_log = log_path.read_text(errors="replace")
    figures = report(
        results,
        baseline,
        elapsed,
        after_warmup,
        at_end,
        memory,
        args,
        load_before,
        load_after,
        server_log,
    )
    if args.json:
        print(json.dumps(figures))
    return 0 if figures["targets_met"] else 1


def good_percentiles(results: Results, kinds: tuple[str, ...]) -> tuple[float, float]:
    latencies = [value for kind in kinds for value in results.latencies_ms[kind]]
    if not latencies:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(latencies, [50, 99])
    return float(p50), float(p99)


def report(
    results: Results,
    baseline: Results | None,
    elapsed: float,
    after_warmup: float,
    at_end: float,
    memory: list[tuple[float, float]],
    args: argparse.Namespace,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    server_log: str,
) -> dict:
    flags = " ".join(filter(None, ["--workers", str(args.workers), args.serve_args]))
    print(
        f"\ndigitnet serve {flags}: "
        f"{args.clients} clients on 127.0.0.1 for "
        f"{elapsed:.0f} s (after {args.warmup:g} s of warm-up)"
    )
    print(f"{'kind':<13} {'requests':>9} {'req/s':>7} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8}  statuses")  # fmt: skip
    figures: dict = {"kinds": {}}
    for kind in ("good numbers", "good images", "huge", "bad", "bombs"):
        latencies = np.asarray(results.latencies_ms[kind] or [np.nan])
        p50, p99 = np.percentile(latencies, [50, 99])
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(results.statuses[kind].items()))
        count = results.counts[kind]
        print(
            f"{kind:<13} {count:>9,} {count / elapsed:>7.1f} {results.errors[kind]:>7} "
            f"{p50:>8.1f} {p99:>8.1f} {latencies.max():>8.1f}  {statuses}"
        )
        figures["kinds"][kind] = {
            "requests": count,
            "errors": results.errors[kind],
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": float(latencies.max()),
            "statuses": dict(results.statuses[kind]),
        }
    good_p50, good_p99 = good_percentiles(results, ("good numbers", "good images"))
    total = sum(results.counts.values())
    errors = sum(results.errors.values())
    peak = max((mb for _, mb in memory), default=at_end)
    growth = at_end / after_warmup - 1
    tracebacks = server_log.count("Traceback")
    print(
        f"\nrequests {total:,}, errors {errors}, 5xx answers {results.server_errors}, "
        f"tracebacks in the server log {tracebacks}"
    )
    print(f"good requests: p50 {good_p50:.1f} ms, p99 {good_p99:.1f} ms")
    delays = {}
    if baseline is not None:
        for kinds in (("good numbers",), ("good images",), ("good numbers", "good images")):
            alone = good_percentiles(baseline, kinds)
            mixed = good_percentiles(results, kinds)
            figures[f"baseline {' + '.join(kinds)}"] = {"p50_ms": alone[0], "p99_ms": alone[1]}
            delays[" + ".join(kinds)] = mixed[1] - alone[1]
            print(
                f"  {' + '.join(kinds)}: p50 / p99 {alone[0]:.1f} / {alone[1]:.1f} ms alone, "
                f"{mixed[0]:.1f} / {mixed[1]:.1f} ms with the hostile clients "
                f"(p99 {mixed[1] - alone[1]:+.1f} ms)"
            )
    print(
        f"server resident memory (with its work processes): {after_warmup:.0f} MB after the "
        f"warm-up, {at_end:.0f} MB at the end ({growth:+.1%}), peak {peak:.0f} MB"
    )
    print(
        f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
        f"(1 min) on {os.cpu_count()} cores, client included"
    )
    targets = {
        "no 5xx": results.server_errors == 0,
        "every answer as expected": errors == 0,
        f"good p99 < {TARGET_P99_MS:g} ms": bool(good_p99 < TARGET_P99_MS),
        f"memory growth <= {TARGET_MEMORY_GROWTH:.0%}": growth <= TARGET_MEMORY_GROWTH,
    }
    # The other clients' delay: what the hostile ones add to each good kind's p99.
    for kinds, delay in delays.items():
        targets[f"{kinds} delayed <= {TARGET_P99_MS:g} ms at p99 ({delay:+.1f} ms)"] = bool(
            delay <= TARGET_P99_MS
        )
    for name, met in targets.items():
        print(f"  {name}: {'met' if met else 'NOT met'}")
    for example in results.error_examples:
        print(f"  error: {example}")
    figures.update(
        requests=total,
        errors=errors,
        server_errors=results.server_errors,
        tracebacks=tracebacks,
        good_p50_ms=good_p50,
        good_p99_ms=good_p99,
        memory_after_warmup_mb=after_warmup,
        memory_at_end_mb=at_end,
        memory_peak_mb=peak,
        memory_growth=growth,
        load_before=load_before,
        load_after=load_after,
        targets_met=all(targets.values()),
    )
    return figures


if __name__ == "__main__":
    sys.exit(main())
