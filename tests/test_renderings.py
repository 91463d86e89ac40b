"""Tests for renderings and the pieces of benchmarks/images.py (with a fake model)."""

from __future__ import annotations

import importlib.util
import io
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitnet.errors import ModelFileError
from digitnet.inference.preprocess import preprocess_image
from renderings import RENDERINGS, render, stroke_coverage


def synthetic_digit(shape: str) -> np.ndarray:
    """A 28x28 uint8 MNIST-form digit (white on black) drawn with lines: 20 px tall, 3 px
    strokes."""
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    if shape == "seven":
        draw.line([(8, 5), (20, 5), (12, 23)], fill=255, width=3, joint="curve")
    elif shape == "zero":
        draw.ellipse([8, 4, 20, 24], outline=255, width=3)
    elif shape == "one":
        draw.line([(15, 4), (13, 24)], fill=255, width=3)
    elif shape == "four":
        draw.line([(16, 4), (7, 16), (21, 16)], fill=255, width=3, joint="curve")
        draw.line([(17, 10), (17, 24)], fill=255, width=3)
    else:
        raise ValueError(shape)
    return np.asarray(image)


SHAPES = ["zero", "one", "four", "seven"]


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def ink_of(data: bytes) -> np.ndarray:
    """Ink coverage of a dark-on-light rendering (or alpha of a transparent one): float (H, W)."""
    image = decode(data)
    if image.mode == "RGBA":
        return np.asarray(image, np.float32)[..., 3] / 255.0
    grey = np.asarray(image.convert("L"), np.float32) / 255.0
    return np.clip((np.median(grey) - grey) / 0.6, 0.0, 1.0)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


def stroke_width(mask: np.ndarray) -> float:
    from scipy import ndimage

    boundary = mask & ~ndimage.binary_erosion(mask)
    return 2.0 * mask.sum() / boundary.sum()


# ---------------------------------------------------------------------------------------------
# Renderings


@pytest.mark.parametrize("kind", sorted(RENDERINGS))
def test_renderings_are_reproducible_and_seeded(kind):
    digit = synthetic_digit("four")
    first = RENDERINGS[kind](digit, np.random.default_rng(3))
    again = RENDERINGS[kind](digit, np.random.default_rng(3))
    other = RENDERINGS[kind](digit, np.random.default_rng(4))
    assert first == again
    assert first.data != other.data
    assert first.kind == kind
    assert render(kind, digit, np.random.default_rng(3)) == first.data


# Kinds cropped to the digit on purpose, and pages whose ruling or darkness ink_of would take
# for ink; each has its own test below.
TIGHT = {"edge_one": 1, "edge_two": 2, "edge_four": 4}
OWN_TESTS = {*TIGHT, "small_scan", "lined_paper", "squared_paper", "under_exposed"}


@pytest.mark.parametrize("kind", sorted(set(RENDERINGS) - OWN_TESTS))
def test_renderings_keep_the_whole_digit_inside_the_frame(kind):
    for seed in range(4):
        data = RENDERINGS[kind](synthetic_digit("seven"), np.random.default_rng(seed)).data
        ink = ink_of(data) > 0.5
        assert ink.any()
        top, bottom, left, right = bounding_box(ink)
        assert top > 0 and left > 0 and bottom < ink.shape[0] - 1 and right < ink.shape[1] - 1


@pytest.mark.parametrize(
    ("kind", "suffix", "image_format"),
    [
        ("photo_jpeg", ".jpg", "JPEG"),
        ("canvas_png", ".png", "PNG"),
        ("small_in_large", ".png", "PNG"),
        ("felt_pen", ".png", "PNG"),
        ("rotated", ".png", "PNG"),
        ("thin_pen", ".png", "PNG"),
        ("edge_one", ".png", "PNG"),
        ("edge_two", ".png", "PNG"),
        ("edge_four", ".png", "PNG"),
        ("small_scan", ".png", "PNG"),
        ("fax", ".tif", "TIFF"),
        ("lined_paper", ".jpg", "JPEG"),
        ("squared_paper", ".jpg", "JPEG"),
        ("pencil", ".png", "PNG"),
        ("perspective", ".jpg", "JPEG"),
        ("washed_out", ".jpg", "JPEG"),
        ("under_exposed", ".jpg", "JPEG"),
    ],
)
def test_file_names_match_formats(kind, suffix, image_format):
    rendering = RENDERINGS[kind](synthetic_digit("zero"), np.random.default_rng(0))
    assert rendering.filename.endswith(suffix)
    assert decode(rendering.data).format == image_format


