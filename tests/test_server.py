"""``digitnet serve`` over real HTTP on 127.0.0.1: every route, every kind of bad request.

The server runs uvicorn in a thread on a socket bound to a free port, exactly as ``serve()``
builds it; the CLI itself is started as a subprocess for the log line and the error exits.
The model is a tiny random one with the seed architecture's shapes: no MNIST needed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitnet.inference.model import Model
from digitnet.inference.modelfile import save_model
from digitnet.inference.predict import predict_image
from digitnet.models import architectures
from digitnet.serving.app import create_app
from digitnet.serving.protocol import MAX_BODY_BYTES, MAX_INSTANCES
from digitnet.serving.routes.pages import STATIC_DIR
from digitnet.serving.server import bind_socket, build_server

PREDICT = "/v1/models/digitnet:predict"


# ---------------------------------------------------------------------------------------------
# Fixtures


def random_seed_model(seed: int = 0) -> Model:
    architecture = architectures.seed_architecture()
    rng = np.random.default_rng(seed)
    parameters = {
        name: rng.normal(0, 0.3, shape).astype(np.float32)
        for name, shape in architectures.parameter_shapes(architecture).items()
    }
    return Model(architecture, parameters, {"training": {"model": "seed"}})


class RunningServer:
    """uvicorn serving ``create_app(model, limits)`` (or ``app``) in a thread, with ``limits``'
    connection limits; ``url`` is its base address."""

    def __init__(
        self, model: Model, app=None, limits=None, log_requests=False, **app_options
    ) -> None:
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = app if app is not None else create_app(model, limits, **app_options)
        self.server = build_server(app, log_requests=log_requests, limits=limits)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def model() -> Model:
    return random_seed_model()


@pytest.fixture(scope="module")
def server(model):
    with RunningServer(model) as running:
        yield running


@pytest.fixture(scope="module")
def small_limit_server(model):
    with RunningServer(model, max_body_bytes=64 * 1024) as running:
        yield running


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def digit_png(kind: str = "seven", size: int = 140, transparent: bool = False) -> bytes:
    """A drawn digit, dark ink on white (or on transparent): the page's kind of PNG."""
    mode, background = ("RGBA", (0, 0, 0, 0)) if transparent else ("RGB", "white")
    image = Image.new(mode, (size, size), background)
    draw = ImageDraw.Draw(image)
    scale = size / 28
    strokes = {"seven": [(7, 6), (21, 6), (12, 23)], "one": [(14, 5), (14, 23)]}[kind]
    draw.line(
        [(x * scale, y * scale) for x, y in strokes],
        fill="black",
        width=int(2.2 * scale),
        joint="curve",
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def blank_png(size: int = 140) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), "white").save(buffer, "PNG")
    return buffer.getvalue()


