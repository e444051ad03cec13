"""The quality grid's summary (bench/quality.py): means over seeds with their spread, a
row per (variant, depth, heads), the accuracy/speed picture. The grid itself runs in
`make quality`, not here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
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


def test_resume_runs_only_the_cells_not_yet_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--resume keeps quality.json's cells and trains only the missing ones."""
    import bench.quality as quality

    (tmp_path / "quality.json").write_text(json.dumps([_row("lite0-frozen", 4, "leaf", 0, 0.9)]))
    ran: list[tuple[str, int, str, int]] = []

    def fake_run_one(
        variant: quality.Variant, depth: int, heads: str, seed: int, out: Path
    ) -> dict[str, Any]:
        ran.append((variant.name, depth, heads, seed))
        return _row(variant.name, depth, heads, seed, 0.8)

    monkeypatch.setattr(quality, "run_one", fake_run_one)
    monkeypatch.setattr(quality, "SHARED", tmp_path / "shared")
    (tmp_path / "shared" / "fashion-products").mkdir(parents=True)
    (tmp_path / "shared" / "fashion-products" / "labels.csv").write_text("")
    argv = ["--output", str(tmp_path), "--variants", "lite0-frozen", "--heads", "leaf"]
    argv += ["--depths", "4", "--seeds", "2", "--resume"]
    assert quality.main(argv) == 0
    assert ran == [("lite0-frozen", 4, "leaf", 1)]
    rows = json.loads((tmp_path / "quality.json").read_text())
    assert sorted((r["seed"], r["leaf_accuracy"]) for r in rows) == [(0, 0.9), (1, 0.8)]
