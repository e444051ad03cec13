"""`enrich evaluate` on two real labelled sources at once, and `enrich compare` of its reports.

The model is the untrained `tiny` one of `tests.support.models` (32 px, the vocabulary of
product-images): the figures are whatever it says, so the tests check how they are put
together, not how good they are.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from model.compare import compare
from model.errors import ModelError
from model.evaluate import EvaluateConfig, evaluate
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary
from service.cli import cli
from tests.support.models import tiny_model

PER_CATEGORY = 2
FASHION_CATEGORIES = ("212", "187", "201", "3032", "169")
"""Shirts & tops and shoes (product-images has them), and three it has not."""


def _subset(
    source: Path, target: Path, keep: Any, columns: tuple[str, ...], extra: int = 0
) -> Path:
    """Write ``target``/labels.csv: PER_CATEGORY validation rows of each category ``keep``
    accepts, plus the first ``extra`` train rows (which evaluation must leave out)."""
    chosen: dict[str, list[dict[str, str]]] = defaultdict(list)
    train: list[dict[str, str]] = []
    with source.open() as stream:
        for row in csv.DictReader(stream):
            if row["split"] == "train":
                if len(train) < extra:
                    train.append(row)
            elif keep(row) and len(chosen[row["google_category_id"]]) < PER_CATEGORY:
                chosen[row["google_category_id"]].append(row)
    target.mkdir(parents=True)
    path = target / "labels.csv"
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows([row for rows in chosen.values() for row in rows] + train)
    return path


@pytest.fixture(scope="module")
def truncated(taxonomy_file: Path) -> TruncatedTaxonomy:
    return Taxonomy.load(taxonomy_file).truncate(4)


@pytest.fixture(scope="module")
def model_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(shared_data, tmp_path_factory.mktemp("model"), "tiny-eval")


@pytest.fixture(scope="module")
def sources(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """Two sources: product-images' clothing validation rows, and a few fashion products."""
    root = tmp_path_factory.mktemp("sources")
    images = _subset(
        shared_data / "product-images" / "labels.csv",
        root / "product-images",
        lambda row: row["dataset"] == "clothing",
        ("image_path", "google_category_id", "split"),
    )
    fashion = _subset(
        shared_data / "fashion-products" / "labels.csv",
        root / "fashion-products",
        lambda row: row["google_category_id"] in FASHION_CATEGORIES,
        ("image_path", "product_id", "split", "google_category_id"),
        extra=3,
    )
    return [
        (images, shared_data / "product-images"),
        (fashion, shared_data / "fashion-products"),
    ]


@pytest.fixture(scope="module")
def values(shared_data: Path) -> tuple[Path, Path]:
    return (
        shared_data / "product-images" / "business-value.csv",
        shared_data / "fashion-products" / "business-value.csv",
    )


@pytest.fixture(scope="module")
def two_sources(
    model_dir: Path,
    sources: list[tuple[Path, Path]],
    values: tuple[Path, Path],
    taxonomy_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, Any]]:
    """The report directory and report of one evaluation on both sources."""
    output = tmp_path_factory.mktemp("report")
    config = EvaluateConfig(
        model_dir=model_dir,
        labels=None,
        images_root=None,
        taxonomy=taxonomy_file,
        business_values=values,
        output=output,
        sources=tuple(sources),
        progress=False,
    )
    return output, evaluate(config)


def _true_leaves(labels: Path, truncated: TruncatedTaxonomy) -> Counter[int]:
    """The validation rows' truncated categories of a labels file, with their counts."""
    with labels.open() as stream:
        return Counter(
            truncated.truncate_id(int(row["google_category_id"]))
            for row in csv.DictReader(stream)
            if row["split"] != "train"
        )


def _is_picture(path: Path) -> bool:
    with Image.open(path) as image:
        extrema = image.convert("L").getextrema()
        return image.size[0] > 200 and image.size[1] > 150 and extrema[0] != extrema[1]


