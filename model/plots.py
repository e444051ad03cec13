"""Pictures of a model's evaluation and training, written as PNG files for reports.

Every function draws one figure with matplotlib's non-interactive Agg backend (no display
needed), saves it to ``path`` as PNG, and closes it, so a long run does not pile up figures.
Errors are :class:`~model.errors.ModelError`: nothing to plot, or a file that cannot be
written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

# Before pyplot is imported (ruff allows imports after matplotlib.use): render to files only,
# on machines without a display.
matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from model.errors import ModelError
from model.metrics import CalibrationBin, ConfusionTop, CoveragePoint

__all__ = [
    "plot_comparison",
    "plot_confusion",
    "plot_coverage",
    "plot_reliability",
    "plot_training_curves",
    "save_png",
]

DPI = 120
"""Pixels per inch of the PNG files: a 50-category confusion plot comes out about 1,900 px."""

_LABEL_CHARS = 30
"""Longest category name in a tick label before it is cut with an ellipsis (the id is kept)."""


def save_png(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Save ``figure`` as PNG at ``path`` and close it, whatever happens."""
    file = Path(path)
    try:
        figure.savefig(file, format="png", dpi=DPI)
    except OSError as error:
        raise ModelError(f"{file}: cannot write the plot: {error}") from error
    finally:
        plt.close(figure)


def _labels(confusion: ConfusionTop) -> list[str]:
    """Return ``"name (id)"`` per row; a long name is cut with an ellipsis, the id is kept."""
    return [
        f"{name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + '…'} ({node})"
        for name, node in zip(confusion.names, confusion.ids, strict=True)
    ]


