"""Finish a dataset from its shard manifests: the split, the failures file, the statistics.

Works from the manifests alone, so it is the same after one build, a resumed one, a
`--retry-failed` round or any number of workers that each wrote their own shards. A product's
latest result wins (retries have higher generations).
"""

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from model.data import DATASET_FILE, DATASET_SPLITS_FILE, LabelRow
from model.taxonomy import TruncatedTaxonomy
from service.dataset import storage
from service.dataset.errors import DatasetError
from service.dataset.manifest import Failure, Kept, ShardManifest, read_manifests
from service.dataset.split import split_products
from service.dataset.stats import build_stats, write_stats

__all__ = ["FAILURES_FILE", "SHARDS_FOLDER", "Finalized", "finalize", "latest_results"]

log = structlog.get_logger(__name__)

SHARDS_FOLDER = "shards"
FAILURES_FILE = "failures.jsonl"


@dataclass(frozen=True)
class Finalized:
    """What `finalize` wrote, for the caller's summary line."""

    stats: dict[str, Any]
    shards: int
    records: int


def latest_results(manifests: Sequence[ShardManifest]) -> dict[str, Kept | Failure]:
    """Each product's result from the manifests; a later generation replaces an earlier one."""
    results: dict[str, Kept | Failure] = {}
    for manifest in sorted(manifests, key=lambda m: (m.generation, m.name)):
        items: list[Kept | Failure] = [*manifest.kept, *manifest.failures]
        for item in items:
            results[item.product_id] = item
    return results


def finalize(
    output: str,
    truncated: TruncatedTaxonomy,
    labelled: Sequence[LabelRow] | None = None,
    *,
    skipped: int = 0,
) -> Finalized:
    """Write `split.csv`, `failures.jsonl`, `dataset.json` and the statistics into `output`.

    `labelled` (the products the build was asked for) gives the "before" counts and the
    number not attempted yet; without it, the products named in the manifests are used.
    """
    manifests = read_manifests(storage.join(output, SHARDS_FOLDER))
    if not manifests:
        raise DatasetError(f"{output} has no finished shards to finalize")
    sizes = {(m.image_size, m.depth) for m in manifests}
    if len(sizes) != 1:
        raise DatasetError(f"{output}: shards of different image sizes or depths: {sorted(sizes)}")
    ((image_size, depth),) = sizes
    results = latest_results(manifests)
    if labelled is None:
        labelled = [
            LabelRow("", item.google_category_id, item.product_id) for item in results.values()
        ]
    kept = {pid: item for pid, item in results.items() if isinstance(item, Kept)}
    split_of = split_products(labelled, {pid: k.sha256 for pid, k in kept.items()}, truncated)
    categories = {row.product_id: truncated.truncate_id(row.category_id) for row in labelled}
    stats = build_stats(results, categories, split_of, truncated, skipped=skipped)

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["product_id", "google_category_id", "category_id", "sha256", "split"])
    for pid in sorted(kept):
        item = kept[pid]
        writer.writerow(
            [pid, item.google_category_id, item.category_id, item.sha256, split_of[pid]]
        )
    storage.write_text(storage.join(output, DATASET_SPLITS_FILE), table.getvalue())
    failures = [item for item in results.values() if isinstance(item, Failure)]
    storage.write_text(
        storage.join(output, FAILURES_FILE),
        "".join(json.dumps(asdict(f)) + "\n" for f in sorted(failures, key=lambda f: f.product_id)),
    )
    shard_files = [f"{SHARDS_FOLDER}/{m.shard_file}" for m in manifests if m.kept]
    info = {
        "image_size": image_size,
        "depth": depth,
        "taxonomy_version": truncated.taxonomy.version,
        "records": len(kept),
        "shards": shard_files,
        "splits": stats["splits"],
    }
    storage.write_text(storage.join(output, DATASET_FILE), json.dumps(info, indent=1) + "\n")
    write_stats(output, stats)
    log.info(
        "dataset_finalized",
        output=output,
        shards=len(shard_files),
        records=len(kept),
        failed=len(failures),
        pending=stats["pending"],
    )
    return Finalized(stats, len(shard_files), len(kept))


def read_failures(output: str) -> list[Failure]:
    """The failures `finalize` recorded in `output`."""
    path = storage.join(output, FAILURES_FILE)
    if not storage.exists(path):
        raise DatasetError(f"nothing to retry: {path} does not exist (build the dataset first)")
    failures: list[Failure] = []
    for number, line in enumerate(storage.read_text(path).splitlines(), start=1):
        if line.strip():
            try:
                failures.append(Failure(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise DatasetError(f"{path}:{number}: not a failure record: {exc}") from exc
    return failures
