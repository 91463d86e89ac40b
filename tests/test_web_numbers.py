"""The page's number mode in headless Chromium: write numbers of 1 to 6 digits with strokes
traced from real MNIST test digits, two of them touching, and read them back with a box
around each digit. Also: switching modes, and "not a digit" answers in both modes.

Needs what test_web.py needs: Debian's Chromium at /usr/bin/chromium, Playwright, and real MNIST
(``DIGITNET_DATA_DIR``) for the digits and the model that reads them. Screenshots go to
``DIGITNET_ARTIFACTS_DIR`` if set, else to pytest's temporary directory.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

import renderings
from digitnet.inference.reading import read_number
from test_web import (  # noqa: F401 - fixtures used by name
    DESKTOP,
    PHONE,
    artifacts,
    browser,
    open_page,
    screenshot,
    serving,
)

pytestmark = pytest.mark.browser

# (number, index of the digit that touches the next one, or None): 1 to 6 digits.
NUMBERS = [
    ("7", None),
    ("42", None),
    ("905", None),
    ("3861", None),
    ("27150", None),
    ("648239", None),
    ("04", 0),  # a 0 touching a 4
    ("2104", 2),
]
# Where a digit's 28x28 MNIST frame goes on the pad: its height as a fraction of the pad's, and
# its top. MNIST's ink spans about 20/28 of the frame.
FRAME = 0.8
TOP = 0.1
# The page's pen is 17/280 of the pad's height wide; in MNIST pixels of a FRAME-high frame:
PEN = 17 / 280 * 28 / FRAME
GAP = 3.0  # MNIST pixels between the inks of neighbours that do not touch
SKELETON_SIDE = 112  # digits are thinned at 4x MNIST's resolution
# The mouse draws every SAMPLE-th point of a stroke (a point every 2.5 MNIST pixels): the page
# draws smooth curves through them.
SAMPLE = 10


# ---------------------------------------------------------------------------------------------
# MNIST digits as pen strokes


def digit_strokes(digit: np.ndarray) -> list[list[tuple[float, float]]]:
    """The centre lines of an MNIST digit (28x28, white on black) as strokes a pen would draw:
    lists of (x, y) points in the 28x28 frame, in drawing order."""
    mask = renderings.stroke_coverage(digit, SKELETON_SIDE) > 0.5
    skeleton = renderings._skeleton(renderings._open_filled_loops(mask))
    rows, cols = renderings._smoothed_positions(skeleton)
    pixels = {(int(r), int(c)) for r, c in zip(*np.nonzero(skeleton))}

    def linked(pixel: tuple[int, int], d_row: int, d_col: int) -> bool:
        row, col = pixel
        if (row + d_row, col + d_col) not in pixels:
            return False
        # A diagonal step beside a corner pixel is a shortcut: the corner carries the line.
        return not (d_row and d_col and ({(row + d_row, col), (row, col + d_col)} & pixels))

    steps = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if a or b]
    links = {p: [(p[0] + a, p[1] + b) for a, b in steps if linked(p, a, b)] for p in sorted(pixels)}
    used: set[frozenset] = set()

    def free(pixel):
        return [q for q in links[pixel] if frozenset((pixel, q)) not in used]

    strokes = []
    while starts := [p for p in links if free(p)]:
        # Start at a line's end where there is one; go on as straight as the lines allow.
        point = next((p for p in starts if len(free(p)) % 2 == 1), starts[0])
        path, heading = [point], (0, 0)
        while options := free(point):
            step = max(
                options,
                key=lambda q: (q[0] - point[0]) * heading[0] + (q[1] - point[1]) * heading[1],
            )
            used.add(frozenset((point, step)))
            heading = (step[0] - point[0], step[1] - point[1])
            path.append(step)
            point = step
        strokes.append(path)
    strokes += [[p] for p in pixels if not links[p]]  # dots
    scale = 28 / SKELETON_SIDE
    return [
        [((cols[r, c] + 0.5) * scale, (rows[r, c] + 0.5) * scale) for r, c in path]
        for path in strokes
    ]


def ink_extent(strokes) -> tuple[float, float]:
    xs = [x for stroke in strokes for x, _ in stroke]
    return min(xs) - PEN / 2, max(xs) + PEN / 2


def closest(first, second) -> float:
    """The least distance between the points of two digits' strokes, in MNIST pixels."""
    a = np.array([p for stroke in first for p in stroke])
    b = np.array([p for stroke in second for p in stroke])
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min())


