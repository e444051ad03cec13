"""A small untrained model over the shared labels' categories, for tests and fault runs."""

from __future__ import annotations

import csv
from pathlib import Path

from model.build import build_model
from model.classifier import save_model
from model.taxonomy import Taxonomy
from model.vocabulary import Vocabulary

__all__ = ["tiny_model"]


def tiny_model(shared: Path, directory: Path, name: str) -> Path:
    """Export an untrained `tiny` multi-head model (32 px) over the categories of
    ``shared``/product-images/labels.csv into ``directory``; faults, not accuracy, matter."""
    truncated = Taxonomy.load(
        shared / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt"
    ).truncate(4)
    with (shared / "product-images" / "labels.csv").open() as stream:
        ids = [int(row["google_category_id"]) for row in csv.DictReader(stream)]
    vocabulary = Vocabulary.from_labels(truncated, ids)
    save_model(
        build_model("tiny", vocabulary.sizes, image_size=32),
        directory,
        name=name,
        backbone="tiny",
        image_size=32,
        heads="multi",
        truncated=truncated,
        vocabulary=vocabulary,
        level_weights=None,
        training={},
        metrics={},
    )
    return directory
