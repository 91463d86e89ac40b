"""``digitnet serve`` against hostile clients, over real sockets on 127.0.0.1.

Trust (Host, Origin, Sec-Fetch-Site), the log (escaped), JSON bombs, the connection limits
(head size, read and idle timeouts, connection cap), the cap on work processes, isolation of
slow work from other clients, and ``--workers``. No timing assertions: timeouts are set short
and the tests wait for the server to act; latency figures come from benchmarks/soak.py.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from digitnet.inference.modelfile import save_model
from digitnet.serving import protocol
from digitnet.serving.app import create_app
from digitnet.serving.asgi import log as request_log
from digitnet.serving.limits import ServerLimits
from digitnet.serving.protocol import MAX_IMAGES, RequestError
from digitnet.serving.trust import allowed_host_names, host_name, printable
from digitnet.serving.work import ServerBusy, WorkPool
from test_server import (
    PREDICT,
    RunningServer,
    _digitnet,
    _free_port,
    assert_error,
    digit_png,
    random_seed_model,
)

SHORT = ServerLimits(read_timeout=0.6, keep_alive_timeout=0.6, max_connections=4)
ROW = [0.0] * 784


@pytest.fixture(scope="module")
def model():
    return random_seed_model()


@pytest.fixture(scope="module")
def server(model):
    with RunningServer(model, limits=SHORT) as running:
        yield running


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def read_until_closed(sock: socket.socket, timeout: float = 20.0) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout`` passes:
    then the test fails, the server did not close)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open: {data[:200]!r}") from None
        if not part:
            return data
        data += part


def status_and_error(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


# ---------------------------------------------------------------------------------------------
# Host: DNS rebinding


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST.", "localhost:1"])
def test_loopback_host_names_are_answered(client, host):
    assert client.get("/api/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["rebind.example", "rebind.example:8000", "127.0.0.1.nip.io", ""])
def test_other_host_names_are_refused(client, host):
    for response in (
        client.get("/api/health", headers={"Host": host}),
        client.post(PREDICT, json={"instances": [ROW]}, headers={"Host": host}),
        client.get("/", headers={"Host": host}),
    ):
        assert_error(response, 400, "--allowed-host")


def test_allowed_host_and_bound_address_are_answered(model):
    limits = ServerLimits(allowed_hosts=("digits.example",))
    app = create_app(model, limits, bound_host="10.1.2.3")
    with RunningServer(model, app=app) as running, httpx.Client(base_url=running.url) as http:
        for host in ("digits.example", "Digits.Example:8000", "10.1.2.3:8000", "localhost"):
            assert http.get("/api/health", headers={"Host": host}).status_code == 200, host
        assert_error(http.get("/api/health", headers={"Host": "other.example"}), 400)
    with RunningServer(model, limits=ServerLimits(allowed_hosts=("*",))) as running:
        assert httpx.get(running.url + "/api/health", headers={"Host": "any"}).status_code == 200


def test_host_names_are_parsed_as_browsers_send_them():
    assert host_name("[::1]:8000") == "[::1]"
    assert host_name("Example.COM.:80") == "example.com"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert allowed_host_names("0.0.0.0") == {"localhost", "127.0.0.1", "[::1]"}
    assert "[fe80::1]" in allowed_host_names("fe80::1")


# ---------------------------------------------------------------------------------------------
# Origin and Sec-Fetch-Site: CSRF


def test_same_origin_and_originless_posts_are_answered(server, client):
    origin = f"http://127.0.0.1:{server.port}"
    for headers in (
        {"Origin": origin},
        {"Origin": origin, "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar, a bookmark
        {},  # curl, scripts, TF Serving clients
    ):
        response = client.post(PREDICT, json={"instances": [ROW]}, headers=headers)
        assert response.status_code == 200, (headers, response.text)
    upload = client.post(
        "/api/predict", files={"file": ("d.png", digit_png())}, headers={"Origin": origin}
    )
    assert upload.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:1"},  # another local server: another origin
        {"Origin": "null"},  # sandboxed frames, file:// pages
        {"Sec-Fetch-Site": "cross-site"},  # a browser that sent no Origin
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_origin_posts_are_refused_before_the_body_is_read(server, headers):
    # A form post with enctype=text/plain carries JSON; multipart reaches the upload route.
    for path, content_type in ((PREDICT, "text/plain"), ("/api/predict", "multipart/form-data")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            # The body is declared but never sent: the refusal must not wait for it.
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{extra}"
                f"Content-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n".encode()
            )
            status, message = status_and_error(read_until_closed(sock))
        assert status == 403 and "refused" in message


def test_cross_origin_reads_stay_allowed(client):
    # GET changes nothing; browsers keep other pages from reading the answer (no CORS).
    response = client.get("/api/health", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200


# ---------------------------------------------------------------------------------------------
# The request log


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture()
def logged(model):
    """A logging server and the lines its request log writes."""
    handler = LogLines()
    with RunningServer(model, limits=SHORT, log_requests=True) as running:
        request_log.addHandler(handler)
        try:
            yield running, handler.lines
        finally:
            request_log.removeHandler(handler)


def wait_for_lines(lines: list[str], count: int) -> list[str]:
    """The log is written just after the answer is sent: wait for it."""
    deadline = time.monotonic() + 20
    while len(lines) < count:
        assert time.monotonic() < deadline, lines
        time.sleep(0.02)
    return lines


def test_request_paths_cannot_forge_log_lines(logged):
    running, lines = logged
    forged = "/x%0a10.0.0.1%20GET%20/admin%20200%201.0%20ms%0d%1b[31m%e2%80%a8"
    response = httpx.get(running.url + forged)
    assert response.status_code == 404
    # Behind no proxy, a client cannot name another client address either.
    httpx.get(running.url + "/api/health", headers={"X-Forwarded-For": "10.9.9.9"})
    encoded, health = wait_for_lines(lines, 2)
    assert encoded.isascii() and encoded.isprintable(), encoded
    assert "/x%0a10.0.0.1" in encoded  # the path as sent, percent-encoding and all
    assert health.startswith("127.0.0.1 GET /api/health 200")


def test_printable_escapes_what_a_terminal_or_log_reader_would_act_on():
    assert printable("/a\nb\r\x1b[31m\u2028\\") == "/a\\x0ab\\x0d\\x1b[31m\\u2028\\\\"
    assert printable("/plain/path") == "/plain/path"
    assert printable("x" * 1000).endswith("...") and len(printable("x" * 1000)) < 310


def test_deep_json_answers_400_with_one_log_line(logged):
    running, lines = logged
    bodies = [
        b'{"instances": ' + b"[" * 500 + b"]" * 500 + b"}",  # about 1 KB, 500 levels
        b"[" * 500 + b"]" * 500,
        b"[" * 5000 + b"]" * 5000,  # deeper than the JSON parser goes
        b'{"instances": [' + b'{"images": ' * 300 + b"1" + b"}" * 300 + b"]}",
        b'{"inputs": {"images": ' + b"[" * 800 + b"]" * 800 + b"}}",
        b'{"signature_name": ' + b"[" * 900 + b"]" * 900 + b', "instances": [[0]]}',
        b'{"instances": [[' + b"[" * 3 + b"0" + b"]" * 3 + b"]]}",
    ]
    with httpx.Client(base_url=running.url) as http:
        for body in bodies:
            assert_error(http.post(PREDICT, content=body), 400)
    wait_for_lines(lines, len(bodies))
    time.sleep(0.2)
    assert len(lines) == len(bodies), lines  # no traceback, no second line
    assert all(" 400 " in line for line in lines)


def test_json_without_orjson_refuses_deep_nesting(monkeypatch):
    monkeypatch.setattr(protocol, "orjson", None)
    with pytest.raises(RequestError, match="nested too deeply"):
        protocol.loads_json(b"[" * 100_000 + b"]" * 100_000)


def test_error_messages_quote_little_of_what_was_sent(client):
    huge_key = "k" * 100_000
    message = assert_error(client.post(PREDICT, json={"instances": [ROW], huge_key: 1}), 400)
    assert len(message) < 600
    message = assert_error(
        client.post(PREDICT, json={"instances": [["x" * 1_000_000] + [0] * 783]}), 400
    )
    assert len(message) < 600


# ---------------------------------------------------------------------------------------------
# Connection limits


def test_header_over_the_limit_answers_431(server):
    for size in (40_000, 4_000_000):  # in one piece, and arriving over many reads
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            head = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * size
            try:
                sock.sendall(head + b"\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed while sending: the answer came before the rest of the head
            answer = read_until_closed(sock)
        if answer:  # a reset may discard it; the connection is closed either way
            status, message = status_and_error(answer)
            assert status == 431 and "32 KB" in message


def test_many_headers_under_the_limit_are_fine(client):
    headers = {f"X-H{i}": "v" * 50 for i in range(200)}  # about 12 KB
    assert client.get("/api/health", headers=headers).status_code == 200


def test_not_http_answers_json_400(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        status, _ = status_and_error(read_until_closed(sock))
    assert status == 400


@pytest.mark.parametrize(
    "sent",
    [
        b"POST /v1/models/digitnet:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # half a head
        b"POST /v1/models/digitnet:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Length: 100\r\n\r\n{"instances": [[0',  # half a body
        b"\r\n",  # bytes that begin no request
    ],
)
def test_half_sent_request_answers_408_and_is_closed(server, sent):
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(sent)
        answer = read_until_closed(sock)
    status, message = status_and_error(answer)
    assert status == 408 and "did not arrive" in message


def test_trickled_request_is_closed_however_steady(server):
    # Slowloris: a byte every 0.1 s would keep the connection forever with an idle timeout.
    request = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if select.select([sock], [], [], 0.1)[0]:
                break
        answer = read_until_closed(sock)
    assert closed or status_and_error(answer)[0] == 408


def test_idle_connections_are_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        assert read_until_closed(sock) == b""  # never sent anything
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_until_closed(sock)  # answered, then idle, then closed
    assert answer.startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_cap_answer_503(model):
    limits = ServerLimits(max_connections=2)
    with RunningServer(model, limits=limits) as running:
        held = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(2)]
        try:
            time.sleep(0.2)  # let the server accept them
            with socket.create_connection(("127.0.0.1", running.port), timeout=20) as sock:
                sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = read_until_closed(sock)
            assert b"retry-after: 1" in answer.lower()
            assert status_and_error(answer)[0] == 503
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 20
        while httpx.get(running.url + "/api/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# Work off the event loop


def test_a_small_request_is_answered_while_a_huge_one_is_processed(server):
    # 1,000 digits with full float precision: about 4.5 MB of JSON, hundreds of milliseconds to
    # parse. Sent whole first; a small request sent after it must be answered before it.
    rng = np.random.default_rng(0)
    body = json.dumps({"instances": rng.uniform(0, 1, (290, 784)).tolist()}).encode()
    assert len(body) > 4_000_000
    # The client and its connection are made first: making an httpx client (its TLS context)
    # takes longer than the server needs for the big body on an idle machine.
    client = httpx.Client(timeout=60)
    assert client.get(server.url + "/api/health").status_code == 200
    big = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    big.sendall(
        f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    finished: list[str] = []

    def wait_big() -> None:
        big.recv(1)
        finished.append("big")

    waiter = threading.Thread(target=wait_big)
    waiter.start()
    small = client.post(server.url + PREDICT, json={"instances": [ROW]})
    finished.append("small")
    waiter.join(60)
    big.close()
    client.close()
    assert small.status_code == 200
    assert finished == ["small", "big"]


def test_images_per_request_are_capped(client):
    one = {"b64": base64.b64encode(digit_png()).decode()}
    assert client.post(PREDICT, json={"instances": [one] * MAX_IMAGES}).status_code == 200
    assert_error(client.post(PREDICT, json={"instances": [one] * (MAX_IMAGES + 1)}), 400, "at most")


def test_work_beyond_the_cap_waits_then_answers_503(model):
    app = create_app(model, ServerLimits(work_processes=1, max_queue_wait=0.3))

    @app.post("/occupy")
    async def occupy() -> dict:
        await app.state.pool.run(time.sleep, 3.0, light=True)  # the lane a drawing takes
        return {}

    with RunningServer(model, app=app) as running:
        occupier = threading.Thread(target=httpx.post, args=(running.url + "/occupy",))
        occupier.start()
        time.sleep(1.0)  # the one work process is asleep now (after starting)
        response = httpx.post(
            running.url + "/api/predict", files={"file": ("d.png", digit_png())}, timeout=30
        )
        occupier.join(30)
    assert_error(response, 503, "busy")
    assert int(response.headers["retry-after"]) >= 1


async def _die_beside_innocent(pool: WorkPool) -> list:
    import asyncio

    # os._exit(1) in a work process: what a segfaulting decoder or the OOM killer does.
    return await asyncio.gather(
        pool.run(os._exit, 1), pool.run(sum, [1, 2]), return_exceptions=True
    )


def test_a_dying_work_process_costs_only_its_own_request(model):
    import anyio

    pool = WorkPool(model, processes=2, max_wait=30)
    try:
        died, innocent = anyio.run(_die_beside_innocent, pool)
        assert innocent == 3
        assert isinstance(died, RequestError) and died.status == 400, died
        assert anyio.run(pool.run, sum, [4, 5]) == 9  # the pool was replaced
    finally:
        pool.close()


def test_server_busy_and_request_errors_survive_pickling():
    import pickle

    busy = pickle.loads(pickle.dumps(ServerBusy(10)))
    assert busy.status == 503 and busy.headers["Retry-After"] == "5"
    error = pickle.loads(pickle.dumps(RequestError("x", 415, {"A": "b"})))
    assert (str(error), error.status, error.headers) == ("x", 415, {"A": "b"})
    large = pickle.loads(pickle.dumps(protocol.BodyTooLarge(1024)))
    assert large.status == 413 and "1,024 bytes" in str(large)


def test_a_client_leaving_mid_upload_is_no_server_error(logged):
    running, lines = logged
    with socket.create_connection(("127.0.0.1", running.port), timeout=20) as sock:
        sock.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 20
    while not any("/api/predict" in line for line in lines):
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    assert not any(" 500 " in line for line in lines), lines


# ---------------------------------------------------------------------------------------------
# digitnet serve --workers, SIGTERM


def _wait_for(url: str, process, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_cli_workers_serve_one_port_and_stop_cleanly_on_sigterm(tmp_path, model, workers):
    model_path = tmp_path / "model.safetensors"
    save_model(model, model_path)
    port = _free_port()
    process = _digitnet("serve", str(model_path), "--port", str(port), "--workers", str(workers))
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/health", process)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(10):
                assert http.post(PREDICT, json={"instances": [ROW]}).status_code == 200
            upload = http.post("/api/predict", files={"file": ("d.png", digit_png())})
            assert upload.status_code == 200
        if workers > 1:
            assert len(_children(process.pid)) >= workers
        tree = [process.pid] + _children(process.pid)
        tree += [grandchild for child in tree[1:] for grandchild in _children(child)]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    deadline = time.monotonic() + 20
    while [pid for pid in tree if _running(pid)]:  # no worker or work process left behind
        assert time.monotonic() < deadline, [pid for pid in tree if _running(pid)]
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
