"""``digitnet report``: the figures, the numbers behind them and the page, checked for content.

Small models are trained here on fake IDX digits; the real-MNIST check is marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.signal import correlate2d

from conftest import fake_mnist_arrays, write_dataset
from digitnet.inference import evaluation
from digitnet.inference.modelfile import load_model, save_model
from digitnet.inference.report import DPI, FIGURE_WIDTH, build_report, figure_size
from digitnet.models.architectures import BATCHNORM_EPSILON


def quiet(_line):
    pass


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    # Enough test digits for a gallery and a confusion matrix with mistakes off the diagonal.
    arrays = fake_mnist_arrays(n_train=200, n_test=120, seed=3)
    return write_dataset(tmp_path_factory.mktemp("fake"), arrays)


def train(tmp: Path, data_dir: Path, **settings) -> Path:
    from digitnet.training.runs import TrainConfig, train_and_evaluate

    path = tmp / f"{settings['model']}.safetensors"
    config = TrainConfig(precision="float32", **settings)
    train_and_evaluate(config, tmp / "run", data_dir=data_dir, save_model_path=path, log=quiet)
    return path


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory, fake_data) -> Path:
    # Two slow epochs of the tutorial's network: partly trained (about 70 % right), so it
    # makes mistakes to show.
    return train(
        tmp_path_factory.mktemp("dense"),
        fake_data,
        model="seed",
        split="official",
        epochs=2,
        learning_rate=0.001,
    )


@pytest.fixture(scope="module")
def cnn_model(tmp_path_factory, fake_data) -> Path:
    return train(
        tmp_path_factory.mktemp("cnn"),
        fake_data,
        model="cnn",
        epochs=3,
        batch_size=32,
        val_size=40,
        augment=False,
        learning_rate=0.0003,
    )


@pytest.fixture(scope="module")
def dense_report(tmp_path_factory, dense_model, fake_data) -> Path:
    return build_report(dense_model, tmp_path_factory.mktemp("dense-report"), fake_data)


@pytest.fixture(scope="module")
def cnn_report(tmp_path_factory, cnn_model, fake_data) -> Path:
    return build_report(cnn_model, tmp_path_factory.mktemp("cnn-report"), fake_data)


def numbers(index: Path) -> dict:
    return json.loads((index.parent / "report.json").read_text())


class Links(HTMLParser):
    """Every src and href on a page, and its meta tags."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.images: list[dict] = []
        self.meta: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.links += [attributes[k] for k in ("src", "href") if attributes.get(k)]
        if tag == "img":
            self.images.append(attributes)
        if tag == "meta":
            self.meta.append(attributes)


def parse(index: Path) -> Links:
    parser = Links()
    parser.feed(index.read_text())
    return parser


@pytest.mark.parametrize("which", ["dense_report", "cnn_report"])
def test_figures_decode_at_their_sizes_and_the_page_shows_each_one(request, which):
    index = request.getfixturevalue(which)
    report = numbers(index)
    expected = {
        "learning_curves",
        "confusion_matrix",
        "confused_pairs",
        "mistakes",
        "per_class",
        "reliability",
    } | ({"filters", "feature_maps"} if which == "cnn_report" else {"weights"})
    assert set(report["figures"]) == expected
    # Grids of digits and weights grow by rows of ten (filters: sixteen), the rest are fixed.
    tiles = {
        "mistakes": min(len(report["mistakes"]), 60),
        "confused_pairs": len(report["confused_pairs"]),
        "weights": len(report["first_layer"].get("shown", [])),
        "filters": len(report["first_layer"].get("weights", [])),
    }
    page = parse(index)
    shown = {image["src"]: image for image in page.images}
    for name, figure in report["figures"].items():
        width, height = (round(inches * DPI) for inches in figure_size(name, tiles.get(name, 0)))
        assert width == FIGURE_WIDTH * DPI == 1200
        assert (figure["width"], figure["height"]) == (width, height)
        file = figure["file"]
        with Image.open(index.parent / file) as image:
            image.load()  # decodes every pixel
            assert image.format == "PNG" and image.size == (width, height), name
            # Not blank: a drawn figure has ink and paper.
            extrema = image.convert("L").getextrema()
            assert extrema[0] < 100 and extrema[1] > 200, name
        assert shown[file]["width"] == str(width) and shown[file]["height"] == str(height)
        assert shown[file]["alt"]
    # Self-contained: every link is a file beside the page; nothing is fetched from the network.
    for link in page.links:
        assert "://" not in link and not link.startswith("//"), link
        assert (index.parent / link).is_file(), link
    assert sorted(p.name for p in index.parent.glob("*.png")) == sorted(
        figure["file"] for figure in report["figures"].values()
    )
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in page.meta


