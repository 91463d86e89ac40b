"""The model description: choice lists as typed constraints, presets, and what derives from them."""

from __future__ import annotations

import math

import pytest

from digitnet.errors import ConfigError
from digitnet.models import choices
from digitnet.models.choices import Boolean, Interval, Options
from digitnet.models.presets import PRESETS, preset_defaults

# --------------------------------------------------------------------------------------------
# Constraints


@pytest.mark.parametrize(
    "interval, valid, invalid, description",
    [
        (
            Interval(int, 1, None),
            [1, 2, 10**9],
            [0, -1, 1.0, 1.5, True, "3", None],
            "a whole number >= 1",
        ),
        (
            Interval(float, 0, 10, "neither"),
            [1e-9, 0.5, 3, 9.99],
            [0, 0.0, 10, 10.0, -1, math.nan, math.inf, False, "0.1"],
            "a number in (0, 10)",
        ),
        (Interval(float, 0, 1, "left"), [0, 0.0, 0.5, 0.999], [1, 1.0, -0.1], "a number in [0, 1)"),
        (Interval(float, 0, 1, "right"), [1.0, 0.5], [0.0, 1.01], "a number in (0, 1]"),
        (Interval(float, None, 2, "both"), [-5.0, 2], [2.5], "a number <= 2"),
        (Interval(int, 0, None, note="0: off"), [0, 7], [-1], "a whole number >= 0 (0: off)"),
    ],
)
def test_interval_accepts_its_range_only_and_says_so(interval, valid, invalid, description):
    for value in valid:
        assert interval.is_valid(value), value
    for value in invalid:
        assert not interval.is_valid(value), value
    assert interval.describe() == description


def test_options_are_a_choices_list_with_descriptions():
    options = Options("a", b="the second", c="the 100% third")
    assert list(options) == ["a", "b", "c"] and len(options) == 3
    assert "b" in options and "d" not in options
    assert options.is_valid("c") and not options.is_valid("d") and not options.is_valid(None)
    assert options.describe() == "one of 'a', 'b', 'c'"
    # argparse %-formats help: the percent sign comes out doubled.
    assert options.help() == "a; b: the second; c: the 100%% third"
    with pytest.raises(ValueError):
        Options("a", "a")


def test_check_names_the_setting_the_allowed_values_and_the_value():
    with pytest.raises(ConfigError, match=r"^cost must be one of 'mse', 'cross_entropy', got 'x'$"):
        choices.check("cost", "x", choices.COSTS)
    with pytest.raises(ConfigError, match=r"^layer 2 \(dense\): units must be a whole number"):
        choices.check("units", 0, Interval(int, 1, None), "layer 2 (dense): ")
    choices.check("flag", True, Boolean())
    with pytest.raises(ConfigError, match="true or false, got 1"):
        choices.check("flag", 1, Boolean())


# --------------------------------------------------------------------------------------------
# Presets and everything that derives from the lists


def test_every_model_has_a_preset_that_passes_the_checks():
    from digitnet.training.runs import TrainConfig

    assert list(PRESETS) == list(choices.MODEL_NAMES)
    for name in choices.MODEL_NAMES:
        resolved = TrainConfig(model=name).resolved()
        for setting, value in PRESETS[name].items():
            assert getattr(resolved, setting) == value


def test_preset_defaults_group_models_that_agree():
    assert preset_defaults("epochs") == "20 for seed; 30 for mlp, cnn"
    assert preset_defaults("augment") == "off for seed; on for mlp, cnn"
    assert preset_defaults("precision") == "auto"


@pytest.mark.parametrize(
    "setting, value, options",
    [
        ("model", "resnet", choices.MODEL_NAMES),
        ("cost", "hinge", choices.COSTS),
        ("schedule", "step", choices.SCHEDULES),
        ("precision", "float16", choices.PRECISIONS),
        ("split", "random", choices.SPLITS),
        ("source", "tfds", choices.SOURCES),
    ],
)
def test_config_messages_list_the_choices_from_the_one_list(setting, value, options):
    from digitnet.training.runs import TrainConfig

    with pytest.raises(ConfigError) as caught:
        TrainConfig(**{setting: value}).resolved()
    assert options.describe().removeprefix("one of ") in str(caught.value)


def test_command_line_choices_are_the_lists():
    from digitnet.cli.main import build_parser

    parser = build_parser()
    train = next(action for action in parser._subparsers._group_actions if action.choices).choices[
        "train"
    ]
    by_flag = {
        action.option_strings[0]: action for action in train._actions if action.option_strings
    }
    expected = {
        "--model": choices.MODEL_NAMES,
        "--cost": choices.COSTS,
        "--schedule": choices.SCHEDULES,
        "--precision": choices.PRECISIONS,
        "--split": choices.SPLITS,
        "--source": choices.SOURCES,
    }
    for flag, options in expected.items():
        assert by_flag[flag].choices is options, flag
        for value in options:
            assert train.parse_args([flag, value]) is not None
    with pytest.raises(SystemExit):
        train.parse_args(["--cost", "hinge"])
    assert "20 for seed; 30 for mlp, cnn" in " ".join(train.format_help().split())


def test_data_and_network_checks_use_the_lists():
    from digitnet.data.mnist import load_mnist

    with pytest.raises(ConfigError, match=choices.SPLITS.describe()):
        load_mnist(split="random")
    with pytest.raises(ConfigError, match=choices.SOURCES.describe()):
        load_mnist(source="tfds")