def test_photo_is_an_off_centre_textured_colour_jpeg():
    rendering = RENDERINGS["photo_jpeg"](synthetic_digit("seven"), np.random.default_rng(1))
    image = decode(rendering.data)
    assert image.mode == "RGB"
    assert all(200 <= side <= 400 for side in image.size)
    rgb = np.asarray(image, np.float32)
    paper = rgb[ink_of(rendering.data) < 0.05]
    # Lighting and shadow: the paper is far from uniform; texture: it is not smooth either.
    assert np.ptp(paper.mean(axis=1)) > 25
    assert rgb[..., 0].mean() != pytest.approx(rgb[..., 2].mean(), abs=2)  # warm, not grey paper


def test_canvas_export_is_dark_strokes_on_full_transparency():
    image = decode(RENDERINGS["canvas_png"](synthetic_digit("four"), np.random.default_rng(0)).data)
    assert image.mode == "RGBA" and image.size == (280, 280)
    rgba = np.asarray(image)
    alpha = rgba[..., 3]
    assert (alpha == 0).mean() > 0.7
    assert alpha.max() == 255
    assert rgba[..., :3].max() == 0
    # Anti-aliased edges: partial alpha exists.
    assert ((alpha > 0) & (alpha < 255)).any()


def test_small_in_large_is_about_thirty_pixels_tall_on_six_hundred():
    for seed in range(3):
        data = RENDERINGS["small_in_large"](
            synthetic_digit("one"), np.random.default_rng(seed)
        ).data
        ink = ink_of(data) > 0.5
        assert ink.shape == (600, 600)
        top, bottom, _, _ = bounding_box(ink)
        assert 22 <= bottom - top + 1 <= 38


def test_felt_pen_is_bolder_and_thin_pen_thinner():
    digit = synthetic_digit("zero")
    felt = stroke_width(ink_of(RENDERINGS["felt_pen"](digit, np.random.default_rng(0)).data) > 0.5)
    plain = stroke_width(ink_of(RENDERINGS["rotated"](digit, np.random.default_rng(0)).data) > 0.5)
    thin = ink_of(RENDERINGS["thin_pen"](digit, np.random.default_rng(0)).data) > 0.5
    assert thin.shape == (560, 560)
    assert felt > 1.3 * plain
    assert 1.5 <= stroke_width(thin) <= 3.5
    top, bottom, _, _ = bounding_box(thin)
    assert bottom - top > 300


def test_thin_pen_draws_a_loop_where_a_thick_pen_filled_it():
    from scipy import ndimage

    nine = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(nine)
    draw.ellipse([9, 4, 19, 13], fill=255)  # the loop, filled in
    draw.line([(18, 9), (16, 24)], fill=255, width=3)
    ink = ink_of(render("thin_pen", np.asarray(nine), np.random.default_rng(0))) > 0.5
    background_regions = ndimage.label(~ink)[1]
    assert background_regions == 2  # around the digit, and inside the loop


def test_rotated_is_turned_by_three_to_ten_degrees():
    bar = np.zeros((28, 28), np.uint8)
    bar[4:24, 13:16] = 255  # exactly vertical
    angles = []
    for seed in range(6):
        ink = ink_of(render("rotated", bar, np.random.default_rng(seed)))
        rows, cols = np.nonzero(ink > 0.5)
        # Principal axis of the ink from its second moments; 0 degrees is vertical.
        covariance = np.cov(np.stack([cols, rows]))
        angle = 0.5 * np.degrees(
            np.arctan2(2 * covariance[0, 1], covariance[1, 1] - covariance[0, 0])
        )
        angles.append(angle)
        assert 2.5 <= abs(angle) <= 10.5, angle
    assert min(angles) < 0 < max(angles)  # both ways


