"""The draw-a-digit page in headless Chromium: draw real digits, read the prediction.

Needs Debian's Chromium at /usr/bin/chromium and Playwright's Python package, and real MNIST
(``DIGITNET_DATA_DIR``) to train the seed model that reads the drawings. Screenshots (desktop,
dark, phone) go to ``DIGITNET_ARTIFACTS_DIR`` if set, else to pytest's temporary directory.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from digitnet.serving.app import create_app
from digitnet.serving.server import bind_socket, build_server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
}

# Each digit as a person draws it: strokes of points in a 28x28 box (x right, y down),
# followed by a smooth curve through them.
DIGIT_STROKES = {
    0: [
        [
            (14, 4.5),
            (9.5, 7),
            (7.5, 13),
            (8.5, 19.5),
            (13, 23),
            (18, 21),
            (20.5, 15),
            (19.5, 8.5),
            (16, 5),
            (13.5, 4.8),
        ]
    ],
    1: [[(15, 4.5), (14.5, 12), (13.5, 23.5)]],
    2: [
        [
            (8, 9),
            (10.5, 5.5),
            (15, 4.5),
            (19, 7),
            (19, 11),
            (15.5, 15.5),
            (8, 22.5),
            (14, 22),
            (21, 22.5),
        ]
    ],
    3: [
        [
            (8, 6.5),
            (13, 4.5),
            (18, 6),
            (18.5, 10),
            (13, 13),
            (18.5, 15),
            (20, 19.5),
            (15.5, 23),
            (8.5, 21.5),
        ]
    ],
    4: [[(15, 4.5), (8, 16.5), (21, 16)], [(17.5, 9), (17, 24)]],
    5: [
        [(18.5, 5), (10.5, 5.5)],
        [(10.5, 5.5), (9.5, 12.5), (14.5, 11.5), (19, 14.5), (19, 19.5), (15, 23), (8.5, 21.5)],
    ],
    6: [
        [
            (18, 4.5),
            (12.5, 8.5),
            (9, 14.5),
            (9.5, 20.5),
            (13.5, 23.5),
            (18, 21.5),
            (19, 16.5),
            (15, 13.5),
            (10, 16),
        ]
    ],
    7: [[(7.5, 6), (20.5, 6), (15, 15), (12, 23.5)]],
    8: [
        [
            (18, 7),
            (14, 4.5),
            (10, 6.5),
            (10.5, 10.5),
            (14, 13.5),
            (18, 16.5),
            (18, 21),
            (14, 23.5),
            (10, 21),
            (10.5, 16.5),
            (14, 13.5),
            (17.5, 10.5),
            (18, 7),
        ]
    ],
    9: [
        [
            (19, 8.5),
            (15, 5),
            (10.5, 6.5),
            (10, 11.5),
            (14, 13.5),
            (18.5, 11),
            (19, 8.5),
            (18, 16),
            (16, 24),
        ]
    ],
}


def catmull_rom(points, per_segment: int = 8) -> list[tuple[float, float]]:
    """Dense points on a Catmull-Rom spline through ``points``: the path of a moving hand."""
    padded = [points[0], *points, points[-1]]
    dense = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = (np.array(p, dtype=float) for p in padded[i - 1 : i + 3])
        for t in np.linspace(0, 1, per_segment, endpoint=False):
            dense.append(
                0.5
                * (
                    2 * p1
                    + (p2 - p0) * t
                    + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                    + (3 * p1 - p0 - 3 * p2 + p3) * t**3
                )
            )
    dense.append(np.array(points[-1], dtype=float))
    return [(float(x), float(y)) for x, y in dense]


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def trained_model():
    data_dir = os.environ.get("DIGITNET_DATA_DIR", "")
    if not data_dir:
        pytest.skip(
            "real MNIST not available: set DIGITNET_DATA_DIR to train the model that "
            "reads the drawings"
        )
    import digitnet
    from digitnet.inference.model import model_from_parameters

    X_train, X_test, y_train, y_test = digitnet.load_mnist(split="official", data_dir=data_dir)
    layout = {"l0": 784, "l1": 100, "l2": 100, "l3": 60, "l4": 10}
    parameters = digitnet.train_parameters(
        X_train, y_train, X_test, y_test, layout, epochs=8, verbose=False
    )
    return model_from_parameters(parameters, metadata={"training": {"model": "seed"}})


def serving(model):
    """Serve ``model`` in a thread; yields the base URL."""
    sock = bind_socket("127.0.0.1", 0)
    server = build_server(create_app(model), log_requests=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def server_url(trained_model):
    yield from serving(trained_model)


@pytest.fixture(scope="module")
def untrained_server_url():
    """A server with random weights, for tests that replace its answers."""
    from digitnet.inference.model import Model
    from digitnet.models import architectures

    architecture = architectures.seed_architecture()
    rng = np.random.default_rng(0)
    model = Model(
        architecture,
        {
            name: rng.normal(0, 0.1, shape).astype(np.float32)
            for name, shape in architectures.parameter_shapes(architecture).items()
        },
    )
    yield from serving(model)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    directory = Path(
        os.environ.get("DIGITNET_ARTIFACTS_DIR", "") or tmp_path_factory.mktemp("screenshots")
    )
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class PageWatch:
    """Requests a page makes: how many to /api/predict, the most in flight, any not local."""

    def __init__(self, page, base_url: str) -> None:
        self.base_url = base_url
        self.predictions = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.foreign: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)
        page.on(
            "console",
            lambda message: message.type == "error" and self.console_errors.append(message.text),
        )
        page.on("pageerror", lambda error: self.console_errors.append(str(error)))

    def _started(self, request) -> None:
        if not request.url.startswith(self.base_url) and not request.url.startswith("data:"):
            self.foreign.append(request.url)
        if request.url.endswith("/api/predict"):
            self.predictions += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def _ended(self, request) -> None:
        if request.url.endswith("/api/predict"):
            self.in_flight -= 1


def open_page(browser, server_url: str, **context_options):
    context = browser.new_context(**context_options)
    page = context.new_page()
    watch = PageWatch(page, server_url)
    page.goto(server_url + "/")
    page.wait_for_function("() => window.digitnet !== undefined")
    return page, watch


def pad_point(box: dict, x: float, y: float) -> tuple[float, float]:
    return box["x"] + x / 28 * box["width"], box["y"] + y / 28 * box["height"]


def draw_with_mouse(page, strokes) -> int:
    """Draw ``strokes`` on #pad; returns the number of mouse moves."""
    box = page.locator("#pad").bounding_box()
    moves = 0
    for stroke in strokes:
        path = [pad_point(box, x, y) for x, y in catmull_rom(stroke)]
        page.mouse.move(*path[0])
        page.mouse.down()
        for point in path[1:]:
            page.mouse.move(*point)
            moves += 1
        page.mouse.up()
    return moves


