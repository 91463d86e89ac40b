"""Reading whole numbers: read_number on numbers made of real MNIST test digits, its errors,
``digitnet read``, and ``digitnet predict`` on an image holding several digits."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from digitnet.errors import ImageError, NoDigitFound
from digitnet.inference.predict import predict_image
from digitnet.inference.reading import NumberReading, read_number


class NearestNeighbours:
    """A real classifier without training: the 9 nearest of 20,000 MNIST training digits by
    cosine similarity, voting. ``predict_proba`` like digitnet's Model, 10 classes."""

    not_a_digit_class = None
    line_network = None

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        flat = images.reshape(len(images), -1).astype(np.float32)
        self.references = flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-9)
        self.labels = labels

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float32).reshape(len(X), -1)
        X = X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-9)
        similarity = X @ self.references.T
        nearest = np.argpartition(-similarity, 9, axis=1)[:, :9]
        votes = np.zeros((len(X), 10))
        for row, columns in enumerate(nearest):
            np.add.at(votes[row], self.labels[columns], similarity[row, columns])
        votes += 1e-3
        return votes / votes.sum(axis=1, keepdims=True)

    def answers(self, probabilities: np.ndarray) -> np.ndarray:
        return probabilities.argmax(axis=1)


@pytest.fixture(scope="module")
def mnist(mnist_arrays):
    arrays = mnist_arrays
    model = NearestNeighbours(arrays.train_images[:20000], arrays.train_labels[:20000])
    return model, arrays.test_images, arrays.test_labels


def _digit_of(images, labels, model, digit: int, skip: int = 0) -> np.ndarray:
    """A test digit ``digit`` the model reads right on its own, cropped to its ink."""
    found = 0
    for index in np.flatnonzero(labels == digit):
        image = images[index].astype(np.float32) / 255.0
        if model.predict_proba(image[None])[0].argmax() == digit:
            if found == skip:
                rows = np.flatnonzero(image.max(axis=1) > 0.1)
                cols = np.flatnonzero(image.max(axis=0) > 0.1)
                return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            found += 1
    raise AssertionError(f"no {digit} read right")


def _line(crops: list[np.ndarray], gaps: list[int], scale: int = 3):
    """Dark digits on white paper, ``gaps`` px between neighbouring ink boxes (negative:
    overlapping), enlarged ``scale`` times: (uint8 image, boxes (x0, y0, x1, y1))."""
    width = sum(crop.shape[1] for crop in crops) + sum(gaps) + 24
    line = np.zeros((40, width), np.float32)
    boxes, x = [], 12
    for index, crop in enumerate(crops):
        y = 10 + (index % 2)
        region = line[y : y + crop.shape[0], x : x + crop.shape[1]]
        np.maximum(region, crop, out=region)
        boxes.append(
            (x * scale, y * scale, (x + crop.shape[1]) * scale, (y + crop.shape[0]) * scale)
        )
        if index < len(gaps):
            x += crop.shape[1] + gaps[index]
    image = Image.fromarray((255 - 255 * line).astype(np.uint8)).resize(
        (width * scale, 40 * scale), Image.Resampling.BILINEAR
    )
    return np.asarray(image), boxes


