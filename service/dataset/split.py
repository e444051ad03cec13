"""The 70/15/15 split of a dataset: by product id hash, stratified by leaf, content-safe.

Each product first gets the split `model.data.assign_splits` gives it among all labelled
products (so a product's split does not move when others fail or are retried). Then the
products sharing one content hash (the same image under several ids) all take the split of
the first of them by product id, so no image is in two splits and the test set cannot leak.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence

from model.data import LabelRow, assign_splits
from model.taxonomy import TruncatedTaxonomy

__all__ = ["split_products"]


def split_products(
    labelled: Sequence[LabelRow],
    content: Mapping[str, str],
    truncated: TruncatedTaxonomy,
) -> dict[str, str]:
    """The split of every product in `content` (product id → sha256 of its image)."""
    unsplit = [LabelRow(r.image, r.category_id, r.product_id, None, r.line) for r in labelled]
    base = {row.product_id: row.split or "" for row in assign_splits(unsplit, truncated)}
    groups: dict[str, list[str]] = defaultdict(list)
    for product_id, sha256 in content.items():
        groups[sha256].append(product_id)
    split_of: dict[str, str] = {}
    for products in groups.values():
        ordered = sorted(products)
        chosen = base[ordered[0]]
        for product_id in ordered:
            split_of[product_id] = chosen
    return split_of
