"""Each named model's training defaults: what ``digitnet train --model NAME`` does unasked.

A ``TrainConfig`` field left as None takes its value from here; ``digitnet train --help``
shows them. Plain data, checked against the constraints in ``digitnet.training.runs``.
"""

from __future__ import annotations

from typing import Any

# The mlp and cnn share one recipe (cross-entropy with label smoothing, one-cycle Adam,
# augmentation, a validation set on the official split); they differ in peak rate and dropout.
_SOFTMAX_RECIPE: dict[str, Any] = dict(
    cost="cross_entropy",
    schedule="onecycle",
    epochs=30,
    batch_size=128,
    l2=0.0,
    label_smoothing=0.1,
    augment=True,
    split="official",
    val_size=5000,
    calibration_size=0,
    patience=0,
    precision="auto",
    non_digits=0.0,
    line_steps=0,
)

PRESETS: dict[str, dict[str, Any]] = {
    # The tutorial's run: its network, split, learning rate, epochs and batch size. On AMX
    # CPUs "auto" trains it in bfloat16, about twice as fast, to the same test accuracy
    # (seeds 1-5, 20 epochs: 97.59% against float32's 97.67% on the seed split).
    "seed": dict(
        cost="mse",
        learning_rate=0.005,
        schedule="constant",
        epochs=20,
        batch_size=1000,
        l2=0.0,
        dropout=0.0,
        label_smoothing=0.0,
        augment=False,
        split="seed",
        val_size=0,
        # No validation set: 2,000 training images are held out to calibrate the confidence.
        calibration_size=2000,
        patience=0,
        precision="auto",
        non_digits=0.0,
        line_steps=0,
    ),
    "mlp": {**_SOFTMAX_RECIPE, "learning_rate": 0.001, "dropout": 0.3},
    # 15 epochs, not the mlp's 30, so that the run fits in 15 minutes on 2 cores of a CPU
    # without bfloat16 units: in float32 held to AVX2 it took 10.6 minutes of training on a
    # 2-core AMD EPYC and reached 99.65 / 99.66 / 99.62 % test on seeds 1-3 (30 epochs, twice
    # the time, had given 99.69 / 99.66 / 99.63 % in bfloat16).
    "cnn": {**_SOFTMAX_RECIPE, "learning_rate": 0.003, "dropout": 0.4, "epochs": 15},
    # The cnn with an eleventh output, "not a digit": each epoch adds a quarter as many
    # composed non-digits as there are training digits (and a quarter of that again in digits
    # with a neighbour's sliver). Then the line network that reads whole numbers trains on
    # 6,500 batches of composed lines (about 9 minutes, with composing them), so the
    # classifier gets 12 epochs (about 11 minutes with composing each epoch's extra images)
    # where it had 20 before the line network, and the run fits in 20 minutes on 2 cores
    # (18 min 58 s on a 2-core AMD EPYC in bfloat16). On 1,440 lines of 4
    # and 8 validation digits, every rendering, the line network (120,000 training lines) read
    # 90.2 % exact after 5,000 batches and 91.5 % after 7,500, which would take the run past
    # 20 minutes (16 epochs gave the classifier 99.60 % test accuracy, 20 epochs 99.63 %).
    "reader": {
        **_SOFTMAX_RECIPE,
        "learning_rate": 0.003,
        "dropout": 0.4,
        "epochs": 12,
        "non_digits": 0.25,
        "line_steps": 6500,
    },
}


# Where training runs in float32 (no bfloat16 units, or ``--precision float32``) the same work
# takes about 1.7 times as long: on the 2-core AMD EPYC held to AVX2, a reader epoch took 99 s
# against 48 s in bfloat16, a line batch 133 ms against 70. These settings replace the preset's
# there so that the reader's default run still fits in 20 minutes on 2 cores (settings given
# on the command line are kept). Held to AVX2, 7 epochs took 16 min 5 s and 9 take 18 min
# 36 s; the 9-epoch classifier (seed 1) reached 99.40 % on validation (7: 99.18 %) and, at its
# calibrated refusal threshold, refused 84.2 % of the images benchmark's scribbles and 79.6 %
# of its hand-drawn letters (7: 81.2 and 77.0 %) for as few rendered digits (at most 0.38 %
# of any kind).
FLOAT32_PRESETS: dict[str, dict[str, Any]] = {
    "reader": {"epochs": 9, "line_steps": 2500},
}


def preset_defaults(setting: str) -> str:
    """Each model's default for ``setting`` in words, for help texts, models with the same
    default grouped: ``"30 for mlp; 15 for cnn"``, or just ``"auto"`` when all agree."""
    models_by_value: dict[str, list[str]] = {}
    for name, values in PRESETS.items():
        value = values[setting]
        text = ("on" if value else "off") if isinstance(value, bool) else str(value)
        if setting in FLOAT32_PRESETS.get(name, {}):
            text += f" ({FLOAT32_PRESETS[name][setting]} when training in float32)"
        models_by_value.setdefault(text, []).append(name)
    if len(models_by_value) == 1:
        return next(iter(models_by_value))
    return "; ".join(f"{text} for {', '.join(names)}" for text, names in models_by_value.items())
