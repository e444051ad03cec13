"""`enrich train --text` and `enrich evaluate` of a text model, through the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from model.classifier import METADATA_FILE
from service.cli import cli
from tests.support.labels import write_small_titles
from tests.support.models import tiny_model

CLASSES = ("212", "187", "5598", "2668", "209", "100")


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def titles(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real fashion titles of six leaves with their split, no image column."""
    path = tmp_path_factory.mktemp("titles") / "titles.csv"
    return write_small_titles(shared_data, path, {"train": 30, "validation": 6}, CLASSES)


@pytest.fixture(scope="module")
def text_run(titles: Path, taxonomy_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`enrich train --text` on the small titles file: the run directory and the result."""
    output = tmp_path_factory.mktemp("run")
    result = _invoke(
        [
            "train",
            "--text",
            "--labels",
            str(titles),
            "--taxonomy",
            str(taxonomy_file),
            "--output",
            str(output),
            "--heads",
            "leaf",
            "--epochs",
            "4",
            "--batch-size",
            "16",
            "--learning-rate",
            "0.05",
            "--verbose",
            "0",
        ]
    )
    return output, result


def test_train_text_writes_a_text_model_directory(text_run: Any) -> None:
    """`train --text` needs no --images and exports a text model directory."""
    output, result = text_run
    assert 0 == result.exit_code, result.output
    assert "trained the text classifier" in result.output
    metadata = json.loads((output / "model" / METADATA_FILE).read_text())
    assert ("text", "leaf", "catalog-text-classifier") == (
        metadata["modality"],
        metadata["heads"],
        metadata["name"],
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "."], "--images: not used by --text"),
        (["--backbone", "efficientnet_lite0", "--no-augment"], "--backbone, --augment"),
        (["--weights", "imagenet-lite"], "--weights: not used by --text"),
    ],
)
def test_image_options_with_text_are_a_usage_error(
    titles: Path, taxonomy_file: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    """Image-only options given with --text stop with a usage error naming them."""
    result = _invoke(
        [
            "train",
            "--text",
            "--labels",
            str(titles),
            "--taxonomy",
            str(taxonomy_file),
            "--output",
            str(tmp_path),
            *extra,
        ]
    )
    assert 2 == result.exit_code
    assert message in result.output


def test_text_without_labels_is_a_usage_error(taxonomy_file: Path, tmp_path: Path) -> None:
    """`train --text` without --labels stops with a usage error."""
    result = _invoke(
        ["train", "--text", "--taxonomy", str(taxonomy_file), "--output", str(tmp_path)]
    )
    assert 2 == result.exit_code
    assert "--text needs --labels" in result.output


def test_evaluate_a_text_model_prints_every_level(
    text_run: Any, titles: Path, taxonomy_file: Path, tmp_path: Path
) -> None:
    """`evaluate` of a text model reads titles, no --images, and prints accuracy per level."""
    output, _ = text_run
    result = _invoke(
        [
            "evaluate",
            "--model",
            str(output / "model"),
            "--labels",
            str(titles),
            "--taxonomy",
            str(taxonomy_file),
            "--output",
            str(tmp_path),
        ]
    )
    assert 0 == result.exit_code, result.output
    assert "text model: leaf accuracy" in result.output
    for level in (1, 2, 3, 4):
        assert f"level {level}: accuracy" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert 36 == report["data"]["products"]


def test_evaluate_a_text_model_with_images_is_a_usage_error(
    text_run: Any, titles: Path, taxonomy_file: Path, tmp_path: Path
) -> None:
    """--images given for a text model stops with a usage error."""
    output, _ = text_run
    result = _invoke(
        [
            "evaluate",
            "--model",
            str(output / "model"),
            "--labels",
            str(titles),
            "--images",
            str(tmp_path),
            "--taxonomy",
            str(taxonomy_file),
            "--output",
            str(tmp_path),
        ]
    )
    assert 2 == result.exit_code
    assert "is a text model: --images is not used" in result.output


@pytest.mark.parametrize("missing", ["--images", "--business-values"])
def test_evaluate_an_image_model_still_needs_images_and_values(
    titles: Path, shared_data: Path, taxonomy_file: Path, tmp_path: Path, missing: str
) -> None:
    """For an image model, --images and --business-values stay required (a usage error)."""
    model_dir = tiny_model(shared_data, tmp_path / "model", "tiny")
    given = {"--images": str(tmp_path), "--business-values": str(titles)}
    del given[missing]
    result = _invoke(
        [
            "evaluate",
            "--model",
            str(model_dir),
            "--labels",
            str(titles),
            "--taxonomy",
            str(taxonomy_file),
            "--output",
            str(tmp_path / "report"),
            *[arg for pair in given.items() for arg in pair],
        ]
    )
    assert 2 == result.exit_code
    assert f"Missing option '{missing}'" in result.output


def test_text_features_sets_the_feature_count(
    titles: Path, taxonomy_file: Path, tmp_path: Path
) -> None:
    """`train --text --text-features 64` exports a model that takes 64 features."""
    result = _invoke(
        ["train", "--text", "--text-features", "64", "--labels", str(titles), "--taxonomy",
         str(taxonomy_file), "--output", str(tmp_path), "--epochs", "1", "--verbose", "0"]
    )  # fmt: skip
    assert 0 == result.exit_code, result.output
    metadata = json.loads((tmp_path / "model" / METADATA_FILE).read_text())
    assert 64 == metadata["input_size"]
    assert 64 == metadata["text_features"]["dim"]


def test_text_features_without_text_is_a_usage_error(
    titles: Path, taxonomy_file: Path, tmp_path: Path
) -> None:
    """--text-features is refused for image training, which has no text features."""
    result = _invoke(
        ["train", "--text-features", "64", "--labels", str(titles), "--images", ".",
         "--taxonomy", str(taxonomy_file), "--output", str(tmp_path)]
    )  # fmt: skip
    assert 2 == result.exit_code
    assert "--text-features: only used by --text" in result.output