def plot_confusion(
    confusion: ConfusionTop,
    path: str | os.PathLike[str],
    title: str = "Most valuable categories: confusion (row shares)",
) -> None:
    """Draw the row-normalised confusion matrix as a heatmap.

    Rows are the true categories, most valuable at the top; columns the predicted ones in
    the same order plus "other"; so the diagonal holds the hits and the most valuable
    corner is top-left. Labels are ``"name (id)"``. The figure grows with the number of
    categories so that 50 labels stay readable.
    """
    rows = len(confusion.ids)
    if rows == 0:
        raise ModelError("the confusion matrix has no rows to plot")
    columns = len(confusion.columns)
    font = max(7.0, min(10.0, 280.0 / rows))
    cell = font / 28.0  # inches per cell: a little more than one line of tick text
    width = max(7.5, 4.5 + cell * columns)
    height = max(5.5, 3.5 + cell * rows)
    figure = plt.figure(figsize=(width, height), layout="constrained")
    try:
        axes = figure.add_subplot()
        image = axes.imshow(confusion.normalised, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        axes.set_xticks(range(columns))
        labels = _labels(confusion)
        axes.set_xticklabels([*labels, "other"], rotation=90, fontsize=font)
        axes.set_yticks(range(rows))
        axes.set_yticklabels(labels, fontsize=font)
        axes.set_xlabel("predicted category")
        axes.set_ylabel("true category (most valuable first)")
        axes.set_title(title)
        if rows <= 15:
            for (row, column), share in _cells(confusion):
                axes.text(
                    column,
                    row,
                    f"{share:.2f}",
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if share > 0.5 else "black",
                )
        colorbar = figure.colorbar(image, ax=axes, shrink=0.8)
        colorbar.set_label("share of the row's samples")
    except BaseException:
        plt.close(figure)
        raise
    save_png(figure, path)


def _cells(confusion: ConfusionTop) -> list[tuple[tuple[int, int], float]]:
    """Return the non-empty cells of the normalised matrix as ((row, column), share)."""
    return [
        ((int(row), int(column)), float(confusion.normalised[row, column]))
        for row, column in zip(*confusion.counts.nonzero(), strict=True)
    ]


def plot_coverage(
    points: Sequence[CoveragePoint],
    path: str | os.PathLike[str],
    title: str = "Abstaining: coverage and accuracy against the confidence threshold",
) -> None:
    """Draw coverage and accuracy against the confidence threshold on one 0-1 axis.

    Accuracy is left out at thresholds no sample reaches.
    """
    if not points:
        raise ModelError("no coverage points to plot")
    thresholds = [point.threshold for point in points]
    coverage = [point.coverage for point in points]
    accuracy = [math.nan if point.accuracy is None else point.accuracy for point in points]
    figure = plt.figure(figsize=(7.5, 4.5), layout="constrained")
    try:
        axes = figure.add_subplot()
        axes.plot(thresholds, coverage, marker="o", markersize=3, label="coverage (share kept)")
        axes.plot(
            thresholds,
            accuracy,
            marker="s",
            markersize=3,
            linestyle="--",
            label="accuracy of the kept",
        )
        axes.set_xlabel("confidence threshold (abstain below)")
        axes.set_ylabel("share")
        axes.set_ylim(0.0, 1.05)
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left")
        axes.set_title(title)
    except BaseException:
        plt.close(figure)
        raise
    save_png(figure, path)


def plot_reliability(
    bins: Sequence[CalibrationBin],
    path: str | os.PathLike[str],
    title: str = "Calibration: reliability diagram",
    ece: float | None = None,
) -> None:
    """Draw a reliability diagram: each confidence bin's accuracy against the diagonal.

    Top panel: one bar per non-empty bin at its accuracy, the bin's mean confidence marked,
    and the diagonal of perfect calibration (bars below it: over-confident). Bottom panel:
    the number of samples per bin. ``ece`` goes in the title when given.
    """
    if not bins:
        raise ModelError("no calibration bins to plot")
    lefts = [entry.lower for entry in bins]
    widths = [entry.upper - entry.lower for entry in bins]
    centres = [entry.lower + width / 2 for entry, width in zip(bins, widths, strict=True)]
    accuracy = [math.nan if entry.accuracy is None else entry.accuracy for entry in bins]
    confidence = [math.nan if entry.confidence is None else entry.confidence for entry in bins]
    counts = [entry.count for entry in bins]
    figure = plt.figure(figsize=(6.0, 6.5), layout="constrained")
    try:
        top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        top.bar(lefts, accuracy, width=widths, align="edge", edgecolor="black", alpha=0.8,
                label="accuracy of the bin")  # fmt: skip
        top.plot(centres, confidence, linestyle="none", marker="o", markersize=4,
                 color="tab:red", label="mean confidence of the bin")  # fmt: skip
        top.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", label="perfectly calibrated")
        top.set_xlim(0.0, 1.0)
        top.set_ylim(0.0, 1.05)
        top.set_ylabel("accuracy")
        top.grid(alpha=0.3)
        top.legend(loc="upper left", fontsize=8)
        top.set_title(title if ece is None else f"{title} (ECE {ece:.4f})")
        bottom.bar(lefts, counts, width=widths, align="edge", edgecolor="black", color="grey")
        bottom.set_xlabel("confidence of the decoded leaf")
        bottom.set_ylabel("images")
        bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    except BaseException:
        plt.close(figure)
        raise
    save_png(figure, path)


def _series(values: Sequence[float | None]) -> list[float]:
    """Return the values as floats, ``None`` as NaN (a gap in the line)."""
    return [math.nan if value is None else float(value) for value in values]


def _panel(axes: Axes, history: Mapping[str, Sequence[float]], keys: list[str], title: str) -> None:
    """Draw ``keys`` of ``history`` on ``axes``: train solid, ``val_`` dashed, a colour a pair."""
    bases = sorted({key.removeprefix("val_") for key in keys})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {base: colours[index % len(colours)] for index, base in enumerate(bases)}
    for key in sorted(keys):
        series = _series(history[key])
        epochs = range(1, len(series) + 1)
        validation = key.startswith("val_")
        axes.plot(
            epochs,
            series,
            color=colour[key.removeprefix("val_")],
            linestyle="--" if validation else "-",
            marker="o" if len(series) < 30 else None,
            markersize=3,
            label=key,
        )
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)


