"""Work lanes of ``digitnet serve``: image sizes read from headers, and cheap requests served
while every heavy work process is taken."""

from __future__ import annotations

import base64
import io
import os
import threading
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from digitnet.serving.app import create_app
from digitnet.serving.limits import LIGHT_PIXELS, ServerLimits, declared_size
from test_server import PREDICT, RunningServer, assert_error, digit_png, random_seed_model

FORMATS = [
    ("PNG", {}),
    ("GIF", {}),
    ("BMP", {}),
    ("JPEG", {}),
    ("JPEG", {"progressive": True}),
    ("WEBP", {"lossless": False}),
    ("WEBP", {"lossless": True}),
]


def encoded(size: tuple[int, int], image_format: str, options: dict, mode: str = "RGB") -> bytes:
    image = Image.new(mode, size, "white")
    ImageDraw.Draw(image).line([(0, 0), size], fill="black", width=2)
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


@settings(deadline=None, max_examples=60)
@given(
    width=st.integers(1, 3000),
    height=st.integers(1, 3000),
    which=st.sampled_from(range(len(FORMATS))),
    alpha=st.booleans(),
)
def test_declared_size_is_what_pillow_reads(width: int, height: int, which: int, alpha: bool):
    image_format, options = FORMATS[which]
    mode = "RGBA" if alpha and image_format in ("PNG", "WEBP") else "RGB"
    data = encoded((width, height), image_format, options, mode)
    assert declared_size(data) == Image.open(io.BytesIO(data)).size


@settings(deadline=None, max_examples=300)
@given(
    prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"\xff\xd8", b"RIFF"]),
    rest=st.binary(max_size=64),
)
def test_declared_size_of_any_bytes_is_a_size_or_none(prefix: bytes, rest: bytes):
    size = declared_size(prefix + rest)
    assert size is None or (len(size) == 2 and all(isinstance(side, int) for side in size))


def wait_for(path: str) -> None:
    """Hold a work process until ``path`` exists (a minute at most)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def occupied(tmp_path_factory: pytest.TempPathFactory):
    """A server with one light and one heavy work process, the heavy one held until the
    tests are done."""
    model = random_seed_model()
    app = create_app(model, ServerLimits(work_processes=2, max_queue_wait=0.3))
    release = str(tmp_path_factory.mktemp("lanes") / "release")

    @app.post("/occupy")
    async def occupy() -> dict:
        await app.state.pool.run(wait_for, release)
        return {}

    with RunningServer(model, app=app) as running:
        # Both lanes started, so that no request below waits for a process to start.
        warm = httpx.post(
            running.url + "/api/predict", files={"file": ("d.png", digit_png())}, timeout=60
        )
        assert warm.status_code == 200
        occupier = threading.Thread(target=lambda: httpx.post(running.url + "/occupy", timeout=120))
        occupier.start()
        time.sleep(1.0)  # the heavy work process is waiting now
        yield running
        open(release, "w").close()
        occupier.join(120)


def test_a_drawing_is_answered_while_the_heavy_lane_is_busy(occupied):
    drawing = digit_png()
    upload = httpx.post(
        occupied.url + "/api/predict", files={"file": ("d.png", drawing)}, timeout=60
    )
    assert upload.status_code == 200, upload.text
    b64 = {"instances": [{"b64": base64.b64encode(drawing).decode()}]}
    assert httpx.post(occupied.url + PREDICT, json=b64, timeout=60).status_code == 200


def test_an_image_larger_than_the_light_limit_takes_the_heavy_lane(occupied):
    side = int(LIGHT_PIXELS**0.5) + 50
    big = encoded((side, side), "PNG", {}, "L")
    response = httpx.post(
        occupied.url + "/api/predict", files={"file": ("big.png", big)}, timeout=60
    )
    assert_error(response, 503, "busy")