def test_confusion_counts_add_up_and_match_digitnet_evaluate(dense_model, dense_report, fake_data):
    report = numbers(dense_report)
    matrix = np.array(report["test"]["confusion_matrix"])
    assert matrix.sum() == report["test"]["n"] == 120
    evaluated = subprocess.run(
        [sys.executable, "-m", "digitnet", "evaluate", dense_model, "--json"]
        + ["--data-dir", fake_data],
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(evaluated.stdout)
    assert answer["confusion_matrix"] == matrix.tolist()
    assert answer["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    # The page prints the same counts, the right answers on the diagonal marked.
    text = dense_report.read_text()
    for r, row in enumerate(matrix):
        cells = [
            f'<td class="diagonal">{v}</td>' if c == r else f"<td>{v}</td>"
            for c, v in enumerate(row)
        ]
        assert f"<tr><td>{r}</td>{''.join(cells)}<td>{row.sum()}</td></tr>" in text


def test_gallery_holds_only_mistakes_most_confident_first(dense_model, dense_report, fake_data):
    model = load_model(dense_model)
    X, labels = evaluation.test_set_for(model, fake_data)
    probabilities = model.predict_proba(X)
    report = numbers(dense_report)
    mistakes = report["mistakes"]
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    assert 0 < len(wrong) < len(labels), "the fixture model should be partly trained"
    assert sorted(m["index"] for m in mistakes) == sorted(wrong.tolist())
    for m in mistakes:
        assert m["true"] == labels[m["index"]] != m["predicted"]
        assert m["predicted"] == probabilities[m["index"]].argmax()
        assert m["confidence"] == pytest.approx(probabilities[m["index"]].max(), rel=1e-5)
    confidences = [m["confidence"] for m in mistakes]
    assert confidences == sorted(confidences, reverse=True)
    # The ten most confused pairs: the largest off-diagonal counts, each with a real example.
    matrix = np.array(report["test"]["confusion_matrix"])
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    counts = sorted(off.ravel().tolist(), reverse=True)
    pairs = report["confused_pairs"]
    assert [p["count"] for p in pairs] == [c for c in counts[: len(pairs)] if c > 0]
    for p in pairs:
        assert off[p["true"], p["predicted"]] == p["count"]
        assert (labels[p["example"]], probabilities[p["example"]].argmax()) == (
            p["true"],
            p["predicted"],
        )


def test_per_class_scores_and_calibration_match_scikit_learn(dense_model, dense_report, fake_data):
    from sklearn.metrics import precision_recall_fscore_support

    model = load_model(dense_model)
    X, labels = evaluation.test_set_for(model, fake_data)
    probabilities = model.predict_proba(X)
    report = numbers(dense_report)
    _, _, f1, support = precision_recall_fscore_support(
        labels, probabilities.argmax(axis=1), labels=np.arange(10), zero_division=0
    )
    rows = report["test"]["per_class"]
    np.testing.assert_allclose([r["f1"] for r in rows], f1, rtol=1e-9, atol=1e-12)
    assert [r["support"] for r in rows] == support.tolist()
    bins = report["calibration"]["bins"]
    assert sum(b["count"] for b in bins) == len(labels)
    # ECE from its definition, on the report's own bins.
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    gaps = [
        b["count"] * abs(b["accuracy"] - b["confidence"]) / len(labels) for b in bins if b["count"]
    ]
    assert report["calibration"]["ece"] == pytest.approx(sum(gaps))
    assert report["calibration"]["mean_confidence"] == pytest.approx(confidence.mean(), rel=1e-5)
    assert f"{report['calibration']['ece'] * 100:.2f} %" in dense_report.read_text()
    assert right.sum() == np.trace(np.array(report["test"]["confusion_matrix"]))


def test_learning_curves_come_from_the_history_and_mark_the_kept_epoch(
    cnn_model, cnn_report, dense_report
):
    model = load_model(cnn_model)
    report = numbers(cnn_report)
    assert report["history"] == model.metadata["history"]
    assert [row["epoch"] for row in report["history"]] == [1, 2, 3]
    assert all(0 <= row["accuracy"] <= 1 for row in report["history"])
    assert report["notes"] == []
    history = model.metadata["history"]
    kept = max(history, key=lambda row: (row["val_accuracy"], -row["val_cost"]))["epoch"]
    assert report["best_epoch"] == kept == model.metadata["metrics"]["best_epoch"]
    assert f'<td class="best">{kept} (weights kept)</td>' in cnn_report.read_text()
    # The seed-like model has no validation set: the page says so.
    assert any("without a validation set" in note for note in numbers(dense_report)["notes"])


def test_model_files_without_history_fields_still_give_a_report(tmp_path, dense_model, fake_data):
    model = load_model(dense_model)
    old = [{"epoch": r["epoch"], "cost": r["cost"]} for r in model.metadata["history"]]
    older = tmp_path / "older.safetensors"
    save_model(model.with_metadata(history=old), older)
    index = build_report(older, tmp_path / "older", fake_data)
    report = numbers(index)
    assert "learning_curves" in report["figures"]
    text = index.read_text()
    for missing in ("training accuracy", "learning rate"):
        assert any(f"no {missing} per epoch" in note for note in report["notes"])
        assert f"no {missing} per epoch" in text
    oldest = tmp_path / "oldest.safetensors"
    save_model(model.with_metadata(history=[], metrics={}), oldest)
    index = build_report(oldest, tmp_path / "oldest", fake_data)
    report = numbers(index)
    assert "learning_curves" not in report["figures"]
    assert "learning_curves.png" not in index.read_text()
    assert "no per-epoch history" in index.read_text()
    assert report["test"]["n"] == 120


def test_dense_first_layer_shows_w1_and_finds_the_dead_units(dense_model, dense_report, fake_data):
    model = load_model(dense_model)
    X, _ = evaluation.test_set_for(model, fake_data)
    layer = numbers(dense_report)["first_layer"]
    W1, b1 = model.parameters["W1"], model.parameters["b1"]
    assert layer["units"] == len(W1) == len(layer["shown"])
    hidden = np.maximum(X.astype(np.float64) @ W1.T + b1.T, 0)
    assert layer["dead"] == np.flatnonzero(hidden.max(axis=0) == 0).tolist()
    assert layer["range"] == pytest.approx([W1.min(), W1.max()])


def test_cnn_feature_maps_are_the_first_convolution_with_its_batch_norm(
    cnn_model, cnn_report, fake_data
):
    """Model.layer_output checked against SciPy's correlation and the batch-norm formula."""
    model = load_model(cnn_model)
    X, _ = evaluation.test_set_for(model, fake_data)
    layer = numbers(cnn_report)["first_layer"]
    kernel = model.parameters["W1"]  # (3, 3, 1, 32)
    assert layer["filters"] == kernel.shape[3] == len(layer["weights"])
    np.testing.assert_allclose(layer["weights"][5], kernel[:, :, 0, 5], atol=1e-4)
    image = X[layer["example"]].reshape(28, 28).astype(np.float64)
    p = model.parameters
    maps = model.layer_output(X[layer["example"]], 2)[0]  # conv, then batchnorm + ReLU
    assert maps.shape == (26, 26, 32)
    for f in range(32):
        response = correlate2d(image, kernel[:, :, 0, f], mode="valid")
        scale = p["gamma2"][f] / np.sqrt(p["variance2"][f] + BATCHNORM_EPSILON)
        expected = np.maximum((response - p["mean2"][f]) * scale + p["beta2"][f], 0)
        np.testing.assert_allclose(maps[:, :, f], expected, rtol=1e-4, atol=1e-5)
    assert layer["response_range"] == pytest.approx([maps.min(), maps.max()], rel=1e-5)


def test_the_report_command_writes_beside_the_model_without_tensorflow(dense_model, fake_data):
    code = (
        "import sys\nfrom digitnet.cli.main import main\n"
        f"status = main(['report', {str(dense_model)!r}, '--data-dir', {str(fake_data)!r}])\n"
        "print(status, 'tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    out = dense_model.parent / "seed-report"
    assert result.stdout.splitlines() == [f"Wrote the report to {out / 'index.html'}", "0 False"]
    assert (out / "index.html").is_file() and (out / "mistakes.png").is_file()


def test_a_missing_model_file_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "digitnet", "report", tmp_path / "none.safetensors"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no model file" in result.stderr


@pytest.mark.slow
def test_report_on_real_mnist_matches_evaluate(tmp_path, mnist_dir):
    """The tutorial's network after 3 epochs on the tutorial's split of real MNIST."""
    path = train(tmp_path, mnist_dir, model="seed", epochs=3)
    index = build_report(path, tmp_path / "report", mnist_dir)
    report = numbers(index)
    matrix = np.array(report["test"]["confusion_matrix"])
    assert matrix.sum() == report["test"]["n"] == 14000
    answer = json.loads(
        subprocess.run(
            [sys.executable, "-m", "digitnet", "evaluate", path, "--json"]
            + ["--data-dir", mnist_dir],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert answer["confusion_matrix"] == matrix.tolist()
    assert 0.9 < report["test"]["accuracy"] < 1.0
    assert len(report["mistakes"]) == 14000 - np.trace(matrix)
    for figure in report["figures"].values():
        with Image.open(index.parent / figure["file"]) as image:
            assert image.size == (figure["width"], figure["height"]) and figure["width"] == 1200
    # The figures a learner looks at first: the training cost falls epoch by epoch.
    costs = [row["cost"] for row in report["history"]]
    assert costs == sorted(costs, reverse=True)
