"""``digitnet report``: what a trained model learned and where it goes wrong, as a web page.

``build_report(model, out_dir)`` writes PNG figures, ``report.json`` (every number behind
them) and ``index.html`` (the figures with their numbers; self-contained, opens from disk,
readable on a phone) into ``out_dir``:

==================  ========================================================================
figure              shows
==================  ========================================================================
learning_curves     cost, accuracy and learning rate per epoch from the model file's history,
                    training and validation, the epoch whose weights were kept marked
confusion_matrix    the test set's confusion matrix, counts and row-normalised (% of each
                    true class)
confused_pairs      the ten most frequent (true, predicted) mistakes, an example of each
mistakes            misclassified test digits, the most confident first
per_class           precision, recall and F1 of each class
reliability         the reliability diagram and the expected calibration error
weights             (dense models) what the first layer learned: ``W1``'s rows as images
filters             (convolutional models) the first convolution's filters
feature_maps        (convolutional models) those filters' responses to one digit
==================  ========================================================================

The test set is that of the split the model was trained on (as ``digitnet evaluate``). No
TensorFlow: the forward passes are the NumPy ones of ``digitnet.inference.model``, and
matplotlib (imported only when a report is built) draws on its Agg canvas without pyplot, so
reports can be built from a server's worker threads.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from digitnet import __version__
from digitnet.atomic import atomic_write_bytes
from digitnet.inference.calibration import expected_calibration_error, reliability_bins
from digitnet.inference.evaluation import evaluate_model, test_set_for
from digitnet.inference.model import Model
from digitnet.models import architectures

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Figures are FIGURE_WIDTH inches wide at DPI: 1200 px, shown at 100% zoom on a desktop,
# where 10-point text is 14 px high.
DPI = 100
FIGURE_WIDTH = 12.0
FIGURE_HEIGHTS = {
    "learning_curves": 4.2,
    "confusion_matrix": 5.6,
    "per_class": 4.2,
    "reliability": 4.6,
    "feature_maps": 5.2,
}
# Grids of small images grow with their rows: columns, inches per row, inches above them.
TILE_GRIDS: dict[str, tuple[int, float, float]] = {
    "confused_pairs": (10, 1.7, 0.6),
    "mistakes": (10, 1.5, 0.7),
    "weights": (10, 1.35, 0.9),
    "filters": (16, 0.95, 0.9),
}
FIGURE_TITLES = {
    "learning_curves": "Learning curves",
    "confusion_matrix": "Confusion matrix",
    "confused_pairs": "Most confused pairs",
    "mistakes": "Misclassified test digits",
    "per_class": "Precision, recall and F1 per class",
    "reliability": "Calibration",
    "weights": "What the first layer learned",
    "filters": "What the first layer learned",
    "feature_maps": "First convolution's responses to one digit",
}
CONFUSED_PAIRS = 10
GALLERY_ROWS = 6  # at most 60 mistakes drawn; report.json lists all
WEIGHTS_SHOWN = 100  # dense units of W1 drawn
FILTERS_SHOWN = 32
HTML_MISTAKE_ROWS = 200


# --------------------------------------------------------------------------------------------
# Numbers


def report_data(
    model: Model, X: np.ndarray, labels: np.ndarray, probabilities: np.ndarray
) -> dict[str, Any]:
    """Every number the report shows, JSON-able.

    Args:
        model: the model.
        X: test images (n, n_inputs) float32 in [0, 1].
        labels: their true classes (n,) int.
        probabilities: ``model.predict_proba(X)`` (n, n_classes).

    Returns:
        ``model`` (description, settings, metrics), ``history``, ``test`` (``evaluate_model``'s
        accuracy, ``n``, ``confusion_matrix`` and ``per_class`` with F1 added),
        ``confused_pairs``, ``mistakes`` (every wrong answer, most confident first:
        test-set ``index``, ``true``, ``predicted``, ``confidence``), ``calibration``
        (``ece``, ``bins``) and ``notes`` (what could not be shown, and why).
    """
    predicted = model.answers(probabilities)
    confidence = probabilities[np.arange(len(predicted)), predicted].astype(np.float64)
    test = evaluate_model(model, X, labels, predicted=predicted, probabilities=probabilities)
    for row in test["per_class"]:
        p, r = row["precision"], row["recall"]
        row["f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    # Over the classes the test set holds: a reader's "not a digit" has no test images.
    test["macro_f1"] = float(np.mean([row["f1"] for row in test["per_class"] if row["support"]]))

    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    mistakes = [
        {
            "index": int(i),
            "true": int(labels[i]),
            "predicted": int(predicted[i]),
            "confidence": float(confidence[i]),
        }
        for i in wrong
    ]
    matrix = np.asarray(test["confusion_matrix"])
    off_diagonal = [
        (int(matrix[t, p]), t, p)
        for t in range(len(matrix))
        for p in range(len(matrix))
        if t != p and matrix[t, p] > 0
    ]
    pairs = []
    for count, true, guess in sorted(off_diagonal, key=lambda x: (-x[0], x[1], x[2]))[
        :CONFUSED_PAIRS
    ]:
        # The mistakes are sorted by confidence: the first of the pair is its worst example.
        example = next(m for m in mistakes if m["true"] == true and m["predicted"] == guess)
        pairs.append(
            {
                "true": true,
                "predicted": guess,
                "count": count,
                "example": example["index"],
                "confidence": example["confidence"],
            }
        )
    correct = predicted == labels
    bins = reliability_bins(confidence, correct)
    notes: list[str] = []
    data: dict[str, Any] = {
        "model": _model_summary(model),
        "history": _history(model, notes),
        "test": test,
        "confused_pairs": pairs,
        "mistakes": mistakes,
        "calibration": {
            "ece": expected_calibration_error(confidence, correct),
            "mean_confidence": float(confidence.mean()) if len(confidence) else float("nan"),
            "bins": [
                {
                    "lower": b.lower,
                    "upper": b.upper,
                    "count": b.count,
                    "confidence": None if b.count == 0 else b.confidence,
                    "accuracy": None if b.count == 0 else b.accuracy,
                }
                for b in bins
            ],
        },
        "notes": notes,
        "digitnet_version": __version__,
    }
    data["best_epoch"] = best_epoch(data)
    return data


def _model_summary(model: Model) -> dict[str, Any]:
    shapes = architectures.parameter_shapes(model.architecture)
    return {
        "name": model.name,
        "description": architectures.describe(model.architecture),
        "parameters": int(sum(math.prod(shape) for shape in shapes.values())),
        "training": model.metadata.get("training", {}),
        "metrics": model.metadata.get("metrics", {}),
        "data": model.metadata.get("data", {}),
        "trained_with": model.metadata.get("digitnet_version"),
    }


HISTORY_FIELDS = {
    "cost": "training cost",
    "accuracy": "training accuracy",
    "val_cost": "validation cost",
    "val_accuracy": "validation accuracy",
    "learning_rate": "learning rate",
}


def _history(model: Model, notes: list[str]) -> list[dict[str, Any]]:
    """The per-epoch rows of the model file, with a note for each field it lacks."""
    history = model.metadata.get("history") or []
    rows = [row for row in history if isinstance(row, dict) and "epoch" in row]
    if not rows:
        notes.append(
            "The model file holds no per-epoch history (it was saved without training "
            "through digitnet, or by an older version): no learning curves."
        )
        return []
    validation = (model.metadata.get("data", {}).get("n_validation") or 0) > 0 or any(
        "val_cost" in row for row in rows
    )
    for name, label in HISTORY_FIELDS.items():
        if name.startswith("val_") and not validation:
            continue
        if not any(row.get(name) is not None for row in rows):
            notes.append(
                f"The history has no {label} per epoch (the model file was written by a "
                "digitnet that did not record it); its curve is left out."
            )
    if not validation:
        notes.append(
            "This model was trained without a validation set (like the tutorial): the curves "
            "are the training data's only, and the last epoch's weights were kept."
        )
    return rows


def best_epoch(data: dict[str, Any]) -> int | None:
    """The epoch whose weights the model holds: the best on validation, else the last."""
    rows = data["history"]
    recorded = data["model"]["metrics"].get("best_epoch")
    if recorded:
        return int(recorded)
    scored = [row for row in rows if row.get("val_accuracy") is not None]
    if scored:
        return int(max(scored, key=lambda row: (row["val_accuracy"], -row["val_cost"]))["epoch"])
    return int(rows[-1]["epoch"]) if rows else None


# --------------------------------------------------------------------------------------------
# Figures


def figure_size(name: str, tiles: int = 0) -> tuple[float, float]:
    """A figure's (width, height) in inches; a grid's height follows its number of tiles."""
    if name in TILE_GRIDS:
        columns, per_row, top = TILE_GRIDS[name]
        return FIGURE_WIDTH, top + per_row * max(1, math.ceil(tiles / columns)) + 0.1
    return FIGURE_WIDTH, FIGURE_HEIGHTS[name]


def _new_figure(
    name: str, layout: Literal["constrained"] | None = "constrained", tiles: int = 0
) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figure_size(name, tiles), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    """The figure as a 256-colour PNG: a third of the bytes of Agg's RGBA, the same look."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    image = Image.open(buffer).convert("RGB")
    palette = image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _digit(axes: Axes, image: np.ndarray, side: int) -> None:
    """One digit as MNIST stores it (white ink on black) drawn as dark ink on white."""
    axes.imshow(
        image.reshape(side, side), cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    axes.set_xticks([])
    axes.set_yticks([])


def _image_side(model: Model) -> int | None:
    side = math.isqrt(model.n_inputs)
    return side if side * side == model.n_inputs else None


def _cost_label(training: dict[str, Any]) -> str:
    cost = training.get("cost")
    if cost == "mse":
        return "mean squared error"
    if cost == "cross_entropy":
        smoothing = training.get("label_smoothing") or 0
        return "cross-entropy" + (f" (label smoothing {smoothing:g})" if smoothing else "")
    return "cost"


def _training_cost_extras(training: dict[str, Any]) -> str:
    """What the training cost adds to the plain cost the validation cost is: the optimised
    cost has the label smoothing and the L2 term, so it stays well above validation's."""
    extras = []
    if training.get("label_smoothing"):
        extras.append(f"label smoothing {training['label_smoothing']:g}")
    if training.get("l2"):
        extras.append(f"L2 {training['l2']:g}")
    return "\n(with " + " and ".join(extras) + ")" if extras else ""


def learning_curves_figure(data: dict[str, Any]) -> Figure | None:
    from matplotlib.ticker import MaxNLocator

    rows = data["history"]
    if not rows:
        return None
    epochs = np.array([row["epoch"] for row in rows])

    def series(name: str, scale: float = 1.0) -> np.ndarray | None:
        values = [row.get(name) for row in rows]
        if all(value is None for value in values):
            return None
        return np.array([np.nan if v is None else v * scale for v in values], dtype=float)

    panels: list[tuple[str, str, list[tuple[str, np.ndarray | None, str]]]] = [
        (
            "Cost per epoch",
            _cost_label({**data["model"]["training"], "label_smoothing": 0}),
            [
                (
                    "training, as optimised" + _training_cost_extras(data["model"]["training"]),
                    series("cost"),
                    "C0",
                ),
                ("validation", series("val_cost"), "C1"),
            ],
        ),
        (
            "Accuracy per epoch",
            "accuracy, %",
            [
                ("training, on the batches as trained", series("accuracy", 100), "C0"),
                ("validation", series("val_accuracy", 100), "C1"),
            ],
        ),
        ("Learning rate", "learning rate (Adam step size)", [("", series("learning_rate"), "C2")]),
    ]
    panels = [p for p in panels if any(values is not None for _, values, _ in p[2])]
    figure = _new_figure("learning_curves")
    best = data["best_epoch"]
    kept = "best validation" if any(row.get("val_accuracy") is not None for row in rows) else "last"
    for axes, (title, ylabel, lines) in zip(
        figure.subplots(1, len(panels), squeeze=False)[0], panels
    ):
        drawn = [values for _, values, _ in lines if values is not None]
        for label, values, color in lines:
            if values is not None:
                axes.plot(epochs, values, marker="o", markersize=3, color=color, label=label)
        if best is not None:
            axes.axvline(best, color="0.3", linestyle="--", linewidth=1)
        finite = np.concatenate([v[np.isfinite(v)] for v in drawn])
        if ylabel.startswith("accuracy") and len(epochs) >= 3:
            # Accuracy climbs into the last few percent within an epoch or two; zoom to where
            # the curves then move, and say what the first epoch reached if it falls below.
            later = np.concatenate([v[1:][np.isfinite(v[1:])] for v in drawn])
            if later.size:
                low = later.min() - 0.1 * max(np.ptp(later), 0.5)
                high = min(100.0, later.max() + 0.1 * max(np.ptp(later), 0.5))
                axes.set_ylim(low, high)
                below = [v[0] for v in drawn if np.isfinite(v[0]) and v[0] < low]
                if below:
                    axes.annotate(
                        f"epoch {epochs[0]}: {min(below):.1f} % (below the axis)",
                        (0.02, 0.03),
                        xycoords="axes fraction",
                        fontsize=9,
                        color="0.3",
                    )
        elif finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
            axes.set_yscale("log")
            ylabel += " (log scale)"
        axes.set_title(title)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.get_yscale() == "linear":
            axes.ticklabel_format(axis="y", useOffset=False, style="plain")
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if any(label for label, values, _ in lines if values is not None):
            axes.legend(fontsize=8, loc="best")
    if best is not None:
        figure.suptitle(f"Dashed line: epoch {best}, the {kept} epoch, whose weights were kept")
    return figure


def confusion_figure(data: dict[str, Any]) -> Figure:
    from matplotlib.colors import LogNorm

    matrix = np.asarray(data["test"]["confusion_matrix"], dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    percent = np.divide(100 * matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    classes = np.arange(len(matrix))
    figure = _new_figure("confusion_matrix")
    panels = (
        (matrix, "Counts (colour: log scale)", "{:.0f}", "test images"),
        (percent, "Row-normalised: % of each true class", "{:.1f}", "% of the true class"),
    )
    for axes, (values, title, form, unit) in zip(figure.subplots(1, 2), panels):
        positive = values[values > 0]
        norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
        shown = np.ma.masked_where(values <= 0, values)
        image = axes.imshow(shown, cmap="Blues", norm=norm)
        cutoff = math.sqrt(positive.min() * positive.max()) if positive.size else 0
        for t in classes:
            for p in classes:
                if values[t, p] > 0:
                    axes.text(
                        p,
                        t,
                        form.format(values[t, p]),
                        ha="center",
                        va="center",
                        fontsize=8 if len(classes) <= 10 else 6,
                        color="white" if values[t, p] > cutoff else "black",
                    )
        axes.set_xticks(classes)
        axes.set_yticks(classes)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        axes.set_title(title)
        figure.colorbar(image, ax=axes, shrink=0.85, label=unit)
    n, accuracy = data["test"]["n"], data["test"]["accuracy"]
    figure.suptitle(
        f"{n:,} test images, {accuracy * 100:.2f} % right "
        f"({n - int(np.trace(matrix)):,} mistakes off the diagonal)"
    )
    return figure


def confused_pairs_figure(data: dict[str, Any], X: np.ndarray, side: int) -> Figure | None:
    pairs = data["confused_pairs"]
    if not pairs:
        return None
    figure = _new_figure("confused_pairs", layout=None, tiles=len(pairs))
    _tile_grid(
        figure,
        "confused_pairs",
        [X[pair["example"]].reshape(side, side) for pair in pairs],
        [
            f"{pair['true']} taken for {pair['predicted']}\n{pair['count']} times\n"
            f"#{pair['example']}: {pair['confidence'] * 100:.1f} %"
            for pair in pairs
        ],
        cmap="gray_r",
        vmin=0.0,
        vmax=1.0,
        frame=True,
    )
    figure.suptitle(
        "The most frequent mistakes (true class taken for the predicted one, how often), each "
        "with its most confident example (test-image number, confidence)",
        fontsize=11,
    )
    return figure


def mistakes_figure(data: dict[str, Any], X: np.ndarray, side: int) -> Figure | None:
    mistakes = data["mistakes"][: GALLERY_ROWS * TILE_GRIDS["mistakes"][0]]
    if not mistakes:
        return None
    figure = _new_figure("mistakes", layout=None, tiles=len(mistakes))
    _tile_grid(
        figure,
        "mistakes",
        [X[m["index"]].reshape(side, side) for m in mistakes],
        [
            f"true {m['true']}, said {m['predicted']}\n{m['confidence'] * 100:.1f} % sure"
            for m in mistakes
        ],
        cmap="gray_r",
        vmin=0.0,
        vmax=1.0,
        frame=True,
    )
    total = len(data["mistakes"])
    shown = f"all {total}" if total == len(mistakes) else f"the {len(mistakes)} worst of {total}"
    figure.suptitle(f"Misclassified test digits, the most confident first ({shown})", fontsize=12)
    return figure


def per_class_figure(data: dict[str, Any]) -> Figure:
    rows = data["test"]["per_class"]
    classes = np.array([row["class"] for row in rows])
    figure = _new_figure("per_class")
    axes = figure.subplots()
    width = 0.27
    values = []
    for offset, name in ((-1, "precision"), (0, "recall"), (1, "f1")):
        heights = np.array([row[name] * 100 for row in rows])
        values.append(heights)
        axes.bar(classes + offset * width, heights, width, label=name.replace("f1", "F1"))
    low = float(np.min(values))
    # The bars differ in their last percent or two: start the axis just below the lowest.
    axes.set_ylim(max(0.0, math.floor(low - 0.5 * max(100 - low, 0.5))), 100.0)
    axes.set_xticks(classes)
    axes.set_xlabel("class (digit)")
    axes.set_ylabel("%")
    axes.set_title(
        "Precision (of the images predicted as the class, % right), recall (of the class's "
        f"images, % found), F1; macro F1 {data['test']['macro_f1'] * 100:.2f} %"
    )
    axes.legend(loc="lower right", ncols=3)
    axes.grid(axis="y", alpha=0.3)
    return figure


def reliability_figure(data: dict[str, Any]) -> Figure:
    calibration = data["calibration"]
    bins = calibration["bins"]
    figure = _new_figure("reliability")
    left, right = figure.subplots(1, 2, width_ratios=(1.2, 1))
    lower = np.array([b["lower"] for b in bins]) * 100
    width = np.array([b["upper"] - b["lower"] for b in bins]) * 100
    filled = [b for b in bins if b["count"]]
    centres = np.array([b["lower"] + b["upper"] for b in filled]) * 50
    accuracy = np.array([b["accuracy"] for b in filled]) * 100
    confidence = np.array([b["confidence"] for b in filled]) * 100
    filled_width = np.array([b["upper"] - b["lower"] for b in filled]) * 100
    left.bar(centres, accuracy, filled_width * 0.9, color="C0", label="accuracy in the bin")
    left.plot([0, 100], [0, 100], "--", color="0.4", label="perfect calibration")
    left.scatter(confidence, accuracy, color="C3", s=14, zorder=3, label="mean confidence")
    left.set_xlim(0, 100)
    left.set_ylim(0, 100)
    left.set_xlabel("confidence of the predicted class, %")
    left.set_ylabel("accuracy, %")
    left.set_title(f"Reliability diagram: ECE {calibration['ece'] * 100:.2f} %")
    left.legend(loc="upper left", fontsize=8)
    left.grid(alpha=0.3)
    counts = np.array([b["count"] for b in bins])
    right.bar(lower + width / 2, counts, width * 0.9, color="C0")
    if counts.max() > 0:
        right.set_yscale("log")
    right.set_xlim(0, 100)
    right.set_xlabel("confidence of the predicted class, %")
    right.set_ylabel("test images (log scale)")
    right.set_title(
        f"How confident the answers are (mean {calibration['mean_confidence'] * 100:.1f} %)"
    )
    right.grid(alpha=0.3)
    return figure


def _tile_grid(
    figure: Figure,
    grid: str,
    tiles: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    frame: bool = False,
    left_margin: float = 0.01,
    columns: int | None = None,
    top: float | None = None,
    fontsize: float = 9,
    **imshow: Any,
) -> Axes:
    """Equally sized 2-D ``tiles`` in rows of ``TILE_GRIDS[grid]``'s columns, each under its
    label, drawn as one image in one axes below the top ``top`` inches of the figure.

    One image instead of an axes per tile: laying out a hundred axes took seconds.
    """
    from matplotlib import colormaps
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    if grid in TILE_GRIDS:
        columns, _, top = TILE_GRIDS[grid]
    assert columns is not None and top is not None
    height, width = tiles[0].shape
    rows = max(1, math.ceil(len(tiles) / columns))
    gap = max(1, round(width / 7))
    lines = max((label.count("\n") + 1 for label in labels), default=0)
    figure_width, figure_height = figure.get_size_inches()
    rect = (
        left_margin,
        0.1 / figure_height,
        0.99 - left_margin,
        (figure_height - top - 0.1) / figure_height,
    )
    box_width, box_height = rect[2] * figure_width * DPI, rect[3] * figure_height * DPI
    label_pixels = lines * fontsize * 1.25 * DPI / 72
    # Screen pixels per tile pixel: the grid fills the box's width unless it is too tall.
    scale = min(
        box_width / (columns * (width + gap)),
        (box_height - rows * label_pixels) / (rows * (height + gap)),
    )
    label_space = math.ceil(label_pixels / scale) if lines else 0
    cell_width, cell_height = width + gap, height + gap + label_space
    canvas = np.full((rows * cell_height, columns * cell_width), np.nan)
    axes = figure.add_axes(rect)
    frames = []
    for k, (tile, label) in enumerate(zip(tiles, labels)):
        row_top = (k // columns) * cell_height + label_space + gap // 2
        left = (k % columns) * cell_width + gap // 2
        canvas[row_top : row_top + height, left : left + width] = tile
        if frame:
            frames.append(Rectangle((left - 0.5, row_top - 0.5), width, height))
        if label:
            axes.annotate(
                label,
                (left + width / 2, row_top - 0.5),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=fontsize,
                linespacing=1.1,
            )
    cmap = colormaps[imshow.pop("cmap", "viridis")].with_extremes(bad="white")
    axes.imshow(canvas, cmap=cmap, interpolation="nearest", **imshow)
    if frames:
        axes.add_collection(
            PatchCollection(frames, facecolor="none", edgecolor="0.75", linewidth=0.8)
        )
    axes.axis("off")
    axes.set_anchor("N")
    return axes


def _each_on_its_scale(tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Every tile divided by its largest absolute value: [-1, 1], 0 stays 0."""
    return [tile / (float(np.abs(tile).max()) or 1.0) for tile in tiles]


def first_layer_figures(
    model: Model, data: dict[str, Any], X: np.ndarray, labels: np.ndarray
) -> dict[str, Figure]:
    """``weights`` (a dense first layer) or ``filters`` and ``feature_maps`` (a convolution);
    adds the numbers behind them to ``data["first_layer"]``, or a note when the layer cannot be
    drawn."""
    layers = model.architecture["layers"]
    index = next(i for i, layer in enumerate(layers) if layer["type"] in ("dense", "conv"))
    weights = model.parameters["W1"]
    side = _image_side(model)
    figures: dict[str, Figure] = {}
    if layers[index]["type"] == "dense":
        if side is None:
            data["notes"].append("The inputs are not square images: W1 is not drawn.")
            return figures
        norms = np.linalg.norm(weights, axis=1)
        units = (
            np.arange(len(weights))
            if len(weights) <= WEIGHTS_SHOWN
            else np.argsort(-norms, kind="stable")[:WEIGHTS_SHOWN]
        )
        chosen = (
            f"all {len(weights)} units"
            if len(units) == len(weights)
            else f"the {len(units)} of {len(weights)} units with the largest weights (L2 norm)"
        )
        # A ReLU unit that no image switches on gets no gradient: once it stops firing in
        # training its weights stop changing, and it still looks like its random start.
        dead: np.ndarray = np.zeros(len(weights), dtype=bool)
        if layers[index]["activation"] == "relu":
            dead = ~np.any(model.layer_output(X, index + 1) > 0, axis=0)
        data["first_layer"] = {
            "type": "dense",
            "units": len(weights),
            "dead": [int(u) for u in np.flatnonzero(dead)],
            "shown": [int(u) for u in units],
            "norms": [float(norms[u]) for u in units],
            "range": [float(weights.min()), float(weights.max())],
        }
        figure = _new_figure("weights", layout=None, tiles=len(units))
        _tile_grid(
            figure,
            "weights",
            _each_on_its_scale([weights[u].reshape(side, side) for u in units]),
            [f"unit {u + 1}" + (" (dead)" if dead[u] else "") for u in units],
            cmap="RdBu_r",
            vmin=-1.0,
            vmax=1.0,
        )
        figure.suptitle(
            f"W1: each hidden unit's {side}x{side} weights on the input pixels ({chosen}).\n"
            "Red: ink there raises the unit's input, blue: lowers it; each image on its own "
            "scale.",
            fontsize=11,
        )
        figures["weights"] = figure
        return figures

    kernel = weights  # (k, k, channels, filters)
    if kernel.shape[2] != 1:
        data["notes"].append("The first convolution has several input channels: not drawn.")
        return figures
    count = min(kernel.shape[3], FILTERS_SHOWN)
    filters = [kernel[:, :, 0, f] for f in range(count)]
    data["first_layer"] = {
        "type": "conv",
        "filters": int(kernel.shape[3]),
        "kernel": int(kernel.shape[0]),
        "weights": [f.round(4).tolist() for f in filters],
    }
    figure = _new_figure("filters", layout=None, tiles=count)
    _tile_grid(
        figure,
        "filters",
        _each_on_its_scale(filters),
        [f"filter {f + 1}" for f in range(count)],
        cmap="RdBu_r",
        vmin=-1.0,
        vmax=1.0,
    )
    size = kernel.shape[0]
    figure.suptitle(
        f"The first convolution's {count} of {kernel.shape[3]} filters, {size}x{size} "
        "weights each.\nRed: ink under the red weights raises the response, blue: lowers it "
        "(edge and stroke detectors); each filter on its own scale.",
        fontsize=11,
    )
    figures["filters"] = figure

    # The responses the next layer sees: after the convolution's batch normalisation and
    # ReLU when it has them.
    through = index + 1
    if through < len(layers) and layers[through]["type"] == "batchnorm":
        through += 1
    wrong = {m["index"] for m in data["mistakes"]}
    example = next((i for i in range(len(X)) if i not in wrong), 0)
    maps = model.layer_output(X[example : example + 1], through)[0]
    data["first_layer"]["example"] = example
    data["first_layer"]["response_range"] = [float(maps.min()), float(maps.max())]
    figure = _new_figure("feature_maps", layout=None)
    digit = figure.add_axes((0.01, 0.25, 0.17, 0.5))
    if side is not None:
        _digit(digit, X[example], side)
    digit.set_title(f"test image #{example}\n(a {labels[example]})", fontsize=10)
    peak = float(maps.max()) or 1.0
    _tile_grid(
        figure,
        "feature_maps",
        [maps[:, :, f] for f in range(count)],
        [f"{f + 1}" for f in range(count)],
        left_margin=0.2,
        columns=8,
        top=0.7,
        cmap="magma",
        vmin=0.0,
        vmax=peak,
    )
    stage = "convolution, batch normalisation and ReLU" if through > index + 1 else "convolution"
    figure.suptitle(
        f"Responses of the first {count} filters ({maps.shape[0]}x{maps.shape[1]} maps after "
        f"{stage}), all on one scale: 0 (black) to {peak:.2f} (white)",
        fontsize=11,
    )
    figures["feature_maps"] = figure
    return figures


# --------------------------------------------------------------------------------------------
# The page

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1b1b1b; background: #fafafa; }
main { max-width: 1300px; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; margin: 0.5rem 0; }
h2 { font-size: 1.3rem; margin: 2rem 0 0.5rem; border-bottom: 1px solid #ddd; }
section { background: #fff; padding: 0.5rem 1rem 1rem; margin: 1rem 0; border-radius: 6px;
          box-shadow: 0 1px 2px rgba(0,0,0,0.08); }
figure { margin: 0.5rem 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { font-size: 0.92rem; color: #444; }
.notes { background: #fff8e1; border-left: 4px solid #f2b600; padding: 0.5rem 1rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; font-size: 0.9rem; font-variant-numeric: tabular-nums;
        margin: 0.5rem 0; }
th, td { padding: 0.2rem 0.5rem; border-bottom: 1px solid #eee; text-align: right;
         white-space: nowrap; }
th { background: #f3f3f3; }
td.diagonal, td.best { font-weight: 600; background: #eef4fb; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.1rem 1rem; margin: 0; }
dl.facts dt { color: #555; }
dl.facts dd { margin: 0; }
details summary { cursor: pointer; color: #0b57d0; margin: 0.3rem 0; }
@media (max-width: 600px) {
  body { font-size: 15px; }
  main { padding: 0.4rem; }
  section { padding: 0.3rem 0.5rem 0.6rem; }
  dl.facts { grid-template-columns: 1fr; }
  dl.facts dd { margin-bottom: 0.3rem; }
}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Any = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            extra = classes(r, c) if classes else ""
            attribute = f' class="{extra}"' if extra else ""
            cells.append(f"<td{attribute}>{html.escape(str(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f} %"


def _figure_html(data: dict[str, Any], name: str, caption: str) -> str:
    if name not in data["figures"]:
        return ""
    figure = data["figures"][name]
    file = html.escape(figure["file"])
    return (
        f'<figure><a href="{file}"><img src="{file}" width="{figure["width"]}" '
        f'height="{figure["height"]}" '
        f'alt="{html.escape(FIGURE_TITLES[name])}"></a>'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def render_html(data: dict[str, Any], title: str) -> str:
    """The report page for ``data``: ``report_data`` plus ``figures`` (name -> ``file``,
    ``width`` and ``height`` in pixels)."""
    model, test, calibration = data["model"], data["test"], data["calibration"]
    training, metrics = model["training"], model["metrics"]
    n = test["n"]
    facts = [
        ("network", model["description"]),
        ("trained", _training_summary(training, metrics, model["data"])),
        ("test set", f"{n:,} images of the {model['data'].get('split', 'official')} split"),
        ("test accuracy", f"{test['accuracy'] * 100:.2f} % ({len(data['mistakes']):,} wrong)"),
        ("macro F1", _percent(test["macro_f1"])),
        ("calibration error (ECE)", _percent(calibration["ece"])),
    ]
    if "parameters" not in model["description"]:
        facts.insert(1, ("parameters", f"{model['parameters']:,}"))
    if metrics.get("val_accuracy") is not None:
        facts.insert(-3, ("validation accuracy", _percent(metrics["val_accuracy"])))
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        '<dl class="facts">'
        + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
        + "</dl>",
    ]
    if data["notes"]:
        sections.append(
            '<div class="notes"><strong>Not shown:</strong><ul>'
            + "".join(f"<li>{html.escape(note)}</li>" for note in data["notes"])
            + "</ul></div>"
        )
    sections += [
        _history_section(data),
        _confusion_section(data),
        _mistakes_section(data),
        _per_class_section(data),
        _calibration_section(data),
        _first_layer_section(data),
    ]
    body = "\n".join(s for s in sections if s)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="digitnet {html.escape(data["digitnet_version"])}">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
{body}
<p class="note">Written by digitnet {html.escape(data["digitnet_version"])}; every number
on this page is also in <a href="report.json">report.json</a>.</p>
</main>
</body>
</html>
"""


def _training_summary(
    training: dict[str, Any], metrics: dict[str, Any], data: dict[str, Any]
) -> str:
    if not training:
        return "no training settings recorded"
    parts = [
        f"{training.get('model', '?')} model",
        f"{metrics.get('epochs', training.get('epochs', '?'))} epochs",
        f"batch {training.get('batch_size', '?')}",
        f"Adam {training.get('learning_rate', '?')} ({training.get('schedule', '?')})",
        _cost_label(training),
    ]
    if training.get("augment"):
        parts.append("augmented")
    if training.get("dropout"):
        parts.append(f"dropout {training['dropout']:g}")
    if data.get("n_train"):
        parts.append(f"{data['n_train']:,} training images")
    if data.get("n_validation"):
        parts.append(f"{data['n_validation']:,} held out for validation")
    if metrics.get("train_seconds"):
        parts.append(f"{metrics['train_seconds']:.0f} s")
    return ", ".join(str(p) for p in parts)


def _history_section(data: dict[str, Any]) -> str:
    rows = data["history"]
    if not rows:
        return ""
    columns = [
        (name, label) for name, label in HISTORY_FIELDS.items() if any(name in r for r in rows)
    ]
    if any("seconds" in r for r in rows):
        columns.append(("seconds", "seconds"))

    def cell(row: dict[str, Any], name: str) -> str:
        value = row.get(name)
        if value is None:
            return "-"
        if "accuracy" in name:
            return _percent(value)
        if name == "seconds":
            return f"{value:.1f}"
        return f"{value:.6g}"

    best = data["best_epoch"]
    table = _table(
        ["epoch"] + [label for _, label in columns],
        [
            [f"{row['epoch']} (weights kept)" if row["epoch"] == best else row["epoch"]]
            + [cell(row, name) for name, _ in columns]
            for row in rows
        ],
        classes=lambda r, c: "best" if rows[r]["epoch"] == best else "",
    )
    caption = (
        "Training cost and accuracy are averaged over each epoch's batches as they were "
        "trained (with dropout and augmentation where the model uses them) and the cost as it "
        "was optimised (with label smoothing and the L2 term where set); validation is "
        "measured after the epoch without any of them, so the two costs are not on one "
        "footing. The dashed line marks the epoch whose weights the model file holds."
    )
    return (
        f"<section><h2>{FIGURE_TITLES['learning_curves']}</h2>"
        + _figure_html(data, "learning_curves", caption)
        + f"<details><summary>Every epoch's numbers</summary>{table}</details></section>"
    )


def _confusion_section(data: dict[str, Any]) -> str:
    matrix = data["test"]["confusion_matrix"]
    classes = list(range(len(matrix)))
    table = _table(
        ["true \\ predicted"] + [str(c) for c in classes] + ["total"],
        [[c] + row + [sum(row)] for c, row in zip(classes, matrix)],
        classes=lambda r, c: "diagonal" if c == r + 1 else "",
    )
    pairs = _table(
        ["true", "predicted as", "times", "example (test image #)", "its confidence"],
        [
            [p["true"], p["predicted"], p["count"], p["example"], _percent(p["confidence"], 1)]
            for p in data["confused_pairs"]
        ],
    )
    return (
        f"<section><h2>{FIGURE_TITLES['confusion_matrix']}</h2>"
        + _figure_html(
            data,
            "confusion_matrix",
            "Rows: the true class; columns: the class predicted. The diagonal holds the right "
            "answers; everything else is a mistake.",
        )
        + f"<details><summary>The counts</summary>{table}</details>"
        + f"<h2>{FIGURE_TITLES['confused_pairs']}</h2>"
        + _figure_html(
            data,
            "confused_pairs",
            "Each pair's most confident example. Some are digits a person would misread too; "
            "others show what the model has not learned.",
        )
        + (pairs if data["confused_pairs"] else "<p>No mistakes.</p>")
        + "</section>"
    )


def _mistakes_section(data: dict[str, Any]) -> str:
    mistakes = data["mistakes"]
    shown = mistakes[:HTML_MISTAKE_ROWS]
    table = _table(
        ["rank", "test image #", "true", "predicted", "confidence"],
        [
            [rank, m["index"], m["true"], m["predicted"], _percent(m["confidence"], 1)]
            for rank, m in enumerate(shown, start=1)
        ],
    )
    more = (
        f" (the first {len(shown)} of {len(mistakes)}; all are in report.json)"
        if len(mistakes) > len(shown)
        else ""
    )
    return (
        f"<section><h2>{FIGURE_TITLES['mistakes']}</h2>"
        + _figure_html(
            data,
            "mistakes",
            "Confidence is the probability the model gave its (wrong) answer; for a model with "
            "sigmoid outputs (the tutorial's) it is its ten scores normalised to sum to 1, as "
            "<code>digitnet predict</code> reports it.",
        )
        + (
            f"<details><summary>The list{more}</summary>{table}</details>"
            if mistakes
            else "<p>No mistakes on the test set.</p>"
        )
        + "</section>"
    )


def _per_class_section(data: dict[str, Any]) -> str:
    rows = data["test"]["per_class"]
    table = _table(
        ["class", "precision", "recall", "F1", "test images"],
        [
            [
                r["class"],
                _percent(r["precision"]),
                _percent(r["recall"]),
                _percent(r["f1"]),
                r["support"],
            ]
            for r in rows
        ],
    )
    return (
        f"<section><h2>{FIGURE_TITLES['per_class']}</h2>"
        + _figure_html(
            data,
            "per_class",
            "Precision: of the images the model called this digit, the share that were. "
            "Recall: of this digit's images, the share it recognised. F1: their harmonic mean.",
        )
        + table
        + "</section>"
    )


def _calibration_section(data: dict[str, Any]) -> str:
    calibration = data["calibration"]
    rows = [
        [
            f"{b['lower'] * 100:.1f}-{b['upper'] * 100:.1f} %",
            b["count"],
            _percent(b["confidence"], 1),
            _percent(b["accuracy"], 1),
        ]
        for b in calibration["bins"]
        if b["count"]
    ]
    table = _table(["confidence bin", "test images", "mean confidence", "accuracy"], rows)
    return (
        f"<section><h2>{FIGURE_TITLES['reliability']}</h2>"
        + _figure_html(
            data,
            "reliability",
            "Is 90 % confidence right 90 % of the time? Each bar is the accuracy of the "
            "answers given with a confidence in that bin; bars below the diagonal mean "
            "overconfidence, above it underconfidence (as label smoothing trains a model to "
            "be). The expected calibration error (ECE) is the gap between accuracy and "
            "confidence averaged over the bins, weighted by their number of answers.",
        )
        + table
        + "</section>"
    )


def _first_layer_section(data: dict[str, Any]) -> str:
    layer = data.get("first_layer")
    if not layer:
        return ""
    if layer["type"] == "dense":
        dead = layer["dead"]
        caption = (
            f"Each image is one of the first layer's {layer['units']} units: the weight it "
            "gives each input pixel. Weights range from "
            f"{layer['range'][0]:.3f} to {layer['range'][1]:.3f}. "
            + (
                f"{len(dead)} of the {layer['units']} units are dead: no test image makes them "
                "fire. A ReLU unit that stops firing gets no gradient and stops learning, so "
                "these still look like their random start: "
                + ", ".join(str(u + 1) for u in dead)
                + "."
                if dead
                else "No unit is dead: every one fires for some test images."
            )
        )
        extra = ""
    else:
        caption = (
            f"The {layer['filters']} filters of the first convolution, {layer['kernel']}x"
            f"{layer['kernel']} weights each (all weights are in report.json)."
        )
        extra = _figure_html(
            data,
            "feature_maps",
            f"What each filter responds to in test image #{layer['example']}: bright where "
            "its pattern (an edge, a stroke in one direction) is present.",
        )
    name = "weights" if layer["type"] == "dense" else "filters"
    return (
        f"<section><h2>{FIGURE_TITLES[name]}</h2>"
        + _figure_html(data, name, caption)
        + extra
        + "</section>"
    )


# --------------------------------------------------------------------------------------------
# Putting it together


def build_report(
    model: Model | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the report of ``model`` (a ``Model`` or a model file) into ``out_dir``.

    Writes one PNG per figure (``FIGURE_TITLES``), ``report.json`` and, last, ``index.html``,
    each atomically: once ``index.html`` exists the report is complete. The test set comes
    from ``data_dir`` (else ``$DIGITNET_DATA_DIR``, the cache, or a download).

    Returns:
        The path of ``index.html``.
    """
    from digitnet.inference.modelfile import load_model

    if isinstance(model, Model):
        title = f"digitnet report: {model.name} model"
    else:
        title = f"digitnet report: {Path(model).name}"
    return _build(
        model if isinstance(model, Model) else load_model(model), Path(out_dir), data_dir, title
    )


def _build(model: Model, out: Path, data_dir: str | os.PathLike[str] | None, title: str) -> Path:
    X, labels = test_set_for(model, data_dir)
    probabilities = model.predict_proba(X)
    data = report_data(model, X, labels, probabilities)
    side = _image_side(model)
    if side is None:
        data["notes"].append("The inputs are not square images: no digit galleries.")

    drawings: list[tuple[str, Callable[[], Figure | None]]] = [
        ("learning_curves", lambda: learning_curves_figure(data)),
        ("confusion_matrix", lambda: confusion_figure(data)),
        ("per_class", lambda: per_class_figure(data)),
        ("reliability", lambda: reliability_figure(data)),
    ]
    if side is not None:
        drawings += [
            ("confused_pairs", lambda: confused_pairs_figure(data, X, side)),
            ("mistakes", lambda: mistakes_figure(data, X, side)),
        ]
    drawn = {name: draw() for name, draw in drawings}
    drawn.update(first_layer_figures(model, data, X, labels))
    figures: dict[str, dict[str, Any]] = {}
    for name in FIGURE_TITLES:
        figure = drawn.get(name)
        if figure is None:
            # An earlier report's figure (another model's) must not be taken for this one's.
            (out / f"{name}.png").unlink(missing_ok=True)
            continue
        atomic_write_bytes(out / f"{name}.png", _png(figure))
        width, height = (round(inches * DPI) for inches in figure.get_size_inches())
        figures[name] = {"file": f"{name}.png", "width": width, "height": height}
    data["figures"] = figures
    atomic_write_bytes(
        out / "report.json", json.dumps(data, indent=1, allow_nan=False).encode("utf-8")
    )
    index = out / "index.html"
    atomic_write_bytes(index, render_html(data, title).encode("utf-8"))
    return index
