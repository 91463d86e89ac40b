"""``POST /api/read`` over real HTTP: the three ways to send an image, the answer's shape, and
every kind of bad request. The model is a tiny random one (no MNIST needed): what a trained
model reads off drawn numbers is tested on the page, in test_web_numbers.py.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitnet.inference.predict import predict_image
from digitnet.inference.reading import read_number
from digitnet.serving.app import create_app
from digitnet.serving.limits import ServerLimits
from digitnet.serving.protocol import MAX_BODY_BYTES
from test_server import (
    RunningServer,
    assert_error,
    b64,
    blank_png,
    random_seed_model,
    raw_exchange,
)

READ = "/api/read"


@pytest.fixture(scope="module")
def model():
    return random_seed_model()


@pytest.fixture(scope="module")
def server(model):
    with RunningServer(model) as running:
        yield running


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def number_png(width: int = 360, height: int = 120) -> bytes:
    """Three marks well apart, dark on white: a "1", a "7" and a "1"."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for left in (40, 280):
        draw.line([(left, 20), (left, 100)], fill="black", width=9)
    draw.line([(140, 22), (200, 22), (160, 100)], fill="black", width=9, joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def assert_reading(answer: dict, width: int, height: int) -> None:
    """The shape of a reading: digits left to right inside the image, number and confidence
    made of them."""
    assert set(answer) == {"number", "confidence", "digits"}, answer
    digits = answer["digits"]
    assert answer["number"] == "".join(str(item["digit"]) for item in digits)
    assert 1 <= len(digits) <= 12
    assert answer["confidence"] == pytest.approx(np.prod([d["confidence"] for d in digits]))
    for item in digits:
        assert set(item) == {"digit", "confidence", "box"}
        assert 0 <= item["digit"] <= 9 and 0 <= item["confidence"] <= 1
        x0, y0, x1, y1 = item["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, item["box"]
    lefts = [item["box"][0] for item in digits]
    assert lefts == sorted(lefts)


# ---------------------------------------------------------------------------------------------
# Answers


def test_multipart_raw_and_b64_give_the_reading_of_read_number(client, model):
    png = number_png()
    multipart = client.post(READ, files={"file": ("n.png", png, "image/png")})
    assert multipart.status_code == 200, multipart.text
    answer = multipart.json()
    assert_reading(answer, 360, 120)
    raw = client.post(READ, content=png, headers={"Content-Type": "image/png"}).json()
    as_b64 = client.post(READ, json={"b64": b64(png)}).json()
    data_url = client.post(READ, json={"b64": "data:image/png;base64," + b64(png)}).json()
    assert raw == multipart.json() == as_b64 == data_url
    expected = read_number(model, png).to_json()
    assert answer["number"] == expected["number"]
    assert [d["box"] for d in answer["digits"]] == [list(d["box"]) for d in expected["digits"]]
    assert answer["confidence"] == pytest.approx(expected["confidence"], rel=1e-5)


def test_image_without_a_digit_answers_200_no_digit(client):
    for body in (blank_png(), blank_png(280)):
        response = client.post(READ, files={"file": ("blank.png", body)})
        assert response.status_code == 200
        answer = response.json()
        assert answer["number"] is None and answer["digits"] == []
        assert answer["no_digit"] is True and answer["message"] == "no digit found"
    transparent = io.BytesIO()
    Image.new("RGBA", (600, 200), (0, 0, 0, 0)).save(transparent, "PNG")
    answer = client.post(READ, json={"b64": b64(transparent.getvalue())}).json()
    assert answer["no_digit"] is True


def test_openapi_documents_the_request_forms_and_answers(client):
    spec = client.get("/openapi.json").json()
    operation = spec["paths"][READ]["post"]
    assert set(operation["requestBody"]["content"]) >= {
        "multipart/form-data",
        "image/png",
        "application/json",
    }
    schemas = spec["components"]["schemas"]
    answers = operation["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    names = [reference["$ref"].rsplit("/", 1)[1] for reference in answers]
    number, refused, no_digit = (schemas[name] for name in names)
    assert set(number["required"]) == {"number", "confidence", "digits"}
    assert set(refused["required"]) >= {"number", "not_a_digit", "reason"}
    reading = client.post(READ, files={"file": ("n.png", number_png())}).json()
    assert set(reading) == set(number["properties"])
    blank = client.post(READ, files={"file": ("b.png", blank_png())}).json()
    assert set(blank) == set(no_digit["properties"])
    for status in ("400", "403", "413", "415", "503"):
        assert status in operation["responses"], status


def test_predict_says_when_an_image_holds_several_digits(client, model):
    png = number_png()
    expected = predict_image(model, png, "n.png")
    assert expected.several_digits  # three marks far apart: the case this test is about
    response = client.post("/api/predict", files={"file": ("n.png", png, "image/png")})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["digit"] is None and answer["several_digits"] is True
    assert answer["number"] == expected.number and "3 digits" in answer["reason"]
    assert answer["confidence"] == pytest.approx(expected.confidence, rel=1e-5)
    assert np.array(answer["image"]).shape == (28, 28)
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert set(answer) == set(schemas["SeveralDigitsAnswer"]["required"])


# ---------------------------------------------------------------------------------------------
# Errors: 4xx with {"error"}


def test_bad_uploads_answer_400(client):
    assert_error(client.post(READ, files={"file": ("x.png", b"not an image")}), 400, "image")
    assert_error(client.post(READ, files={"file": ("x.png", b"")}), 400, "empty")
    assert_error(client.post(READ, files={"image": ("x.png", number_png())}), 400, "'file'")
    assert_error(
        client.post(
            READ,
            content=b"--x\r\nbroken",
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        ),
        400,
    )
    assert_error(
        client.post(READ, content=b"GIF89a-truncated", headers={"Content-Type": "image/gif"}), 400
    )


@pytest.mark.parametrize(
    "body,contains",
    [
        (b"", "empty"),
        (b"{", "not valid JSON"),
        (b"[1, 2]", '{"b64"'),
        (b'{"b64": "!!!"}', "base64"),
        (b'{"b64": ""}', "empty"),
        (b'{"b64": 7}', "base64 string"),
        (b'{"b64": "aGVsbG8="}', "image"),  # "hello"
        (b'{"instances": [[0.5]]}', "['instances']"),
        (json.dumps({"b64": b64(number_png()), "name": "x"}).encode(), "one field"),
    ],
)
def test_bad_json_bodies_answer_400(client, body, contains):
    response = client.post(READ, content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, contains)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_other_content_types_answer_415_naming_the_accepted_ones(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    message = assert_error(client.post(READ, content=b"123", headers=headers), 415)
    assert "multipart" in message and "image/*" in message and "b64" in message


def test_wrong_method_answers_405(client):
    assert_error(client.get(READ), 405)


def test_cross_origin_post_is_refused_and_same_origin_answered(server, client):
    png = number_png()
    refused = client.post(
        READ, files={"file": ("n.png", png)}, headers={"Origin": "http://evil.example"}
    )
    assert_error(refused, 403, "cross-origin")
    assert_error(client.post(READ, json={"b64": b64(png)}, headers={"Host": "evil.example"}), 400)
    same = client.post(
        READ, files={"file": ("n.png", png)}, headers={"Origin": f"http://127.0.0.1:{server.port}"}
    )
    assert same.status_code == 200


# ---------------------------------------------------------------------------------------------
# Size caps and the work processes


def test_declared_oversize_body_answers_413_before_reading(server):
    for content_type in ("application/json", "image/png", "multipart/form-data; boundary=b"):
        head = (
            f"POST {READ} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
        ).encode()
        status, body = raw_exchange(server.port, head)
        assert status == 413 and "limit" in body["error"]


def test_streamed_oversize_json_answers_413_while_reading(model):
    with RunningServer(model, max_body_bytes=64 * 1024) as small:
        head = (
            f"POST {READ} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        piece = b"A" * 16384
        chunks = [b'10\r\n{"b64": "AAAAAAA\r\n'] + [
            f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        ] * 20
        status, body = raw_exchange(small.port, head, chunks)
        assert status == 413 and "limit" in body["error"]
        # Under the limit it is read as usual.
        with httpx.Client(base_url=small.url, timeout=30) as http:
            assert http.post(READ, json={"b64": b64(number_png())}).status_code == 200


def test_reading_runs_in_the_work_processes(model):
    """With its one work process occupied, /api/read waits for it, then answers 503."""
    app = create_app(model, ServerLimits(work_processes=1, max_queue_wait=0.3))

    @app.post("/occupy")
    async def occupy() -> dict:
        await app.state.pool.run(time.sleep, 3.0)
        return {}

    with RunningServer(model, app=app) as running:
        occupier = threading.Thread(target=httpx.post, args=(running.url + "/occupy",))
        occupier.start()
        time.sleep(1.0)  # the one work process is asleep now (after starting)
        response = httpx.post(running.url + READ, json={"b64": b64(number_png())}, timeout=30)
        occupier.join(30)
    assert_error(response, 503, "busy")


def test_nonnumeric_content_length_answers_400(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST " + READ.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: image/png\r\nContent-Length: 12abc\r\n\r\n"
        )
        status_line = sock.recv(65536).split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] == b"400", status_line
