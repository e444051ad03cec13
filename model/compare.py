"""`enrich compare`: several evaluation reports side by side, as the original system's grid.

Reads ``report.json`` from each report directory (written by ``enrich evaluate``) and writes
``comparison.md``, ``comparison.csv`` and ``comparison.png`` into the output directory: one
row per model with its backbone, parameters, image size, training time, per-level and leaf
accuracy, business-value-weighted score, macro accuracy, expected calibration error, each
labelled source's leaf accuracy (``<source>_leaf_accuracy``, n/a for a report without that
source) and inference images/s. Reports written before a figure existed show n/a for it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.errors import ModelError
from model.evaluate import load_report
from model.plots import plot_comparison

__all__ = ["compare", "comparison_rows"]


def comparison_rows(directories: Sequence[Path]) -> list[dict[str, Any]]:
    """One flat row per report, in the order given."""
    if not directories:
        raise ModelError("compare needs at least one report directory")
    rows: list[dict[str, Any]] = []
    reports = [load_report(directory) for directory in directories]
    depth = max(int(report["model"]["depth"]) for report in reports)
    source_names = list(
        dict.fromkeys(entry["name"] for report in reports for entry in report.get("sources", []))
    )
    for directory, report in zip(directories, reports, strict=True):
        model = report["model"]
        row: dict[str, Any] = {
            "model": Path(directory).name or str(directory),
            "name": model["name"],
            "heads": model["heads"],
            "backbone": model["backbone"],
            "parameters": model["parameters"],
            "image_size": model["input_size"],
            "training_time_s": model.get("training_time_s"),
        }
        levels = {entry["level"]: entry["accuracy"] for entry in report["levels"]}
        for level in range(1, depth + 1):
            row[f"level_{level}_accuracy"] = levels.get(level)
        row["leaf_accuracy"] = report["leaf_accuracy"]
        row["weighted_score"] = report["weighted_score"]
        row["macro_accuracy"] = report.get("macro_accuracy")
        row["ece"] = report.get("ece")
        per_source = {entry["name"]: entry for entry in report.get("sources", [])}
        for name in source_names:
            row[f"{name}_leaf_accuracy"] = per_source.get(name, {}).get("leaf_accuracy")
        row["images_per_s"] = report["inference"]["images_per_s"]
        row["batch_size"] = report["inference"]["batch_size"]
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    """A table cell: 4 decimals for fractions, thousands separators for counts."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1.0 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def compare(directories: Sequence[Path], output: Path) -> list[dict[str, Any]]:
    """Write the comparison grid of ``directories`` into ``output``; return its rows."""
    rows = comparison_rows(directories)
    output.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with (output / "comparison.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Model comparison",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    lines += [
        "",
        "Accuracies are on each report's own evaluation data (see each `report.md`);",
        "images/s is the model's batched inference rate where that report was made.",
        "",
        "![comparison](comparison.png)",
    ]
    (output / "comparison.md").write_text("\n".join(lines) + "\n")
    plot_comparison(
        rows,
        output / "comparison.png",
        metrics=(
            *(c for c in columns if c.startswith("level_")),
            "leaf_accuracy",
            "macro_accuracy",
            "weighted_score",
        ),
    )
    return rows
