"""The pieces of benchmarks/read_numbers.py that turn readings into its verdicts."""

from __future__ import annotations

import pytest

from read_numbers import (
    GOAL_EXACT_OTHER,
    GOAL_LENGTH,
    UNTOUCHED,
    Outcome,
    goal_verdicts,
    interval,
    matches,
)


@pytest.mark.parametrize(
    ("read", "matched"),
    [("2104", 4), ("214", 3), ("21044", 4), ("2140", 3), ("9999", 0), ("", 0), (None, 0)],
)
def test_a_digit_counts_where_the_edit_distance_alignment_matches_it(read, matched):
    assert matches("2104", read) == matched


def test_the_wilson_interval_of_38_in_40():
    # By hand: centre (p + z^2/2n) / (1 + z^2/n) = 0.91057, half-width 0.07561.
    low, high = interval(38, 40)
    assert low == pytest.approx(0.83496, abs=1e-4)
    assert high == pytest.approx(0.98618, abs=1e-4)
    assert interval(0, 40)[0] == 0.0 and interval(40, 40)[1] == 1.0
    assert interval(0, 0) == (0.0, 1.0)
    # More numbers, a narrower interval around the same share.
    assert interval(380, 400)[1] - interval(380, 400)[0] < (high - low) / 3


def _outcomes(kind: str, right: int, wrong: int) -> list[Outcome]:
    return [Outcome(kind, GOAL_LENGTH, "2104", "2104") for _ in range(right)] + [
        Outcome(kind, GOAL_LENGTH, "2104", "2105") for _ in range(wrong)
    ]


def test_a_share_at_the_goal_from_few_numbers_is_unsure_and_from_many_is_met():
    assert GOAL_EXACT_OTHER == 0.95
    few = _outcomes("fax", 38, 2)  # 95.0 %, interval 83.5-98.6 %
    many = _outcomes("fax", 3960, 40)  # 99.0 %, interval 98.7-99.3 %
    low = _outcomes("pencil", 36, 4)  # 90.0 %
    verdicts = dict(
        (text.split()[0], verdict) for verdict, text in goal_verdicts(few + low, ["fax", "pencil"])
    )
    assert verdicts == {"fax": "unsure", "pencil": "missed", "per": "missed"}
    assert [verdict for verdict, _ in goal_verdicts(many, ["fax"])] == ["met", "met"]
    # All 40 untouched lines read right still leave 97 % within the interval.
    assert goal_verdicts(_outcomes(UNTOUCHED, 40, 0), [UNTOUCHED])[0][0] == "unsure"
    missed = [
        text for verdict, text in goal_verdicts(few + low, ["fax", "pencil"]) if verdict == "missed"
    ]
    assert missed[0] == "pencil 90.0 % < 95 % (95 % interval 76.9-96.0 %)"
    assert missed[1].startswith("per digit 98.12 % < 99.3 %")  # 314 of 320
