"""`enrich evaluate`: a model directory + labelled images → a report people decide with.

The report directory gets:

- ``report.json``: every figure below, machine-readable (``enrich compare`` reads it);
- ``report.md``: the same for people, with the pictures linked;
- ``confusion_top50.png`` / ``.csv``: the most valuable true categories against what the
  model said, row-normalised, the most valuable top left;
- ``coverage.png``: coverage and accuracy as the abstain threshold moves.

Figures: per level, accuracy of the decoded path's node and top-5 of that level's head;
leaf accuracy (the decoded leaf equals the true category truncated to the model's depth);
macro-F1 over leaves; mean tree distance between true and predicted leaf; the
business-value-weighted accuracy (see :mod:`model.metrics`); inference images/s on this
machine with the batch size used. Accuracy figures count the decoded leaf whatever its
confidence (no abstention); the coverage curve shows what abstaining would trade.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

from model.build import LEAF_HEAD, level_names
from model.classifier import Classifier, decode_outputs
from model.data import LabelRow, load_images, read_labels
from model.errors import ModelError
from model.metrics import (
    confusion_top,
    coverage_curve,
    macro_f1,
    mean_tree_distance,
    per_level_accuracy,
    read_business_values,
    weighted_accuracy,
)
from model.plots import plot_confusion, plot_coverage
from model.taxonomy import Taxonomy

__all__ = ["EvaluateConfig", "evaluate"]

log = structlog.get_logger(__name__)

REPORT_JSON = "report.json"
TOP_K = 5


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything ``enrich evaluate`` can be told."""

    model_dir: Path
    labels: Path
    images_root: Path
    taxonomy: Path
    business_values: Path
    output: Path
    split: str | None = "validation"
    """Only rows of this split (when the labels file has splits); ``None`` for every row."""
    batch_size: int = 64
    confusion_size: int = 50
    cache_dir: Path | None = None
    progress: bool = True


def _rows(config: EvaluateConfig) -> list[LabelRow]:
    """The labelled rows to evaluate on, or ModelError when there are none."""
    rows = read_labels(config.labels)
    if config.split is not None and any(row.split is not None for row in rows):
        rows = [row for row in rows if row.split == config.split]
    if not rows:
        raise ModelError(f"{config.labels} has no rows in split {config.split!r}")
    return rows


def _infer(
    classifier: Classifier, images: NDArray[np.uint8], batch_size: int
) -> tuple[dict[str, NDArray[np.float32]], float]:
    """Every head's probabilities, and images/s measured after one warm-up batch."""
    outputs: dict[str, list[NDArray[np.float32]]] = {}
    timed_images, timed_seconds = 0, 0.0
    for number, start in enumerate(range(0, len(images), batch_size)):
        batch = images[start : start + batch_size]
        began = time.perf_counter()
        result = classifier.predict_raw(batch)
        elapsed = time.perf_counter() - began
        if number > 0 or len(images) <= batch_size:
            timed_images += len(batch)
            timed_seconds += elapsed
        for head, values in result.items():
            outputs.setdefault(head, []).append(values)
    merged = {head: np.concatenate(parts) for head, parts in outputs.items()}
    rate = timed_images / timed_seconds if timed_seconds > 0 else math.nan
    return merged, rate


def _level_topk(
    classifier: Classifier,
    outputs: Mapping[str, NDArray[np.float32]],
    true_nodes: Sequence[int],
    k: int,
) -> list[float | None]:
    """Per level: the share of samples deep enough whose true node is in the head's top k.

    A true node outside the model's vocabulary counts as a miss. The flat model's level
    probabilities are the sums over leaves (what :class:`~model.decode.Decoder` reports).
    """
    vocabulary = classifier.vocabulary
    truncated = classifier.truncated
    if classifier.info.heads == "leaf":
        levels = classifier.decoder.level_confidences(outputs[LEAF_HEAD])
    else:
        levels = [
            np.asarray(outputs[name], dtype=np.float64) for name in level_names(vocabulary.depth)
        ]
    result: list[float | None] = []
    for level, probs in enumerate(levels, start=1):
        hits = total = 0
        top = np.argsort(-probs, axis=1)[:, :k]
        for row, node in enumerate(true_nodes):
            path = truncated.path_ids(node)
            if len(path) < level:
                continue
            total += 1
            ancestor = path[level - 1]
            if ancestor in vocabulary.levels[level - 1]:
                hits += int(vocabulary.index(level, ancestor) in top[row])
        result.append(hits / total if total else None)
    return result