@pytest.mark.parametrize("kind", sorted(TIGHT))
def test_tight_crops_touch_as_many_edges_as_they_say(kind):
    for seed in range(6):
        data = RENDERINGS[kind](synthetic_digit("zero"), np.random.default_rng(seed)).data
        grey = np.asarray(decode(data), np.float32)
        # Tight crops can be more ink than paper: the paper is the lightest grey, not the median.
        paper, ink_level = grey.max(), grey.min()
        ink = (paper - grey) / (paper - ink_level) > 0.2
        touching = [ink[0].any(), ink[-1].any(), ink[:, 0].any(), ink[:, -1].any()]
        assert sum(touching) == TIGHT[kind]
        assert max(ink.shape) in ((64,) if kind != "edge_four" else range(64, 129))


def test_small_scans_are_twelve_to_twenty_four_pixels_filled_by_the_digit():
    for seed in range(6):
        data = RENDERINGS["small_scan"](synthetic_digit("one"), np.random.default_rng(seed)).data
        image = decode(data)
        assert image.size[0] == image.size[1] and 12 <= image.size[0] <= 24
        rows = np.flatnonzero((ink_of(data) > 0.3).any(axis=1))
        assert rows[-1] - rows[0] + 1 >= image.size[1] - 3


def test_fax_is_one_bit():
    image = decode(RENDERINGS["fax"](synthetic_digit("seven"), np.random.default_rng(0)).data)
    assert image.mode == "1"


@pytest.mark.parametrize("kind", ["lined_paper", "squared_paper"])
def test_ruling_crosses_the_digit(kind):
    blank = np.zeros((28, 28), np.uint8)
    for seed in range(4):
        page = np.asarray(decode(render(kind, blank, np.random.default_rng(seed))).convert("L"))
        dark_rows = (page < np.median(page) - 20).mean(axis=1) > 0.8
        assert dark_rows.sum() >= 2  # ruled lines run across the page
        dark_cols = (page < np.median(page) - 20).mean(axis=0) > 0.8
        assert (dark_cols.sum() >= 2) == (kind == "squared_paper") or kind == "lined_paper"


@pytest.mark.parametrize(
    ("kind", "low", "high"),
    [("washed_out", 0.97, 1.0), ("under_exposed", 0.1, 0.4), ("pencil", 0.85, 1.0)],
)
def test_exposure_and_pencil_levels(kind, low, high):
    for seed in range(4):
        grey = np.asarray(
            decode(render(kind, synthetic_digit("zero"), np.random.default_rng(seed))).convert("L"),
            np.float32,
        )
        paper = float(np.median(grey)) / 255.0
        assert low <= paper <= high
        # The ink differs from the paper, but far less than black ink on white paper.
        contrast = paper - float(np.percentile(grey, 1)) / 255.0
        assert 0.05 < contrast < 0.75


