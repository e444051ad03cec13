"""`enrich train --text` and `enrich evaluate` of a text model: the title classifier.

Training (:func:`train_text`):

1. **Rows.** One or several labels files with a ``title`` column (``description`` and
   ``partner_category`` are used when present; no image column is needed). Rows whose
   text gives no feature are left out of training and counted.
2. **Split.** As image training does it, without decoding anything
   (:func:`model.prepare.split_labels`): the file's splits, 70/15/15 where it has none, or
   with ``holdout`` a hold-out of the train split for early stopping, the file's validation
   split left untouched (``test`` in ``split.csv``) for ``enrich evaluate``.
3. **Features.** :class:`~model.text_features.TextFeaturizer` (hashed word 1-2-grams and
   character 3-5-grams, 2**15 columns); rows are kept sparse and made dense per batch.
4. **Model.** ``text_features`` in, dropout, the heads of the image model
   (:func:`model.heads.attach_heads`, ``multi`` / ``leaf`` / ``marginal``) with the same
   vocabulary, level targets (:func:`model.prepare.level_targets`), masked losses and depth
   weights (:func:`model.build.compile_model`). A linear model on hashed n-grams: Keras 3,
   backend-neutral, trained in seconds on a CPU.
5. **Early stopping** on the validation business-value-weighted score, as transfer
   learning does; the best epoch's weights are kept.
6. **Export** to ``OUTPUT/model``, an ordinary model directory with ``"modality":
   "text"`` and the featuriser's settings (:mod:`model.text_classifier`).

Evaluation (:func:`evaluate_text`): accuracy of the decoded path per level and of the leaf
(at any confidence, as ``enrich evaluate`` counts images), macro accuracy, the weighted
score when business values are given; ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import structlog
from numpy.typing import NDArray

from model.build import compile_model, count_params
from model.classifier import save_model
from model.data import LabelRow, read_labels, read_sources
from model.decode import Decoder
from model.errors import ModelError
from model.heads import HeadsKind, attach_heads, check_heads
from model.metrics import (
    macro_accuracy,
    node_values,
    read_business_values_many,
)
from model.prepare import TrainResult, level_targets, split_labels
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.text_classifier import TEXT_BACKBONE, TEXT_INPUT, TextClassifier, predict_sparse
from model.text_features import SparseFeatures, TextFeaturizer, TextFields
from model.validation import BestOnValidation
from model.vocabulary import Vocabulary

__all__ = ["TextTrainConfig", "evaluate_text", "read_text_rows", "row_text", "train_text"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TextTrainConfig:
    """Everything `enrich train --text` can be told."""

    labels: tuple[Path, ...]
    """Labels files with a ``title`` column; several are read together (`read_sources`)."""
    taxonomy: Path
    output: Path
    depth: int = 4
    heads: HeadsKind = "marginal"
    vocabulary: Literal["labels", "full"] = "labels"
    level_weights: tuple[float, ...] | None = None
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    dropout: float = 0.2
    patience: int = 6
    holdout: float | None = None
    business_values: tuple[Path, ...] = ()
    seed: int = 0
    name: str = "catalog-text-classifier"
    verbose: int = 1
    featurizer: TextFeaturizer = field(default_factory=TextFeaturizer)


def row_text(row: LabelRow) -> TextFields:
    """A labelled row's text fields."""
    return TextFields(row.title, row.description, row.partner_category)


def read_text_rows(labels: Sequence[Path]) -> list[LabelRow]:
    """The rows of one or several labels files, image column optional.

    Raises ModelError when no row has any text (the files lack a ``title`` column).
    """
    if not labels:
        raise ModelError("no labels file to read")
    if len(labels) == 1:
        rows = read_labels(labels[0], require_image=False)
    else:
        rows = read_sources([(path, path.parent) for path in labels], require_image=False)
    if not any(row.title or row.description or row.partner_category for row in rows):
        names = ", ".join(str(path) for path in labels)
        raise ModelError(
            f"{names}: no row has a title, description or partner_category; "
            "text training needs a title column"
        )
    return rows


class _Batches(keras.utils.PyDataset):  # type: ignore[misc]
    """Shuffled dense batches of sparse features with their per-head targets."""

    def __init__(
        self,
        features: SparseFeatures,
        targets: dict[str, NDArray[np.int32]],
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.features = features
        self.targets = targets
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(features))

    def __len__(self) -> int:
        return math.ceil(len(self.features) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, NDArray[np.int32]]]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.features.dense(rows), {name: t[rows] for name, t in self.targets.items()}

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.features))


def _text_model(config: TextTrainConfig, vocabulary: Vocabulary) -> Any:
    """``text_features`` in, dropout, the chosen heads out."""
    inputs = keras.Input(shape=(config.featurizer.dim,), name=TEXT_INPUT)
    x = keras.layers.Dropout(config.dropout, name="dropout")(inputs)
    outputs = attach_heads(
        x,
        heads=config.heads,
        level_sizes=vocabulary.sizes,
        leaf_size=len(vocabulary.leaves),
        leaf_paths=vocabulary.encode_many(vocabulary.leaves),
    )
    return keras.Model(inputs, outputs, name=config.name.replace("-", "_"))


