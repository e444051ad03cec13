"""What a training run is told and the data it starts from: config, split, decoded images.

Shared by end-to-end training (:mod:`model.train`) and transfer learning
(:mod:`model.transfer`): :func:`prepare_data` reads one or several labels files (or a built
dataset), splits them (the file's splits, 70/15/15, or a hold-out of the train split),
writes ``split.csv``, chooses the vocabulary, decodes the images through the disk cache and
reads the business values. :func:`split_labels` is its split-and-vocabulary step alone, which
decodes nothing (text training, :mod:`model.text_train`, uses it).
"""

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
from numpy.typing import NDArray

from model.build import LEAF_HEAD, HeadsKind, level_names
from model.data import (
    LabelRow,
    assign_splits,
    hold_out_validation,
    load_dataset,
    load_images,
    read_labels,
    read_sources,
)
from model.errors import ModelError
from model.metrics import read_business_values
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary

log = structlog.get_logger(__name__)

# Chosen by measuring on this project's 2-core CPU machines: see docs/results/README.md.
DEFAULT_BACKBONE = "mobilenet_v3_small"
DEFAULT_IMAGE_SIZE = 128
# Keras's BatchNormalization momentum (0.99, 0.999 in MobileNetV3) lets the moving statistics
# lag far behind the weights in short from-scratch runs: validation then sits at the majority
# class while training accuracy rises. 0.9 follows the weights within a few dozen steps.
DEFAULT_BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class TrainConfig:
    """Everything `enrich train` can be told."""

    labels: Path
    images_root: Path
    taxonomy: Path
    output: Path
    depth: int = 4
    backbone: str = DEFAULT_BACKBONE
    image_size: int | None = DEFAULT_IMAGE_SIZE
    weights: Path | str | None = None
    """A local weight file, or "imagenet-lite" / "imagenet" (see model.backbones)."""
    heads: HeadsKind = "marginal"
    vocabulary: Literal["labels", "full"] = "labels"
    level_weights: tuple[float, ...] | None = None
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = 1
    augment: bool = True
    class_weighting: Literal["none", "balanced"] = "none"
    bn_momentum: float | None = DEFAULT_BN_MOMENTUM
    dropout: float = 0.2
    patience: int = 6
    time_budget_s: float | None = None
    business_values: Path | None = None
    resume: bool = False
    holdout: float | None = None
    """Take validation from the train split (this fraction), keep the file's for evaluation."""
    seed: int = 0
    name: str = "catalog-classifier"
    cache_dir: Path | None = None
    verbose: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)
    dataset: Path | None = None
    """A folder built by `enrich build-dataset`; when set, `labels` and `images_root` are
    ignored and the shards' images, labels and split are used."""
    sources: tuple[tuple[Path, Path], ...] = ()
    """Several (labels file, images folder) pairs trained on together; when set, `labels`
    and `images_root` are ignored (see `model.data.read_sources`)."""
    business_values_files: tuple[Path, ...] = ()
    """Several business-value files (one per source); merged with `business_values`."""
    fine_tune_blocks: int = 0
    """Transfer learning: backbone blocks, counted from the top, trained after the heads."""
    fine_tune_epochs: int = 3
    fine_tune_learning_rate: float = 1e-4
    feature_views: int = 2
    """Transfer learning: cached views of each training image (1: as is; 2: and mirrored)."""
    augmented_epochs: int = 0
    """Transfer learning: epochs of the top blocks end to end on randomly augmented images,
    after fine-tuning on cached activations (needs ``fine_tune_blocks``)."""


@dataclass
class TrainResult:
    """What a training run produced."""

    model_dir: Path
    history: dict[str, list[float]]
    best_epoch: int
    best_score: float
    epochs_run: int
    elapsed_s: float
    stopped_because: str


@dataclass
class Split:
    rows: list[LabelRow]
    images: NDArray[Any]
    """Decoded uint8 images, or (transfer learning) their cached backbone features."""
    true_ids: NDArray[np.int64]


@dataclass
class Prepared:
    """A run's data, split and decoded: what end-to-end and transfer training start from."""

    rows: list[LabelRow]
    truncated: TruncatedTaxonomy
    vocabulary: Vocabulary
    train: Split
    validation: Split
    values: dict[int, float]
    size: int
    cache_dir: Path


def level_targets(
    vocabulary: Vocabulary, heads: HeadsKind, true_ids: NDArray[np.int64]
) -> dict[str, NDArray[np.int32]]:
    if heads == "leaf":
        return {LEAF_HEAD: vocabulary.leaf_indices(true_ids).astype(np.int32)}
    # "multi" and "marginal" are trained on the level labels (-1 below a sample's leaf);
    # "marginal" also reports its leaf output's accuracy (that output carries no loss).
    encoded = vocabulary.encode_many(true_ids).astype(np.int32)
    targets = {name: encoded[:, k] for k, name in enumerate(level_names(vocabulary.depth))}
    if heads == "marginal":
        targets[LEAF_HEAD] = vocabulary.leaf_indices(true_ids).astype(np.int32)
    return targets