def test_stroke_coverage():
    digit = synthetic_digit("seven")
    coverage = stroke_coverage(digit, 140)
    bold = stroke_coverage(digit, 140, thicken=1.0)
    assert coverage.shape == (140, 140) and coverage.dtype == np.float32
    assert coverage.min() == 0.0 and coverage.max() == 1.0
    assert bold.sum() > 1.3 * coverage.sum()
    np.testing.assert_array_equal(
        stroke_coverage(digit / 255.0, 140), stroke_coverage(digit.reshape(784), 140)
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown rendering"):
        render("oil_painting", synthetic_digit("one"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="28, 28"):
        render("rotated", np.zeros((20, 20)), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        render("rotated", np.full((28, 28), 3.0), np.random.default_rng(0))


@pytest.mark.parametrize("kind", sorted(RENDERINGS))
def test_renderings_preprocess_back_to_the_digit(kind):
    references = {shape: preprocess_image(synthetic_digit(shape)) for shape in SHAPES}
    for shape in SHAPES:
        out = preprocess_image(render(kind, synthetic_digit(shape), np.random.default_rng(11)))
        scores = {
            other: float(np.corrcoef(out.ravel(), reference.ravel())[0, 1])
            for other, reference in references.items()
        }
        assert max(scores, key=scores.get) == shape, scores


# ---------------------------------------------------------------------------------------------
# benchmarks/images.py, with a fake model


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "images.py"
    spec = importlib.util.spec_from_file_location("benchmark_images", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module is being executed.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


class TemplateModel:
    """Labels an MNIST-form image by the best-correlated template: predict_proba like
    digitnet's Model."""

    not_a_digit_class = None
    line_network = None

    def __init__(self, templates: np.ndarray):
        self.templates = templates.reshape(len(templates), -1).astype(np.float32)

    def predict_proba(self, X):
        X = np.asarray(X, np.float32)
        assert X.ndim == 2 and X.shape[1] == 784
        centred = X - X.mean(axis=1, keepdims=True)
        templates = self.templates - self.templates.mean(axis=1, keepdims=True)
        scores = (
            centred
            @ templates.T
            / (
                np.linalg.norm(centred, axis=1, keepdims=True) * np.linalg.norm(templates, axis=1)
                + 1e-9
            )
        )
        probabilities = np.exp(10 * scores)
        return probabilities / probabilities.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def fake_data():
    digits = np.stack([synthetic_digit(shape) for shape in SHAPES] * 2)
    labels = np.array(list(range(len(SHAPES))) * 2)
    return digits, labels


def test_evaluate_with_a_fake_model(bench, fake_data):
    digits, labels = fake_data
    model = TemplateModel(np.stack([preprocess_image(synthetic_digit(shape)) for shape in SHAPES]))
    rows = bench.evaluate(model, digits, labels, seed=0, kinds=["canvas_png", "photo_jpeg"])
    assert [row.kind for row in rows] == [
        bench.BASELINE,
        bench.RECENTRED,
        "canvas_png",
        "photo_jpeg",
    ]
    assert all(row.count == len(digits) and row.refused == 0 for row in rows)
    assert all(row.accuracy == 1.0 for row in rows)
    assert rows[2].seconds > 0


def test_evaluate_scores_refused_images_as_wrong(bench, fake_data, monkeypatch):
    import renderings

    def blank(digit, rng):
        buffer = io.BytesIO()
        Image.new("L", (100, 100), 255).save(buffer, "PNG")
        return renderings.Rendering("blank", "blank.png", buffer.getvalue())

    monkeypatch.setitem(renderings.RENDERINGS, "blank", blank)
    digits, labels = fake_data

    class AlwaysRight:
        # Says "the label" for everything, even for all-zero images: refused must still count wrong.
        def predict_proba(self, X):
            return np.eye(len(SHAPES))[labels[: len(X)]]

    rows = bench.evaluate(AlwaysRight(), digits, labels, kinds=["blank"])
    assert rows[-1].kind == "blank" and rows[-1].refused == len(digits) and rows[-1].accuracy == 0.0
    assert rows[0].accuracy == 1.0


def test_worker_processes_give_the_same_images_as_one(bench, fake_data):
    digits, _ = fake_data
    kinds = ["fax", "lined_paper"]
    alone = bench.prepare(digits, seed=3, kinds=kinds, workers=1)
    pooled = bench.prepare(digits, seed=3, kinds=kinds, workers=2, chunk=3)
    assert [p.kind for p in pooled] == [bench.RECENTRED, *kinds]
    for a, b in zip(alone, pooled):
        np.testing.assert_array_equal(a.images, b.images)
        assert a.errors == b.errors


def test_refusals_are_told_apart_and_ece_is_reported(bench, fake_data, monkeypatch):
    import renderings

    def broken(digit, rng):
        return renderings.Rendering("broken", "broken.png", b"not an image")

    monkeypatch.setitem(renderings.RENDERINGS, "broken", broken)
    digits, labels = fake_data
    model = TemplateModel(np.stack([preprocess_image(synthetic_digit(shape)) for shape in SHAPES]))
    rows = bench.evaluate(model, digits, labels, kinds=["broken", "canvas_png"])
    broken_row, canvas_row = rows[-2], rows[-1]
    assert broken_row.refused == len(digits) and broken_row.no_digit == 0
    assert np.isnan(broken_row.ece)
    assert canvas_row.refused == 0 and 0.0 <= canvas_row.ece <= 1.0
    assert bench.miscalibrated([bench.Row("x", 0.9, 10, ece=0.02)]) == ["x"]


def test_rendering_seeds_are_independent_per_kind_and_digit(bench):
    a = bench.rendering_seed(0, 1, 5).integers(1 << 30)
    assert a == bench.rendering_seed(0, 1, 5).integers(1 << 30)
    assert a != bench.rendering_seed(0, 2, 5).integers(1 << 30)
    assert a != bench.rendering_seed(1, 1, 5).integers(1 << 30)


def test_table_and_goal(bench):
    rows = [
        bench.Row(bench.BASELINE, 0.99, 100),
        bench.Row(bench.RECENTRED, 0.985, 100, 0, 0.1),
        bench.Row("photo_jpeg", 0.97, 100, 2, 3.0),
    ]
    table = bench.format_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["kind", "accuracy", "delta", "refused"]
    assert "99.00%" in lines[1]
    assert "-0.50" in lines[2] and lines[2].rstrip().endswith("ok")
    assert "-2.00" in lines[3] and lines[3].rstrip().endswith("MISSED") and " 2 " in lines[3]
    assert "30.0" in lines[3]  # ms per image
    assert bench.missed(rows) == ["photo_jpeg"]


def test_main_with_fakes(bench, fake_data, monkeypatch, capsys):
    import digitnet.data.mnist
    import digitnet.inference.modelfile

    digits, labels = fake_data
    model = TemplateModel(np.stack([preprocess_image(synthetic_digit(shape)) for shape in SHAPES]))
    loaded = []
    monkeypatch.setattr(
        digitnet.inference.modelfile, "load_model", lambda path: loaded.append(path) or model
    )
    monkeypatch.setattr(
        digitnet.data.mnist,
        "load_mnist_arrays",
        lambda data_dir=None, **_: SimpleNamespace(test_images=digits, test_labels=labels),
    )
    assert bench.main(["seed.safetensors", "--n", "6", "--kinds", "rotated,thin_pen"]) == 0
    out = capsys.readouterr().out
    assert loaded == ["seed.safetensors"]
    assert "6 MNIST test digits" in out
    assert "rotated" in out and "thin_pen" in out and "photo_jpeg" not in out
    assert "goal met" in out

    def broken(path):
        raise ModelFileError(f"{path} is truncated")

    monkeypatch.setattr(digitnet.inference.modelfile, "load_model", broken)
    assert bench.main(["bad.safetensors", "--n", "2"]) == 1
    assert "bad.safetensors is truncated" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        bench.main(["m", "--kinds", "watercolour"])


# ---------------------------------------------------------------------------------------------
# Real MNIST test digits, rendered every new way, read back by a quickly trained model

NEW_KINDS = [
    "edge_one",
    "edge_two",
    "edge_four",
    "small_scan",
    "fax",
    "lined_paper",
    "squared_paper",
    "pencil",
    "perspective",
    "washed_out",
    "under_exposed",
]
SAMPLE = 150


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory):
    from digitnet.training.runs import TrainConfig, train_and_evaluate

    data_dir = os.environ.get("DIGITNET_DATA_DIR", "")
    if not data_dir:
        pytest.skip("real MNIST not available: set DIGITNET_DATA_DIR")
    # The tutorial's network on the official split, so the test digits are unseen: 10 epochs
    # reach about 97 %.
    config = TrainConfig(model="seed", split="official", epochs=10, calibration_size=0)
    return train_and_evaluate(
        config, tmp_path_factory.mktemp("run"), data_dir=data_dir, log=lambda line: None
    ).model


@pytest.mark.slow
@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kinds_of_real_digits_are_read_nearly_as_well_as_the_digits(kind, quick_model):
    from digitnet.data.mnist import load_mnist_arrays
    from digitnet.errors import NoDigitFound

    arrays = load_mnist_arrays(os.environ["DIGITNET_DATA_DIR"])
    digits, labels = arrays.test_images[:SAMPLE], arrays.test_labels[:SAMPLE]
    untouched = quick_model.predict(digits.reshape(SAMPLE, 784) / 255.0) == labels
    kind_index = list(RENDERINGS).index(kind)
    seen = []
    for index, digit in enumerate(digits):
        data = render(kind, digit, np.random.default_rng([0, kind_index, index]))
        try:
            seen.append(preprocess_image(data))
        except NoDigitFound as error:
            pytest.fail(f"{kind}[{index}] (a {labels[index]}) refused: {error}")
    read = quick_model.predict(np.stack(seen).reshape(SAMPLE, 784)) == labels
    # 150 digits: one mistake is 0.67 points; the benchmark holds the 1-point goal on 10,000.
    assert read.mean() >= untouched.mean() - 0.035, (read.mean(), untouched.mean())