def _check(config: TextTrainConfig) -> None:
    """Refuse settings that cannot train, quoting them (ModelError)."""
    check_heads(config.heads)
    if not 0.0 <= config.dropout < 1.0:
        raise ModelError(f"dropout must be in [0, 1), got {config.dropout!r}")
    for name in ("epochs", "batch_size", "patience", "depth"):
        if getattr(config, name) < 1:
            raise ModelError(f"{name} must be >= 1, got {getattr(config, name)!r}")


def train_text(config: TextTrainConfig) -> TrainResult:
    """Train the text classifier and export the best epoch to ``OUTPUT/model``."""
    started = time.monotonic()
    _check(config)
    keras.utils.set_random_seed(config.seed)
    truncated = Taxonomy.load(config.taxonomy).truncate(config.depth)
    rows, vocabulary = split_labels(
        read_text_rows(config.labels),
        truncated,
        holdout=config.holdout,
        vocabulary=config.vocabulary,
        output=config.output,
        what=", ".join(str(path) for path in config.labels),
    )
    featurizer = config.featurizer
    splits: dict[str, tuple[SparseFeatures, NDArray[np.int64]]] = {}
    without_text: dict[str, int] = {}
    for name in ("train", "validation"):
        chosen = [row for row in rows if row.split == name]
        features = featurizer.transform(row_text(row) for row in chosen)
        keep = np.flatnonzero(~features.empty())
        without_text[name] = len(chosen) - len(keep)
        true_ids = np.array(
            [truncated.truncate_id(chosen[i].category_id) for i in keep.tolist()], dtype=np.int64
        )
        if not len(keep):
            raise ModelError(f"no {name} row has any text to train on")
        splits[name] = (features.take(keep), true_ids)
    if any(without_text.values()):
        log.warning("rows_without_text_left_out", **without_text)
    train_x, train_ids = splits["train"]
    valid_x, valid_ids = splits["validation"]
    unknown = sorted({int(i) for i in valid_ids if int(i) not in vocabulary})
    if unknown:
        log.warning("validation_categories_not_in_training", categories=unknown[:20])
    values = (
        read_business_values_many(config.business_values)
        if config.business_values
        else {int(i): 1.0 for i in set(train_ids.tolist()) | set(valid_ids.tolist())}
    )

    model = _text_model(config, vocabulary)
    compile_model(
        model,
        level_weights=config.level_weights,
        learning_rate=config.learning_rate,
        heads=config.heads,
    )
    history: dict[str, list[float]] = {}
    scorer = BestOnValidation(
        lambda model: predict_sparse(model, valid_x),
        valid_ids,
        decoder=Decoder(truncated, vocabulary),
        heads=config.heads,
        truncated=truncated,
        values=values,
        patience=config.patience,
        history=history,
    )
    targets = level_targets(vocabulary, config.heads, train_ids)
    model.fit(
        _Batches(train_x, targets, config.batch_size, config.seed),
        epochs=config.epochs,
        callbacks=[scorer],
        verbose=config.verbose,
    )
    if scorer.best_weights is not None:
        model.set_weights(scorer.best_weights)
    best, best_epoch = scorer.best, scorer.best_epoch
    epochs_run = len(history.get("loss", []))
    elapsed = time.monotonic() - started
    summary = {
        "labels": [str(path) for path in config.labels],
        "products": {"train": len(train_ids), "validation": len(valid_ids)},
        "without_text": without_text,
        "leaves": dict(sorted(Counter(int(i) for i in train_ids).items())),
        "holdout": config.holdout,
        "epochs": epochs_run,
        "best_epoch": best_epoch,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "dropout": config.dropout,
        "training_time_s": round(elapsed, 1),
        "parameters": count_params(model),
    }
    model_dir = config.output / "model"
    save_model(
        model,
        model_dir,
        name=config.name,
        backbone=TEXT_BACKBONE,
        image_size=featurizer.dim,
        heads=config.heads,
        truncated=truncated,
        vocabulary=vocabulary,
        level_weights=config.level_weights,
        training=summary,
        metrics={
            "val_weighted_score": best,
            "val_leaf_accuracy": history["val_leaf_accuracy"][best_epoch]
            if 0 <= best_epoch < len(history.get("val_leaf_accuracy", []))
            else None,
        },
        extra={"modality": "text", "text_features": featurizer.to_json()},
    )
    (config.output / "history.json").write_text(json.dumps(history, indent=1))
    settings = {**asdict(config), "featurizer": featurizer.to_json()}
    (config.output / "config.json").write_text(json.dumps(settings, indent=1, default=str))
    stopped = "early stopping" if epochs_run < config.epochs else "epochs"
    return TrainResult(model_dir, history, best_epoch, best, epochs_run, elapsed, stopped)