def shifted(strokes, dx: float):
    return [[(x + dx, y) for x, y in stroke] for stroke in strokes]


def lay_out(digits: list[np.ndarray], touching: int | None):
    """Strokes of a number in MNIST pixels of one frame height, left to right from x = 0, and
    each digit's ink extent (x0, x1). Neighbours are GAP apart; the ``touching`` one and its
    right neighbour come closer than a pen's width: their inks touch."""
    placed, extents, right = [], [], 0.0
    for index, digit in enumerate(digits):
        strokes = digit_strokes(digit)
        low, _ = ink_extent(strokes)
        dx = right - low + (GAP if index else 0.0)
        if index and index - 1 == touching:
            # Slide it left until its strokes' ink overlaps the other's by a tenth of a pen.
            dx = right - low + PEN
            while closest(placed[-1], shifted(strokes, dx)) > PEN * 0.9:
                dx -= 0.1
        strokes = shifted(strokes, dx)
        placed.append(strokes)
        extents.append(ink_extent(strokes))
        right = extents[-1][1]
    return placed, extents


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def mnist():
    data_dir = os.environ.get("DIGITNET_DATA_DIR", "")
    if not data_dir:
        pytest.skip("real MNIST not available: set DIGITNET_DATA_DIR")
    import digitnet

    return digitnet.load_mnist(split="official", data_dir=data_dir)


@pytest.fixture(scope="module")
def trained_model(mnist):
    """The seed network, trained for a few epochs (test_web.py's, shorter)."""
    import digitnet
    from digitnet.inference.model import model_from_parameters

    X_train, X_test, y_train, y_test = mnist
    layout = {"l0": 784, "l1": 100, "l2": 100, "l3": 60, "l4": 10}
    parameters = digitnet.train_parameters(
        X_train, y_train, X_test, y_test, layout, epochs=4, verbose=False
    )
    return model_from_parameters(parameters, metadata={"training": {"model": "seed"}})


@pytest.fixture(scope="module")
def server_url(trained_model):
    yield from serving(trained_model)


def drawn_png(strokes, height: int = 200) -> bytes:
    """Strokes drawn as the page draws them (its pen, FRAME of the height), dark on white."""
    scale = FRAME * height / 28
    pen = 17 / 280 * height
    image = Image.new("L", (height, height), 255)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        points = [(x * scale, TOP * height + y * scale) for x, y in stroke[::SAMPLE] + stroke[-1:]]
        draw.line(points + points[-1:], fill=0, width=round(pen), joint="curve")
        for x, y in points:  # round caps and joins
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=0)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def test_digits(mnist, trained_model):
    """For each class, up to 4 MNIST test digits in file order that the model reads right and
    sure (at least 95%) when drawn alone: what is tested here is the page and the reading of
    numbers, not the classifier's mistakes."""
    _, X_test, _, y_test = mnist
    labels = y_test.argmax(axis=1)
    chosen: dict[int, list[np.ndarray]] = {digit: [] for digit in range(10)}
    for index in range(len(X_test)):
        digit = int(labels[index])
        if len(chosen[digit]) == 4:
            if all(len(found) == 4 for found in chosen.values()):
                break
            continue
        image = X_test[index].reshape(28, 28)
        reading = read_number(trained_model, drawn_png(digit_strokes(image)))
        if reading.number == str(digit) and reading.confidence >= 0.95:
            chosen[digit].append(image)
    return chosen


