"""`enrich train`: labels + images → a trained, exported model directory, with its history.

The run writes into its output directory:

- `checkpoints/last.keras` and `checkpoints/state.json` after every epoch (`--resume` goes on
  from there), `checkpoints/best.keras` whenever the validation weighted score improves;
- `model/`: the exported model directory (`model.classifier.save_model`) of the best epoch;
- `history.json` and `training_curves.png`;
- `split.csv`: the split each labelled image was given (so evaluation can use the same one).

The input pipeline is tf.data (the training backend is TensorFlow); the model itself is
backend-neutral Keras. On GPUs: mixed precision, and `MirroredStrategy` over several.
"""

import contextlib
import csv
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import structlog
from numpy.typing import NDArray

from model.build import LEAF_HEAD, HeadsKind, build_model, compile_model, count_params, level_names
from model.classifier import decode_outputs, predict_outputs, save_model
from model.data import (
    LabelRow,
    assign_splits,
    hold_out_validation,
    load_dataset,
    load_images,
    read_labels,
    read_sources,
)
from model.decode import Decoder
from model.errors import ModelError
from model.metrics import read_business_values, weighted_accuracy
from model.plots import plot_training_curves
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
    heads: HeadsKind = "multi"
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
class _Split:
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
    train: _Split
    validation: _Split
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


def _augment(image: Any, seed: Any) -> Any:
    """Random flip, zoom-crop and colour jitter on a uint8 image; uint8 out (tf ops, data side)."""
    import tensorflow as tf

    size = tf.shape(image)[0]
    x = tf.image.stateless_random_flip_left_right(image, seed)
    scale = tf.random.stateless_uniform([], seed + 1, 0.8, 1.0)
    crop = tf.cast(tf.cast(size, tf.float32) * scale, tf.int32)
    x = tf.image.stateless_random_crop(x, tf.stack([crop, crop, 3]), seed + 2)
    x = tf.image.resize(x, tf.stack([size, size]), method="bilinear")
    x = tf.image.stateless_random_brightness(x, 0.15 * 255.0, seed + 3)
    x = tf.image.stateless_random_contrast(x, 0.8, 1.2, seed + 4)
    return tf.cast(tf.clip_by_value(x, 0.0, 255.0), tf.uint8)


def _dataset(
    images: NDArray[np.uint8],
    targets: Mapping[str, NDArray[np.int32]],
    sample_weights: NDArray[np.float32] | None,
    *,
    batch_size: int,
    training: bool,
    augment: bool,
    seed: int,
) -> Any:
    import tensorflow as tf

    parts: tuple[Any, ...] = (images, dict(targets))
    if sample_weights is not None:
        parts = (*parts, {name: sample_weights for name in targets})
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        if augment:
            counter = tf.data.Dataset.counter(seed * 1_000_003).map(
                lambda i: tf.stack([i, tf.constant(seed, tf.int64)])
            )
            ds = tf.data.Dataset.zip((ds, counter)).map(
                lambda item, s: (_augment(item[0], s), *item[1:]),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=False,
            )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class _ValidationScore(keras.callbacks.Callback):  # type: ignore[misc]
    """Adds `val_weighted_score` and `val_leaf_accuracy` to each epoch's logs."""

    def __init__(
        self,
        split: _Split,
        decoder: Decoder,
        heads: HeadsKind,
        truncated: TruncatedTaxonomy,
        values: Mapping[int, float],
        batch_size: int,
    ) -> None:
        super().__init__()
        self._split = split
        self._decoder = decoder
        self._heads = heads
        self._truncated = truncated
        self._values = values
        self._batch_size = batch_size

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        outputs = predict_outputs(self.model, self._split.images, self._batch_size)
        predictions = decode_outputs(self._decoder, self._heads, outputs)
        predicted = np.array([p.leaf_id for p in predictions], dtype=np.int64)
        logs["val_leaf_accuracy"] = float(np.mean(predicted == self._split.true_ids))
        logs["val_weighted_score"] = weighted_accuracy(
            self._split.true_ids, predicted, self._truncated, self._values
        )


class _Checkpoint(keras.callbacks.Callback):  # type: ignore[misc]
    """Saves `last.keras` + `state.json` every epoch and `best.keras` on a new best score."""

    def __init__(
        self, directory: Path, history: dict[str, list[float]], best: float, best_epoch: int
    ) -> None:
        super().__init__()
        self.directory = directory
        self.history = history
        self.best = best
        self.best_epoch = best_epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        score = float(logs.get("val_weighted_score", -math.inf))
        self.directory.mkdir(parents=True, exist_ok=True)
        if score > self.best:
            self.best, self.best_epoch = score, epoch
            self.model.save(self.directory / "best.keras")
        self.model.save(self.directory / "last.keras")
        state = {
            "epoch": epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
        }
        tmp = self.directory / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.directory / "state.json")