def mnist_like(count: int = 3, seed: int = 1) -> np.ndarray:
    """float32 (count, 28, 28) in [0, 1] with a bright bar, like an MNIST "1"."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.float32)
    images[:, 6:22, 12:16] = rng.uniform(0.5, 1.0, (count, 16, 4))
    return images


def assert_error(response: httpx.Response, status: int, contains: str = "") -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]
    assert contains.lower() in body["error"].lower(), body["error"]
    return body["error"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------------------------
# TensorFlow Serving: predict


def test_row_form_predictions_equal_predict_proba(client, model):
    images = mnist_like(3)
    response = client.post(PREDICT, json={"instances": images.reshape(3, -1).tolist()})
    assert response.status_code == 200, response.text
    predictions = np.array(response.json()["predictions"], dtype=np.float32)
    assert predictions.shape == (3, 10)
    np.testing.assert_allclose(
        predictions, model.predict_proba(images.reshape(3, -1)), rtol=1e-5, atol=1e-6
    )


def test_28x28_instances_equal_flat_ones(client):
    images = mnist_like(2)
    nested = client.post(PREDICT, json={"instances": images.tolist()}).json()
    flat = client.post(PREDICT, json={"instances": images.reshape(2, -1).tolist()}).json()
    assert nested == flat


def test_instances_are_not_preprocessed_again(client, model):
    # An off-centre digit in MNIST form must reach the model as sent, not re-centred.
    image = np.zeros((28, 28), np.float32)
    image[2:8, 2:5] = 1.0
    answer = client.post(PREDICT, json={"instances": [image.reshape(-1).tolist()]}).json()
    np.testing.assert_allclose(
        answer["predictions"][0], model.predict_proba(image[None])[0], rtol=1e-5, atol=1e-6
    )


def test_all_zero_and_integer_instances_are_valid_input(client, model):
    zeros = [0] * 784
    answer = client.post(PREDICT, json={"instances": [zeros]}).json()
    np.testing.assert_allclose(
        answer["predictions"][0], model.predict_proba(np.zeros((1, 784)))[0], rtol=1e-5, atol=1e-6
    )


def test_versioned_path_and_signature_name(client):
    body = {"signature_name": "serving_default", "instances": mnist_like(1).tolist()}
    plain = client.post(PREDICT, json=body)
    versioned = client.post("/v1/models/digitnet/versions/1:predict", json=body)
    assert plain.status_code == versioned.status_code == 200
    assert plain.json() == versioned.json()


def test_columnar_form_batched_and_single(client):
    images = mnist_like(2)
    rows = client.post(PREDICT, json={"instances": images.reshape(2, -1).tolist()}).json()
    batched = client.post(PREDICT, json={"inputs": images.reshape(2, -1).tolist()}).json()
    assert batched == {"outputs": rows["predictions"]}
    single_flat = client.post(PREDICT, json={"inputs": images[0].reshape(-1).tolist()}).json()
    single_square = client.post(PREDICT, json={"inputs": images[0].tolist()}).json()
    named = client.post(PREDICT, json={"inputs": {"images": images.tolist()}}).json()
    # A batch of one may round differently from a batch of two in BLAS: compare closely.
    assert set(single_flat) == set(single_square) == set(named) == {"outputs"}
    assert single_flat == single_square
    np.testing.assert_allclose(single_flat["outputs"], rows["predictions"][0], rtol=1e-5)
    np.testing.assert_allclose(named["outputs"], rows["predictions"], rtol=1e-5)


def test_b64_instance_equals_upload_equals_predict_image(client, model):
    png = digit_png("seven")
    row = client.post(PREDICT, json={"instances": [{"b64": b64(png)}]}).json()
    upload = client.post("/api/predict", files={"file": ("seven.png", png, "image/png")}).json()
    local = predict_image(model, png)
    np.testing.assert_allclose(row["predictions"][0], local.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upload["probabilities"], local.probabilities, rtol=1e-5, atol=1e-6)
    assert upload["digit"] == local.digit
    np.testing.assert_allclose(np.array(upload["image"]), local.image, atol=1e-4)


def test_b64_variants_and_mixed_batches(client, model):
    png = digit_png("one", transparent=True)
    standard = b64(png)
    url_safe = base64.urlsafe_b64encode(png).decode().rstrip("=")
    data_url = "data:image/png;base64," + standard
    image = mnist_like(1)[0]
    answer = client.post(
        PREDICT,
        json={
            "instances": [
                {"b64": standard},
                {"b64": url_safe},
                {"b64": data_url},
                image.reshape(-1).tolist(),
            ]
        },
    ).json()
    predictions = np.array(answer["predictions"])
    assert predictions.shape == (4, 10)
    np.testing.assert_allclose(predictions[0], predictions[1], rtol=1e-5)
    np.testing.assert_allclose(predictions[0], predictions[2], rtol=1e-5)
    np.testing.assert_allclose(
        predictions[0], predict_image(model, png).probabilities, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        predictions[3], model.predict_proba(image[None])[0], rtol=1e-5, atol=1e-6
    )


def test_curl_default_content_type_and_no_content_type_are_accepted(client):
    body = json.dumps({"instances": mnist_like(1).tolist()}).encode()
    for headers in (
        {"Content-Type": "application/x-www-form-urlencoded"},
        {},
        {"Content-Type": "application/json; charset=utf-8"},
    ):
        assert client.post(PREDICT, content=body, headers=headers).status_code == 200


def test_largest_batch_is_accepted(client):
    zeros = [[0] * 784] * MAX_INSTANCES
    response = client.post(PREDICT, json={"instances": zeros})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == MAX_INSTANCES


# ---------------------------------------------------------------------------------------------
# TensorFlow Serving: bad requests


def _row(value=0.5, count=784):
    return [value] * count


BAD_JSON_BODIES = {
    "invalid JSON": (b'{"instances": [', "not valid JSON"),
    "empty body": (b"", "empty"),
    "NaN literal": (b'{"instances": [[NaN' + b", 0" * 783 + b"]]}", ""),
    "Infinity literal": (b'{"instances": [[Infinity' + b", 0" * 783 + b"]]}", ""),
    "overflowing number": (b'{"instances": [[1e400' + b", 0" * 783 + b"]]}", ""),
    "huge integer": (b'{"instances": [[' + b"9" * 400 + b", 0" * 783 + b"]]}", ""),
    "not UTF-8": (b'{"instances": "\xff\xfe"}', ""),
}

BAD_REQUESTS = {
    "top level is a list": ([_row()], "JSON object"),
    "no instances or inputs": ({}, '"instances"'),
    "both instances and inputs": ({"instances": [_row()], "inputs": [_row()]}, "not both"),
    "unknown field": ({"instances": [_row()], "instance": 1}, "unknown field"),
    "empty instances": ({"instances": []}, "empty"),
    "empty inputs": ({"inputs": []}, "empty"),
    "instances not a list": ({"instances": "abc"}, "expected a list"),
    "783 values": ({"instances": [_row(count=783)]}, "783 values"),
    "785 values": ({"instances": [_row(count=785)]}, "785 values"),
    "27x28": ({"instances": [[_row(count=28)] * 27]}, "27x28"),
    "ragged": ({"instances": [[_row(count=28)] * 27 + [_row(count=27)]]}, "ragged"),
    "ragged batch": ({"instances": [_row(), _row(count=28)]}, ""),
    "empty instance": ({"instances": [[]]}, "empty"),
    "value above 1": ({"instances": [_row(1.5)]}, "outside [0, 1]"),
    "negative value": ({"instances": [_row(-0.1)]}, "outside [0, 1]"),
    "0..255 pixels": ({"instances": [_row(255)]}, "outside [0, 1]"),
    "string value": ({"instances": [["0.5"] + _row(count=783)]}, "a string"),
    "boolean value": ({"instances": [[True] + _row(count=783)]}, "boolean"),
    "null value": ({"instances": [[None] + _row(count=783)]}, "null"),
    "object value": ({"instances": [[{"a": 1}] + _row(count=783)]}, "object"),
    "list inside a row": ({"instances": [[0.5, [0.5]] + _row(count=782)]}, "[1] is list"),
    "string in a 28x28 row": ({"instances": [[_row(count=28)] * 27 + [["x"] * 28]]}, "[27][0]"),
    "scalar instance": ({"instances": [0.5]}, "expected a list of numbers"),
    "bad base64": ({"instances": [{"b64": "!!not base64!!"}]}, "not valid base64"),
    "b64 not a string": ({"instances": [{"b64": 12}]}, "base64 string"),
    "b64 empty": ({"instances": [{"b64": ""}]}, "empty"),
    "b64 not an image": ({"instances": [{"b64": b64(b"hello, world")}]}, "not an image"),
    "b64 blank image": ({"instances": [{"b64": b64(blank_png())}]}, "no digit found"),
    "object instance with other keys": ({"instances": [{"pixels": _row()}]}, "keys"),
    "too many instances": ({"instances": [[0] * 784] * (MAX_INSTANCES + 1)}, "at most"),
    "wrong signature": (
        {"signature_name": "predict_images", "instances": [_row()]},
        "signature_name",
    ),
    "inputs of wrong shape": ({"inputs": [[_row(count=10)]]}, "shape 1x10"),
}


@pytest.mark.parametrize("name", sorted(BAD_JSON_BODIES))
def test_malformed_bodies_answer_400(client, name):
    body, contains = BAD_JSON_BODIES[name]
    assert_error(
        client.post(PREDICT, content=body, headers={"Content-Type": "application/json"}),
        400,
        contains,
    )


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_requests_answer_400_saying_what_was_wrong(client, name):
    payload, contains = BAD_REQUESTS[name]
    assert_error(client.post(PREDICT, json=payload), 400, contains)


def test_bad_request_names_the_instance(client):
    message = assert_error(client.post(PREDICT, json={"instances": [_row(), _row(2.0)]}), 400)
    assert "instances[1]" in message


@pytest.mark.parametrize(
    "content_type", ["text/plain", "multipart/form-data; boundary=x", "image/png"]
)
def test_predict_refuses_non_json_content_types(client, content_type):
    body = json.dumps({"instances": [_row()]})
    assert_error(
        client.post(PREDICT, content=body, headers={"Content-Type": content_type}),
        415,
        "application/json",
    )


def test_unknown_model_and_version_answer_404(client):
    body = {"instances": [_row()]}
    assert_error(client.post("/v1/models/other:predict", json=body), 404, "other")
    assert_error(client.post("/v1/models/digitnet/versions/2:predict", json=body), 404, "2")
    assert_error(client.post("/v1/models/digitnet/versions/latest:predict", json=body), 404)
    assert_error(client.get("/v1/models/other"), 404, "other")
    assert_error(client.get("/v1/models/other/metadata"), 404, "other")
    assert_error(client.get("/v1/models/digitnet/versions/3"), 404, "3")
    assert_error(client.get("/v1/models/digitnet/versions/3/metadata"), 404, "3")


def test_other_tf_serving_methods_answer_404(client):
    assert_error(
        client.post("/v1/models/digitnet:classify", json={"examples": []}), 404, ":predict"
    )
    assert_error(client.get("/v1/models/digitnet:regress"), 404, ":predict")


def test_a_bug_still_answers_json_500(model):
    app = create_app(model)

    @app.get("/bug")
    async def bug():
        raise RuntimeError("a deliberate bug")

    with RunningServer(model, app=app) as running:
        response = httpx.get(running.url + "/bug")
    message = assert_error(response, 500, "internal error")
    assert "deliberate" not in message  # details go to the log, not to the client


def test_wrong_methods_and_routes_answer_json(client):
    assert_error(client.get(PREDICT), 405, "POST")
    assert client.get(PREDICT).headers["allow"] == "POST"
    assert_error(client.post("/v1/models/digitnet"), 405)
    assert_error(client.post("/api/health"), 405)
    assert_error(client.get("/no/such/route"), 404, "no such route")


# ---------------------------------------------------------------------------------------------
# TensorFlow Serving: status and metadata


def test_model_status_shape(client):
    expected = {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert client.get("/v1/models/digitnet").json() == expected
    assert client.get("/v1/models/digitnet/versions/1").json() == expected


def test_model_metadata_shape(client, model):
    answer = client.get("/v1/models/digitnet/metadata").json()
    assert answer["model_spec"] == {"name": "digitnet", "signature_name": "", "version": "1"}
    signature = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    (input_info,) = signature["inputs"].values()
    (output_info,) = signature["outputs"].values()
    assert input_info["dtype"] == output_info["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in input_info["tensor_shape"]["dim"]] == ["-1", str(model.n_inputs)]
    assert [d["size"] for d in output_info["tensor_shape"]["dim"]] == ["-1", str(model.n_classes)]
    assert client.get("/v1/models/digitnet/versions/1/metadata").json() == answer


# ---------------------------------------------------------------------------------------------
# /api/predict


def test_upload_answers_digit_confidence_probabilities_and_image(client, model):
    response = client.post("/api/predict", files={"file": ("d.png", digit_png(), "image/png")})
    assert response.status_code == 200
    answer = response.json()
    assert 0 <= answer["digit"] <= 9 and answer["no_digit"] is False
    assert len(answer["probabilities"]) == 10
    assert answer["confidence"] == pytest.approx(max(answer["probabilities"]))
    assert answer["digit"] == int(np.argmax(answer["probabilities"]))
    image = np.array(answer["image"])
    assert image.shape == (28, 28) and image.min() >= 0 and image.max() == pytest.approx(1.0)
    assert isinstance(answer["low_confidence"], bool)


def test_raw_image_body_equals_multipart(client):
    png = digit_png("one")
    raw = client.post("/api/predict", content=png, headers={"Content-Type": "image/png"}).json()
    multipart = client.post("/api/predict", files={"file": ("one.png", png)}).json()
    assert raw == multipart


def test_upload_without_a_digit_answers_200_no_digit_found(client):
    for png in (blank_png(), blank_png(280)):
        answer = client.post("/api/predict", files={"file": ("blank.png", png)}).json()
        assert answer["digit"] is None and answer["no_digit"] is True
        assert answer["message"] == "no digit found"


def test_transparent_canvas_without_strokes_is_no_digit(client):
    buffer = io.BytesIO()
    Image.new("RGBA", (280, 280), (0, 0, 0, 0)).save(buffer, "PNG")
    answer = client.post("/api/predict", files={"file": ("pad.png", buffer.getvalue())}).json()
    assert answer["no_digit"] is True


def test_upload_errors(client):
    assert_error(
        client.post("/api/predict", files={"file": ("x.png", b"not an image")}), 400, "not an image"
    )
    assert_error(client.post("/api/predict", files={"file": ("x.png", b"")}), 400, "empty")
    text_only = b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nvalue\r\n--b--\r\n'
    assert_error(
        client.post(
            "/api/predict",
            content=text_only,
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        ),
        400,
        "field named 'file'",
    )
    assert_error(
        client.post("/api/predict", files={"image": ("x.png", digit_png())}), 400, "'file'"
    )
    assert_error(client.post("/api/predict", json={"b64": b64(digit_png())}), 415, "multipart")
    assert_error(
        client.post(
            "/api/predict",
            content=b"--x\r\nbroken",
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        ),
        400,
    )


def test_health(client):
    answer = client.get("/api/health").json()
    assert answer["status"] == "ok"
    assert answer["model"]["name"] == "seed" and answer["model"]["classes"] == 10


# ---------------------------------------------------------------------------------------------
# Request-size limit: on Content-Length before reading, and while a chunked body arrives


def raw_exchange(port: int, head: bytes, chunks=(), pause: float = 0.02) -> tuple[int, dict]:
    """Send ``head`` then ``chunks`` (stopping early if the server answers); (status, JSON)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], pause)[0]:
                break  # the server has answered already
            sock.sendall(chunk)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            part = sock.recv(65536)
            if not part:
                break
            data += part
    head_text, body = data.split(b"\r\n\r\n", 1)
    status = int(head_text.split(b" ", 2)[1])
    return status, json.loads(body[: _length(data)])