@pytest.fixture(scope="module")
def page(browser, server_url):  # noqa: F811
    """One page for the whole module, in number mode."""
    page, watch = open_page(browser, server_url, **DESKTOP)
    page.click("#mode-number")
    page.wait_for_function("() => window.digitnet.mode === 'number'")
    yield page, watch
    page.context.close()


def draw_number(page, placed, extents) -> tuple[float, float]:
    """Draw laid-out strokes on #pad with the mouse, scaled so the frame is FRAME of the pad's
    height (smaller if the number would not fit). Returns (scale, left): pad pixels per MNIST
    pixel, and where x = 0 went, in pad pixels from the pad's left edge."""
    box = page.locator("#pad").bounding_box()
    width = extents[-1][1] - extents[0][0]
    scale = min(FRAME * box["height"] / 28, 0.9 * box["width"] / width)
    left = (box["width"] - width * scale) / 2 - extents[0][0] * scale
    for strokes in placed:
        for stroke in strokes:
            points = [
                (box["x"] + left + x * scale, box["y"] + (TOP * box["height"]) + y * scale)
                for x, y in stroke[::SAMPLE] + stroke[-1:]
            ]
            page.mouse.move(*points[0])
            page.mouse.down()
            for point in points[1:]:
                page.mouse.move(*point)
            page.mouse.up()
    return scale, left


def settled(page) -> str:
    page.wait_for_function("() => window.digitnet.settled")
    return page.locator("#prediction").inner_text().strip()


def drawn_boxes(page) -> list[dict]:
    """The boxes as shown on the pad: digit, confidence, label, and where each rectangle is on
    the screen (x0, y0, x1, y1 in CSS pixels from the pad's top-left corner)."""
    return page.evaluate(
        """() => {
        const pad = document.getElementById("pad").getBoundingClientRect();
        return [...document.querySelectorAll("#boxes g.box")].map((group) => {
          const box = group.querySelector("rect").getBoundingClientRect();
          return {
            digit: group.dataset.digit, confidence: Number(group.dataset.confidence),
            label: group.querySelector("text").textContent,
            x0: box.left - pad.left, y0: box.top - pad.top,
            x1: box.right - pad.left, y1: box.bottom - pad.top,
          };
        });
      }"""
    )


# ---------------------------------------------------------------------------------------------
# Tests


def test_numbers_of_one_to_six_digits_are_read_with_a_box_per_digit(page, test_digits, artifacts):  # noqa: F811
    page, watch = page
    used = {digit: 0 for digit in range(10)}
    problems = []
    for number, touching in NUMBERS:
        page.keyboard.press("Escape")
        assert settled(page) == "no digit found"
        assert page.locator("#boxes g.box").count() == 0
        digits = []
        for character in number:
            digits.append(test_digits[int(character)][used[int(character)]])
            used[int(character)] += 1
        placed, extents = lay_out(digits, touching)
        if touching is not None:
            gap = closest(placed[touching], placed[touching + 1])
            assert gap < PEN, "the two digits' inks must touch"
        scale, left = draw_number(page, placed, extents)
        read = settled(page)
        boxes = drawn_boxes(page)
        if number == "27150":
            screenshot(page, artifacts / "number-27150.png")
        if touching is not None:
            screenshot(page, artifacts / f"number-{number}-touching.png")
        if read != number:
            problems.append(f"{number} read as {read}")
            continue
        assert [box["digit"] for box in boxes] == list(number)
        chips = page.locator("#digits li .digit").all_inner_texts()
        assert chips == list(number)
        pad_height = page.locator("#pad").bounding_box()["height"]
        frame_top, frame_bottom = TOP * pad_height, TOP * pad_height + 28 * scale
        for box, (x0, x1) in zip(boxes, extents):
            # Each box sits on its own digit: its centre within the digit's ink across, and
            # within the digit's frame down.
            centre = (box["x0"] + box["x1"]) / 2
            assert left + x0 * scale <= centre <= left + x1 * scale, (number, box, x0, x1)
            assert frame_top <= (box["y0"] + box["y1"]) / 2 <= frame_bottom, (number, box)
            assert box["label"].startswith(box["digit"]) and box["label"].endswith("%")
            assert 0 < box["confidence"] <= 1
    assert not problems, problems
    assert not watch.foreign and not watch.console_errors, watch.console_errors


