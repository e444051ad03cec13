"""Labels files, the deterministic split and image loading."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import LabelRow, assign_splits, hold_out_validation, load_images, read_labels
from model.errors import ModelError
from model.taxonomy import Taxonomy, TruncatedTaxonomy


@pytest.fixture(scope="module")
def truncated(taxonomy_file: Path) -> TruncatedTaxonomy:
    return Taxonomy.load(taxonomy_file).truncate(4)


class TestReadLabels:
    def test_reads_csv_with_split_aliases(self, tmp_path: Path) -> None:
        """A CSV row gives image, category, product id (the image when absent) and split."""
        path = tmp_path / "labels.csv"
        path.write_text(
            "image_path,google_category_id,split,product_id\na.jpg,2271,train,p1\nb.jpg,187,val,\n"
        )
        rows = read_labels(path)
        assert [
            LabelRow("a.jpg", 2271, "p1", "train", 2),
            LabelRow("b.jpg", 187, "b.jpg", "validation", 3),
        ] == rows

    def test_reads_jsonl(self, tmp_path: Path) -> None:
        """A JSONL file with a url column reads like a CSV; blank lines are skipped."""
        path = tmp_path / "labels.jsonl"
        lines = [json.dumps({"url": "http://x/a.jpg", "google_category_id": 6566}), ""]
        path.write_text("\n".join(lines))
        assert [LabelRow("http://x/a.jpg", 6566, "http://x/a.jpg", None, 1)] == read_labels(path)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("image_path,google_category_id\na.jpg,shoes\n", r"labels\.csv:2: google_category_id"),
            ("image_path,google_category_id,split\na.jpg,1,later\n", r"labels\.csv:2: split"),
            ("name,google_category_id\na.jpg,1\n", r"labels\.csv:2: no image column"),
            ("image_path,google_category_id\n", "has no rows"),
        ],
    )
    def test_bad_rows_name_file_and_line(self, tmp_path: Path, text: str, message: str) -> None:
        """A bad row is refused with the file and line that hold it."""
        path = tmp_path / "labels.csv"
        path.write_text(text)
        with pytest.raises(ModelError, match=message):
            read_labels(path)

    def test_the_shared_labels_read(self, shared_data: Path) -> None:
        """The shared labels file reads completely, with train and validation splits."""
        rows = read_labels(shared_data / "product-images" / "labels.csv")
        assert 6345 == len(rows)
        assert {"train": 5708, "validation": 637} == dict(Counter(r.split for r in rows))


class TestAssignSplits:
    def _rows(self, count: int) -> list[LabelRow]:
        categories = [2271, 187, 6566]
        return [LabelRow(f"{i}.jpg", categories[i % 3], f"product-{i}") for i in range(count)]

    def test_gives_70_15_15_per_leaf(self, truncated: TruncatedTaxonomy) -> None:
        """Without a split column each leaf is cut 70/15/15 by product id hash."""
        rows = assign_splits(self._rows(600), truncated)
        for category in (2271, 187, 6566):
            counts = Counter(r.split for r in rows if r.category_id == category)
            assert {"train": 140, "validation": 30, "test": 30} == dict(counts)

    def test_is_deterministic_and_independent_of_order(self, truncated: TruncatedTaxonomy) -> None:
        """The same products land in the same splits whatever the row order."""
        rows = self._rows(90)
        first = {r.product_id: r.split for r in assign_splits(rows, truncated)}
        second = {r.product_id: r.split for r in assign_splits(rows[::-1], truncated)}
        assert first == second

    def test_images_of_one_product_share_a_split(self, truncated: TruncatedTaxonomy) -> None:
        """Every image of a product is in the same split."""
        rows = [LabelRow(f"{i}.jpg", 2271, f"p{i // 3}") for i in range(300)]
        splits: dict[str, set[str | None]] = {}
        for row in assign_splits(rows, truncated):
            splits.setdefault(row.product_id, set()).add(row.split)
        assert all(1 == len(s) for s in splits.values())

    def test_given_splits_are_kept(self, truncated: TruncatedTaxonomy) -> None:
        """Rows that name their split keep it."""
        rows = [LabelRow("a.jpg", 2271, "a", "test"), LabelRow("b.jpg", 2271, "b", "train")]
        assert rows == assign_splits(rows, truncated)


class TestLoadImages:
    def test_decodes_in_order_and_reports_unreadable(self, tmp_path: Path) -> None:
        """Readable images come back in row order; unreadable ones are listed, not hidden."""
        Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "red.png")
        Image.new("RGB", (20, 40), (0, 0, 255)).save(tmp_path / "blue.jpg")
        (tmp_path / "broken.jpg").write_bytes(b"not an image")
        rows = [LabelRow(n, 1, n) for n in ("red.png", "broken.jpg", "blue.jpg", "missing.jpg")]
        images, failed = load_images(rows, tmp_path, 16, workers=1, progress=False)
        assert [1, 3] == failed
        assert (2, 16, 16, 3) == images.shape
        assert images[0, ..., 0].mean() > 250
        assert images[1, ..., 2].mean() > 250

    def test_cache_returns_the_same_arrays(self, tmp_path: Path) -> None:
        """A second load with a cache directory reads the cached pixels."""
        Image.new("RGB", (30, 30), (10, 200, 30)).save(tmp_path / "g.png")
        rows = [LabelRow("g.png", 1, "g")]
        cache = tmp_path / "cache"
        first, _ = load_images(rows, tmp_path, 8, cache_dir=cache, workers=1, progress=False)
        (tmp_path / "g.png").unlink()
        second, failed = load_images(rows, tmp_path, 8, cache_dir=cache, workers=1, progress=False)
        assert [] == failed
        np.testing.assert_array_equal(first, second)

    def test_urls_are_refused(self, tmp_path: Path) -> None:
        """A URL in a training labels file points the user at the dataset builder."""
        rows = [LabelRow("https://example.com/a.jpg", 1, "a", line=2)]
        with pytest.raises(ModelError, match="build-dataset"):
            load_images(rows, tmp_path, 8, progress=False)


class TestHoldOutValidation:
    def test_file_validation_becomes_test_and_train_gives_validation(
        self, truncated: TruncatedTaxonomy
    ) -> None:
        """The file's validation rows are set aside; a tenth of each leaf's train validates."""
        rows = [LabelRow(f"t{i}.jpg", 2271, f"t{i}", "train") for i in range(100)]
        rows += [LabelRow(f"v{i}.jpg", 2271, f"v{i}", "validation") for i in range(20)]
        out = hold_out_validation(rows, truncated, 0.1)
        assert {"train": 90, "validation": 10, "test": 20} == dict(Counter(r.split for r in out))
        assert all(r.split == "test" for r in out if r.product_id.startswith("v"))

    def test_fraction_must_be_a_share(self, truncated: TruncatedTaxonomy) -> None:
        """A fraction outside (0, 1) is refused."""
        with pytest.raises(ModelError, match="fraction"):
            hold_out_validation([], truncated, 1.5)
