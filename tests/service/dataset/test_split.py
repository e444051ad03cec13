"""The dataset split: by product id, stratified by leaf, identical content kept together."""

from collections import Counter
from pathlib import Path

import pytest

from model.data import LabelRow
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from service.dataset.split import split_products

LEAVES = (2271, 5598)


@pytest.fixture(scope="module")
def truncated(taxonomy_file: Path) -> TruncatedTaxonomy:
    """The real taxonomy at depth 4."""
    return Taxonomy.load(taxonomy_file).truncate(4)


def _rows(count: int) -> list[LabelRow]:
    return [
        LabelRow(f"http://x/{i}.jpg", LEAVES[i % 2], f"p{i:04d}", "train" if i % 3 else None)
        for i in range(count)
    ]


class TestSplitProducts:
    def test_70_15_15_per_leaf(self, truncated: TruncatedTaxonomy) -> None:
        """With distinct content, each leaf is cut 70/15/15 (a split in the file is ignored)."""
        rows = _rows(200)
        split_of = split_products(rows, {r.product_id: r.product_id for r in rows}, truncated)
        for leaf in LEAVES:
            counts = Counter(split_of[r.product_id] for r in rows if r.category_id == leaf)
            assert {"train": 70, "validation": 15, "test": 15} == counts

    def test_same_content_same_split(self, truncated: TruncatedTaxonomy) -> None:
        """All products with one content hash take the split of the first by product id."""
        rows = _rows(200)
        content = {
            r.product_id: "same" if i % 10 == 0 else r.product_id for i, r in enumerate(rows)
        }
        split_of = split_products(rows, content, truncated)
        alone = split_products(rows, {r.product_id: r.product_id for r in rows}, truncated)
        shared = {split_of[p] for p, sha in content.items() if sha == "same"}
        assert {alone["p0000"]} == shared

    def test_stable_when_others_fail(self, truncated: TruncatedTaxonomy) -> None:
        """A product's split does not move when other products have no content."""
        rows = _rows(100)
        everything = split_products(rows, {r.product_id: r.product_id for r in rows}, truncated)
        half = split_products(rows, {r.product_id: r.product_id for r in rows[::2]}, truncated)
        assert {p: everything[p] for p in half} == half
