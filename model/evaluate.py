"""`enrich evaluate`: a model directory + labelled images → a report people decide with.

The report directory gets:

- ``report.json``: every figure below, machine-readable (``enrich compare`` reads it);
- ``report.md``: the same for people, with the pictures linked;
- ``confusion_top50.png`` / ``.csv``: the most valuable true categories against what the
  model said, row-normalised, the most valuable top left;
- ``coverage.png``: coverage and accuracy as the abstain threshold moves;
- ``reliability.png``: the reliability diagram (accuracy against confidence, 15 bins);
- ``mistakes.csv`` / ``mistakes.png``: every wrong image, and a gallery of the most confident
  mistakes (see :mod:`model.mistakes`; no gallery when there is no mistake).

Figures: per level, accuracy of the decoded path's node and top-5 of that level's head;
leaf accuracy (micro: per image, the decoded leaf equals the true category truncated to the
model's depth); macro accuracy (balanced: the mean over the true leaves of each leaf's
recall); macro-F1 over the true leaves; mean tree distance between true and predicted leaf;
the business-value-weighted accuracy (see :mod:`model.metrics`); the expected calibration
error of the decoded leaf's confidence; inference images/s on this machine with the batch
size used. Accuracy figures count the decoded leaf whatever its confidence (no abstention);
the coverage curve shows what abstaining would trade.

Several labelled sources (``EvaluateConfig.sources``) are evaluated together: the overall
figures are over all their images, and each source gets its own images, leaf and macro
accuracy, weighted score and macro-F1. Leaves the model can predict but no evaluation image
has are listed and left out of the macro averages; true leaves the model cannot predict (not
leaves of its vocabulary) are listed and count as errors everywhere.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

from model.build import LEAF_HEAD, level_names
from model.classifier import Classifier, decode_outputs
from model.data import LabelRow, load_images, read_sources
from model.errors import ModelError
from model.heads import decodes_from_leaf
from model.metrics import (
    DEFAULT_CALIBRATION_BINS,
    calibration_bins,
    confusion_top,
    coverage_curve,
    expected_calibration_error,
    macro_accuracy,
    macro_f1,
    mean_tree_distance,
    per_level_accuracy,
    read_business_values_many,
    weighted_accuracy,
)
from model.mistakes import find_mistakes, plot_mistakes, write_mistakes_csv
from model.plots import plot_confusion, plot_coverage, plot_reliability
from model.taxonomy import Taxonomy, TruncatedTaxonomy

__all__ = ["EvaluateConfig", "evaluate"]

log = structlog.get_logger(__name__)

REPORT_JSON = "report.json"
TOP_K = 5


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything ``enrich evaluate`` can be told."""

    model_dir: Path
    labels: Path | None
    """The labels file of a single source; ignored (may be ``None``) when ``sources`` is set."""
    images_root: Path | None
    """The images root of ``labels``; ignored (may be ``None``) when ``sources`` is set."""
    taxonomy: Path
    business_values: Path | tuple[Path, ...]
    """One business-value CSV or several (merged; a category must agree across files)."""
    output: Path
    split: str | None = "validation"
    """Only rows of this split (when the labels file has splits); ``None`` for every row."""
    batch_size: int = 64
    confusion_size: int = 50
    cache_dir: Path | None = None
    progress: bool = True
    sources: tuple[tuple[Path, Path], ...] = ()
    """Several ``(labels file, images root)`` pairs; when given they replace ``labels`` and
    ``images_root``. Each source's name is its labels file's folder (see `read_sources`)."""

    def source_pairs(self) -> tuple[tuple[Path, Path], ...]:
        """The ``(labels, images root)`` pairs to evaluate on: ``sources``, else the one pair."""
        if self.sources:
            return tuple(self.sources)
        if self.labels is None or self.images_root is None:
            raise ModelError("evaluate needs a labels file and its images root, or sources")
        return ((self.labels, self.images_root),)


def _rows(config: EvaluateConfig) -> list[LabelRow]:
    """The labelled rows to evaluate on, or ModelError when a source has none.

    The split is chosen per source: a source whose file has splits gives the rows of
    ``config.split``; a source without splits gives every row.
    """
    pairs = config.source_pairs()
    everything = read_sources(pairs)
    rows: list[LabelRow] = []
    for source, (labels, _) in zip(_source_order(everything), pairs, strict=True):
        own = [row for row in everything if row.source == source]
        if config.split is not None and any(row.split is not None for row in own):
            own = [row for row in own if row.split == config.split]
        if not own:
            raise ModelError(f"{labels} has no rows in split {config.split!r}")
        rows += own
    return rows