def test_modes_keep_their_own_drawing(page, test_digits):
    page, _ = page
    page.keyboard.press("Escape")
    placed, extents = lay_out([test_digits[5][0], test_digits[3][0]], None)
    draw_number(page, placed, extents)
    assert settled(page) == "53"
    assert page.url.endswith("#number")
    page.click("#mode-digit")
    assert page.evaluate("() => window.digitnet.mode") == "digit"
    assert settled(page) == "no digit found"
    assert page.locator("#pad").bounding_box()["width"] == pytest.approx(
        page.locator("#pad").bounding_box()["height"], abs=1
    )
    assert page.locator("#bars").is_visible() and not page.locator("#digits").is_visible()
    assert page.locator("#boxes g.box").count() == 0
    page.click("#mode-number")
    assert settled(page) == "53"  # the number drawn before, read again
    assert page.locator("#boxes g.box").count() == 2
    box = page.locator("#pad").bounding_box()
    assert box["width"] == pytest.approx(3 * box["height"], abs=2)


def test_several_digits_on_the_digit_pad_are_read_as_a_number(page, test_digits):
    page, _ = page
    page.click("#mode-digit")
    page.keyboard.press("Escape")
    placed, extents = lay_out([test_digits[4][0], test_digits[2][0]], None)
    draw_number(page, placed, extents)
    assert settled(page) == "42"
    assert "several digits" in page.locator("#confidence").inner_text().lower()
    assert page.locator("#bars li.best").count() == 0
    page.keyboard.press("Escape")
    page.click("#mode-number")


def test_number_mode_opens_from_the_address_and_fits_a_phone(browser, server_url, artifacts):  # noqa: F811
    page = browser.new_context(**PHONE).new_page()
    page.goto(server_url + "/#number")
    page.wait_for_function("() => window.digitnet !== undefined")
    assert page.evaluate("() => window.digitnet.mode") == "number"
    assert page.locator("#mode-number").get_attribute("aria-pressed") == "true"
    box = page.locator("#pad").bounding_box()
    assert 300 < box["width"] <= 390 and box["width"] == pytest.approx(3 * box["height"], abs=2)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # no sideways
    screenshot(page, artifacts / "phone-number-mode.png")
    page.context.close()


def _answer(page, path: str, body: dict) -> None:
    page.route(
        f"**{path}",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(body)
        ),
    )


def test_not_a_digit_is_shown_in_both_modes(browser, server_url, test_digits):  # noqa: F811
    page, _ = open_page(browser, server_url, **DESKTOP)
    _answer(
        page,
        "/api/predict",
        {
            "digit": None,
            "confidence": 0.93,
            "probabilities": [0.1] * 10,
            "not_a_digit": True,
            "reason": "looks like a letter or a symbol",
            "image": np.eye(28).tolist(),
            "no_digit": False,
        },
    )
    placed, extents = lay_out([test_digits[8][0]], None)
    draw_number(page, placed, extents)
    assert settled(page) == "not a digit"
    assert "looks like a letter" in page.locator("#confidence").inner_text()
    assert page.locator("#bars li.best").count() == 0
    page.click("#mode-number")
    _answer(
        page,
        "/api/read",
        {
            "number": None,
            "confidence": 0.88,
            "digits": [],
            "not_a_digit": True,
            "reason": "a scribble, not digits",
        },
    )
    draw_number(page, placed, extents)
    assert settled(page) == "not a digit"
    assert "a scribble" in page.locator("#confidence").inner_text()
    assert page.locator("#boxes g.box").count() == 0
    page.context.close()