def evaluate_text(
    model_dir: Path,
    labels: Sequence[Path],
    taxonomy: Path,
    output: Path,
    *,
    split: str | None = "validation",
    business_values: Sequence[Path] = (),
) -> dict[str, Any]:
    """Evaluate a text model directory on labelled titles; write and return the report.

    Rows of ``split`` (every row when ``None`` or when the files have no splits). A row
    without text is answered by abstention and counts as an error at every level.
    """
    classifier = TextClassifier.load(model_dir, taxonomy=Taxonomy.load(taxonomy))
    truncated = classifier.truncated
    rows = read_text_rows(labels)
    if split is not None and any(row.split is not None for row in rows):
        rows = [row for row in rows if row.split == split]
    if not rows:
        raise ModelError(f"{', '.join(map(str, labels))} has no rows in split {split!r}")
    texts = [row_text(row) for row in rows]
    began = time.perf_counter()
    predictions = classifier.classify(texts)
    elapsed = time.perf_counter() - began
    empty = [classifier.is_empty(text) for text in texts]
    true_nodes = [truncated.truncate_id(row.category_id) for row in rows]
    # An abstention for want of text is no answer: -1 matches no category at any level.
    predicted = [-1 if none else p.leaf_id for p, none in zip(predictions, empty, strict=True)]
    depth = classifier.info.depth
    levels = _level_accuracy(truncated, true_nodes, predicted, depth)
    weighted = (
        _weighted(
            truncated, true_nodes, predicted, read_business_values_many(tuple(business_values))
        )
        if business_values
        else None
    )
    report: dict[str, Any] = {
        "model": {
            "name": classifier.info.name,
            "version": classifier.info.version,
            "backbone": classifier.info.backbone,
            "modality": "text",
            "input_size": classifier.info.input_size,
            "heads": classifier.info.heads,
            "taxonomy_version": classifier.info.taxonomy_version,
            "depth": depth,
            "parameters": int(classifier.model.count_params()),
            "directory": str(model_dir),
        },
        "data": {
            "labels": ", ".join(str(path) for path in labels),
            "split": split,
            "products": len(rows),
            "without_text": int(sum(empty)),
            "categories": len(set(true_nodes)),
        },
        "leaf_accuracy": float(
            np.mean([t == p for t, p in zip(true_nodes, predicted, strict=True)])
        ),
        "macro_accuracy": macro_accuracy(true_nodes, predicted),
        "weighted_score": weighted,
        "levels": [{"level": level, "accuracy": value} for level, value in enumerate(levels, 1)],
        "inference": {"texts_per_s": len(rows) / elapsed if elapsed > 0 else math.nan},
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "report.md").write_text(_markdown(report))
    return report


def _level_accuracy(
    truncated: TruncatedTaxonomy, true_nodes: list[int], predicted: list[int], depth: int
) -> list[float | None]:
    """Per level, the decoded path's accuracy over the products whose category reaches it.

    A missing answer (-1) is wrong at every level; ``None`` where no product reaches a level.
    """
    true_paths = [truncated.path_ids(node) for node in true_nodes]
    pred_paths = [truncated.path_ids(node) if node != -1 else () for node in predicted]
    result: list[float | None] = []
    for level in range(1, depth + 1):
        pairs = [(t, p) for t, p in zip(true_paths, pred_paths, strict=True) if len(t) >= level]
        hits = sum(1 for t, p in pairs if len(p) >= level and p[level - 1] == t[level - 1])
        result.append(hits / len(pairs) if pairs else None)
    return result


def _weighted(
    truncated: TruncatedTaxonomy,
    true_nodes: list[int],
    predicted: list[int],
    values: dict[int, float],
) -> float | None:
    """The business-value-weighted leaf accuracy; ``None`` when no true category has a value."""
    rolled = node_values(truncated, values)
    weights = np.array([rolled.get(node, 0.0) for node in true_nodes], dtype=np.float64)
    if weights.sum() <= 0.0:
        return None
    correct = np.array([t == p for t, p in zip(true_nodes, predicted, strict=True)])
    return float(weights[correct].sum() / weights.sum())


def _markdown(report: dict[str, Any]) -> str:
    """The text report for people."""
    model, data = report["model"], report["data"]
    weighted = report["weighted_score"]
    lines = [
        f"# Evaluation of text model {model['name']} ({model['version']})",
        "",
        f"- `{model['backbone']}`, {model['input_size']:,} features, heads `{model['heads']}`, "
        f"{model['parameters']:,} parameters; taxonomy {model['taxonomy_version']} at depth "
        f"{model['depth']}",
        f"- data: `{data['labels']}`, split `{data['split']}`, {data['products']:,} products "
        f"({data['without_text']} without text, counted as errors), {data['categories']} "
        "true categories",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| leaf accuracy (micro) | {report['leaf_accuracy']:.4f} |",
        f"| macro accuracy | {report['macro_accuracy']:.4f} |",
        f"| business-value-weighted accuracy | "
        f"{'n/a' if weighted is None else f'{weighted:.4f}'} |",
        "",
        "| level | accuracy |",
        "| --- | --- |",
    ]
    for entry in report["levels"]:
        value = "n/a" if entry["accuracy"] is None else f"{entry['accuracy']:.4f}"
        lines.append(f"| {entry['level']} | {value} |")
    return "\n".join(lines) + "\n"
