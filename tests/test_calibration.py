import numpy as np
import pytest

from digitnet.inference.calibration import expected_calibration_error, reliability_bins


def test_ece_matches_a_hand_worked_example():
    # Two bins over (0, 0.5] and (0.5, 1]:
    #   low bin: confidences 0.2, 0.4 (mean 0.3), one right -> accuracy 0.5, gap 0.2
    #   high bin: confidences 0.6, 0.8, 1.0 (mean 0.8), two right -> accuracy 2/3, gap 2/15
    # ECE = 2/5 * 0.2 + 3/5 * 2/15 = 0.08 + 0.08 = 0.16
    confidences = [0.2, 0.4, 0.6, 0.8, 1.0]
    correct = [True, False, True, False, True]
    assert expected_calibration_error(confidences, correct, n_bins=2) == pytest.approx(0.16)
    low, high = reliability_bins(confidences, correct, n_bins=2)
    assert (low.count, high.count) == (2, 3)
    assert low.confidence == pytest.approx(0.3) and low.accuracy == pytest.approx(0.5)
    assert high.confidence == pytest.approx(0.8) and high.accuracy == pytest.approx(2 / 3)


def test_bin_edges_are_closed_on_the_right():
    bins = reliability_bins([0.5, 0.0, 1.0], [True, True, True], n_bins=2)
    assert [b.count for b in bins] == [2, 1]  # 0.5 belongs to (0, 0.5]; 0 to the first bin


def test_perfect_calibration_has_zero_error_and_overconfidence_does_not():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, 200_000)
    correct = rng.uniform(size=confidence.size) < confidence
    assert expected_calibration_error(confidence, correct) < 0.01
    assert expected_calibration_error(np.ones(100), np.arange(100) < 70) == pytest.approx(0.3)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="3 confidences for 2 outcomes"):
        expected_calibration_error([0.1, 0.2, 0.3], [True, False])


# ---------------------------------------------------------------------------------------------
# Temperature scaling and the low-confidence threshold


def test_fitted_temperature_recovers_the_one_that_generated_the_labels():
    from digitnet.inference.calibration import fit_temperature, softmax

    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 4.0, (20_000, 10))
    for true_temperature in (0.5, 2.0):
        p = softmax(logits, true_temperature).astype(np.float64)
        labels = (p.cumsum(axis=1) < rng.uniform(size=(len(p), 1))).sum(axis=1).clip(0, 9)
        assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_negative_log_likelihood_matches_a_hand_worked_example():
    from digitnet.inference.calibration import negative_log_likelihood

    # softmax([ln 3, 0] / 1) = [3/4, 1/4]; at T = 2: softmax([ln 3 / 2, 0]) = [√3, 1] / (√3 + 1)
    logits = np.array([[np.log(3.0), 0.0], [np.log(3.0), 0.0]])
    labels = [0, 1]
    assert negative_log_likelihood(logits, labels, 1.0) == pytest.approx(
        -(np.log(0.75) + np.log(0.25)) / 2
    )
    root = np.sqrt(3.0)
    assert negative_log_likelihood(logits, labels, 2.0) == pytest.approx(
        -(np.log(root / (root + 1)) + np.log(1 / (root + 1))) / 2
    )


def test_low_confidence_threshold_on_a_hand_worked_example():
    from digitnet.inference.calibration import choose_low_confidence, flag_rates

    confidences = [0.6, 0.7, 0.8, 0.9, 0.95, 0.3, 0.65, 0.75]
    correct = [True] * 5 + [False] * 3
    # One right answer in five may be flagged: the threshold sits at the second-lowest right
    # confidence, 0.7, flagging 0.6 (right) and 0.3 and 0.65 (mistakes), not 0.75.
    threshold = choose_low_confidence(confidences, correct, max_correct_flagged=0.2)
    assert threshold == pytest.approx(0.7)
    assert flag_rates(confidences, correct, threshold) == pytest.approx((2 / 3, 1 / 5))


def test_calibration_removes_over_and_underconfidence():
    from digitnet.inference.calibration import fit_calibration, softmax

    rng = np.random.default_rng(2)
    logits = rng.normal(0.0, 3.0, (20_000, 10))
    p = softmax(logits).astype(np.float64)
    labels = (p.cumsum(axis=1) < rng.uniform(size=(len(p), 1))).sum(axis=1).clip(0, 9)
    for scale in (3.0, 0.4):  # overconfident, underconfident
        fitted = fit_calibration(logits * scale, labels, {"set": "test-fixture"})
        assert fitted.temperature == pytest.approx(scale, rel=0.05)
        assert fitted.figures["ece_before"] > 0.05
        assert fitted.figures["ece_after"] < 0.01
        assert fitted.figures["correct_flagged"] <= 0.03
        assert fitted.data == {"set": "test-fixture"}


