"""The "not a digit" class: the model file records it, predictions, the CLI and the server
answer it, and ``train --model reader`` composes its non-digits from the training split only.

The models here are tiny 784-11 softmax networks with synthetic weights (no training): one
whose bias makes "not a digit" win for every image, one that reads every image as a 3.
"""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from digitnet.errors import ModelFileError
from digitnet.inference.model import Model
from digitnet.inference.modelfile import load_model, save_model
from digitnet.inference.predict import NOT_A_DIGIT_REASON, predict_image
from digitnet.models import architectures
from digitnet.models.classes import READER_CLASSES, TWIN_LETTERS
from digitnet.training import nondigits
from digitnet.training.runs import TrainConfig, train_and_evaluate
from test_cli import digitnet
from test_server import RunningServer, digit_png, random_seed_model

# The contract's --json keys for a refusal (READER-CONTRACT.md).
REFUSAL_KEYS = {"file", "digit", "confidence", "probabilities", "not_a_digit", "reason"}


def eleven_class_model(favourite: int, classes: object = READER_CLASSES) -> Model:
    """784-11 softmax whose bias makes output ``favourite`` the most probable for any image;
    the small random weights still make the probabilities depend on the image."""
    architecture = architectures.dense_stack([784, 11], "softmax")
    rng = np.random.default_rng(favourite)
    bias = np.zeros((11, 1), np.float32)
    bias[favourite] = 4.0
    parameters = {"W1": rng.normal(0, 0.01, (11, 784)).astype(np.float32), "b1": bias}
    metadata: dict[str, object] = {"training": {"model": "reader"}}
    if classes is not None:
        metadata["classes"] = list(classes)  # type: ignore[arg-type]
    return Model(architecture, parameters, metadata)


def letter_png(text: str = "A", size: int = 140) -> bytes:
    image = Image.new("L", (size, size), 255)
    ImageDraw.Draw(image).line([(30, 110), (70, 25), (110, 110)], fill=0, width=12)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def refusing() -> Model:
    return eleven_class_model(10)


# ---------------------------------------------------------------------------------------------
# The model file


def test_the_class_names_survive_the_model_file(tmp_path, refusing):
    path = tmp_path / "reader.safetensors"
    save_model(refusing, path)
    loaded = load_model(path)
    assert loaded.metadata["classes"] == list(READER_CLASSES)
    assert loaded.not_a_digit_class == 10 and loaded.n_classes == 11


def test_ten_class_models_and_files_without_classes_have_no_refusal(tmp_path):
    path = tmp_path / "seed.safetensors"
    save_model(random_seed_model(), path)
    assert "classes" not in load_model(path).metadata
    assert load_model(path).not_a_digit_class is None
    # Eleven outputs without the record are read as eleven classes, none of them a refusal.
    assert eleven_class_model(10, classes=None).not_a_digit_class is None


def test_a_class_list_that_does_not_match_the_outputs_is_refused(tmp_path):
    model = eleven_class_model(10, classes=[*READER_CLASSES, "extra"])
    path = tmp_path / "bad.safetensors"
    save_model(model, path)
    with pytest.raises(ModelFileError, match="names 12 classes for 11 outputs"):
        load_model(path)


# ---------------------------------------------------------------------------------------------
# predict_image, the CLI and the server


def test_predict_image_answers_not_a_digit(refusing):
    prediction = predict_image(refusing, letter_png(), "A.png")
    assert prediction.ok and prediction.not_a_digit and prediction.digit is None
    probabilities = refusing.predict_proba(prediction.image.reshape(1, -1))[0]
    assert prediction.confidence == pytest.approx(float(probabilities[10]), rel=1e-5)
    assert len(prediction.probabilities) == 10
    np.testing.assert_allclose(prediction.probabilities, probabilities[:10], rtol=1e-5)
    answer = prediction.to_json()
    assert set(answer) == REFUSAL_KEYS
    assert answer["digit"] is None and answer["not_a_digit"] is True
    assert answer["reason"] == NOT_A_DIGIT_REASON


def test_an_eleven_class_model_that_reads_a_digit_gives_ten_probabilities():
    prediction = predict_image(eleven_class_model(3), digit_png(), "seven.png")
    assert prediction.digit == 3 and not prediction.not_a_digit
    assert len(prediction.probabilities) == 10
    assert sum(prediction.probabilities) < 1.0  # the rest is "not a digit"
    assert "not_a_digit" not in prediction.to_json()


