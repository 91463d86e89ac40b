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
