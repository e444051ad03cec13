"""A small untrained model over the shared labels' categories, for tests and fault runs."""

from __future__ import annotations

import csv
from pathlib import Path

from model.build import build_model
from model.classifier import save_model
from model.taxonomy import Taxonomy
from model.vocabulary import Vocabulary

__all__ = ["TEXT_CLASSES", "tiny_model", "tiny_text_model"]


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


TEXT_CLASSES = ("212", "187", "5598", "2668", "209", "100")
"""Six depth-4 fashion leaves with plenty of real titles in the shared source."""


def tiny_text_model(shared: Path, directory: Path) -> Path:
    """Train a small text model on real fashion titles of :data:`TEXT_CLASSES` (seconds) and
    return its model directory; it learns its training titles, which tests then send."""
    from model.text_train import TextTrainConfig, train_text
    from tests.support.labels import write_small_titles

    directory.mkdir(parents=True, exist_ok=True)
    titles = write_small_titles(
        shared, directory / "titles.csv", {"train": 40, "validation": 6}, TEXT_CLASSES
    )
    train_text(
        TextTrainConfig(
            labels=(titles,),
            taxonomy=shared / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt",
            output=directory / "run",
            heads="marginal",
            epochs=8,
            batch_size=16,
            learning_rate=0.05,
            verbose=0,
        )
    )
    return directory / "run" / "model"
