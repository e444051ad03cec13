"""The quality grid's summary (bench/quality.py): means over seeds with their spread, a
row per (variant, depth, heads), the accuracy/speed picture. The grid itself runs in
`make quality`, not here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from bench.quality import summarise


def _row(variant: str, depth: int, heads: str, seed: int, accuracy: float) -> dict[str, Any]:
    return {
        "variant": variant,
        "depth": depth,
        "heads": heads,
        "seed": seed,
        "holdout_weighted_score": 0.97,
        "leaf_accuracy": accuracy,
        "macro_accuracy": accuracy - 0.1,
        "weighted_score": accuracy + 0.01,
        "macro_f1": accuracy - 0.1,
        "ece": 0.02,
        "images_per_s": 100.0 + seed,
        "train_s": 20.0,
        "sources": {"a": {"leaf_accuracy": accuracy - 0.05}, "b": {"leaf_accuracy": accuracy}},
    }


def test_summary_averages_seeds_and_shows_their_spread(tmp_path: Path) -> None:
    """Three seeds become one row: the mean, ± the population standard deviation."""
    rows = [_row("v", 4, "leaf", seed, acc) for seed, acc in enumerate((0.90, 0.92, 0.94))]
    rows += [_row("v", 5, "marginal", 0, 0.8)]
    summarise(rows, tmp_path, "python -m bench.quality --quick")
    table = (tmp_path / "quality.md").read_text()
    assert "| v | 4 | leaf | 3 | 0.9700 ± 0.0000 | 0.9200 ± 0.0163 |" in table
    assert "| v | 5 | marginal | 1 | 0.9700 | 0.8000 |" in table, "one seed: no spread"
    assert "| a leaf acc. | b leaf acc. |" in table
    assert "python -m bench.quality --quick" in table
    with Image.open(tmp_path / "accuracy_vs_speed.png") as picture:
        assert picture.size[0] > 600
        assert picture.convert("L").getextrema()[0] < 200, "something is drawn"