def _overlap(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.mark.parametrize(
    "number, gaps",
    [
        ("2104", [6, 3, 9]),
        ("31415", [2, 12, 4, 7]),
        ("7", []),
        ("869", [10, 15]),
    ],
)
def test_read_number_reads_mnist_test_digits_and_boxes_them(mnist, number, gaps):
    model, images, labels = mnist
    crops = [_digit_of(images, labels, model, int(d), skip=i) for i, d in enumerate(number)]
    image, boxes = _line(crops, gaps)
    reading = read_number(model, image)
    assert isinstance(reading, NumberReading)
    assert reading.number == number
    assert len(reading.digits) == len(number)
    assert not reading.not_a_digit
    assert reading.confidence == pytest.approx(np.prod([d.confidence for d in reading.digits]))
    for digit, truth, box in zip(reading.digits, number, boxes):
        assert digit.digit == int(truth)
        assert _overlap(digit.box, box) > 0.6, (digit.box, box)
    data = reading.to_json()
    assert data["number"] == number
    assert [d["box"] for d in data["digits"]] == [list(d.box) for d in reading.digits]
    assert "not_a_digit" not in data


@pytest.mark.parametrize(
    "number, gaps, skip",
    [
        # 2 touches 7, 5 touches 3 (their boxes overlap by one and two pixels).
        ("2753", [-1, 6, -2], 2),
        # 7 crosses into 0, 9 touches 3.
        ("7093", [-2, 5, -1], 1),
    ],
)
def test_read_number_separates_touching_digits(mnist, number, gaps, skip):
    model, images, labels = mnist
    crops = [_digit_of(images, labels, model, int(d), skip=skip) for d in number]
    image, boxes = _line(crops, gaps)
    reading = read_number(model, image)
    assert reading.number == number
    for digit, box in zip(reading.digits, boxes):
        assert _overlap(digit.box, box) > 0.5, (digit.box, box)


class _FixedLineNetwork:
    """A line network that reads every line as ``reads``: each digit the best symbol of the
    output column over the middle of a separate run of ink (or, when the runs are not one per
    digit, of an equal share of the ink), blanks elsewhere. ``unsure`` names digits read with
    probability 0.5 beside a second choice with 0.3 (``{position: second_choice}``); the
    others are read with 0.99."""

    def __init__(self, reads: str, unsure: dict[int, int] | None = None):
        self.reads = reads
        self.unsure = unsure or {}

    def scores(self, values: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        from digitnet.inference.line_reading import BLANK, LINE_PAD
        from digitnet.models.architectures import LINE_STRIDE

        inked = values.max(axis=0) > 0.1
        runs, count = ndimage.label(inked)
        if count == len(self.reads):
            centres = [np.flatnonzero(runs == label).mean() for label in range(1, count + 1)]
        else:
            first, last = np.flatnonzero(inked)[[0, -1]]
            share = (last - first) / len(self.reads)
            centres = [first + share * (index + 0.5) for index in range(len(self.reads))]
        columns = values.shape[1] // LINE_STRIDE
        scores = np.full((columns, BLANK + 1), 0.001, np.float32)
        scores[:, BLANK] = 0.99
        for index, (digit, centre) in enumerate(zip(self.reads, centres)):
            column = min(columns - 1, max(0, round((centre - LINE_PAD) / LINE_STRIDE)))
            scores[column] = 0.001
            scores[column, int(digit)] = 0.99
            if index in self.unsure:
                scores[column, int(digit)] = 0.5
                scores[column, self.unsure[index]] = 0.3
        return scores


@pytest.mark.parametrize(
    "number, gaps, line_reads, unsure, expected",
    [
        # One digit, read one way by the classifier and another by the line network: the
        # classifier is made for lone digits.
        ("2", [], "3", {}, "2"),
        # One digit the line network reads as two: it may be two touching digits.
        ("2", [], "33", {}, "33"),
        # Several digits: the line network reads the line, and a digit it is sure of stays.
        ("20", [8], "37", {}, "37"),
        # A digit it is unsure of (7, or 0 as second choice) takes the classifier's opinion
        # on the same ink (a clear 0).
        ("20", [8], "27", {1: 0}, "20"),
    ],
)
def test_the_line_network_reads_lines_and_the_classifier_lone_digits(
    mnist, number, gaps, line_reads, unsure, expected
):
    neighbours, images, labels = mnist
    model = NearestNeighbours(neighbours.references, neighbours.labels)
    model.line_network = _FixedLineNetwork(line_reads, unsure)  # type: ignore[assignment]
    crops = [_digit_of(images, labels, model, int(d)) for d in number]
    image, _ = _line(crops, gaps)
    reading = read_number(model, image)
    assert reading.number == expected
    assert all(0.0 < digit.confidence <= 1.0 for digit in reading.digits)


def test_boxes_are_in_the_pixels_of_a_large_photo(mnist):
    """A number small in a large image, which the reader sees reduced: boxes come back in the
    image's own pixels."""
    model, images, labels = mnist
    crops = [_digit_of(images, labels, model, d) for d in (4, 2)]
    small, boxes = _line(crops, [8], scale=2)
    page = np.full((1500, 2000), 255, np.uint8)
    page[700 : 700 + small.shape[0], 900 : 900 + small.shape[1]] = small
    reading = read_number(model, page)
    assert reading.number == "42"
    for digit, (x0, y0, x1, y1) in zip(reading.digits, boxes):
        assert _overlap(digit.box, (x0 + 900, y0 + 700, x1 + 900, y1 + 700)) > 0.5


def test_blank_images_are_no_digit_found_and_bad_bytes_an_image_error():
    model = NearestNeighbours(np.eye(10, 784, dtype=np.float32), np.arange(10))
    with pytest.raises(NoDigitFound):
        read_number(model, np.full((60, 200), 255, np.uint8))
    with pytest.raises(ImageError) as caught:
        read_number(model, b"not an image at all")
    assert not isinstance(caught.value, NoDigitFound)
    assert "the image bytes" in str(caught.value)


def test_predict_says_an_image_holds_several_digits(mnist):
    model, images, labels = mnist
    crops = [_digit_of(images, labels, model, d) for d in (2, 1, 0, 4)]
    image, _ = _line(crops, [5, 8, 4])
    several = predict_image(model, image, "number.png")
    assert several.several_digits and several.digit is None
    assert several.number == "2104"
    assert several.to_json() == {
        "file": "number.png",
        "digit": None,
        "number": "2104",
        "confidence": several.confidence,
        "several_digits": True,
        "reason": several.reason,
    }
    # A single MNIST test digit stays a digit, however wide.
    for index in range(40):
        single = predict_image(model, images[index], f"digit{index}")
        assert not single.several_digits and single.digit is not None


def _tiny_model_file(path: Path) -> Path:
    from digitnet.inference.model import Model
    from digitnet.inference.modelfile import save_model
    from digitnet.models import architectures

    architecture = architectures.named_architecture("seed")
    rng = np.random.default_rng(0)
    parameters = {
        name: rng.normal(0, 0.1, shape).astype(np.float32)
        for name, shape in architectures.parameter_shapes(architecture).items()
    }
    save_model(Model(architecture, parameters, {"training": {"model": "seed"}}), path)
    return path


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _spaced_number(count: int) -> np.ndarray:
    """Dark bars and rings far apart on white: whatever a model reads, ``count`` digits."""
    image = np.full((60, 60 * count + 20), 255, np.uint8)
    for index in range(count):
        left = 20 + 60 * index
        image[12:48, left + 8 : left + 14] = 0
        image[12:16, left : left + 22] = 0
    return image


def digitnet(*args):
    return subprocess.run(
        [sys.executable, "-m", "digitnet", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )


def test_read_command_text_and_json_over_a_folder_with_a_bad_file(tmp_path):
    model = _tiny_model_file(tmp_path / "model.safetensors")
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a\tnumber.png").write_bytes(_png(_spaced_number(3)))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "notes.txt").write_text("not an image, and not looked at")
    text = digitnet("read", model, folder)
    assert text.returncode == 1
    assert "Traceback" not in text.stderr
    (line,) = text.stdout.splitlines()
    name, number, confidence = line.split("\t")
    assert name == str(folder / "a\\tnumber.png")
    assert len(number) == 3 and number.isdigit()
    assert 0.0 <= float(confidence) <= 1.0
    (error,) = text.stderr.splitlines()
    assert error.startswith("digitnet read: ") and "broken.png" in error

    records = json.loads(digitnet("read", model, folder, "--json").stdout)
    assert [Path(record["file"]).name for record in records] == ["a\tnumber.png", "broken.png"]
    good, bad = records
    assert set(good) == {"file", "number", "confidence", "digits"}
    assert len(good["digits"]) == 3
    for digit in good["digits"]:
        x0, y0, x1, y1 = digit["box"]
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 60
        assert set(digit) == {"digit", "confidence", "box"}
    assert set(bad) == {"file", "error"}


def test_predict_command_names_several_digits(tmp_path):
    model = _tiny_model_file(tmp_path / "model.safetensors")
    image = tmp_path / "number.png"
    image.write_bytes(_png(_spaced_number(4)))
    result = digitnet("predict", model, image)
    assert result.returncode == 0
    name, answer, confidence = result.stdout.strip().split("\t")
    assert answer.startswith("several digits ") and len(answer.split()[-1]) == 4
    (record,) = json.loads(digitnet("predict", model, image, "--json").stdout)
    assert record["digit"] is None and record["several_digits"] is True
    assert record["number"] == answer.split()[-1]


@pytest.fixture(scope="module")
def random_model():
    from digitnet.inference.model import Model
    from digitnet.models import architectures

    architecture = architectures.named_architecture("seed")
    rng = np.random.default_rng(1)
    parameters = {
        name: rng.normal(0, 0.1, shape).astype(np.float32)
        for name, shape in architectures.parameter_shapes(architecture).items()
    }
    return Model(architecture, parameters, {})


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(8, 60),
    st.integers(8, 160),
    st.sampled_from(["uint8", "float", "blobs"]),
    st.integers(0, 2**32 - 1),
)
def test_read_number_raises_only_the_documented_errors(random_model, rows, cols, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "uint8":
        array = rng.integers(0, 256, (rows, cols), dtype=np.uint8)
    elif kind == "float":
        array = rng.random((rows, cols)).astype(np.float32) ** 4
    else:
        array = np.full((rows, cols), 255, np.uint8)
        for _ in range(int(rng.integers(1, 12))):
            y, x = int(rng.integers(0, rows)), int(rng.integers(0, cols))
            array[y : y + int(rng.integers(1, 20)), x : x + int(rng.integers(1, 20))] = 0
    try:
        reading = read_number(random_model, array)
    except ImageError:
        return
    assert reading.number is None or (reading.number.isdigit() and 1 <= len(reading.number) <= 12)
    for digit in reading.digits:
        x0, y0, x1, y1 = digit.box
        assert 0 <= x0 <= x1 <= cols and 0 <= y0 <= y1 <= rows