class TestTwoSources:
    def test_each_source_has_its_figures(
        self, two_sources: tuple[Path, dict[str, Any]], sources: list[tuple[Path, Path]]
    ) -> None:
        """Each source reports its images and figures; the overall micro figure is their mix."""
        _, report = two_sources
        per_source = report["sources"]
        assert ["product-images", "fashion-products"] == [entry["name"] for entry in per_source]
        assert [16, 2 * len(FASHION_CATEGORIES)] == [entry["images"] for entry in per_source]
        assert [str(labels) for labels, _ in sources] == [e["labels"] for e in per_source]
        total = report["data"]["images"]
        assert sum(entry["images"] for entry in per_source) == total
        mixed = sum(entry["leaf_accuracy"] * entry["images"] for entry in per_source) / total
        assert mixed == pytest.approx(report["leaf_accuracy"])
        for entry in per_source:
            for key in ("leaf_accuracy", "macro_accuracy", "weighted_score", "macro_f1"):
                assert 0.0 <= entry[key] <= 1.0, (entry["name"], key)

    def test_leaves_without_examples_and_unpredictable_leaves(
        self,
        two_sources: tuple[Path, dict[str, Any]],
        sources: list[tuple[Path, Path]],
        shared_data: Path,
        truncated: TruncatedTaxonomy,
    ) -> None:
        """Model leaves no image has are listed; true leaves the model lacks count as errors."""
        _, report = two_sources
        with (shared_data / "product-images" / "labels.csv").open() as stream:
            ids = [int(row["google_category_id"]) for row in csv.DictReader(stream)]
        model_leaves = set(Vocabulary.from_labels(truncated, ids).leaves)
        true = _true_leaves(sources[0][0], truncated) + _true_leaves(sources[1][0], truncated)
        leaves = report["leaves"]
        assert len(model_leaves) == leaves["model"]
        assert sorted(model_leaves - true.keys()) == [e["id"] for e in leaves["without_examples"]]
        assert leaves["without_examples"]
        unpredictable = {e["id"]: e["images"] for e in leaves["unpredictable"]}
        assert {leaf: true[leaf] for leaf in true.keys() - model_leaves} == unpredictable
        assert 3 == len(unpredictable)
        # Recall 0 on each unpredictable leaf bounds the mean recall over the true leaves.
        assert report["macro_accuracy"] <= (len(true) - len(unpredictable)) / len(true)

    def test_calibration_bins_add_up_to_the_ece(
        self, two_sources: tuple[Path, dict[str, Any]]
    ) -> None:
        """15 bins hold every image, and the ECE is their weighted confidence gap."""
        _, report = two_sources
        bins = report["calibration"]
        total = report["data"]["images"]
        assert 15 == len(bins)
        assert total == sum(entry["count"] for entry in bins)
        gap = sum(
            entry["count"] / total * abs(entry["accuracy"] - entry["confidence"])
            for entry in bins
            if entry["count"]
        )
        assert gap == pytest.approx(report["ece"])

    def test_writes_the_report_files(self, two_sources: tuple[Path, dict[str, Any]]) -> None:
        """report.md has the per-source, leaves and calibration sections; pictures are drawn."""
        output, report = two_sources
        assert report == json.loads((output / "report.json").read_text())
        text = (output / "report.md").read_text()
        needles = [
            "## Per source",
            "| product-images (",
            "| fashion-products (",
            "macro accuracy",
            "left out of the macro averages",
            "not leaves the model can",
            "## Calibration",
            "reliability.png",
        ]
        for needle in needles:
            assert needle in text, needle
        for entry in report["leaves"]["unpredictable"]:
            assert f"{entry['name']} ({entry['id']})" in text
        for name in ("confusion_top50.png", "coverage.png", "reliability.png"):
            assert _is_picture(output / name), name

    def test_every_mistake_is_listed_and_the_most_confident_drawn(
        self, two_sources: tuple[Path, dict[str, Any]]
    ) -> None:
        """mistakes.csv has one row per wrong image (the untrained model makes many), the most
        confident first, and the report links the gallery."""
        output, report = two_sources
        with (output / "mistakes.csv").open() as stream:
            rows = list(csv.DictReader(stream))
        wrong = round(report["data"]["images"] * (1 - report["leaf_accuracy"]))
        assert len(rows) == report["mistakes"] == wrong > 0
        assert all(row["true_id"] != row["predicted_id"] for row in rows)
        confidences = [float(row["confidence"]) for row in rows]
        assert confidences == sorted(confidences, reverse=True)
        assert {row["source"] for row in rows} <= {"product-images", "fashion-products"}
        assert _is_picture(output / "mistakes.png")
        assert "![mistakes](mistakes.png)" in (output / "report.md").read_text()

    def test_a_source_without_the_split_is_named(
        self,
        model_dir: Path,
        sources: list[tuple[Path, Path]],
        values: tuple[Path, Path],
        taxonomy_file: Path,
        tmp_path: Path,
    ) -> None:
        """A source with splits but none of the one asked for is an error naming its file."""
        config = EvaluateConfig(
            model_dir, None, None, taxonomy_file, values, tmp_path, split="test",
            sources=tuple(sources), progress=False,
        )  # fmt: skip
        with pytest.raises(ModelError, match=r"product-images/labels\.csv has no rows"):
            evaluate(config)


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