class _TimeBudget(keras.callbacks.Callback):  # type: ignore[misc]
    """Stops before an epoch that would not finish within the budget."""

    def __init__(self, budget_s: float, started: float) -> None:
        super().__init__()
        self.budget_s = budget_s
        self.started = started
        self.epoch_started = started
        self.longest = 0.0
        self.triggered = False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self.epoch_started)
        if now - self.started + self.longest > self.budget_s:
            self.triggered = True
            self.model.stop_training = True


class _MlflowLogger(keras.callbacks.Callback):  # type: ignore[misc]
    """Logs each epoch's metrics to MLflow (only created when MLflow is configured)."""

    def __init__(self, mlflow: Any) -> None:
        super().__init__()
        self.mlflow = mlflow

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch)


def _mlflow() -> Any | None:
    """The mlflow module when MLFLOW_TRACKING_URI is set and the `mlflow` extra is installed."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    try:
        import mlflow
    except ImportError:
        log.warning("mlflow_not_installed", hint="pip install '.[mlflow]'")
        return None
    return mlflow


def _strategy() -> contextlib.AbstractContextManager[Any]:
    """MirroredStrategy over several GPUs, mixed precision on any GPU; default on CPU."""
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy().scope()  # type: ignore[no-any-return]
    return contextlib.nullcontext()


def _class_weights(true_ids: NDArray[np.int64]) -> NDArray[np.float32]:
    """Balanced per-sample weights: n / (classes * count of the sample's leaf)."""
    counts = Counter(int(i) for i in true_ids)
    n, k = len(true_ids), len(counts)
    return np.array([n / (k * counts[int(i)]) for i in true_ids], dtype=np.float32)


def _load_split(
    rows: Sequence[LabelRow],
    name: str,
    config: TrainConfig,
    size: int,
    truncated: TruncatedTaxonomy,
    preloaded: NDArray[np.uint8] | None = None,
) -> _Split:
    chosen = [r for r in rows if r.split == name]
    if preloaded is not None:
        # Rows of a built dataset: `line` is the row's index into the preloaded images.
        indices = np.array([r.line for r in chosen], dtype=np.int64)
        true_ids = np.array([truncated.truncate_id(r.category_id) for r in chosen], dtype=np.int64)
        return _Split(list(chosen), preloaded[indices], true_ids)
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
    return _Split(kept, images, true_ids)


def _write_split(path: Path, rows: Sequence[LabelRow]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image_path", "google_category_id", "product_id", "split"])
        for row in rows:
            writer.writerow([row.image, row.category_id, row.product_id, row.split])


def _schedule(
    config: TrainConfig, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    if config.schedule == "constant":
        return config.learning_rate
    warmup = config.warmup_epochs * steps_per_epoch
    total = max(1, config.epochs * steps_per_epoch - warmup)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10 if warmup else config.learning_rate,
        decay_steps=total,
        alpha=0.01,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def _read_rows(config: TrainConfig, size: int) -> tuple[list[LabelRow], NDArray[np.uint8] | None]:
    """The labelled rows (and, for a built dataset, its decoded images)."""
    if config.dataset is not None:
        images, rows = load_dataset(config.dataset, size, progress=config.verbose > 0)
        return rows, images
    if config.sources:
        return read_sources(config.sources), None
    return read_labels(config.labels), None


def prepare_data(config: TrainConfig) -> Prepared:
    """Read, split and decode the run's data; write `split.csv`; choose the vocabulary.

    Raises ModelError when the train or validation split is empty.
    """
    taxonomy = Taxonomy.load(config.taxonomy)
    truncated = taxonomy.truncate(config.depth)
    from model.backbones import native_size

    size = config.image_size or native_size(config.backbone)
    rows, preloaded = _read_rows(config, size)
    rows = (
        hold_out_validation(rows, truncated, config.holdout)
        if config.holdout
        else assign_splits(rows, truncated)
    )
    config.output.mkdir(parents=True, exist_ok=True)
    _write_split(config.output / "split.csv", rows)
    train_rows = [r for r in rows if r.split == "train"]
    if not train_rows or not any(r.split == "validation" for r in rows):
        raise ModelError(
            f"{config.dataset or config.labels}: training needs rows in both the train and "
            "validation splits"
        )
    vocabulary = (
        Vocabulary.full(truncated)
        if config.vocabulary == "full"
        else Vocabulary.from_labels(truncated, (r.category_id for r in train_rows))
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


def train(
    config: TrainConfig, *, on_epoch: Callable[[int, dict[str, float]], None] | None = None
) -> TrainResult:
    """Train, checkpoint, early-stop on the validation weighted score, export the best model."""
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    data = prepare_data(config)
    config = replace(config, cache_dir=data.cache_dir)
    size, truncated, vocabulary = data.size, data.truncated, data.vocabulary
    train_split, validation, values = data.train, data.validation, data.values
    targets = level_targets(vocabulary, config.heads, train_split.true_ids)
    weights = _class_weights(train_split.true_ids) if config.class_weighting == "balanced" else None
    train_ds = _dataset(
        train_split.images,
        targets,
        weights,
        batch_size=config.batch_size,
        training=True,
        augment=config.augment,
        seed=config.seed,
    )
    steps = math.ceil(len(train_split.images) / config.batch_size)

    checkpoints = config.output / "checkpoints"
    history: dict[str, list[float]] = {}
    initial_epoch, best, best_epoch = 0, -math.inf, -1
    with _strategy():
        if config.resume and (checkpoints / "state.json").exists():
            state = json.loads((checkpoints / "state.json").read_text())
            model = keras.saving.load_model(checkpoints / "last.keras")
            initial_epoch = int(state["epoch"]) + 1
            best, best_epoch, history = (
                float(state["best"]),
                int(state["best_epoch"]),
                state["history"],
            )
            log.info("resumed", epoch=initial_epoch, best=best)
        else:
            level_sizes = [len(ids) for ids in vocabulary.levels]
            model = build_model(
                config.backbone,
                level_sizes,
                heads=config.heads,
                leaf_size=len(vocabulary.leaves),
                image_size=size,
                weights=config.weights,
                bn_momentum=config.bn_momentum,
                dropout=config.dropout,
                name=config.name.replace("-", "_"),
                leaf_paths=vocabulary.encode_many(vocabulary.leaves),
            )
            compile_model(
                model,
                level_weights=config.level_weights,
                learning_rate=_schedule(config, steps),
                heads=config.heads,
            )

    decoder = Decoder(truncated, vocabulary)
    checkpoint = _Checkpoint(checkpoints, history, best, best_epoch)
    budget = _TimeBudget(config.time_budget_s, started) if config.time_budget_s else None
    callbacks: list[Any] = [
        _ValidationScore(
            validation, decoder, config.heads, truncated, values, config.batch_size * 2
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_weighted_score",
            mode="max",
            patience=config.patience,
            restore_best_weights=False,
        ),
        checkpoint,
    ]
    if budget is not None:
        callbacks.append(budget)
    if on_epoch is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda e, logs: on_epoch(e, dict(logs or {}))
            )
        )
    mlflow = _mlflow()
    run = mlflow.start_run(run_name=config.name) if mlflow else contextlib.nullcontext()
    with run:
        if mlflow:
            mlflow.log_params({k: str(v) for k, v in asdict(config).items()})
            callbacks.append(_MlflowLogger(mlflow))
        epochs_before = len(history.get("loss", []))
        if initial_epoch < config.epochs:
            model.fit(
                train_ds,
                epochs=config.epochs,
                initial_epoch=initial_epoch,
                callbacks=callbacks,
                verbose=config.verbose,
            )
        epochs_run = len(history.get("loss", [])) - epochs_before

        best_path = checkpoints / "best.keras"
        best_model = keras.saving.load_model(best_path) if best_path.exists() else model
        elapsed = time.monotonic() - started
        summary = {
            "labels": str(config.dataset or config.labels),
            "images": {"train": len(train_split.images), "validation": len(validation.images)},
            "leaves": dict(sorted(Counter(int(i) for i in train_split.true_ids).items())),
            "epochs": len(history.get("loss", [])),
            "best_epoch": checkpoint.best_epoch,
            "image_size": size,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "bn_momentum": config.bn_momentum,
            "augment": config.augment,
            "class_weighting": config.class_weighting,
            "training_time_s": round(elapsed, 1),
            "parameters": count_params(best_model),
        }
        metrics = {
            "val_weighted_score": checkpoint.best,
            "val_leaf_accuracy": history.get("val_leaf_accuracy", [math.nan])[checkpoint.best_epoch]
            if checkpoint.best_epoch >= 0 and history.get("val_leaf_accuracy")
            else None,
        }
        model_dir = config.output / "model"
        save_model(
            best_model,
            model_dir,
            name=config.name,
            backbone=config.backbone,
            image_size=size,
            heads=config.heads,
            truncated=truncated,
            vocabulary=vocabulary,
            level_weights=config.level_weights,
            training=summary,
            metrics=metrics,
        )
        (config.output / "history.json").write_text(json.dumps(history, indent=1))
        plot_training_curves(history, config.output / "training_curves.png")
        if mlflow:
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
            mlflow.log_artifact(str(config.output / "training_curves.png"))
    stopped = (
        "time budget"
        if budget and budget.triggered
        else ("early stopping" if epochs_run + initial_epoch < config.epochs else "epochs done")
    )
    return TrainResult(
        model_dir,
        history,
        checkpoint.best_epoch,
        checkpoint.best,
        len(history.get("loss", [])),
        elapsed,
        stopped,
    )
