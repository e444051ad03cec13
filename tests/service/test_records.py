"""Products in, enrichment records out: bounded fields, a reason for every status."""

from __future__ import annotations

import datetime as dt

import pytest

from model.decode import Alternative, PathNode, Prediction
from service.records import enrichment, parse_product

UPDATED = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
MODEL = {"name": "m", "version": "1", "backbone": "b", "taxonomy_version": "t", "depth": 4}


def _product(**fields: object) -> dict[str, object]:
    return {"product_id": "p-1", "partner_id": "shop", "image_url": "http://img.test/a.jpg",
            "updated_at": UPDATED, **fields}  # fmt: skip


class TestParseProduct:
    def test_a_product_id_too_long_to_key_an_output_is_refused(self) -> None:
        """It cannot be cut (it is the key): the record goes to the dead-letter topic."""
        with pytest.raises(ValueError, match="over the 1024 that key an output"):
            parse_product(_product(product_id="p" * 1025))

    def test_a_partner_id_over_the_bound_is_cut_and_the_product_invalid(self) -> None:
        """A 1.1 MB partner_id gives a small, valid INVALID_INPUT output saying why."""
        product, invalid = parse_product(_product(partner_id="x" * 1_100_000))
        assert "x" * 256 == product.partner_id
        assert invalid == "partner_id is 1100000 characters, over 256 (cut in this record)"

    def test_bounds_count_characters_and_bytes_as_documented(self) -> None:
        """A 1,024-byte product_id and a 256-character partner_id are fine."""
        product, invalid = parse_product(_product(product_id="é" * 512, partner_id="ü" * 256))
        assert (None, "é" * 512) == (invalid, product.product_id)


def _prediction(status: str) -> Prediction:
    root = PathNode(1, 10, "Apparel", 0.97)
    return Prediction(
        status=status,  # type: ignore[arg-type]
        category_id=10, leaf_id=12, path=(root,), confidence=0.97,
        alternatives=(Alternative(12, "Apparel > Shirts", 0.41),),
    )  # fmt: skip


class TestEnrichment:
    def test_low_confidence_says_why_in_error(self) -> None:
        """The best leaf, its probability and the ancestor answered instead."""
        product, _ = parse_product(_product())
        prediction = _prediction("LOW_CONFIDENCE")
        record = enrichment(product, status="LOW_CONFIDENCE", model=MODEL, source=("in", 0, 1),
                            prediction=prediction)  # fmt: skip
        assert record["error"] == (
            "the best leaf (Apparel > Shirts, 0.41) is under the confidence threshold; category "
            "is its deepest ancestor that cleared it (Apparel, 0.97)"
        )

    def test_classified_has_no_error(self) -> None:
        """error explains every status but CLASSIFIED."""
        product, _ = parse_product(_product())
        record = enrichment(product, status="CLASSIFIED", model=MODEL, source=("in", 0, 1),
                            prediction=_prediction("CLASSIFIED"))  # fmt: skip
        assert record["error"] is None

    def test_a_long_error_is_cut(self) -> None:
        """error stays within 1,000 characters whatever produced it."""
        product, _ = parse_product(_product())
        record = enrichment(product, status="IMAGE_INVALID", model=MODEL, source=("in", 0, 1),
                            error="e" * 5000)  # fmt: skip
        assert 1000 == len(record["error"])