class TestCommand:
    def test_pairs_of_labels_and_images(
        self,
        model_dir: Path,
        sources: list[tuple[Path, Path]],
        values: tuple[Path, Path],
        taxonomy_file: Path,
        tmp_path: Path,
    ) -> None:
        """Repeated --labels/--images pair up in order; one pair reports a single source."""
        base = ["evaluate", "--model", str(model_dir), "--taxonomy", str(taxonomy_file)]
        pairs = [
            arg
            for labels, root in sources
            for arg in ("--labels", str(labels), "--images", str(root))
        ]
        merged = ["--business-values", str(values[0]), "--business-values", str(values[1])]
        both = _invoke([*base, *pairs, *merged, "--output", str(tmp_path / "two")])
        assert 0 == both.exit_code, both.output
        assert "fashion-products: leaf accuracy" in both.output
        one = _invoke([*base, *pairs[:4], "--business-values", str(values[0]),
                       "--output", str(tmp_path / "one")])  # fmt: skip
        assert 0 == one.exit_code, one.output
        report = json.loads((tmp_path / "one" / "report.json").read_text())
        assert str(sources[0][0]) == report["data"]["labels"]
        assert ["product-images"] == [entry["name"] for entry in report["sources"]]
        assert report["sources"][0]["leaf_accuracy"] == report["leaf_accuracy"]

    @pytest.mark.parametrize(("labels", "images"), [(2, 1), (1, 2)])
    def test_unpaired_labels_and_images_are_a_usage_error(
        self,
        model_dir: Path,
        sources: list[tuple[Path, Path]],
        values: tuple[Path, Path],
        taxonomy_file: Path,
        tmp_path: Path,
        labels: int,
        images: int,
    ) -> None:
        """Counts of --labels and --images that do not pair up stop with a usage error."""
        args = ["evaluate", "--model", str(model_dir), "--taxonomy", str(taxonomy_file),
                "--business-values", str(values[0]), "--output", str(tmp_path)]  # fmt: skip
        args += [a for labels_file, _ in sources[:labels] for a in ("--labels", str(labels_file))]
        args += [a for _, root in sources[:images] for a in ("--images", str(root))]
        result = _invoke(args)
        assert 2 == result.exit_code
        assert f"got {labels} --labels and {images} --images" in result.output


class TestCompare:
    def test_new_figures_are_columns_and_old_reports_show_na(
        self, two_sources: tuple[Path, dict[str, Any]], tmp_path: Path
    ) -> None:
        """Macro accuracy, ECE and each source's leaf accuracy are columns; n/a where absent."""
        output, report = two_sources
        old = tmp_path / "old"
        old.mkdir()
        legacy = {key: value for key, value in report.items()
                  if key not in ("macro_accuracy", "ece", "sources")}  # fmt: skip
        (old / "report.json").write_text(json.dumps(legacy))
        rows = compare([output, old], tmp_path / "grid")
        for column in ("macro_accuracy", "ece", "product-images_leaf_accuracy",
                       "fashion-products_leaf_accuracy"):  # fmt: skip
            assert column in rows[0], column
        assert report["macro_accuracy"] == rows[0]["macro_accuracy"]
        assert report["sources"][1]["leaf_accuracy"] == rows[0]["fashion-products_leaf_accuracy"]
        assert rows[1]["ece"] is None
        assert rows[1]["product-images_leaf_accuracy"] is None
        assert "n/a" in (tmp_path / "grid" / "comparison.md").read_text()
