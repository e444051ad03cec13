"""Labels files, the deterministic split and image loading."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import model.data
from model.data import (
    LabelRow,
    assign_splits,
    hold_out_validation,
    load_images,
    read_labels,
    read_sources,
)
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


def _labels_file(folder: Path, lines: list[str]) -> Path:
    """Write ``labels.csv`` (image_path,google_category_id,product_id,split) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "labels.csv"
    path.write_text("image_path,google_category_id,product_id,split\n" + "\n".join(lines) + "\n")
    return path


class TestReadSources:
    def test_names_sources_and_makes_paths_absolute(self, tmp_path: Path) -> None:
        """Each row names its source (the labels file's folder) and its image's absolute path."""
        shop = _labels_file(tmp_path / "shop", ["a.jpg,2271,p1,train", "b/c.jpg,187,p2,val"])
        catalog = _labels_file(tmp_path / "catalog", ["x.jpg,212,q1,train"])
        images = tmp_path / "images"
        rows = read_sources([(shop, images), (catalog, tmp_path / "catalog" / ".." / "photos")])
        assert [
            LabelRow(str(images / "a.jpg"), 2271, "p1", "train", 2, "shop"),
            LabelRow(str(images / "b" / "c.jpg"), 187, "p2", "validation", 3, "shop"),
            LabelRow(str(tmp_path / "photos" / "x.jpg"), 212, "q1", "train", 2, "catalog"),
        ] == rows

    def test_one_source_reads_like_read_labels(self, tmp_path: Path) -> None:
        """A single source gives read_labels' rows, with the source and absolute images."""
        path = _labels_file(tmp_path / "shop", ["a.jpg,2271,p1,train", "b.jpg,187,,"])
        expected = [
            LabelRow(str(tmp_path / r.image), r.category_id, r.product_id, r.split, r.line, "shop")
            for r in read_labels(path)
        ]
        assert expected == read_sources([(path, tmp_path)])

    @pytest.mark.parametrize(
        ("folders", "names"),
        [
            (["a/shop", "b/shop"], ["shop", "shop-2"]),
            (["a/shop", "b/shop", "c/shop", "d/other"], ["shop", "shop-2", "shop-3", "other"]),
            (["a/shop", "shop-2", "b/shop"], ["shop", "shop-2", "shop-3"]),
        ],
    )
    def test_same_folder_names_get_a_number(
        self, tmp_path: Path, folders: list[str], names: list[str]
    ) -> None:
        """Sources whose labels files sit in folders of the same name are told apart by -2, -3."""
        sources = [
            (_labels_file(tmp_path / folder, [f"{i}.jpg,2271,p{i},train"]), tmp_path)
            for i, folder in enumerate(folders)
        ]
        assert names == [row.source for row in read_sources(sources)]

    def test_a_product_id_two_sources_share_is_prefixed_in_both(self, tmp_path: Path) -> None:
        """An id in two sources becomes '<source>:<id>' in each; ids of one source stay."""
        shop_lines = ["a.jpg,2271,p1,", "b.jpg,2271,p1,", "c.jpg,187,p2,"]
        shop = _labels_file(tmp_path / "shop", shop_lines)
        catalog = _labels_file(tmp_path / "catalog", ["a.jpg,212,p1,", "d.jpg,212,,"])
        rows = read_sources([(shop, tmp_path), (catalog, tmp_path)])
        assert ["shop:p1", "shop:p1", "p2", "catalog:p1", "d.jpg"] == [r.product_id for r in rows]

    def test_urls_stay_and_images_of_every_source_load(self, tmp_path: Path) -> None:
        """A URL row is kept as given; files of two roots load with load_images under '/'."""
        Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "red.png")
        (tmp_path / "other").mkdir()
        Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "other" / "blue.png")
        shop = _labels_file(tmp_path / "shop", ["red.png,2271,p1,", "https://x/y.jpg,187,p2,"])
        catalog = _labels_file(tmp_path / "catalog", ["blue.png,212,q1,"])
        rows = read_sources([(shop, tmp_path), (catalog, tmp_path / "other")])
        assert "https://x/y.jpg" == rows[1].image
        files = [rows[0], rows[2]]
        images, failed = load_images(files, Path("/"), 8, workers=1, progress=False)
        assert [] == failed
        assert images[0, ..., 0].mean() > 250
        assert images[1, ..., 2].mean() > 250

    def test_no_sources_is_refused(self) -> None:
        """An empty list of sources is an error, not an empty dataset."""
        with pytest.raises(ModelError, match="no labelled sources"):
            read_sources([])


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

    @pytest.mark.parametrize(
        ("products", "fractions", "expected"),
        [
            (1, (0.70, 0.15, 0.15), {"train": 1}),
            (2, (0.70, 0.15, 0.15), {"train": 1, "test": 1}),
            (3, (0.70, 0.15, 0.15), {"train": 2, "test": 1}),
            (1, (0.50, 0.25, 0.25), {"train": 1}),
            (2, (0.50, 0.25, 0.25), {"train": 1, "test": 1}),
            (3, (0.50, 0.25, 0.25), {"train": 2, "validation": 1}),
            (1, (0.0, 0.5, 0.5), {"test": 1}),
        ],
    )
    def test_a_long_tail_leaf_keeps_a_train_product(
        self,
        truncated: TruncatedTaxonomy,
        products: int,
        fractions: tuple[float, float, float],
        expected: dict[str, int],
    ) -> None:
        """A leaf of 1 to 3 products always has one in train (unless train's share is 0)."""
        rows = [LabelRow(f"{i}.jpg", 6566, f"apple-{i}") for i in range(products)]
        rows += [LabelRow(f"s{i}.jpg", 187, f"shoe-{i}") for i in range(40)]
        split = assign_splits(rows, truncated, fractions)
        assert expected == dict(Counter(r.split for r in split if r.category_id == 6566))

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

    def test_cache_returns_the_same_arrays(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second load of unchanged files reads the cached pixels without decoding."""
        Image.new("RGB", (30, 30), (10, 200, 30)).save(tmp_path / "g.png")
        rows = [LabelRow("g.png", 1, "g")]
        cache = tmp_path / "cache"
        first, _ = load_images(rows, tmp_path, 8, cache_dir=cache, workers=1, progress=False)

        def no_decoding(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("decoded again instead of reading the cache")

        monkeypatch.setattr(model.data, "ProcessPoolExecutor", no_decoding)
        second, failed = load_images(rows, tmp_path, 8, cache_dir=cache, workers=1, progress=False)
        assert [] == failed
        np.testing.assert_array_equal(first, second)

    @pytest.mark.parametrize(
        ("change", "colour"),
        [
            ("rewritten", (200, 10, 30)),
            ("replaced by a larger file", (200, 10, 30)),
            ("touched", (10, 200, 30)),
        ],
    )
    def test_a_changed_image_is_decoded_again(
        self, tmp_path: Path, change: str, colour: tuple[int, int, int]
    ) -> None:
        """Rewriting or touching an image changes the cache key: its new pixels are read."""
        image = tmp_path / "g.png"
        Image.new("RGB", (30, 30), (10, 200, 30)).save(image)
        rows = [LabelRow("g.png", 1, "g")]
        cache = tmp_path / "cache"
        load_images(rows, tmp_path, 8, cache_dir=cache, workers=1, progress=False)
        before = os.stat(image).st_mtime_ns
        if change == "touched":
            os.utime(image, ns=(before + 10**9, before + 10**9))
        else:
            side = 40 if change.startswith("replaced") else 30
            Image.new("RGB", (side, side), colour).save(image)
            # A file system with coarse timestamps may give the same mtime: move it on.
            os.utime(image, ns=(before + 10**9, before + 10**9))
        again, failed = load_images(rows, tmp_path, 8, cache_dir=cache, workers=1, progress=False)
        assert [] == failed
        assert 2 == len(list(cache.glob("images-8px-*.npz")))
        np.testing.assert_array_equal(np.full((8, 8, 3), colour, dtype=np.uint8), again[0])

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

    @pytest.mark.parametrize("products", [1, 2, 3])
    @pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
    def test_a_long_tail_leaf_keeps_a_train_product(
        self, truncated: TruncatedTaxonomy, products: int, fraction: float
    ) -> None:
        """However large the fraction, a leaf of 1 to 3 train products keeps one in train."""
        rows = [LabelRow(f"{i}.jpg", 6566, f"apple-{i}", "train") for i in range(products)]
        rows += [LabelRow(f"s{i}.jpg", 187, f"shoe-{i}", "train") for i in range(40)]
        out = hold_out_validation(rows, truncated, fraction)
        apples = Counter(r.split for r in out if r.category_id == 6566)
        assert products == apples["train"] + apples["validation"]
        assert apples["train"] >= 1
        if fraction == 0.1:
            assert {"train": products} == dict(apples)

    def test_fraction_must_be_a_share(self, truncated: TruncatedTaxonomy) -> None:
        """A fraction outside (0, 1) is refused."""
        with pytest.raises(ModelError, match="fraction"):
            hold_out_validation([], truncated, 1.5)
