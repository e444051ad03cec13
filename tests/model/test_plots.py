"""Tests of model.plots: each plot writes a real, non-blank PNG of the expected shape."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from model.errors import ModelError
from model.metrics import ConfusionTop, calibration_bins, confusion_top, coverage_curve
from model.plots import (
    plot_comparison,
    plot_confusion,
    plot_coverage,
    plot_reliability,
    plot_training_curves,
)
from model.taxonomy import Taxonomy, TruncatedTaxonomy

HISTORY = {
    "loss": [2.0, 1.4, 1.1, 0.9],
    "val_loss": [2.1, 1.6, 1.3, 1.2],
    "level_1_accuracy": [0.5, 0.7, 0.8, 0.85],
    "val_level_1_accuracy": [0.45, 0.6, 0.7, 0.72],
    "leaf_accuracy": [0.2, 0.4, 0.5, 0.6],
    "val_leaf_accuracy": [0.15, 0.3, 0.4, 0.45],
    "val_weighted_score": [0.3, 0.5, 0.55, 0.6],
    "learning_rate": [1e-3, 1e-3, 5e-4, 5e-4],
}


def _png(path: Path) -> tuple[float, float]:
    """Open ``path`` as a PNG; return its aspect (width / height) and its pixel variance."""
    with Image.open(path) as image:
        assert "PNG" == image.format
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    return pixels.shape[1] / pixels.shape[0], float(pixels.var())


@pytest.fixture(scope="module")
def real(taxonomy_file: Path) -> TruncatedTaxonomy:
    """The real Google Product Taxonomy cut at depth 4."""
    return Taxonomy.load(taxonomy_file).truncate(4)


@pytest.fixture(autouse=True)
def _no_figures_left() -> None:
    """Every test starts with no open figure (the plots must close theirs)."""
    plt.close("all")


class TestPlotConfusion:
    """plot_confusion: a heatmap of the row-normalised top confusion."""

    def test_fifty_real_categories(self, real: TruncatedTaxonomy, tmp_path: Path) -> None:
        """50 real categories give a large, roughly square, non-blank PNG and no open figure."""
        leaves = list(real.leaves[::60][:50])
        rng = np.random.default_rng(7)
        true = [node for node in leaves for _ in range(4)]
        # Mostly right, some confused with another of the 50, some with a node outside them.
        pred = [
            node if rng.random() < 0.6 else int(rng.choice([*leaves, real.leaves[1]]))
            for node in true
        ]
        values = {node: float(index + 1) for index, node in enumerate(leaves)}
        confusion = confusion_top(real, true, pred, values, n=50)
        path = tmp_path / "confusion.png"
        plot_confusion(confusion, path, title="50 most valuable")
        aspect, variance = _png(path)
        with Image.open(path) as image:
            assert image.width >= 1000
        assert 0.8 < aspect < 1.4
        assert variance > 0
        assert [] == plt.get_fignums()

    def test_small_matrix_with_cell_values(self, tmp_path: Path) -> None:
        """A 2-category matrix (cells annotated) still gives a readable non-blank PNG."""
        counts = np.array([[3, 1, 0], [0, 2, 2]], dtype=np.int64)
        confusion = ConfusionTop(
            ids=(187, 212),
            columns=(187, 212, -1),
            names=("Shoes", "Shirts & Tops"),
            counts=counts,
            normalised=counts / counts.sum(axis=1, keepdims=True),
            values=(8000.0, 9000.0),
        )
        path = tmp_path / "small.png"
        plot_confusion(confusion, path)
        aspect, variance = _png(path)
        assert 0.8 < aspect < 1.6
        assert variance > 0


class TestPlotCoverage:
    """plot_coverage: coverage and accuracy against the threshold."""

    def test_writes_wide_png(self, tmp_path: Path) -> None:
        """The curve is a landscape, non-blank PNG; thresholds nobody reaches leave gaps."""
        rng = np.random.default_rng(3)
        confidences = rng.random(200) * 0.9
        points = coverage_curve(confidences, rng.random(200) < confidences)
        path = tmp_path / "coverage.png"
        plot_coverage(points, path)
        aspect, variance = _png(path)
        assert 1.3 < aspect < 2.0
        assert variance > 0
        assert [] == plt.get_fignums()

    def test_no_points_is_an_error(self, tmp_path: Path) -> None:
        """An empty curve raises ModelError."""
        with pytest.raises(ModelError):
            plot_coverage([], tmp_path / "coverage.png")


class TestPlotReliability:
    """plot_reliability: accuracy per confidence bin against the diagonal, counts below."""

    @pytest.mark.parametrize("ece", [None, 0.123])
    def test_writes_upright_png(self, tmp_path: Path, ece: float | None) -> None:
        """The diagram is a portrait, non-blank PNG; empty bins are no trouble."""
        rng = np.random.default_rng(5)
        confidences = rng.random(300) * 0.6 + 0.4
        bins = calibration_bins(confidences, rng.random(300) < confidences**2)
        path = tmp_path / "reliability.png"
        plot_reliability(bins, path, ece=ece)
        aspect, variance = _png(path)
        assert 0.7 < aspect < 1.0
        assert variance > 0
        assert [] == plt.get_fignums()

    def test_no_bins_is_an_error(self, tmp_path: Path) -> None:
        """No bins raise ModelError."""
        with pytest.raises(ModelError):
            plot_reliability([], tmp_path / "reliability.png")


class TestPlotTrainingCurves:
    """plot_training_curves: loss, accuracy and weighted-score panels from a Keras history."""

    @pytest.mark.parametrize(
        ("keys", "low", "high"),
        [
            (list(HISTORY), 3.0, 4.2),  # three panels side by side
            (["loss", "val_loss", "leaf_accuracy", "learning_rate"], 2.0, 2.8),  # two panels
            (["val_weighted_score"], 1.0, 1.5),  # one panel
        ],
    )
    def test_one_panel_per_kind(
        self, tmp_path: Path, keys: list[str], low: float, high: float
    ) -> None:
        """Each kind present adds a panel, so the PNG widens with it; learning_rate is ignored."""
        path = tmp_path / "curves.png"
        plot_training_curves({key: HISTORY[key] for key in keys}, path)
        aspect, variance = _png(path)
        assert low < aspect < high
        assert variance > 0
        assert [] == plt.get_fignums()

    @pytest.mark.parametrize(
        "history", [{}, {"learning_rate": [0.1, 0.01]}, {"loss": []}], ids=["empty", "lr", "blank"]
    )
    def test_nothing_to_plot_is_an_error(
        self, tmp_path: Path, history: dict[str, list[float]]
    ) -> None:
        """A history with no non-empty loss, accuracy or score series raises ModelError."""
        with pytest.raises(ModelError, match="nothing to plot"):
            plot_training_curves(history, tmp_path / "curves.png")

    def test_unwritable_path_is_an_error(self, tmp_path: Path) -> None:
        """A path in a missing folder raises ModelError naming it, and closes the figure."""
        path = tmp_path / "missing" / "curves.png"
        with pytest.raises(ModelError, match="cannot write the plot"):
            plot_training_curves(HISTORY, path)
        assert [] == plt.get_fignums()


class TestPlotComparison:
    """plot_comparison: grouped bars of models by metric."""

    ROWS = (
        {"model": "flat", "leaf_accuracy": 0.61, "weighted_score": 0.7, "level_4_accuracy": None},
        {
            "model": "multihead",
            "leaf_accuracy": 0.66,
            "weighted_score": 0.74,
            "level_4_accuracy": 0.5,
        },
        {"model": "small", "leaf_accuracy": 0.4, "weighted_score": 0.52, "level_4_accuracy": 0.3},
    )

    def test_writes_wide_png(self, tmp_path: Path) -> None:
        """Three models on three metrics (one value missing) give a landscape, non-blank PNG."""
        path = tmp_path / "comparison.png"
        plot_comparison(
            self.ROWS, path, metrics=("level_4_accuracy", "leaf_accuracy", "weighted_score")
        )
        aspect, variance = _png(path)
        assert 1.2 < aspect < 2.5
        assert variance > 0
        assert [] == plt.get_fignums()

    def test_default_metrics(self, tmp_path: Path) -> None:
        """Without metrics named, leaf accuracy and weighted score are drawn."""
        path = tmp_path / "comparison.png"
        plot_comparison(self.ROWS, path)
        assert 0 < path.stat().st_size

    @pytest.mark.parametrize(
        "rows",
        [(), ({"leaf_accuracy": 0.5},), ({"model": "m", "leaf_accuracy": "high"},)],
        ids=["no rows", "no model name", "not a number"],
    )
    def test_bad_rows_are_an_error(
        self, tmp_path: Path, rows: tuple[dict[str, object], ...]
    ) -> None:
        """No rows, a row without a model name, or a non-numeric value raise ModelError."""
        with pytest.raises(ModelError):
            plot_comparison(rows, tmp_path / "comparison.png")
        assert [] == plt.get_fignums()