def draw_with_touch(page, strokes) -> None:
    """Draw with real touch input (CDP touch events become pointer events of type touch)."""
    session = page.context.new_cdp_session(page)
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        path = [pad_point(box, x, y) for x, y in catmull_rom(stroke)]
        for index, (x, y) in enumerate(path):
            kind = "touchStart" if index == 0 else "touchMove"
            session.send(
                "Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]}
            )
        session.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def settled_prediction(page) -> str:
    page.wait_for_function("() => window.digitnet.settled")
    return page.locator("#prediction").inner_text().strip()


def screenshot(page, path: Path) -> None:
    page.wait_for_timeout(300)  # let the bars' transition finish
    page.screenshot(path=str(path), full_page=True)


# ---------------------------------------------------------------------------------------------
# Tests


def test_empty_page_says_no_digit_found(browser, server_url):
    page, watch = open_page(browser, server_url, **DESKTOP)
    assert page.locator("#prediction").inner_text() == "no digit found"
    assert page.locator("#pad").evaluate("pad => getComputedStyle(pad).touchAction") == "none"
    assert watch.predictions == 0 and not watch.console_errors
    page.context.close()


def test_drawn_digits_are_recognised(browser, server_url, artifacts):
    page, watch = open_page(browser, server_url, **DESKTOP)
    read = {}
    for digit, strokes in DIGIT_STROKES.items():
        page.keyboard.press("Escape")
        assert settled_prediction(page) == "no digit found"
        draw_with_mouse(page, strokes)
        read[digit] = settled_prediction(page)
        if digit == 7:
            screenshot(page, artifacts / "desktop-7.png")
    correct = sum(read[digit] == str(digit) for digit in read)
    assert correct >= 8, f"read {read}"
    seen_ink = page.locator("#seen").evaluate(
        "c => c.getContext('2d').getImageData(0, 0, 28, 28).data.reduce((a, b) => a + b, 0)"
    )
    assert seen_ink > 28 * 28 * 255  # alpha alone sums to this: some pixels must be lit
    assert watch.most_in_flight == 1
    assert not watch.foreign and not watch.console_errors


def test_predictions_are_debounced_one_in_flight(browser, server_url):
    page, watch = open_page(browser, server_url, **DESKTOP)
    moves = draw_with_mouse(page, DIGIT_STROKES[8] * 3)
    settled_prediction(page)
    assert 1 <= watch.predictions < moves
    assert watch.most_in_flight == 1
    page.context.close()