def _markdown(report: Mapping[str, Any]) -> str:
    """The report for people: headline figures, per-level table, pictures."""
    model = report["model"]
    lines = [
        f"# Evaluation of {model['name']} ({model['version']})",
        "",
        f"- backbone `{model['backbone']}`, {model['input_size']} px, heads `{model['heads']}`, "
        f"{model['parameters']:,} parameters",
        f"- taxonomy {model['taxonomy_version']} at depth {model['depth']}",
        f"- data: `{report['data']['labels']}`, split `{report['data']['split']}`, "
        f"{report['data']['images']:,} images ({report['data']['unreadable']} unreadable), "
        f"{report['data']['categories']} true categories",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| leaf accuracy | {report['leaf_accuracy']:.4f} |",
        f"| business-value-weighted accuracy | {report['weighted_score']:.4f} |",
        f"| macro-F1 (leaves) | {report['macro_f1']:.4f} |",
        f"| mean tree distance (edges) | {report['mean_tree_distance']:.3f} |",
        f"| inference | {report['inference']['images_per_s']:.1f} images/s at batch "
        f"{report['inference']['batch_size']} ({report['inference']['machine']}) |",
        "",
        "| level | accuracy | top-5 |",
        "| --- | --- | --- |",
    ]
    for entry in report["levels"]:
        accuracy = "n/a" if entry["accuracy"] is None else f"{entry['accuracy']:.4f}"
        top = "n/a" if entry["top5"] is None else f"{entry['top5']:.4f}"
        lines.append(f"| {entry['level']} | {accuracy} | {top} |")
    lines += [
        "",
        "Accuracy counts the decoded leaf at any confidence; a category shallower than a level",
        "is not counted at that level. Weighted accuracy weighs each sample by its true",
        "category's business value (summed over everything beneath it).",
        "",
        "## Confusion among the most valuable categories",
        "",
        "![confusion](confusion_top50.png)",
        "",
        "Rows: true category, most valuable first; columns: prediction; row-normalised. "
        "The numbers are in `confusion_top50.csv`.",
        "",
        "## Coverage against accuracy",
        "",
        "![coverage](coverage.png)",
        "",
        "| threshold | coverage | accuracy |",
        "| --- | --- | --- |",
    ]
    for point in report["coverage"]:
        if round(point["threshold"] * 100) % 10 == 0:
            accuracy = "n/a" if point["accuracy"] is None else f"{point['accuracy']:.4f}"
            lines.append(f"| {point['threshold']:.2f} | {point['coverage']:.4f} | {accuracy} |")
    return "\n".join(lines) + "\n"


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a model directory on labelled images; write and return the report."""
    taxonomy = Taxonomy.load(config.taxonomy)
    classifier = Classifier.load(config.model_dir, taxonomy=taxonomy)
    truncated = classifier.truncated
    values = read_business_values(config.business_values)
    rows = _rows(config)
    images, failed = load_images(
        rows,
        config.images_root,
        classifier.input_size,
        cache_dir=config.cache_dir,
        progress=config.progress,
    )
    failed_set = set(failed)
    if failed:
        log.warning(
            "images_unreadable", count=len(failed), first=[rows[i].image for i in failed[:5]]
        )
    kept = [row for index, row in enumerate(rows) if index not in failed_set]
    if not kept:
        raise ModelError(f"none of the {len(rows)} images of {config.labels} could be read")
    true_nodes = [truncated.truncate_id(row.category_id) for row in kept]

    outputs, rate = _infer(classifier, images, config.batch_size)
    predictions = decode_outputs(classifier.decoder, classifier.info.heads, outputs)
    predicted = [prediction.leaf_id for prediction in predictions]
    correct = np.array([p == t for p, t in zip(predicted, true_nodes, strict=True)])
    depth = classifier.info.depth
    level_accuracy = per_level_accuracy(truncated, true_nodes, predicted, depth)
    level_top = _level_topk(classifier, outputs, true_nodes, TOP_K)
    confusion = confusion_top(truncated, true_nodes, predicted, values, n=config.confusion_size)
    leaf_confidence = np.array([prediction.path[-1].confidence for prediction in predictions])
    # With threshold 0 the path ends at the leaf, so its last node carries the leaf confidence.
    curve = coverage_curve(leaf_confidence, correct)

    config.output.mkdir(parents=True, exist_ok=True)
    confusion.write_csv(config.output / "confusion_top50.csv")
    plot_confusion(
        confusion,
        config.output / "confusion_top50.png",
        title=f"{classifier.info.name} ({classifier.info.heads}): most valuable categories",
    )
    plot_coverage(curve, config.output / "coverage.png", title=f"{classifier.info.name}: abstain")
    metadata = classifier.metadata
    training = metadata.get("training", {})
    report: dict[str, Any] = {
        "model": {
            "name": classifier.info.name,
            "version": classifier.info.version,
            "backbone": classifier.info.backbone,
            "input_size": classifier.info.input_size,
            "heads": classifier.info.heads,
            "taxonomy_version": classifier.info.taxonomy_version,
            "depth": depth,
            "parameters": int(training.get("parameters", classifier.model.count_params())),
            "training_time_s": training.get("training_time_s"),
            "directory": str(config.model_dir),
        },
        "data": {
            "labels": str(config.labels),
            "split": config.split,
            "images": len(kept),
            "unreadable": len(failed),
            "categories": len(set(true_nodes)),
        },
        "leaf_accuracy": float(correct.mean()),
        "weighted_score": weighted_accuracy(true_nodes, predicted, truncated, values),
        "macro_f1": macro_f1(true_nodes, predicted),
        "mean_tree_distance": mean_tree_distance(truncated, true_nodes, predicted),
        "levels": [
            {"level": level, "accuracy": accuracy, "top5": top}
            for level, (accuracy, top) in enumerate(
                zip(level_accuracy, level_top, strict=True), start=1
            )
        ],
        "inference": {
            "images_per_s": rate,
            "batch_size": config.batch_size,
            "machine": f"{platform.machine()}, {_device()}",
        },
        "coverage": [
            {"threshold": p.threshold, "coverage": p.coverage, "accuracy": p.accuracy}
            for p in curve
        ],
        "files": ["report.md", "confusion_top50.png", "confusion_top50.csv", "coverage.png"],
    }
    (config.output / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (config.output / "report.md").write_text(_markdown(report))
    log.info(
        "evaluated",
        model=classifier.info.name,
        leaf_accuracy=round(report["leaf_accuracy"], 4),
        weighted_score=round(report["weighted_score"], 4),
        images=len(kept),
        output=str(config.output),
    )
    return report


def _device() -> str:
    """Where Keras runs: the backend and, for TensorFlow, whether a GPU is visible."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"tensorflow on {'GPU' if gpus else 'CPU'}"
    return str(backend)


def load_report(directory: Path) -> dict[str, Any]:
    """Read ``report.json`` of a report directory, or raise ModelError saying what is wrong."""
    path = Path(directory) / REPORT_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(
            f"{directory} holds no {REPORT_JSON}: run `enrich evaluate` first"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or "model" not in data or "leaf_accuracy" not in data:
        raise ModelError(f"{path} is not an evaluation report")
    return data