def _length(data: bytes) -> int:
    match = re.search(rb"(?im)^content-length:\s*(\d+)", data)
    return int(match.group(1)) if match else 0


@pytest.mark.parametrize("path", [PREDICT, "/api/predict"])
def test_declared_oversize_body_answers_413_before_reading(server, path):
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    ).encode()
    status, body = raw_exchange(server.port, head)  # no body sent at all: no waiting for it
    assert status == 413 and "limit" in body["error"]


@pytest.mark.parametrize(
    "path,content_type",
    [
        (PREDICT, "application/json"),
        ("/api/predict", "image/png"),
        ("/api/predict", "multipart/form-data; boundary=b"),
    ],
)
def test_streamed_oversize_body_answers_413_while_reading(small_limit_server, path, content_type):
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b" " * 16384
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    # A well-formed start, so that a multipart parser reads on instead of failing at once.
    part = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    first = f"{len(part):x}\r\n".encode() + part + b"\r\n"
    status, body = raw_exchange(small_limit_server.port, head, [first] + [chunk] * 20)
    assert status == 413 and "limit" in body["error"]


def test_body_under_the_limit_is_fine(small_limit_server):
    with httpx.Client(base_url=small_limit_server.url) as http:
        response = http.post(PREDICT, json={"instances": [[0.5] * 784]})
    assert response.status_code == 200


