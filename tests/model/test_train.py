"""Train smoke test: real shared images through `enrich train`, `evaluate` and `compare`."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from service.cli import cli
from tests.support.labels import write_small_labels

pytestmark = pytest.mark.slow

PER_LEAF = {"train": 3, "validation": 2}


@pytest.fixture(scope="module")
def small_labels(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few dozen real shared images: 3 train and 2 validation per depth-5 class."""
    path = tmp_path_factory.mktemp("labels") / "labels.csv"
    return write_small_labels(shared_data, path, PER_LEAF)


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert 0 == result.exit_code, result.output
    return result.output


def _is_picture(path: Path) -> bool:
    with Image.open(path) as image:
        extrema = image.convert("L").getextrema()
        return image.size[0] > 200 and image.size[1] > 150 and extrema[0] != extrema[1]


@pytest.mark.parametrize("heads", ["multi", "leaf", "marginal"])
def test_train_evaluate_compare_write_every_file(
    heads: str, small_labels: Path, shared_data: Path, taxonomy_file: Path, tmp_path: Path
) -> None:
    """One epoch of the tiny backbone trains, resumes, exports, evaluates and compares."""
    images = shared_data / "product-images"
    values = images / "business-value.csv"
    run = tmp_path / "run"
    common = [
        "--labels", str(small_labels), "--images", str(images),
        "--taxonomy", str(taxonomy_file),
    ]  # fmt: skip
    train = [
        "train", *common, "--output", str(run), "--backbone", "tiny", "--image-size", "32",
        "--batch-size", "16", "--heads", heads, "--business-values", str(values),
    ]  # fmt: skip
    output = _invoke([*train, "--epochs", "1"])
    assert "trained 1 epochs" in output
    for name in ("model/model.keras", "model/metadata.json", "model/checksums.sha256",
                 "history.json", "split.csv", "checkpoints/last.keras",
                 "checkpoints/state.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert _is_picture(run / "training_curves.png")

    _invoke([*train, "--epochs", "2", "--resume"])
    history = json.loads((run / "history.json").read_text())
    assert 2 == len(history["loss"])
    assert 2 == len(history["val_weighted_score"])
    metadata = json.loads((run / "model" / "metadata.json").read_text())
    assert heads == metadata["heads"]
    assert 2 == metadata["training"]["epochs"]

    report_dir = tmp_path / "report"
    _invoke(["evaluate", "--model", str(run / "model"), *common, "--business-values",
             str(values), "--output", str(report_dir)])  # fmt: skip
    report = json.loads((report_dir / "report.json").read_text())
    assert 16 * PER_LEAF["validation"] <= report["data"]["images"]
    assert 0.0 <= report["leaf_accuracy"] <= 1.0
    assert 0.0 <= report["weighted_score"] <= 1.0
    assert [1, 2, 3, 4] == [entry["level"] for entry in report["levels"]]
    assert report["inference"]["images_per_s"] > 0
    for name in ("report.md", "confusion_top50.csv"):
        assert (report_dir / name).stat().st_size > 0
    for name in ("confusion_top50.png", "coverage.png"):
        assert _is_picture(report_dir / name), name

    grid = tmp_path / "grid"
    _invoke(["compare", str(report_dir), str(report_dir), "--output", str(grid)])
    with (grid / "comparison.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert 2 == len(rows)
    assert "tiny" == rows[0]["backbone"]
    assert "| report |" in (grid / "comparison.md").read_text()
    assert _is_picture(grid / "comparison.png")


class _FakeMlflow:
    """Records what training sends to MLflow (the real one needs a tracking server)."""

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[str] = []

    def start_run(self, run_name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def log_params(self, params: dict[str, str]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, metrics))

    def log_artifacts(self, path: str, artifact_path: str | None = None) -> None:
        self.artifacts.append(path)

    def log_artifact(self, path: str) -> None:
        self.artifacts.append(path)


def test_mlflow_gets_parameters_metrics_per_epoch_and_artifacts(
    small_labels: Path, shared_data: Path, taxonomy_file: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """With MLflow configured, parameters, per-level metrics each epoch and the model are logged."""
    from model import train as training

    fake = _FakeMlflow()
    monkeypatch.setattr(training, "_mlflow", lambda: fake)
    training.train(
        training.TrainConfig(
            labels=small_labels, images_root=shared_data / "product-images",
            taxonomy=taxonomy_file, output=tmp_path / "run", backbone="tiny", image_size=32,
            epochs=2, batch_size=16, verbose=0,
        )
    )  # fmt: skip
    assert "tiny" == fake.params["backbone"]
    assert [0, 1] == [step for step, _ in fake.metrics]
    for key in ("level_4_accuracy", "level_4_loss", "level_4_top5_accuracy", "val_weighted_score"):
        assert key in fake.metrics[-1][1]
    assert any(path.endswith("model") for path in fake.artifacts)
    assert any(path.endswith("training_curves.png") for path in fake.artifacts)
