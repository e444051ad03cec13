"""The text classifier: training on real titles, the model directory, abstention, evaluation."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model.classifier import CHECKSUMS_FILE, METADATA_FILE, MODEL_FILE, Classifier
from model.decode import CLASSIFIED, LOW_CONFIDENCE
from model.errors import ModelError
from model.prepare import TrainResult
from model.text_classifier import TEXT_BACKBONE, TextClassifier
from model.text_features import TextFeaturizer, TextFields
from model.text_train import TextTrainConfig, evaluate_text, read_text_rows, train_text
from tests.support.labels import write_small_titles
from tests.support.models import tiny_model

# Six depth-4 leaves of the fashion titles, under two roots and at depths 2 to 4: shirts &
# tops, shoes, coats & jackets, wallets, socks (Apparel & Accessories), backpacks (Luggage &
# Bags).
CLASSES = ("212", "187", "5598", "2668", "209", "100")
PER_SPLIT = {"train": 50, "validation": 8}


@pytest.fixture(scope="module")
def titles(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real fashion titles of six leaves, with their train/validation split, no image column."""
    path = tmp_path_factory.mktemp("titles") / "titles.csv"
    return write_small_titles(shared_data, path, PER_SPLIT, CLASSES)


def _config(titles: Path, taxonomy_file: Path, output: Path, **changes: object) -> TextTrainConfig:
    config = TextTrainConfig(
        labels=(titles,),
        taxonomy=taxonomy_file,
        output=output,
        heads="marginal",
        epochs=15,
        batch_size=16,
        learning_rate=5e-2,
        patience=5,
        verbose=0,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(
    titles: Path, taxonomy_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    """One marginal-heads text model trained on the small titles file."""
    output = tmp_path_factory.mktemp("text-run")
    return train_text(_config(titles, taxonomy_file, output))


def _validation(titles: Path) -> list[dict[str, str]]:
    with titles.open() as stream:
        return [row for row in csv.DictReader(stream) if row["split"] == "validation"]


def test_training_learns_the_titles(trained: TrainResult) -> None:
    """Trained on 300 real titles, the model names the leaf of most validation titles."""
    assert trained.best_score >= 0.9
    assert max(trained.history["val_leaf_accuracy"]) >= 0.9
    assert (trained.model_dir / MODEL_FILE).is_file()


def test_the_directory_says_text_and_stores_the_featuriser(trained: TrainResult) -> None:
    """metadata.json names the modality, the backbone and the featuriser's settings."""
    metadata = json.loads((trained.model_dir / METADATA_FILE).read_text())
    assert "text" == metadata["modality"]
    assert TEXT_BACKBONE == metadata["backbone"]
    assert TextFeaturizer().to_json() == metadata["text_features"]
    assert TextFeaturizer().dim == metadata["input_size"]
    assert {"train": 300, "validation": 48} == metadata["training"]["products"]
    assert (trained.model_dir / CHECKSUMS_FILE).is_file()


def test_the_loaded_model_scores_as_training_did(
    trained: TrainResult, titles: Path, taxonomy_file: Path
) -> None:
    """Loaded from its directory, the model gives the validation accuracy training recorded."""
    classifier = TextClassifier.load(trained.model_dir, taxonomy=taxonomy_file)
    rows = _validation(titles)
    predictions = classifier.classify([row["title"] for row in rows])
    truncated = classifier.truncated
    truth = [truncated.truncate_id(int(row["google_category_id"])) for row in rows]
    accuracy = float(np.mean([p.leaf_id == t for p, t in zip(predictions, truth, strict=True)]))
    metadata = json.loads((trained.model_dir / METADATA_FILE).read_text())
    assert metadata["metrics"]["val_leaf_accuracy"] == pytest.approx(accuracy)
    again = TextClassifier.load(trained.model_dir).classify([row["title"] for row in rows])
    assert predictions == again


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "<p><br/></p>",
        "!!! ???",
        TextFields(),
        TextFields(description="&nbsp;"),
    ],
)
def test_no_text_is_an_abstention(trained: TrainResult, text: str | TextFields | None) -> None:
    """Without text the answer is LOW_CONFIDENCE at a root, confidence 0, no alternatives."""
    classifier = TextClassifier.load(trained.model_dir)
    assert classifier.is_empty(text)
    [prediction] = classifier.classify([text])
    assert LOW_CONFIDENCE == prediction.status
    assert 0.0 == prediction.confidence
    assert 1 == len(prediction.path)
    assert prediction.category_id == prediction.path[0].id
    assert () == prediction.alternatives


@pytest.mark.parametrize(
    "text",
    [
        "Puma Men Black T-shirt",
        "<div><b>Puma</b> Men&nbsp;Black <i>T-shirt</i></div>",
        "पुरुषों की काली टी-शर्ट",
        "男士黑色T恤",
        "Black T-shirt " * 100_000,
        TextFields(title=None, description="Black leather wallet", partner_category="Wallets"),
    ],
)
def test_any_text_gets_a_prediction_with_alternatives(trained: TrainResult, text: object) -> None:
    """HTML-laden, non-Latin, huge or description-only text is classified; nothing is lost."""
    classifier = TextClassifier.load(trained.model_dir, top_k=3)
    [prediction] = classifier.classify([text])  # type: ignore[list-item]
    assert 3 == len(prediction.alternatives)
    assert prediction.leaf_id == prediction.alternatives[0].leaf_id
    assert 0.0 < prediction.confidence <= 1.0