def test_ten_class_answers_are_unchanged():
    answer = predict_image(random_seed_model(), digit_png(), "seven.png").to_json()
    assert set(answer) == {"file", "digit", "confidence", "probabilities", "low_confidence"}
    assert len(answer["probabilities"]) == 10


def test_the_cli_says_not_a_digit_in_text_and_json(tmp_path, refusing):
    model_path = tmp_path / "reader.safetensors"
    save_model(refusing, model_path)
    image = tmp_path / "A.png"
    image.write_bytes(letter_png())
    text = digitnet("predict", model_path, image).stdout
    name, answer, confidence = text.rstrip("\n").split("\t")
    assert (name, answer) == (str(image), "not a digit")
    (result,) = json.loads(digitnet("predict", model_path, image, "--json").stdout)
    assert set(result) == REFUSAL_KEYS and result["not_a_digit"] is True
    assert result["digit"] is None and float(confidence) == pytest.approx(
        result["confidence"], abs=1e-4
    )


def test_the_server_answers_not_a_digit(refusing):
    with RunningServer(refusing) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.post("/api/predict", files={"file": ("A.png", letter_png(), "image/png")})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["not_a_digit"] is True and answer["digit"] is None
        assert answer["no_digit"] is False and answer["reason"] == NOT_A_DIGIT_REASON
        assert len(answer["probabilities"]) == 10 and len(answer["image"]) == 28
        # Every key the answer holds is in its documented schema, and no other.
        spec = http.get("/openapi.json").json()
        documented = spec["components"]["schemas"]["NotADigitAnswer"]
        assert set(answer) == set(documented["required"]) == set(documented["properties"])
        health = http.get("/api/health").json()
        assert health["model"]["not_a_digit_class"] == 10 and health["model"]["classes"] == 11
        # TF Serving's :predict answers the model's outputs: 11 probabilities.
        rows = http.post("/v1/models/digitnet:predict", json={"instances": [[0.0] * 784]}).json()[
            "predictions"
        ]
        assert len(rows[0]) == 11 and int(np.argmax(rows[0])) == 10


def test_the_server_tells_clients_of_raw_probabilities_where_the_model_refuses(refusing):
    from digitnet.inference.calibration import Calibration

    threshold = Calibration(1.0, 0.6, {"set": "validation"}, {}, refuse_above=0.8).to_json()
    for model, expected in [(refusing, None), (refusing.with_metadata(calibration=threshold), 0.8)]:
        with RunningServer(model) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/api/health").json()["model"]["refuse_above"] == expected


# ---------------------------------------------------------------------------------------------
# The non-digit generator and the reader's training run


