"""`build_dataset` over real shared images served locally, with planted failures."""

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from model.data import load_dataset
from service.cache import ImageCache
from service.dataset import FAILURES, OUTCOMES, BuildReport, build_dataset
from service.redis_store import RedisStore
from tests.service.dataset.conftest import PLANTED, Catalog, build_config, planted_texts
from tests.support.image_server import Behaviour

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(
    catalog: Catalog, taxonomy_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, BuildReport]:
    """The catalog built once into a folder of its own."""
    output = tmp_path_factory.mktemp("dataset")
    return output, build_dataset(build_config(catalog, taxonomy_file, output))


def _splits(output: Path) -> list[dict[str, str]]:
    with (output / "split.csv").open() as stream:
        return list(csv.DictReader(stream))


class TestStatistics:
    def test_outcome_counts_are_exactly_the_planted_ones(
        self, built: tuple[Path, BuildReport], catalog: Catalog
    ) -> None:
        """Every outcome class counts exactly the products planted for it."""
        planted = Counter(PLANTED.values())
        expected = {"ok": len(catalog.real) + 2, **{name: planted[name] for name in FAILURES}}
        stats = built[1].finalized.stats
        assert expected == {name: stats["outcomes"][name]["count"] for name in OUTCOMES}

    def test_every_failure_class_was_planted(self) -> None:
        """The planted mix covers every failure class the statistics report."""
        assert set(FAILURES) == set(PLANTED.values())

    def test_shares_are_of_all_products(self, built: tuple[Path, BuildReport]) -> None:
        """A class's share is its count over all labelled products."""
        stats = built[1].finalized.stats
        assert round(1 / stats["products"], 6) == stats["outcomes"]["timeout"]["share"]

    def test_stats_files_are_written(self, built: tuple[Path, BuildReport]) -> None:
        """stats.json matches the report; stats.md and the PNG chart are there."""
        output, report = built
        assert report.finalized.stats == json.loads((output / "stats.json").read_text())
        assert "| timeout | 1 |" in (output / "stats.md").read_text()
        assert b"\x89PNG" == (output / "stats.png").read_bytes()[:4]

    def test_failing_hosts_and_categories(
        self, built: tuple[Path, BuildReport], catalog: Catalog
    ) -> None:
        """The local server is the host with most failures; categories count before and after."""
        stats = built[1].finalized.stats
        local = sum(1 for name in PLANTED if name not in ("bad-syntax", "ftp", "private", "no-dns"))
        assert {"host": "127.0.0.1", "failures": local} == stats["top_failing_hosts"][0]
        before = sum(c["before"] for c in stats["categories"].values())
        after = sum(c["after"] for c in stats["categories"].values())
        assert (stats["products"], stats["ok"]) == (before, after)

    def test_failures_file_lists_each_failure(self, built: tuple[Path, BuildReport]) -> None:
        """failures.jsonl holds one line per failed product, with its outcome class."""
        lines = (built[0] / "failures.jsonl").read_text().splitlines()
        actual = {json.loads(line)["product_id"]: json.loads(line)["outcome"] for line in lines}
        assert {f"fail-{name}": outcome for name, outcome in PLANTED.items()} == actual


class TestShardsAndSplits:
    def test_shards_hold_every_kept_product(
        self, built: tuple[Path, BuildReport], catalog: Catalog
    ) -> None:
        """The shards read back as one 32 px image per kept product, labelled as in the file."""
        images, rows = load_dataset(built[0], 32, progress=False)
        expected = {f"real-{i:03d}" for i in range(len(catalog.real))} | set(catalog.duplicates)
        assert expected == {row.product_id for row in rows}
        assert (len(expected), 32, 32, 3) == images.shape
        real = {f"real-{i:03d}": int(r["google_category_id"]) for i, r in enumerate(catalog.real)}
        assert real == {r.product_id: r.category_id for r in rows if r.product_id in real}

    def test_shards_keep_each_products_text(
        self, built: tuple[Path, BuildReport], catalog: Catalog
    ) -> None:
        """Title, description and partner category go into the shards as the labels give
        them (unicode and markup untouched), empty where the labels have none."""
        _, rows = load_dataset(built[0], 32, progress=False)
        stored = {r.product_id: (r.title, r.description, r.partner_category) for r in rows}
        for index in range(len(catalog.real)):
            planted = planted_texts(index) if index % 2 == 0 else {}
            expected = tuple(
                planted.get(k, "") for k in ("title", "description", "partner_category")
            )
            assert expected == stored[f"real-{index:03d}"]

    def test_split_is_roughly_70_15_15(self, built: tuple[Path, BuildReport]) -> None:
        """Each split holds its share of the kept products, within the rounding per leaf."""
        counts = Counter(row["split"] for row in _splits(built[0]))
        assert {"train", "validation", "test"} == set(counts)
        assert 0.6 <= counts["train"] / sum(counts.values()) <= 0.8

    def test_no_content_in_two_splits(self, built: tuple[Path, BuildReport]) -> None:
        """Products with the same image bytes share a split (the duplicates included)."""
        splits_of: dict[str, set[str]] = defaultdict(set)
        rows = _splits(built[0])
        for row in rows:
            splits_of[row["sha256"]].add(row["split"])
        assert [] == [sha for sha, splits in splits_of.items() if len(splits) > 1]
        by_id = {row["product_id"]: row["split"] for row in rows}
        assert by_id["dup-a"] == by_id["dup-b"] == by_id["real-000"]

    def test_manifest_per_shard(self, built: tuple[Path, BuildReport]) -> None:
        """Every planned shard has a manifest; shards with kept products have a file."""
        names = sorted(p.name for p in (built[0] / "shards").iterdir())
        manifests = [n for n in names if n.endswith(".manifest.json")]
        assert 8 == len(manifests)  # 60 + 2 + 12 products in shards of 10.
        assert [] == [n for n in names if ".tmp-" in n]


