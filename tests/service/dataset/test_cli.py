"""`enrich build-dataset` and `enrich train --dataset` end to end, through the CLI."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli
from tests.service.dataset.conftest import Catalog

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def real_labels(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalog's real images and its 404 only, as CSV (quick to build with the defaults)."""
    rows = [
        json.loads(line)
        for line in catalog.labels.read_text().splitlines()
        if json.loads(line)["product_id"].startswith("real-")
        or json.loads(line)["product_id"] == "fail-missing"
    ]
    path = tmp_path_factory.mktemp("cli") / "labels.csv"
    lines = ["product_id,image_url,google_category_id"]
    lines += [f"{r['product_id']},{r['image_url']},{r['google_category_id']}" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


class TestBuildDatasetCommand:
    def test_builds_then_trains_from_the_shards(
        self, real_labels: Path, taxonomy_file: Path, tmp_path: Path, catalog: Catalog
    ) -> None:
        """The built folder trains a tiny model for one epoch with `enrich train --dataset`."""
        dataset = tmp_path / "dataset"
        runner = CliRunner()
        built = runner.invoke(
            cli,
            [
                "build-dataset",
                "--labels",
                str(real_labels),
                "--taxonomy",
                str(taxonomy_file),
                "--output",
                str(dataset),
                "--image-size",
                "32",
                "--shard-size",
                "25",
                "--concurrency",
                "8",
                "--allowed-networks",
                "127.0.0.0/8",
                "--no-progress",
                "--no-cache",
            ],
            catch_exceptions=False,
        )
        assert 0 == built.exit_code, built.output
        assert f"{len(catalog.real)} of {len(catalog.real) + 1} products kept" in built.output
        stats = (dataset / "stats.json").read_text()
        merged = runner.invoke(
            cli,
            [
                "build-dataset",
                "finalize",
                "--output",
                str(dataset),
                "--taxonomy",
                str(taxonomy_file),
            ],
            catch_exceptions=False,
        )
        assert 0 == merged.exit_code, merged.output
        assert stats == (dataset / "stats.json").read_text()
        run = tmp_path / "run"
        trained = runner.invoke(
            cli,
            [
                "train",
                "--dataset",
                str(dataset),
                "--taxonomy",
                str(taxonomy_file),
                "--output",
                str(run),
                "--backbone",
                "tiny",
                "--image-size",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--verbose",
                "0",
            ],
            catch_exceptions=False,
        )
        assert 0 == trained.exit_code, trained.output
        assert (run / "model" / "model.keras").exists()
        assert len(catalog.real) == sum(
            json.loads((run / "model" / "metadata.json").read_text())["training"]["images"].values()
        ) + sum(1 for line in (dataset / "split.csv").read_text().splitlines() if ",test" in line)

    @pytest.mark.parametrize(
        ("flags", "message"),
        [
            (["--output", "x"], "--taxonomy and --output are required"),
            (["--output", "x", "--taxonomy", "{taxonomy}"], "exactly one of --labels"),
            (
                [
                    "--output",
                    "x",
                    "--taxonomy",
                    "{taxonomy}",
                    "--kafka-topic",
                    "t",
                    "--retry-failed",
                ],
                "use it without Kafka",
            ),
        ],
    )
    def test_usage_errors(self, flags: list[str], message: str, taxonomy_file: Path) -> None:
        """Missing or conflicting inputs are usage errors that say what to give."""
        args = [f.format(taxonomy=taxonomy_file) for f in flags]
        result = CliRunner().invoke(cli, ["build-dataset", *args])
        assert (2, True) == (result.exit_code, message in result.output)

    def test_train_refuses_dataset_with_labels(self, taxonomy_file: Path, tmp_path: Path) -> None:
        """--dataset and --labels together are a usage error."""
        labels = tmp_path / "labels.csv"
        labels.write_text("image_path,google_category_id\na.jpg,1\n")
        result = CliRunner().invoke(
            cli,
            [
                "train",
                "--dataset",
                str(tmp_path),
                "--labels",
                str(labels),
                "--images",
                str(tmp_path),
                "--taxonomy",
                str(taxonomy_file),
                "--output",
                str(tmp_path / "run"),
            ],
        )
        assert 2 == result.exit_code
        assert "either --dataset or --labels" in result.output