@pytest.mark.parametrize("how", ["button", "Escape", "Delete", "c"])
def test_clear_empties_the_pad_and_shows_no_digit(browser, server_url, how):
    page, _ = open_page(browser, server_url, **DESKTOP)
    draw_with_mouse(page, DIGIT_STROKES[7])
    assert settled_prediction(page) != "no digit found"
    if how == "button":
        page.click("#clear")
    else:
        page.keyboard.press(how)
    assert settled_prediction(page) == "no digit found"
    assert page.evaluate("() => window.digitnet.strokes") == 0
    blank = page.locator("#pad").evaluate(
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.every(v => v === 0)"
    )
    assert blank
    assert page.locator("#bars li.best").count() == 0
    page.context.close()


def test_undo_removes_the_last_stroke(browser, server_url):
    page, _ = open_page(browser, server_url, **DESKTOP)
    draw_with_mouse(page, DIGIT_STROKES[4])
    settled_prediction(page)
    page.click("#undo")
    assert page.evaluate("() => window.digitnet.strokes") == 1
    page.keyboard.press("Control+z")
    assert settled_prediction(page) == "no digit found"
    page.context.close()


def test_touch_drawing_on_a_phone(browser, server_url, artifacts):
    page, watch = open_page(browser, server_url, **PHONE)
    draw_with_touch(page, DIGIT_STROKES[7])
    assert settled_prediction(page) == "7"
    assert page.evaluate("() => window.scrollY") == 0  # touch drew instead of scrolling
    pad_width = page.locator("#pad").bounding_box()["width"]
    assert pad_width > 300  # the pad uses the phone's width
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways
    screenshot(page, artifacts / "phone-7.png")
    assert not watch.foreign and not watch.console_errors
    page.context.close()


def test_dark_mode_and_docs_render(browser, server_url, artifacts):
    page, watch = open_page(browser, server_url, color_scheme="dark", **DESKTOP)
    draw_with_mouse(page, DIGIT_STROKES[3])
    assert settled_prediction(page) == "3"
    screenshot(page, artifacts / "dark-3.png")
    page.goto(server_url + "/docs")
    page.wait_for_selector(".op")
    assert page.locator(".op").count() >= 8
    # Schemas generated from Pydantic models are "$ref"s in /openapi.json; the page inlines them.
    health = page.locator(".op", has=page.locator("code", has_text="/api/health"))
    schemas = health.locator("details pre").first.text_content()
    assert "digitnet_version" in schemas and "$ref" not in schemas
    predict = page.locator(".op").first  # its example holds a 7 drawn on a canvas, as b64
    predict.locator("summary", has_text="Try it").click()
    predict.locator("button", has_text="Send").click()
    answer = predict.locator(".try + pre")
    answer.locator("text=predictions").wait_for()
    assert answer.inner_text().startswith("200")
    page.screenshot(path=str(artifacts / "docs.png"))
    assert not watch.foreign and not watch.console_errors
    page.context.close()


def _answer_with(page, status: int, body: dict) -> None:
    import json

    page.route(
        "**/api/predict",
        lambda route: route.fulfill(
            status=status, content_type="application/json", body=json.dumps(body)
        ),
    )


def test_low_confidence_is_marked(browser, untrained_server_url, artifacts):
    page, _ = open_page(browser, untrained_server_url, **DESKTOP)
    probabilities = [0.02, 0.03, 0.05, 0.28, 0.31, 0.04, 0.05, 0.1, 0.07, 0.05]
    _answer_with(
        page,
        200,
        {
            "digit": 4,
            "confidence": 0.31,
            "low_confidence": True,
            "probabilities": probabilities,
            "no_digit": False,
            "image": np.eye(28).tolist(),
        },
    )
    draw_with_mouse(page, DIGIT_STROKES[4])
    assert settled_prediction(page) == "4"
    assert "low" in page.locator("#prediction").get_attribute("class")
    assert "unsure" in page.locator("#confidence").inner_text().lower()
    assert page.locator("#bars li.best .digit").inner_text() == "4"
    assert page.locator("#bars li").nth(4).get_attribute("aria-label") == "4: 31%"
    screenshot(page, artifacts / "low-confidence.png")
    page.context.close()


def test_no_digit_answer_and_server_errors_are_shown(browser, untrained_server_url):
    page, _ = open_page(browser, untrained_server_url, **DESKTOP)
    _answer_with(
        page,
        200,
        {
            "digit": None,
            "confidence": None,
            "low_confidence": False,
            "probabilities": None,
            "image": None,
            "no_digit": True,
            "message": "no digit found",
        },
    )
    draw_with_mouse(page, [[(14, 14), (14.2, 14.2)]])
    assert settled_prediction(page) == "no digit found"
    page.unroute("**/api/predict")
    _answer_with(page, 503, {"error": "the model is resting"})
    draw_with_mouse(page, DIGIT_STROKES[1])
    page.wait_for_function("() => document.getElementById('status').textContent !== ''")
    assert "the model is resting" in page.locator("#status").inner_text()
    page.context.close()
