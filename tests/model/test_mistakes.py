"""The mistakes of an evaluation (model/mistakes.py): which images are listed, in what order,
how the table and the gallery are written, and what is refused."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import LabelRow
from model.decode import Alternative, Prediction
from model.errors import ModelError
from model.mistakes import find_mistakes, plot_mistakes, write_mistakes_csv
from model.taxonomy import Taxonomy, TruncatedTaxonomy

SHIRTS, DRESSES, SKIRTS = 212, 2271, 1581


@pytest.fixture(scope="module")
def truncated(taxonomy_file: Path) -> TruncatedTaxonomy:
    return Taxonomy.load(taxonomy_file).truncate(4)


def _prediction(leaf: int, probability: float) -> Prediction:
    return Prediction(
        status="CLASSIFIED", category_id=leaf, leaf_id=leaf, path=(), confidence=probability,
        alternatives=(Alternative(leaf, "", 0.01),),
    )  # fmt: skip


def _rows(count: int) -> list[LabelRow]:
    return [LabelRow(f"/img/{i}.jpg", 0, f"p{i}", source="product-images") for i in range(count)]


def test_only_wrong_images_are_listed_the_most_confident_first(
    truncated: TruncatedTaxonomy,
) -> None:
    true = [DRESSES, SHIRTS, DRESSES, SKIRTS]
    said = [_prediction(SHIRTS, 0.6), _prediction(SHIRTS, 0.99),
            _prediction(SHIRTS, 0.9), _prediction(DRESSES, 0.6)]  # fmt: skip

    found = find_mistakes(_rows(4), true, said, truncated)

    assert [m.index for m in found] == [2, 0, 3]
    assert found[0].true_name == "Dresses"
    assert found[0].predicted_name == "Shirts & Tops"
    assert found[0].confidence == pytest.approx(0.9)
    assert found[0].image == "/img/2.jpg"


def test_rows_labels_and_predictions_of_different_lengths_are_refused(
    truncated: TruncatedTaxonomy,
) -> None:
    with pytest.raises(ModelError, match="3 rows, 2 labels and 2 predictions"):
        find_mistakes(_rows(3), [SHIRTS, SHIRTS], [_prediction(SHIRTS, 1.0)] * 2, truncated)


def test_the_table_has_a_row_per_mistake_and_a_header_without_any(
    truncated: TruncatedTaxonomy, tmp_path: Path
) -> None:
    said = [_prediction(SHIRTS, 0.87654), _prediction(SHIRTS, 1.0)]
    found = find_mistakes(_rows(2), [DRESSES, SHIRTS], said, truncated)
    write_mistakes_csv(found, tmp_path / "some.csv")
    write_mistakes_csv([], tmp_path / "none.csv")

    with (tmp_path / "some.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert rows == [{"index": "0", "image": "/img/0.jpg", "source": "product-images",
                     "true_id": str(DRESSES), "true_name": "Dresses",
                     "predicted_id": str(SHIRTS), "predicted_name": "Shirts & Tops",
                     "confidence": "0.8765"}]  # fmt: skip
    assert (tmp_path / "none.csv").read_text().splitlines() == [",".join(rows[0])]


def test_an_unwritable_table_is_a_model_error(truncated: TruncatedTaxonomy, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot write the mistakes"):
        write_mistakes_csv([], tmp_path / "missing" / "m.csv")


def test_the_gallery_draws_at_most_the_limit_and_refuses_nothing_to_draw(
    truncated: TruncatedTaxonomy, tmp_path: Path
) -> None:
    count = 9
    said = [_prediction(SHIRTS, 0.5 + i / 20) for i in range(count)]
    found = find_mistakes(_rows(count), [DRESSES] * count, said, truncated)
    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)

    drawn = plot_mistakes(found, images, tmp_path / "m.png", title="t", limit=7)

    assert drawn == 7
    with Image.open(tmp_path / "m.png") as picture:
        assert picture.format == "PNG"
        assert picture.width > picture.height  # 6 columns, 2 rows
    with pytest.raises(ModelError, match="no mistakes"):
        plot_mistakes([], images, tmp_path / "none.png", title="t")
    assert not (tmp_path / "none.png").exists()
