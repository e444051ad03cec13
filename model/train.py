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
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import structlog
from numpy.typing import NDArray

from model.build import HeadsKind, build_model, compile_model, count_params
from model.classifier import predict_outputs, save_model
from model.decode import Decoder
from model.plots import plot_training_curves
from model.prepare import (
    DEFAULT_BACKBONE,
    DEFAULT_BN_MOMENTUM,
    DEFAULT_IMAGE_SIZE,
    Prepared,
    Split,
    TrainConfig,
    TrainResult,
    level_targets,
    prepare_data,
)
from model.taxonomy import TruncatedTaxonomy
from model.validation import validation_scores

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_BN_MOMENTUM",
    "DEFAULT_IMAGE_SIZE",
    "Prepared",
    "TrainConfig",
    "TrainResult",
    "level_targets",
    "prepare_data",
    "train",
]

log = structlog.get_logger(__name__)


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
        split: Split,
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
        logs.update(
            validation_scores(
                self._decoder,
                self._heads,
                outputs,
                self._split.true_ids,
                self._truncated,
                self._values,
            )
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