def plot_training_curves(
    history: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    title: str = "Training curves",
) -> None:
    """Draw a Keras-style history: losses, accuracies, and the validation weighted score.

    Keys ending in ``loss`` go to the first panel, keys ending in ``accuracy`` to the
    second, keys ending in ``weighted_score`` to a third when there are any; training
    series are solid, ``val_`` series dashed in the same colour. Other keys (e.g.
    ``learning_rate``) are ignored. Raises :class:`ModelError` when no key is plottable.
    """
    usable = {key: values for key, values in history.items() if len(values) > 0}
    groups = [
        ("loss", [key for key in usable if key == "loss" or key.endswith("_loss")]),
        ("accuracy", [key for key in usable if key.endswith("accuracy")]),
        ("business-value-weighted score", [k for k in usable if k.endswith("weighted_score")]),
    ]
    panels = [(name, keys) for name, keys in groups if keys]
    if not panels:
        raise ModelError(
            "nothing to plot: the history has no non-empty loss, accuracy or weighted_score "
            f"series (keys: {sorted(history)})"
        )
    figure = plt.figure(figsize=(5.0 * len(panels), 4.2), layout="constrained")
    try:
        all_axes = figure.subplots(1, len(panels), squeeze=False)[0]
        for axes, (name, keys) in zip(all_axes, panels, strict=True):
            _panel(axes, usable, keys, name)
            if name != "loss":
                axes.set_ylim(0.0, 1.05)
        figure.suptitle(title)
    except BaseException:
        plt.close(figure)
        raise
    save_png(figure, path)


def _metric_value(row: Mapping[str, Any], metric: str) -> float:
    """Return ``row[metric]`` as a float; NaN when absent or ``None`` (no bar is drawn)."""
    value = row.get(metric)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelError(f"{metric} of model {row.get('model')!r} is not a number: {value!r}")
    return float(value)


def plot_comparison(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    metrics: Sequence[str] = ("leaf_accuracy", "weighted_score"),
    title: str = "Model comparison",
) -> None:
    """Draw a grouped bar chart: one group per metric, one bar per model (``row["model"]``).

    Each bar carries its value; a metric a model lacks (absent or ``None``) has no bar.
    """
    if not rows:
        raise ModelError("no models to compare")
    if not metrics:
        raise ModelError("no metrics to compare the models on")
    missing = [index for index, row in enumerate(rows) if "model" not in row]
    if missing:
        raise ModelError(f"comparison rows {missing} have no 'model' name")
    table = [[_metric_value(row, metric) for metric in metrics] for row in rows]
    finite = [value for values in table for value in values if math.isfinite(value)]
    bar = 0.8 / len(rows)
    width = max(6.0, 2.0 + len(metrics) * (0.6 + 0.45 * len(rows)))
    figure = plt.figure(figsize=(width, 4.8), layout="constrained")
    try:
        axes = figure.add_subplot()
        for index, (row, values) in enumerate(zip(rows, table, strict=True)):
            offsets = [m - 0.4 + bar * (index + 0.5) for m in range(len(metrics))]
            bars = axes.bar(offsets, values, width=bar, label=str(row["model"]))
            axes.bar_label(
                bars,
                labels=[f"{value:.3f}" if math.isfinite(value) else "" for value in values],
                fontsize=7,
                rotation=90 if len(rows) > 3 else 0,
                padding=2,
            )
        axes.set_xticks(range(len(metrics)))
        axes.set_xticklabels([metric.replace("_", " ") for metric in metrics])
        if finite and max(finite) <= 1.0 and min(finite) >= 0.0:
            axes.set_ylim(0.0, 1.15)
        axes.set_ylabel("score")
        axes.grid(axis="y", alpha=0.3)
        axes.legend(title="model", fontsize=8)
        axes.set_title(title)
    except BaseException:
        plt.close(figure)
        raise
    save_png(figure, path)