# ---------------------------------------------------------------------------------------------
# Calibrated models


def tiny_model(metadata=None, activation="sigmoid"):
    from digitnet.inference.model import Model

    rng = np.random.default_rng(3)
    architecture = {
        "input_shape": [784],
        "layers": [{"type": "dense", "units": 4, "activation": activation}],
    }
    parameters = {
        "W1": rng.normal(0.0, 0.3, (4, 784)).astype(np.float32),
        "b1": rng.normal(0.0, 1.0, (4, 1)).astype(np.float32),
    }
    return Model(architecture, parameters, dict(metadata or {})), parameters


def calibration_record(temperature=2.5, threshold=0.6):
    from digitnet.inference.calibration import Calibration

    return Calibration(temperature, threshold, {"set": "validation", "n": 10}, {}).to_json()


def test_a_calibrated_model_answers_the_softmax_of_its_logits_over_the_temperature(tmp_path):
    from digitnet.inference.modelfile import load_model, save_model

    plain, parameters = tiny_model()
    calibrated, _ = tiny_model({"calibration": calibration_record(2.5)})
    X = np.random.default_rng(4).uniform(0.0, 1.0, (50, 784)).astype(np.float32)
    logits = X.astype(np.float64) @ parameters["W1"].T.astype(np.float64) + parameters["b1"].T
    expected = np.exp(logits / 2.5 - (logits / 2.5).max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(calibrated.predict_proba(X), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(calibrated.logits(X), logits, rtol=1e-5, atol=1e-5)
    # The same answers, only the confidence changes.
    np.testing.assert_array_equal(calibrated.predict(X), plain.predict(X))
    # A model without calibration (every file written before it) behaves as before: the
    # sigmoid scores normalised to sum to 1.
    sigmoid = 1.0 / (1.0 + np.exp(-logits))
    np.testing.assert_allclose(
        plain.predict_proba(X), sigmoid / sigmoid.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6
    )
    assert plain.calibration is None
    save_model(calibrated, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.calibration.temperature == 2.5 and loaded.calibration.low_confidence == 0.6
    np.testing.assert_allclose(loaded.predict_proba(X), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "record",
    [
        None,
        "x",
        {"method": "platt"},
        {"method": "temperature", "temperature": -1.0, "low_confidence": 0.5},
        {"method": "temperature", "temperature": 1e-300, "low_confidence": 0.5},
        {"method": "temperature", "temperature": 2.0, "low_confidence": float("nan")},
    ],
)
def test_missing_or_unknown_calibration_records_are_ignored(record):
    model, _ = tiny_model({} if record is None else {"calibration": record})
    assert model.calibration is None


def test_low_confidence_mark_uses_the_model_files_threshold():
    from digitnet.inference.predict import LOW_CONFIDENCE, low_confidence_threshold

    assert low_confidence_threshold(tiny_model()[0]) == LOW_CONFIDENCE == 0.5
    calibrated = tiny_model({"calibration": calibration_record(threshold=0.97)})[0]
    assert low_confidence_threshold(calibrated) == 0.97


# ---------------------------------------------------------------------------------------------
# What calibration is fitted on: held-out training images, never the test set


def _rows(X):
    return {row.tobytes() for row in np.asarray(X)}


def test_held_out_sets_never_overlap_the_test_set(mnist_dir):
    from digitnet.data.holdout import make_splits
    from digitnet.data.mnist import load_mnist

    for split, val_size, calibration_size in (("official", 5000, 0), ("seed", 0, 2000)):
        X_train, X_test, y_train, y_test = load_mnist(split=split, data_dir=mnist_dir)
        splits = make_splits(
            X_train,
            y_train,
            X_test,
            y_test,
            val_size=val_size,
            calibration_size=calibration_size,
            seed=1,
        )
        held_out, X_held, _ = splits.held_out()
        assert len(X_held) == val_size + calibration_size
        assert held_out == ("validation" if val_size else "calibration")
        held = _rows(X_held)
        assert held.isdisjoint(_rows(X_test))
        assert held.isdisjoint(_rows(splits.X_train))
        assert held <= _rows(X_train)


@pytest.mark.parametrize("model_name", ["seed", "mlp"])
def test_training_and_the_calibrate_command_fit_on_held_out_images_only(
    tmp_path, make_fake_mnist, monkeypatch, model_name
):
    import digitnet.inference.calibration as calibration
    import digitnet.training.runs as runs
    from digitnet.cli.main import main
    from digitnet.data.mnist import dataset_fingerprint, load_mnist
    from digitnet.inference.modelfile import load_model

    data_dir = make_fake_mnist(n_train=300, n_test=60)
    seen = []
    original = calibration.calibrate

    def recording(model, X, labels, held_out):
        seen.append((np.array(X), held_out))
        return original(model, X, labels, held_out)

    monkeypatch.setattr(runs, "calibrate", recording)
    monkeypatch.setattr(calibration, "calibrate", recording)
    config = runs.TrainConfig(
        model=model_name,
        layout=[784, 16, 10],
        epochs=2,
        batch_size=32,
        precision="float32",
        **({"val_size": 40} if model_name == "mlp" else {"calibration_size": 25}),
    )
    path = tmp_path / "model.safetensors"
    result = runs.train_and_evaluate(
        config, tmp_path / "run", data_dir=data_dir, log=lambda line: None, save_model_path=path
    )
    assert main(["calibrate", str(path), "--data-dir", str(data_dir)]) == 0

    X_train, X_test, _, _ = load_mnist(split=config.resolved().split, data_dir=data_dir)
    assert len(seen) == 2
    (trained_on, set_name), (recalibrated_on, _) = seen
    np.testing.assert_array_equal(trained_on, recalibrated_on)  # found again from the file
    assert set_name == ("validation" if model_name == "mlp" else "calibration")
    assert len(trained_on) == (40 if model_name == "mlp" else 25)
    assert _rows(trained_on).isdisjoint(_rows(X_test))
    assert _rows(trained_on) <= _rows(X_train)
    data = result.model.metadata["data"]
    assert data["n_train"] + data["n_validation"] + data["n_calibration"] == len(X_train)
    stored = load_model(path).calibration
    assert stored.data["n"] == len(trained_on)
    assert stored.data["set"] == set_name
    assert stored.temperature > 0 and 0 < stored.low_confidence <= 1
    test_labels = load_mnist(split=config.resolved().split, data_dir=data_dir)[3].argmax(axis=1)
    assert stored.data["sha256"] != dataset_fingerprint(X_test, test_labels)


def test_evaluate_reports_the_ece_of_the_calibrated_confidences(tmp_path, make_fake_mnist, capsys):
    import json

    from digitnet.cli.main import main
    from digitnet.data.mnist import load_mnist
    from digitnet.inference.modelfile import load_model
    from digitnet.training.runs import TrainConfig, train_and_evaluate

    data_dir = make_fake_mnist(n_train=200, n_test=60)
    path = tmp_path / "mlp.safetensors"
    config = TrainConfig(
        model="mlp", layout=[784, 16, 10], epochs=2, batch_size=32, val_size=30, precision="float32"
    )
    train_and_evaluate(
        config, tmp_path / "run", data_dir=data_dir, log=lambda line: None, save_model_path=path
    )
    capsys.readouterr()
    assert main(["evaluate", str(path), "--json", "--data-dir", str(data_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    _, X_test, _, y_test = load_mnist(split="official", data_dir=data_dir)
    p = load_model(path).predict_proba(X_test)
    right = p.argmax(axis=1) == y_test.argmax(axis=1)
    assert report["ece"] == pytest.approx(expected_calibration_error(p.max(axis=1), right))
    assert report["calibrated"] is True
    assert main(["evaluate", str(path), "--data-dir", str(data_dir)]) == 0
    assert "Expected calibration error (15 bins): " in capsys.readouterr().out


def test_a_model_that_held_nothing_out_is_not_calibrated_on_the_test_set(tmp_path, capsys):
    from digitnet.cli.main import main
    from digitnet.inference.modelfile import save_model

    model, _ = tiny_model(
        {
            "training": {"split": "official", "val_size": 0, "seed": 1},
            "data": {"sha256": "0" * 64, "n_train": 60000},
        }
    )
    save_model(model, tmp_path / "old.safetensors")
    before = (tmp_path / "old.safetensors").read_bytes()
    assert main(["calibrate", str(tmp_path / "old.safetensors")]) == 1
    error = capsys.readouterr().err
    assert "held none out" in error and len(error.strip().splitlines()) == 1
    assert (tmp_path / "old.safetensors").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# Refusing "not a digit" above a threshold chosen on held-out digits


def test_refusal_threshold_on_a_hand_worked_example():
    from digitnet.inference.calibration import choose_refusal

    digits = [0.95, 0.9, 0.8, 0.7, 0.2, 0.1, 0.05, 0.01, 0.0, 0.0]
    # One digit in five may be refused: "above 0.8" refuses 0.95 and 0.9, keeps 0.8.
    assert choose_refusal(digits, max_refused=0.2) == pytest.approx(0.8)
    # One in ten: "above 0.9" refuses only 0.95.
    assert choose_refusal(digits, max_refused=0.1) == pytest.approx(0.9)
    # Never at 0.5 or below, where "not a digit" need not be the most likely class.
    assert choose_refusal([0.3, 0.2, 0.1], max_refused=0.0) == 0.5
    assert choose_refusal([], max_refused=0.01) == 0.5


def reader_model(calibration=None):
    from digitnet.inference.model import Model
    from digitnet.models.classes import READER_CLASSES

    rng = np.random.default_rng(5)
    architecture = {
        "input_shape": [784],
        "layers": [{"type": "dense", "units": 11, "activation": "softmax"}],
    }
    parameters = {
        "W1": rng.normal(0.0, 0.1, (11, 784)).astype(np.float32),
        "b1": np.zeros((11, 1), np.float32),
    }
    metadata = {"classes": list(READER_CLASSES)}
    if calibration is not None:
        metadata["calibration"] = calibration
    return Model(architecture, parameters, metadata)


def test_a_reader_refuses_only_above_its_calibrated_threshold():
    from digitnet.inference.calibration import Calibration

    record = Calibration(1.0, 0.6, {"set": "validation"}, {}, refuse_above=0.8).to_json()
    model = reader_model(record)
    probabilities = np.array(
        [
            [0.05] + [0.0] * 9 + [0.95],  # surely not a digit: refused
            [0.3] + [0.0] * 9 + [0.7],  # most likely not a digit, but not above 0.8: a 0
            [0.0, 0.0, 0.0, 0.6] + [0.0] * 6 + [0.4],  # a 3
        ]
    )
    assert model.answers(probabilities).tolist() == [10, 0, 3]
    # Files calibrated before the threshold refuse where "not a digit" is most likely.
    older = {key: value for key, value in record.items() if key != "refuse_above"}
    assert reader_model(older).answers(probabilities).tolist() == [10, 10, 3]
    assert reader_model().answers(probabilities).tolist() == [10, 10, 3]
    assert Calibration.from_json(record).refuse_above == 0.8


def test_predict_answers_the_likeliest_digit_below_the_refusal_threshold():
    from digitnet.inference.calibration import Calibration
    from digitnet.inference.predict import predict_arrays

    image = np.zeros((28, 28), np.float32)
    image[8:20, 12:16] = 1.0
    for refuse_above, refused in [(0.5, True), (0.999, False)]:
        calibrated = Calibration(1.0, 0.6, {}, {}, refuse_above=refuse_above).to_json()
        model = reader_model(calibrated)
        # Make "not a digit" the likeliest class, at a probability between the two thresholds.
        model.parameters["b1"][10] = 6.0
        probabilities = model.predict_proba(image.reshape(1, -1))[0]
        assert 0.5 < probabilities[10] < 0.999
        ((digit, confidence, _),) = predict_arrays(model, image[None])
        if refused:
            assert digit == 10 and confidence == pytest.approx(probabilities[10])
        else:
            assert digit == int(probabilities[:10].argmax())
            assert confidence == pytest.approx(probabilities[digit])


@pytest.mark.parametrize("refuse_above", [0.3, 1.5, float("nan"), "0.8", True])
def test_refusal_thresholds_outside_what_a_fit_gives_make_the_record_unusable(refuse_above):
    from digitnet.inference.calibration import Calibration

    record = dict(calibration_record(), refuse_above=refuse_above)
    assert Calibration.from_json(record) is None


def test_fitting_a_readers_calibration_keeps_refused_digits_within_budget():
    from digitnet.inference.calibration import MAX_DIGITS_REFUSED, fit_calibration

    rng = np.random.default_rng(8)
    n_digits, n_other = 4000, 1000
    labels = np.concatenate([rng.integers(0, 10, n_digits), np.full(n_other, 10)])
    logits = rng.normal(0.0, 1.0, (len(labels), 11))
    logits[np.arange(len(labels)), labels] += 4.0
    logits[n_digits:, 10] += 4.0
    # Some digits look much like non-digits: without a threshold 2-3 % would be refused.
    doubtful = rng.random(n_digits) < 0.05
    logits[:n_digits][doubtful, 10] += 5.0
    fitted = fit_calibration(logits, labels, {"set": "validation"}, not_a_digit=10)
    assert fitted.refuse_above is not None and 0.5 <= fitted.refuse_above < 1.0
    assert fitted.figures["digits_refused"] <= MAX_DIGITS_REFUSED
    assert fitted.figures["non_digits_refused"] > 0.5
    # Without a "not a digit" class there is nothing to refuse.
    digits_only = fit_calibration(logits[:n_digits, :10], labels[:n_digits], {})
    assert digits_only.refuse_above is None and "digits_refused" not in digits_only.figures
