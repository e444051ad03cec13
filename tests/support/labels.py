"""Small labels files cut from the shared product photos, for model tests."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Collection, Mapping
from pathlib import Path

COLUMNS = ("image_path", "google_category_id", "split")


def write_small_labels(
    shared_data: Path,
    path: Path,
    per_split: Mapping[str, int],
    categories: Collection[str] | None = None,
    source: str = "product-images",
) -> Path:
    """Write the first `per_split[split]` photos of each category (all, or `categories`) of
    shared source `source` (its images are relative to `shared_data / source`)."""
    chosen: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    with (shared_data / source / "labels.csv").open() as stream:
        for row in csv.DictReader(stream):
            split = "validation" if row["split"] in ("val", "validation") else row["split"]
            key = (split, row["google_category_id"])
            wanted = categories is None or row["google_category_id"] in categories
            if wanted and len(chosen[key]) < per_split.get(split, 0):
                chosen[key].append({**row, "split": split})
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(COLUMNS))
        writer.writeheader()
        for rows in chosen.values():
            for row in rows:
                writer.writerow({k: row[k] for k in COLUMNS})
    return path


TITLE_COLUMNS = ("product_id", "split", "title", "google_category_id")


def write_small_titles(
    shared_data: Path,
    path: Path,
    per_split: Mapping[str, int],
    categories: Collection[str],
) -> Path:
    """Write the first `per_split[split]` titled products of each of `categories` from the
    shared `fashion-products` source, without an image column (what text training reads)."""
    chosen: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    with (shared_data / "fashion-products" / "labels.csv").open() as stream:
        for row in csv.DictReader(stream):
            key = (row["split"], row["google_category_id"])
            if key[1] in categories and len(chosen[key]) < per_split.get(key[0], 0):
                chosen[key].append(row)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(TITLE_COLUMNS))
        writer.writeheader()
        for rows in chosen.values():
            for row in rows:
                writer.writerow({k: row[k] for k in TITLE_COLUMNS})
    return path