def _source_order(rows: Sequence[LabelRow]) -> list[str]:
    """The rows' source names, each once, in order of first appearance."""
    return list(dict.fromkeys(row.source for row in rows))


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
    if decodes_from_leaf(classifier.info.heads):
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
    """The report for people: headline figures, per-level and per-source tables, pictures."""
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
        f"| leaf accuracy (micro: per image) | {report['leaf_accuracy']:.4f} |",
        f"| macro accuracy (mean recall over true leaves) | {report['macro_accuracy']:.4f} |",
        f"| business-value-weighted accuracy | {report['weighted_score']:.4f} |",
        f"| macro-F1 (true leaves) | {report['macro_f1']:.4f} |",
        f"| expected calibration error ({len(report['calibration'])} bins) | {report['ece']:.4f} |",
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
        "category's business value (summed over everything beneath it). Micro figures weigh",
        "every image the same; macro figures weigh every true leaf the same (its recall, or",
        "its F1, averaged over the leaves that have evaluation images).",
        "",
        *_sources_markdown(report["sources"]),
        *_leaves_markdown(report["leaves"]),
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
    lines += [
        "",
        "## Calibration",
        "",
        "![reliability](reliability.png)",
        "",
        f"Expected calibration error {report['ece']:.4f}: the confidence of the decoded leaf in "
        f"{len(report['calibration'])} equal-width bins, each bin's |accuracy - mean "
        "confidence| weighted by its share of the images (0 is perfectly calibrated).",
        "",
        "| confidence | images | mean confidence | accuracy |",
        "| --- | --- | --- | --- |",
    ]
    for entry in report["calibration"]:
        if entry["count"]:
            lines.append(
                f"| {entry['lower']:.3f}-{entry['upper']:.3f} | {entry['count']:,} "
                f"| {entry['confidence']:.4f} | {entry['accuracy']:.4f} |"
            )
    if "mistakes.png" in report["files"]:
        lines += [
            "",
            "## The most confident mistakes",
            "",
            "![mistakes](mistakes.png)",
            "",
            f"True category, then → what the model said and its confidence; all "
            f"{report['mistakes']:,} mistakes are in `mistakes.csv`.",
        ]
    return "\n".join(lines) + "\n"