def fake_digits(count: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Strokes that stand in for digits: a bar and a hook per image, (count, 784) in [0, 1]."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.float32)
    for image in images:
        left, top = rng.integers(5, 10), rng.integers(4, 8)
        image[top : top + 18, left : left + 3] = 1.0
        image[top : top + 3, left : left + 12] = 1.0
        image[top + 8 : top + 18, left + 10 : left + 13] = 1.0
    return images.reshape(count, -1), rng.integers(0, 10, count)


def test_the_twin_letters_are_not_trained_on():
    assert not set(TWIN_LETTERS) & set(nondigits.LETTERS)
    assert len(nondigits.LETTERS) == 52 - len(set(TWIN_LETTERS))


def test_composed_images_depend_only_on_seed_and_epoch():
    digits, labels = fake_digits()
    first = nondigits.NonDigitComposer(digits, labels, seed=3)
    again = nondigits.NonDigitComposer(digits, labels, seed=3)
    X, y = first.compose(2, 60, 15, 20)
    X_again, y_again = again.compose(2, 60, 15, 20)
    assert X.shape == (95, 784) and X.dtype == np.float32
    assert np.array_equal(X, X_again) and np.array_equal(y, y_again)
    assert (y[:60] == 10).all() and np.isin(y[60:], labels).all()
    assert X.max() == 1.0 and X.min() == 0.0
    assert not np.array_equal(X, first.compose(3, 60, 15, 20)[0])
    assert not np.array_equal(
        X, nondigits.NonDigitComposer(digits, labels, seed=4).compose(2, 60, 15, 20)[0]
    )


def test_an_epoch_is_the_same_composed_in_one_process_or_several():
    digits, labels = fake_digits()
    composer = nondigits.NonDigitComposer(digits, labels, seed=3)
    X, y = composer.compose(2, 60, 15, 20, workers=1)
    X_forked, y_forked = composer.compose(2, 60, 15, 20, workers=3)
    assert np.array_equal(X, X_forked) and np.array_equal(y, y_forked)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        composer.compose(2, 60, 15, 20, workers=0)


def test_every_kind_is_in_mnist_form():
    digits, labels = fake_digits()
    composer = nondigits.NonDigitComposer(digits, labels, seed=1)
    rng = np.random.default_rng(0)
    for kind in nondigits.MIX:
        images = composer.non_digits(kind, 4, rng)
        assert images.shape == (4, 28, 28)
        for image in images:
            rows, cols = np.nonzero(image)
            # Within a 20-px box, as preprocess_image places a digit.
            assert max(np.ptp(rows), np.ptp(cols)) + 1 <= 20


def test_pen_redrawn_strokes_keep_their_course_and_lose_their_width():
    # A thin and a bold bar, 4 and 24 px wide: redrawn, both are one pen's width.
    ink = np.zeros((200, 120), np.float32)
    ink[20:180, 20:24] = 1.0
    ink[20:180, 70:94] = 1.0
    redrawn = nondigits.pen_redrawn(ink, np.random.default_rng(0))
    assert redrawn.shape == ink.shape and redrawn.dtype == np.float32
    assert 0.0 <= redrawn.min() and redrawn.max() == 1.0
    row = redrawn[100] > 0.5
    thin, bold = int(row[:50].sum()), int(row[50:].sum())
    assert 3 <= thin <= 12 and abs(thin - bold) <= 1
    # The pen runs along the middle of each bar, from end to end.
    assert abs(np.flatnonzero(row[50:]).mean() + 50 - 81.5) <= 1
    for columns in (slice(0, 50), slice(50, 120)):
        rows = np.flatnonzero((redrawn[:, columns] > 0.5).any(axis=1))
        assert rows[0] <= 30 and rows[-1] >= 170


def test_small_scans_are_small_and_keep_the_ink():
    ink = np.zeros((112, 80), np.float32)
    ink[10:100, 30:50] = 1.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        small = nondigits.small_scanned(ink, rng)
        assert 10 <= small.shape[0] <= 24 and small.dtype == np.float32
        assert abs(small.shape[1] / small.shape[0] - 80 / 112) < 0.1
        # Reduced by area: the ink's share of the image survives, blurred or not.
        assert abs(small.mean() - ink.mean()) < 0.02


def test_scribbles_come_in_four_habits_and_the_loops_close():
    rng = np.random.default_rng(0)
    inks = [nondigits.scribble(rng) for _ in range(30)]
    assert all(ink.shape == (64, 64) and ink.max() == 1.0 for ink in inks)
    # A chain of loops encloses background, holes the pen went round, unless its loops are
    # small enough for the pen to fill them (a wavy line, a scribble still).
    holes = []
    for _ in range(20):
        chain = nondigits._draw([nondigits._fit(nondigits._loop_chain(rng), rng)], 3)
        holes.append(ndimage.label(chain < 0.5)[1] - 1)
    assert sum(h >= 1 for h in holes) >= 12 and max(holes) >= 3
    # A tangle bends more than the smooth habit: its direction turns about a radian a step.
    tangle = nondigits._tangle(rng)
    headings = np.unwrap(np.arctan2(*np.diff(tangle, axis=0).T[::-1]))
    assert np.abs(np.diff(headings)).sum() > 2 * np.pi
    # A curling line turns through more than three whole turns: its smooth course alone
    # turned at most 2.5 in 200 draws, its two or more loops add one each.
    for _ in range(5):
        curls = nondigits._curlicues(rng)
        turning = np.diff(np.unwrap(np.arctan2(*np.diff(curls, axis=0).T[::-1])))
        assert np.abs(turning).sum() > 6 * np.pi


def test_the_reader_trains_on_the_training_split_only(tmp_path, fake_mnist_dir, monkeypatch):
    """A dry run of the reader on fake MNIST: the composer sees the training rows only (not
    the validation or test rows), and the saved model has the eleventh class, calibrated."""
    seen = []
    original = nondigits.NonDigitComposer.__init__

    def recording(self, digits, labels, **options):
        seen.append(np.array(digits))
        original(self, digits, labels, **options)

    monkeypatch.setattr(nondigits.NonDigitComposer, "__init__", recording)
    path = tmp_path / "reader.safetensors"
    config = TrainConfig(model="reader", dry_run=True, epochs=1, val_size=10, precision="float32")
    train_and_evaluate(
        config,
        tmp_path / "run",
        data_dir=fake_mnist_dir,
        log=lambda line: None,
        save_model_path=path,
    )
    model = load_model(path)
    assert model.n_classes == 11 and model.not_a_digit_class == 10
    assert model.calibration is not None and model.metadata["training"]["non_digits"] > 0
    # evaluate and report test it on the digits of the test set, refusals counted wrong.
    from digitnet.inference.evaluation import evaluate_model, format_report, test_set_for

    X_test_digits, test_labels = test_set_for(model, fake_mnist_dir)
    report = evaluate_model(model, X_test_digits, test_labels)
    # Refused: "not a digit" above the threshold the calibration chose on held-out digits.
    threshold = model.calibration.refuse_above
    assert threshold is not None and 0.5 <= threshold <= 1.0
    refused = model.predict_proba(X_test_digits)[:, 10] > threshold
    assert report["not_a_digit"] == pytest.approx(refused.mean())
    assert np.array(report["confusion_matrix"]).shape == (11, 11)
    assert "Answered not a digit" in format_report(report)

    from digitnet.data.holdout import make_splits
    from digitnet.data.mnist import load_mnist

    X_train, X_test, y_train, y_test = load_mnist(split="official", data_dir=fake_mnist_dir)
    splits = make_splits(
        X_train,
        y_train,
        X_test,
        y_test,
        val_size=10,
        calibration_size=0,
        seed=1,
        dry_run=True,
        batch_size=128,
    )
    # Training: the training rows; calibration: the validation rows (held out, never trained).
    assert np.array_equal(seen[0], splits.X_train)
    assert np.array_equal(seen[1], splits.X_val)
    held = {row.tobytes() for row in splits.X_val} | {row.tobytes() for row in X_test}
    assert not held & {row.tobytes() for row in seen[0]}


def test_resume_with_composed_non_digits_ends_exactly_like_an_uninterrupted_run(
    tmp_path, fake_mnist_dir
):
    from test_training import Interrupted, interrupt_after, quiet, small_config

    config = small_config(epochs=3, layout=[784, 32, 11], non_digits=0.5, augment=True)
    whole = train_and_evaluate(config, tmp_path / "whole", data_dir=fake_mnist_dir, log=quiet)
    with pytest.raises(Interrupted):
        train_and_evaluate(
            config,
            tmp_path / "split",
            data_dir=fake_mnist_dir,
            log=quiet,
            on_epoch_end=interrupt_after(1),
        )
    resumed = train_and_evaluate(
        config, tmp_path / "split", data_dir=fake_mnist_dir, log=quiet, resume=True
    )
    assert whole.model.not_a_digit_class == 10
    for name, value in whole.model.parameters.items():
        assert np.array_equal(resumed.model.parameters[name], value), name
    assert [row["cost"] for row in resumed.history] == [row["cost"] for row in whole.history]


def test_each_epoch_is_composed_once(tmp_path, fake_mnist_dir, monkeypatch):
    from digitnet.training.nondigits import NonDigitComposer
    from test_training import quiet, small_config

    composed: list[int] = []
    compose = NonDigitComposer.compose

    def counting(self, epoch, *args, **kwargs):
        composed.append(epoch)
        return compose(self, epoch, *args, **kwargs)

    monkeypatch.setattr(NonDigitComposer, "compose", counting)
    config = small_config(epochs=3, layout=[784, 32, 11], non_digits=0.5)
    train_and_evaluate(config, tmp_path, data_dir=fake_mnist_dir, log=quiet)
    # The first epoch's images set the output bias and are then trained on, not made again;
    # "epoch" 0 is the calibration set's.
    assert composed == [1, 2, 3, 0]