class TestResume:
    def test_rerun_skips_finished_shards(
        self, catalog: Catalog, taxonomy_file: Path, tmp_path: Path
    ) -> None:
        """A re-run fetches nothing again; with one manifest gone, only that shard's images."""
        server = catalog.server
        config = build_config(catalog, taxonomy_file, tmp_path)
        first = build_dataset(config)
        hits = sum(server.hits.values())
        again = build_dataset(config)
        assert (0, 8, hits) == (
            again.shards_written,
            again.shards_skipped,
            sum(server.hits.values()),
        )
        (tmp_path / "shards" / "shard-00001.manifest.json").unlink()
        before = Counter(server.hits)
        third = build_dataset(config)
        fetched = {path for path, count in server.hits.items() if count > before[path]}
        expected = {f"/images/{row['image_path']}" for row in catalog.real[10:20]}
        assert (1, expected) == (third.shards_written, fetched)
        assert first.finalized.stats == third.finalized.stats

    def test_retry_failed_fetches_only_failures(
        self, catalog: Catalog, taxonomy_file: Path, tmp_path: Path
    ) -> None:
        """--retry-failed refetches the failures only, and a success replaces its failure."""
        server = catalog.server
        first = build_dataset(build_config(catalog, taxonomy_file, tmp_path))
        server.script(
            "server-error", Behaviour(body=_first_image(catalog), content_type="image/jpeg")
        )
        before = Counter(server.hits)
        try:
            retried = build_dataset(
                build_config(catalog, taxonomy_file, tmp_path, retry_failed=True)
            )
        finally:
            server.script("server-error", Behaviour(status=500))
        fetched = {path for path, count in server.hits.items() if count > before[path]}
        assert not any(path.startswith("/images/") and "nowhere" not in path for path in fetched)
        stats = retried.finalized.stats
        assert (first.finalized.stats["ok"] + 1, 0) == (
            stats["ok"],
            stats["outcomes"]["http_5xx"]["count"],
        )


class TestCache:
    def test_cached_images_are_not_fetched_again(
        self, catalog: Catalog, taxonomy_file: Path, tmp_path: Path, redis_store: RedisStore
    ) -> None:
        """With the Redis image cache, a second build fetches only the failures again."""
        server = catalog.server
        cache = ImageCache(redis_store, image_size=32)
        first = build_dataset(build_config(catalog, taxonomy_file, tmp_path / "a"), cache)
        before = Counter(server.hits)
        second = build_dataset(build_config(catalog, taxonomy_file, tmp_path / "b"), cache)
        fetched = {path for path, count in server.hits.items() if count > before[path]}
        kept = {"/images/" + row["image_path"] for row in catalog.real}
        kept |= {f"/scripted/{name}" for name in catalog.duplicates}
        assert set() == fetched & kept
        assert first.finalized.stats == second.finalized.stats
        records = [
            {(r["product_id"], r["sha256"]) for r in _splits(tmp_path / name)} for name in "ab"
        ]
        assert records[0] == records[1]


def _first_image(catalog: Catalog) -> bytes:
    import urllib.request

    with urllib.request.urlopen(catalog.server.url_for(catalog.real[0]["image_path"])) as answer:
        return bytes(answer.read())
