"""Shard manifests: JSON round trip, atomic files, ordering, and refusing what is not one."""

from pathlib import Path

import pytest

from service.dataset.errors import DatasetError
from service.dataset.finalize import latest_results
from service.dataset.manifest import Failure, Kept, ShardManifest, read_manifests

_KEPT = Kept("p1", 2271, 2271, "ab" * 32, "shop.test")
_FAILED = Failure(
    "p2", "http://shop.test/2", 2271, 2271, "http_4xx", "http_404", "HTTP 404", "shop.test", 404
)


def _manifest(name: str, generation: int, *items: Kept | Failure) -> ShardManifest:
    return ShardManifest(
        name,
        generation,
        32,
        4,
        tuple(i for i in items if isinstance(i, Kept)),
        tuple(i for i in items if isinstance(i, Failure)),
    )


class TestShardManifest:
    def test_round_trip(self, tmp_path: Path) -> None:
        """A written manifest reads back equal, and leaves no temporary file."""
        manifest = _manifest("shard-00000", 0, _KEPT, _FAILED)
        manifest.write(str(tmp_path))
        assert [manifest] == read_manifests(str(tmp_path))
        assert ["shard-00000.manifest.json"] == [p.name for p in tmp_path.iterdir()]

    def test_not_a_manifest(self, tmp_path: Path) -> None:
        """A broken manifest is a DatasetError naming the file."""
        (tmp_path / "shard-00000.manifest.json").write_text('{"name": "x"}')
        with pytest.raises(DatasetError, match=r"shard-00000\.manifest\.json"):
            read_manifests(str(tmp_path))

    def test_missing_folder_has_none(self, tmp_path: Path) -> None:
        """A folder that does not exist yet holds no manifests."""
        assert [] == read_manifests(str(tmp_path / "nothing"))


class TestLatestResults:
    def test_later_generation_wins(self) -> None:
        """A retry's result replaces the first build's for the same product."""
        retried = Kept("p2", 2271, 2271, "cd" * 32, "shop.test")
        first = _manifest("shard-00000", 0, _KEPT, _FAILED)
        retry = _manifest("retry01-00000", 1, retried)
        assert {"p1": _KEPT, "p2": retried} == latest_results([retry, first])