def _load_split(
    rows: Sequence[LabelRow],
    name: str,
    config: TrainConfig,
    size: int,
    truncated: TruncatedTaxonomy,
    preloaded: NDArray[np.uint8] | None = None,
) -> Split:
    chosen = [r for r in rows if r.split == name]
    if preloaded is not None:
        # Rows of a built dataset: `line` is the row's index into the preloaded images.
        indices = np.array([r.line for r in chosen], dtype=np.int64)
        true_ids = np.array([truncated.truncate_id(r.category_id) for r in chosen], dtype=np.int64)
        return Split(list(chosen), preloaded[indices], true_ids)
    images, failed = load_images(
        chosen, config.images_root, size, cache_dir=config.cache_dir, progress=config.verbose > 0
    )
    if failed:
        log.warning(
            "images_unreadable",
            split=name,
            count=len(failed),
            first=[chosen[i].image for i in failed[:5]],
        )
    kept = [r for i, r in enumerate(chosen) if i not in set(failed)]
    true_ids = np.array([truncated.truncate_id(r.category_id) for r in kept], dtype=np.int64)
    return Split(kept, images, true_ids)


def _write_split(path: Path, rows: Sequence[LabelRow]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image_path", "google_category_id", "product_id", "split"])
        for row in rows:
            writer.writerow([row.image, row.category_id, row.product_id, row.split])


def _read_rows(config: TrainConfig, size: int) -> tuple[list[LabelRow], NDArray[np.uint8] | None]:
    """The labelled rows (and, for a built dataset, its decoded images)."""
    if config.dataset is not None:
        images, rows = load_dataset(config.dataset, size, progress=config.verbose > 0)
        return rows, images
    if config.sources:
        return read_sources(config.sources), None
    return read_labels(config.labels), None


def split_labels(
    rows: Sequence[LabelRow],
    truncated: TruncatedTaxonomy,
    *,
    holdout: float | None,
    vocabulary: Literal["labels", "full"],
    output: Path,
    what: object,
) -> tuple[list[LabelRow], Vocabulary]:
    """Split labelled rows, write ``output/split.csv`` and choose the vocabulary.

    The split is the file's (70/15/15 where it gives none), or with ``holdout`` a hold-out
    of the train split (see `model.data.hold_out_validation`). The vocabulary is the train
    rows' categories, or the whole truncated taxonomy. Raises ModelError naming ``what``
    when the train or validation split is empty. Decodes nothing: image and text training
    share it.
    """
    rows = (
        hold_out_validation(rows, truncated, holdout) if holdout else assign_splits(rows, truncated)
    )
    output.mkdir(parents=True, exist_ok=True)
    _write_split(output / "split.csv", rows)
    train_rows = [r for r in rows if r.split == "train"]
    if not train_rows or not any(r.split == "validation" for r in rows):
        raise ModelError(f"{what}: training needs rows in both the train and validation splits")
    chosen = (
        Vocabulary.full(truncated)
        if vocabulary == "full"
        else Vocabulary.from_labels(truncated, (r.category_id for r in train_rows))
    )
    return rows, chosen


def prepare_data(config: TrainConfig) -> Prepared:
    """Read, split and decode the run's data; write `split.csv`; choose the vocabulary.

    Raises ModelError when the train or validation split is empty.
    """
    taxonomy = Taxonomy.load(config.taxonomy)
    truncated = taxonomy.truncate(config.depth)
    from model.backbones import native_size

    size = config.image_size or native_size(config.backbone)
    rows, preloaded = _read_rows(config, size)
    rows, vocabulary = split_labels(
        rows,
        truncated,
        holdout=config.holdout,
        vocabulary=config.vocabulary,
        output=config.output,
        what=config.dataset or config.labels,
    )
    cache_dir = config.cache_dir or config.output / "cache"
    config = replace(config, cache_dir=cache_dir)
    if config.sources:
        config = replace(config, images_root=Path("/"))
    train_split = _load_split(rows, "train", config, size, truncated, preloaded)
    validation = _load_split(rows, "validation", config, size, truncated, preloaded)
    # Validation categories the training vocabulary lacks cannot be predicted: say so, and keep
    # them (they count as errors, as they would in production).
    unknown = sorted({int(i) for i in validation.true_ids if int(i) not in vocabulary})
    if unknown:
        log.warning("validation_categories_not_in_training", categories=unknown[:20])
    values: dict[int, float] = {}
    value_files = [config.business_values] if config.business_values else []
    for path in (*value_files, *config.business_values_files):
        values.update(read_business_values(path))
    if not values:
        values = {int(i): 1.0 for i in set(train_split.true_ids) | set(validation.true_ids)}
    return Prepared(rows, truncated, vocabulary, train_split, validation, values, size, cache_dir)
