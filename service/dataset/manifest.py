"""Shard manifests: what a finished shard holds and which products failed, one JSON per shard.

A manifest is written (atomically) only after its shard file is closed and in place, so its
presence is what marks a shard finished; a resumed build skips those. The statistics, the
split and `finalize` are computed from the manifests alone, never from the shards' bytes.
"""

import json
from dataclasses import asdict, dataclass
from typing import Any

from service.dataset import storage
from service.dataset.errors import DatasetError

__all__ = ["MANIFEST_SUFFIX", "SHARD_SUFFIX", "Failure", "Kept", "ShardManifest", "read_manifests"]

SHARD_SUFFIX = ".tfrecord"
MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class Kept:
    """A product written to the shard."""

    product_id: str
    google_category_id: int
    category_id: int
    sha256: str
    host: str
    shard: str = ""
    """The manifest (shard name) holding the record; a product consumed twice from Kafka
    can be in two shards, and only this one's record is used."""


@dataclass(frozen=True)
class Failure:
    """A product whose image could not be had or used."""

    product_id: str
    image_url: str
    google_category_id: int
    category_id: int
    outcome: str
    """The outcome class (`service.dataset.outcomes.OUTCOMES`)."""
    kind: str
    """The fetcher's own label (`http_404`, `timeout`, ...) or `decode`."""
    reason: str
    host: str
    http_status: int | None = None


@dataclass(frozen=True)
class ShardManifest:
    """One finished shard: its name, generation (0 first build, then one per retry) and rows."""

    name: str
    generation: int
    image_size: int
    depth: int
    kept: tuple[Kept, ...]
    failures: tuple[Failure, ...]
    worker: str = ""

    @property
    def shard_file(self) -> str:
        """The shard's file name, relative to the shards folder."""
        return self.name + SHARD_SUFFIX

    def to_json(self) -> str:
        """The manifest as JSON text."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str) -> "ShardManifest":
        """Read a manifest; `DatasetError` naming `source` when it is not one."""
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(
                name=str(data["name"]),
                generation=int(data["generation"]),
                image_size=int(data["image_size"]),
                depth=int(data["depth"]),
                kept=tuple(Kept(**item) for item in data["kept"]),
                failures=tuple(Failure(**item) for item in data["failures"]),
                worker=str(data.get("worker", "")),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{source} is not a shard manifest: {exc}") from exc

    def write(self, folder: str) -> None:
        """Write the manifest atomically into `folder` (after the shard is in place)."""
        storage.write_text(storage.join(folder, self.name + MANIFEST_SUFFIX), self.to_json())


def read_manifests(folder: str) -> list[ShardManifest]:
    """Every manifest in `folder`, ordered by (generation, name)."""
    manifests = [
        ShardManifest.from_json(storage.read_text(storage.join(folder, name)), name)
        for name in storage.list_names(folder)
        if name.endswith(MANIFEST_SUFFIX)
    ]
    return sorted(manifests, key=lambda m: (m.generation, m.name))