def _figure(value: float | None) -> str:
    """A fraction with 4 decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"


def _sources_markdown(sources: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-source table of the report."""
    lines = [
        "## Per source",
        "",
        "| source | images | unreadable | true leaves | leaf accuracy | macro accuracy "
        "| weighted accuracy | macro-F1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in sources:
        lines.append(
            f"| {entry['name']} (`{entry['labels']}`) | {entry['images']:,} "
            f"| {entry['unreadable']:,} | {entry['categories']} "
            f"| {_figure(entry['leaf_accuracy'])} | {_figure(entry['macro_accuracy'])} "
            f"| {_figure(entry['weighted_score'])} | {_figure(entry['macro_f1'])} |"
        )
    lines += [
        "",
        "Each source's macro figures average over its own true leaves; its weighted accuracy",
        "is n/a when none of its categories has a business value.",
        "",
    ]
    return lines


def _leaves_markdown(leaves: Mapping[str, Any]) -> list[str]:
    """The report's section on leaves without evaluation images and leaves the model lacks."""
    missing = leaves["without_examples"]
    unpredictable = leaves["unpredictable"]
    lines = [
        "## Leaves the evaluation does not cover",
        "",
        f"The model predicts {leaves['model']} leaves; {leaves['evaluated']} have evaluation "
        f"images. The {len(missing)} without any are left out of the macro averages (macro "
        "accuracy and macro-F1); a prediction of one of them still counts as an error of the "
        "image's true leaf.",
        "",
    ]
    lines += [f"- {entry['name']} ({entry['id']})" for entry in missing] or ["- none"]
    lines += [
        "",
        f"{len(unpredictable)} true leaves of the evaluation are not leaves the model can "
        "predict (not in its vocabulary): each of their images counts as an error, in the "
        "micro and the macro figures (recall 0).",
        "",
    ]
    lines += [
        f"- {entry['name']} ({entry['id']}): {entry['images']:,} images" for entry in unpredictable
    ] or ["- none"]
    lines.append("")
    return lines


def _per_source(
    config: EvaluateConfig,
    rows: Sequence[LabelRow],
    failed: set[int],
    kept: Sequence[LabelRow],
    true_nodes: Sequence[int],
    predicted: Sequence[int],
    truncated: TruncatedTaxonomy,
    values: Mapping[int, float],
) -> list[dict[str, Any]]:
    """Each source's own figures, in source order (macro figures over its own true leaves).

    ``weighted_score`` is ``None`` for a source none of whose true categories has a value.
    """
    pairs = config.source_pairs()
    result: list[dict[str, Any]] = []
    for name, (labels, root) in zip(_source_order(rows), pairs, strict=True):
        members = [index for index, row in enumerate(kept) if row.source == name]
        unreadable = sum(1 for index in failed if rows[index].source == name)
        entry: dict[str, Any] = {
            "name": name,
            "labels": str(labels),
            "images_root": str(root),
            "images": len(members),
            "unreadable": unreadable,
        }
        if not members:
            entry.update(
                categories=0,
                leaf_accuracy=None,
                macro_accuracy=None,
                weighted_score=None,
                macro_f1=None,
            )
            result.append(entry)
            continue
        true = [true_nodes[index] for index in members]
        pred = [predicted[index] for index in members]
        try:
            weighted: float | None = weighted_accuracy(true, pred, truncated, values)
        except ModelError:
            weighted = None
        entry.update(
            categories=len(set(true)),
            leaf_accuracy=sum(t == p for t, p in zip(true, pred, strict=True)) / len(true),
            macro_accuracy=macro_accuracy(true, pred),
            weighted_score=weighted,
            macro_f1=macro_f1(true, pred, classes=set(true)),
        )
        result.append(entry)
    return result


def _leaf_coverage(classifier: Classifier, true_nodes: Sequence[int]) -> dict[str, Any]:
    """Which of the model's leaves the evaluation reaches, and which true leaves it cannot say.

    ``without_examples``: leaves of the model's vocabulary with no evaluation image (left out
    of the macro averages); ``unpredictable``: true leaves that are not leaves of the model's
    vocabulary, with their image counts (every such image is an error).
    """
    truncated = classifier.truncated
    model_leaves = set(classifier.vocabulary.leaves)
    counts = Counter(true_nodes)
    return {
        "model": len(model_leaves),
        "evaluated": len(model_leaves & counts.keys()),
        "without_examples": [
            {"id": leaf, "name": truncated.name(leaf)}
            for leaf in sorted(model_leaves - counts.keys())
        ],
        "unpredictable": [
            {"id": leaf, "name": truncated.name(leaf), "images": counts[leaf]}
            for leaf in sorted(counts.keys() - model_leaves)
        ],
    }


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a model directory on labelled images; write and return the report."""
    taxonomy = Taxonomy.load(config.taxonomy)
    classifier = Classifier.load(config.model_dir, taxonomy=taxonomy)
    truncated = classifier.truncated
    values = read_business_values_many(config.business_values)
    rows = _rows(config)
    labels_names = ", ".join(str(labels) for labels, _ in config.source_pairs())
    images, failed = load_images(
        rows,
        Path("/"),  # read_sources made every image path absolute
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
        raise ModelError(f"none of the {len(rows)} images of {labels_names} could be read")
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
    # Head outputs may stray from [0, 1] by float rounding; the bins need [0, 1].
    calibration_confidence = np.clip(leaf_confidence, 0.0, 1.0)
    reliability = calibration_bins(calibration_confidence, correct, DEFAULT_CALIBRATION_BINS)
    ece = expected_calibration_error(calibration_confidence, correct, DEFAULT_CALIBRATION_BINS)

    config.output.mkdir(parents=True, exist_ok=True)
    wrong = find_mistakes(kept, true_nodes, predictions, truncated)
    write_mistakes_csv(wrong, config.output / "mistakes.csv")
    gallery = ["mistakes.png"] if wrong else []
    if wrong:
        title = f"{classifier.info.name}: the most confident of {len(wrong)} mistakes"
        plot_mistakes(wrong, images, config.output / "mistakes.png", title=title)
    confusion.write_csv(config.output / "confusion_top50.csv")
    plot_confusion(
        confusion,
        config.output / "confusion_top50.png",
        title=f"{classifier.info.name} ({classifier.info.heads}): most valuable categories",
    )
    plot_coverage(curve, config.output / "coverage.png", title=f"{classifier.info.name}: abstain")
    plot_reliability(
        reliability,
        config.output / "reliability.png",
        title=f"{classifier.info.name}: reliability",
        ece=ece,
    )
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
            "labels": labels_names,
            "split": config.split,
            "images": len(kept),
            "unreadable": len(failed),
            "categories": len(set(true_nodes)),
        },
        "leaf_accuracy": float(correct.mean()),
        "macro_accuracy": macro_accuracy(true_nodes, predicted),
        "weighted_score": weighted_accuracy(true_nodes, predicted, truncated, values),
        "macro_f1": macro_f1(true_nodes, predicted, classes=set(true_nodes)),
        "ece": ece,
        "sources": _per_source(
            config, rows, failed_set, kept, true_nodes, predicted, truncated, values
        ),
        "leaves": _leaf_coverage(classifier, true_nodes),
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
        "calibration": [
            {
                "lower": entry.lower,
                "upper": entry.upper,
                "count": entry.count,
                "confidence": entry.confidence,
                "accuracy": entry.accuracy,
            }
            for entry in reliability
        ],
        "files": [
            "report.md",
            "confusion_top50.png",
            "confusion_top50.csv",
            "coverage.png",
            "reliability.png",
            "mistakes.csv",
            *gallery,
        ],
        "mistakes": len(wrong),
    }
    (config.output / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (config.output / "report.md").write_text(_markdown(report))
    log.info(
        "evaluated",
        model=classifier.info.name,
        leaf_accuracy=round(report["leaf_accuracy"], 4),
        macro_accuracy=round(report["macro_accuracy"], 4),
        weighted_score=round(report["weighted_score"], 4),
        ece=round(ece, 4),
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