def test_a_batch_keeps_its_order_around_empty_texts(trained: TrainResult) -> None:
    """Empty and real texts mixed in a batch get their answers in input order."""
    classifier = TextClassifier.load(trained.model_dir)
    titles = ["Baggit Women Grey Wallet", None, "Catwalk Women Silver Heels", ""]
    batch = classifier.classify(titles)
    alone = [classifier.classify([title])[0] for title in titles]
    assert [p.leaf_id for p in alone] == [p.leaf_id for p in batch]
    assert [p.confidence for p in alone] == pytest.approx([p.confidence for p in batch], abs=1e-5)
    assert [CLASSIFIED, LOW_CONFIDENCE, CLASSIFIED, LOW_CONFIDENCE] == [p.status for p in batch]
    assert [] == classifier.classify([])


def test_a_high_threshold_abstains_to_an_ancestor(trained: TrainResult) -> None:
    """With a threshold no leaf clears, the answer is LOW_CONFIDENCE at a shallower node."""
    [prediction] = TextClassifier.load(trained.model_dir, threshold=1.0).classify(
        ["Puma Men Black T-shirt"]
    )
    assert LOW_CONFIDENCE == prediction.status
    assert prediction.category_id != prediction.leaf_id


def test_each_loader_refuses_the_other_modality(
    trained: TrainResult, shared_data: Path, tmp_path: Path
) -> None:
    """Classifier refuses a text model and TextClassifier an image model, naming the loader."""
    with pytest.raises(ModelError, match="model of texts, not of images; load it with TextClass"):
        Classifier.load(trained.model_dir)
    image_dir = tiny_model(shared_data, tmp_path / "image", "tiny")
    with pytest.raises(ModelError, match="model of images, not of texts; load it with Classifier"):
        TextClassifier.load(image_dir)


@pytest.mark.parametrize("damaged", [MODEL_FILE, METADATA_FILE])
def test_a_damaged_directory_is_refused(trained: TrainResult, tmp_path: Path, damaged: str) -> None:
    """A changed model or metadata file fails the checksum on load."""
    copy = tmp_path / "model"
    shutil.copytree(trained.model_dir, copy)
    with (copy / damaged).open("ab") as stream:
        stream.write(b" ")
    with pytest.raises(ModelError, match="checksum mismatch"):
        TextClassifier.load(copy)


@pytest.mark.parametrize("heads", ["multi", "leaf"])
def test_every_head_design_trains_and_loads(
    titles: Path, taxonomy_file: Path, tmp_path: Path, heads: str
) -> None:
    """The multi and flat heads train on titles and load back with their design."""
    result = train_text(_config(titles, taxonomy_file, tmp_path, heads=heads, epochs=4))
    classifier = TextClassifier.load(result.model_dir)
    assert heads == classifier.info.heads
    [prediction] = classifier.classify(["Titan Men Black Watch"])
    assert prediction.path[-1].confidence > 0.0


def test_a_holdout_keeps_the_files_validation_split_for_evaluation(
    titles: Path, taxonomy_file: Path, tmp_path: Path
) -> None:
    """With a hold-out, early stopping uses train titles; the file's validation becomes test."""
    train_text(_config(titles, taxonomy_file, tmp_path, holdout=0.2, epochs=2))
    with (tmp_path / "split.csv").open() as stream:
        splits = [row["split"] for row in csv.DictReader(stream)]
    assert 48 == splits.count("test")
    assert 0 < splits.count("validation") < 300


def test_rows_without_text_are_left_out_of_training(
    titles: Path, taxonomy_file: Path, tmp_path: Path
) -> None:
    """Rows without a title are counted and skipped, not trained on as zero vectors."""
    labels = tmp_path / "gaps.csv"
    rows = list(csv.DictReader(titles.open()))
    for row in rows[:5]:
        row["title"] = "  "
    with labels.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = train_text(_config(labels, taxonomy_file, tmp_path / "run", epochs=1))
    metadata = json.loads((result.model_dir / METADATA_FILE).read_text())
    assert {"train": 5, "validation": 0} == metadata["training"]["without_text"]
    assert 295 == metadata["training"]["products"]["train"]


def test_labels_without_a_title_column_are_refused(tmp_path: Path) -> None:
    """A labels file with no text column cannot train a text model, and says so."""
    labels = tmp_path / "labels.csv"
    labels.write_text("image_path,google_category_id,split\na.jpg,212,train\n")
    with pytest.raises(ModelError, match="needs a title column"):
        read_text_rows([labels])


def test_evaluation_reports_every_level_and_counts_missing_text(
    trained: TrainResult, titles: Path, taxonomy_file: Path, shared_data: Path, tmp_path: Path
) -> None:
    """The report gives accuracy per level; a validation row without text is an error."""
    labels = tmp_path / "labels.csv"
    rows = list(csv.DictReader(titles.open()))
    first = next(i for i, row in enumerate(rows) if row["split"] == "validation")
    rows[first]["title"] = ""
    with labels.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    values = shared_data / "fashion-products" / "business-value.csv"
    full = evaluate_text(trained.model_dir, [titles], taxonomy_file, tmp_path / "full")
    gap = evaluate_text(
        trained.model_dir, [labels], taxonomy_file, tmp_path / "gap", business_values=[values]
    )
    assert 48 == full["data"]["products"] == gap["data"]["products"]
    assert (0, 1) == (full["data"]["without_text"], gap["data"]["without_text"])
    assert [1, 2, 3, 4] == [entry["level"] for entry in full["levels"]]
    assert full["leaf_accuracy"] >= 0.9
    assert gap["leaf_accuracy"] < full["leaf_accuracy"] or full["leaf_accuracy"] < 1.0
    assert full["weighted_score"] is None
    assert 0.0 < gap["weighted_score"] <= 1.0
    assert (tmp_path / "full" / "report.md").read_text().startswith("# Evaluation of text model")
