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
