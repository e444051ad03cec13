"""How `bench.open_set` trains a text model denied some leaves: a filtered copy of the labels
file, trained once and cached under a run directory keyed by what it was told."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from model.taxonomy import TruncatedTaxonomy
from model.text_features import TextFeaturizer
from model.text_train import TextTrainConfig, train_text

__all__ = ["FEATURES", "HOLDOUT", "train_without"]

HOLDOUT = 0.1
"""The share of the train split the text model holds out for early stopping."""
FEATURES = 4096
"""The text featurizer's hashed features."""


def _write_filtered(source: Path, target: Path, keep: Callable[[dict[str, str]], bool]) -> int:
    """Copy the CSV ``source`` to ``target`` with only the rows ``keep`` accepts; their count."""
    with source.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        fields = list(reader.fieldnames or [])
        kept = [row for row in reader if keep(row)]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    return len(kept)


def train_without(
    labels: Path,
    taxonomy: Path,
    truncated: TruncatedTaxonomy,
    denied: Sequence[int],
    run_dir: Path,
    *,
    train_split_only: bool = False,
    retrain: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train the text model on ``labels`` without the ``denied`` leaves' rows (cached).

    With ``train_split_only`` the file's validation rows are left out as well (the pseudo
    open set is built from training rows alone). Returns the model directory and what the
    run was told (its cache key).
    """
    key = {
        "labels": str(labels.resolve()),
        "denied": sorted(denied),
        "train_split_only": train_split_only,
        "features": FEATURES,
        "heads": "marginal",
        "holdout": HOLDOUT,
    }
    stamp = run_dir / "open_set_key.json"
    model_dir = run_dir / "model"
    cached = not retrain and stamp.exists() and (model_dir / "metadata.json").exists()
    if cached and json.loads(stamp.read_text()) == key:
        return model_dir, key
    filtered = run_dir / "labels-seen.csv"
    refused = set(denied)

    def keep(row: dict[str, str]) -> bool:
        if train_split_only and row.get("split", "").strip().lower() != "train":
            return False
        return truncated.truncate_id(int(row["google_category_id"])) not in refused

    _write_filtered(labels, filtered, keep)
    train_text(
        TextTrainConfig(
            labels=(filtered,),
            taxonomy=taxonomy,
            output=run_dir,
            heads="marginal",
            holdout=HOLDOUT,
            featurizer=TextFeaturizer(FEATURES),
            name="open-set-text-classifier",
            verbose=0,
        )
    )
    stamp.write_text(json.dumps(key, indent=1) + "\n")
    return model_dir, key