def test_nonnumeric_content_length_answers_400(server):
    # uvicorn's HTTP parser or the app refuses it; either way a 400, never a 500 or a hang.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 12abc\r\n\r\n"
        )
        status_line = sock.recv(65536).split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] == b"400", status_line


# ---------------------------------------------------------------------------------------------
# Page, docs, OpenAPI: all served locally


def test_page_and_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for required in ('id="pad"', 'id="prediction"', 'id="clear"'):
        assert required in page.text
    for asset, kind in (
        ("/static/app.js", "javascript"),
        ("/static/style.css", "text/css"),
        ("/static/docs.js", "javascript"),
        ("/favicon.ico", "image/svg"),
    ):
        response = client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"]


def test_nothing_is_loaded_from_elsewhere():
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path.name


def test_docs_are_self_hosted_and_openapi_lists_every_route(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/docs.js" in docs.text
    assert "cdn" not in docs.text.lower()
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/models/{model_name}:predict",
        "/v1/models/{model_name}/versions/{version}:predict",
        "/v1/models/{model_name}",
        "/v1/models/{model_name}/metadata",
        "/api/predict",
        "/api/health",
    ):
        assert path in spec["paths"], path
    assert client.get("/redoc").status_code == 404


def test_openapi_describes_the_answers_the_routes_give(client):
    """The non-hot routes' schemas come from their Pydantic models, and name every key the
    answers hold."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def answer_schema(path: str, method: str = "get", status: str = "200") -> dict:
        content = spec["paths"][path][method]["responses"][status]["content"]
        return content["application/json"]["schema"]

    def keys_of(reference: dict) -> set[str]:
        schema = schemas[reference["$ref"].rsplit("/", 1)[1]]
        assert set(schema["required"]) == set(schema["properties"])
        return set(schema["required"])

    for path, url in (
        ("/api/health", "/api/health"),
        ("/v1/models/{model_name}", "/v1/models/digitnet"),
        ("/v1/models/{model_name}/versions/{version}", "/v1/models/digitnet/versions/1"),
        ("/v1/models/{model_name}/metadata", "/v1/models/digitnet/metadata"),
    ):
        assert set(client.get(url).json()) == keys_of(answer_schema(path)), path
        if path.startswith("/v1/"):
            not_found = client.get(url.replace("digitnet", "other"))
            assert set(not_found.json()) == keys_of(answer_schema(path, status="404"))
    # The not-a-digit answer (a reader model's) is checked in test_notdigit.py.
    digit, _, no_digit, _several = answer_schema("/api/predict", "post")["anyOf"]
    for image, reference in ((digit_png(), digit), (blank_png(), no_digit)):
        answer = client.post("/api/predict", files={"file": ("d.png", image, "image/png")})
        assert answer.status_code == 200 and set(answer.json()) == keys_of(reference)
    bad = client.post("/api/predict", files={"file": ("d.png", b"not an image", "image/png")})
    assert set(bad.json()) == keys_of(answer_schema("/api/predict", "post", "400"))
    assert set(client.post(PREDICT, json={}).json()) == keys_of(
        answer_schema(PREDICT.replace("digitnet", "{model_name}"), "post", "400")
    )


def test_json_without_orjson_is_as_strict(monkeypatch):
    from digitnet.serving import protocol

    monkeypatch.setattr(protocol, "orjson", None)
    assert protocol.loads_json(b'{"instances": [[0.5, 1]]}') == {"instances": [[0.5, 1]]}
    for body in (b"[NaN]", b"[Infinity]", b"[-Infinity]", b"{", b"\xff"):
        with pytest.raises(protocol.RequestError):
            protocol.loads_json(body)
    encoded = protocol.dumps_json({"p": np.array([[0.25, 0.75]], np.float32), "n": np.int64(3)})
    assert json.loads(encoded) == {"p": [[0.25, 0.75]], "n": 3}


# ---------------------------------------------------------------------------------------------
# The command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _digitnet(*arguments: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "digitnet", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def test_cli_serves_and_logs_one_line_per_request(tmp_path, model):
    model_path = tmp_path / "model.safetensors"
    save_model(model, model_path)
    port = _free_port()
    process = _digitnet("serve", str(model_path), "--port", str(port))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert health.status_code == 200
        assert (
            httpx.post(
                f"http://127.0.0.1:{port}{PREDICT}", json={"instances": [[0] * 784]}
            ).status_code
            == 200
        )
    finally:
        process.send_signal(2)  # SIGINT, as Ctrl-C
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in out
    assert re.search(r"127\.0\.0\.1 GET /api/health 200 \d+\.\d ms", err), err
    assert re.search(rf"127\.0\.0\.1 POST {re.escape(PREDICT)} 200 \d+\.\d ms", err), err


def test_cli_bad_model_path_is_a_one_line_error(tmp_path):
    process = _digitnet("serve", str(tmp_path / "missing.safetensors"))
    out, err = process.communicate(timeout=60)
    assert process.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("digitnet serve: error:"), err
    assert "missing.safetensors" in lines[0]


def test_cli_port_in_use_is_a_one_line_error(tmp_path, model):
    model_path = tmp_path / "model.safetensors"
    save_model(model, model_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = _digitnet("serve", str(model_path), "--port", str(taken.getsockname()[1]))
        out, err = process.communicate(timeout=60)
    assert process.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot listen" in lines[0], err


def test_serving_never_imports_tensorflow(tmp_path, model):
    model_path = tmp_path / "model.safetensors"
    save_model(model, model_path)
    code = (
        "import sys\n"
        "from digitnet.inference.modelfile import load_model\n"
        "from digitnet.serving.app import create_app\n"
        "from digitnet.cli.main import build_parser\n"
        f"create_app(load_model({str(model_path)!r}))\n"
        "build_parser().parse_args(['serve', 'x'])\n"
        "print('tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_model_with_other_input_size_refuses_images(tmp_path):
    architecture = architectures.seed_architecture([64, 10])
    rng = np.random.default_rng(0)
    small = Model(
        architecture,
        {
            name: rng.normal(0, 0.1, shape).astype(np.float32)
            for name, shape in architectures.parameter_shapes(architecture).items()
        },
    )
    with RunningServer(small) as running, httpx.Client(base_url=running.url) as http:
        ok = http.post(PREDICT, json={"instances": [[0.5] * 64]})
        assert ok.status_code == 200 and len(ok.json()["predictions"][0]) == 10
        assert_error(http.post(PREDICT, json={"instances": [[0.5] * 784]}), 400, "64")
        assert_error(http.post(PREDICT, json={"instances": [{"b64": b64(digit_png())}]}), 400, "64")
        metadata = http.get("/v1/models/digitnet/metadata").json()
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["inputs"]["images"]["tensor_shape"]["dim"][1]["size"] == "64"
