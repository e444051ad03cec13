"""Transfer learning on a frozen pretrained backbone, fast on a CPU.

``enrich train --backbone efficientnet_lite0 --weights imagenet-lite`` runs here instead of
end-to-end training (:mod:`model.train`). The steps:

1. **Features, once.** The backbone is frozen, so what it computes for an image never
   changes: it runs once per image and the result is cached on disk per image
   (:mod:`model.feature_cache`), keyed by the image's pixels and by the backbone, its input
   size, its weights, the cut point and the augmentation view. A changed image or setting
   is computed again; seeds, head designs, depths and later runs reuse the rest.
2. **Heads, in seconds.** The heads (:mod:`model.heads`: ``multi``, ``leaf`` or
   ``marginal``) are trained on the cached pooled features, with early stopping on the
   validation weighted score, as end-to-end training does.
3. **Fine-tuning the top blocks (optional).** With ``fine_tune_blocks=N`` the cache holds
   the activations *entering* the backbone's top ``N`` blocks instead; those blocks, the
   final 1x1 convolution and the heads are then trained together for a few epochs at a low
   learning rate, with every BatchNormalization kept frozen (inference statistics, as the
   small batches of a CPU run would only damage them).
4. **Augmented images, end to end (optional).** With ``augmented_epochs=N`` the assembled
   model goes on training the same top blocks and heads for up to ``N`` epochs on images
   augmented anew for every batch (:mod:`model.augmented_tune`); kept only when the
   validation score beats the stages before.
5. **Export.** The backbone with its fine-tuned blocks and the heads become one ordinary
   model directory (:func:`model.classifier.save_model`): the service and ``enrich
   evaluate`` cannot tell it from an end-to-end model. Before saving, the assembled model's
   outputs on a few validation images are checked against the trained parts' outputs.
   When the backbone is the packaged one and was not fine-tuned, the heads alone are also
   written as a bundle, ``OUTPUT/heads/`` (:mod:`model.bundle`, a few hundred kilobytes).

Augmentation on cached features is limited to views computed before caching
(:mod:`model.views`): the image, its mirror image (``feature_views=2``, the default), a zoom
on the centre and its mirror image (``feature_views=4``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np
import structlog
from numpy.typing import NDArray
from tqdm import tqdm

from model.augmented_tune import AugmentedBatches, tune_augmented
from model.backbones import IMAGENET_LITE, build_backbone
from model.build import build_model, compile_model, count_params
from model.bundle import save_bundle
from model.classifier import predict_outputs, save_model
from model.decode import Decoder
from model.errors import ModelError
from model.feature_cache import FeatureCache, image_digests
from model.heads import attach_heads
from model.plots import plot_training_curves
from model.prepare import Prepared, TrainConfig, TrainResult, level_targets, prepare_data
from model.validation import BestOnValidation
from model.views import check_views, view_settings
from model.views import view as augmented

__all__ = ["cut_layer_name", "extract", "train_transfer"]

log = structlog.get_logger(__name__)

# The assembled model must reproduce the trained parts' probabilities to this tolerance.
_ASSEMBLY_TOLERANCE = 2e-3
_EXTRACT_BATCH = 64


def _features_model(backbone: Any) -> Any:
    """The feature extractor inside a model from :func:`model.backbones.build_backbone`."""
    for layer in backbone.layers:
        if layer.name.endswith("_features"):
            return layer
    raise ModelError(f"{backbone.name}: no feature extractor layer")


def _block_numbers(features: Any) -> list[int]:
    """The block indices of a feature extractor whose layers are named ``block<i>_...``."""
    numbers = set()
    for layer in features.layers:
        head, _, rest = layer.name.partition("_")
        if rest and head.startswith("block") and head[5:].isdigit():
            numbers.add(int(head[5:]))
    return sorted(numbers)


def cut_layer_name(features: Any, fine_tune_blocks: int) -> str | None:
    """The layer whose output enters the top ``fine_tune_blocks`` blocks (None for 0).

    Only backbones whose blocks are named ``block<i>_...`` (the EfficientNet-Lite family)
    can be cut; others raise ModelError, as does a count that leaves no block below.
    """
    if fine_tune_blocks == 0:
        return None
    blocks = _block_numbers(features)
    if not blocks:
        raise ModelError(
            f"{features.name}: fine-tuning on cached activations needs a backbone with "
            "numbered blocks (efficientnet_lite0..2)"
        )
    if not 0 < fine_tune_blocks < len(blocks):
        raise ModelError(
            f"fine_tune_blocks must be between 1 and {len(blocks) - 1} for {features.name}, "
            f"got {fine_tune_blocks}"
        )
    last_frozen = blocks[-fine_tune_blocks - 1]
    prefix = f"block{last_frozen}_"
    return str([layer.name for layer in features.layers if layer.name.startswith(prefix)][-1])


def _weights_identity(weights: object) -> str:
    """A string that changes whenever the backbone's weights would (for the cache key)."""
    if weights is None:
        return "none"
    if weights == IMAGENET_LITE or weights == "imagenet":
        return str(weights)
    path = Path(str(weights))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"file:{digest}"


def _bottom_model(backbone: Any, cut: str | None) -> Any:
    """uint8 images to the cut layer's activations (or the pooled features)."""
    if cut is None:
        return backbone
    features = _features_model(backbone)
    inner = keras.Model(features.input, features.get_layer(cut).output)
    image = backbone.input
    preprocess = backbone.layers[1]
    return keras.Model(image, inner(preprocess(image)))


def _top_model(backbone: Any, cut: str) -> Any:
    """The cut layer's activations to the pooled features, sharing the backbone's layers."""
    features = _features_model(backbone)
    return keras.Model(features.get_layer(cut).output, features.output)


def extract(
    model: Any, images: NDArray[np.uint8], *, dtype: str, desc: str, progress: bool
) -> NDArray[Any]:
    """Run ``model`` over ``images`` in batches; the outputs stacked, as ``dtype``."""
    out: NDArray[Any] | None = None
    batches = range(0, len(images), _EXTRACT_BATCH)
    iterator = tqdm(batches, desc=desc, unit="batch") if progress else batches
    for start in iterator:
        chunk = images[start : start + _EXTRACT_BATCH]
        if chunk.dtype == np.float16:  # cached activations; the model computes in float32
            chunk = chunk.astype("float32")
        batch = np.asarray(model.predict_on_batch(chunk))
        if out is None:
            out = np.empty((len(images), *batch.shape[1:]), dtype=dtype)
        out[start : start + len(batch)] = batch
    if out is None:
        shape = model.output_shape[1:]
        return np.empty((0, *shape), dtype=dtype)
    return out


def _cached_features(
    backbone: Any,
    images: NDArray[np.uint8],
    views: int,
    *,
    cache: FeatureCache,
    settings: dict[str, Any],
    cut: str | None,
    progress: bool,
) -> tuple[NDArray[Any], int]:
    """``(views, n, ...)`` backbone outputs of ``images``, and how many came from the cache."""
    model: Any = None
    dtype = "float32" if cut is None else "float16"
    parts, hits = [], 0
    digests = image_digests(images)  # once for every view
    for view in range(views):

        def compute(missing: NDArray[np.uint8], view: int = view) -> NDArray[Any]:
            nonlocal model
            if model is None:
                model = _bottom_model(backbone, cut)
            return extract(
                model,
                augmented(missing, view),
                dtype=dtype,
                desc=f"features v{view}",
                progress=progress,
            )

        features, hit = cache.get_or_compute(
            images, {**settings, **view_settings(view)}, compute, digests
        )
        parts.append(features)
        hits += hit
    return np.stack(parts), hits


def _scorer(
    data: Prepared,
    decoder: Decoder,
    config: TrainConfig,
    history: dict[str, list[float]],
    inputs: NDArray[Any],
    *,
    stage: float,
) -> BestOnValidation:
    """Early stopping on the validation weighted score of ``inputs`` (features or activations)."""
    return BestOnValidation(
        lambda model: predict_outputs(model, inputs, 256),
        data.validation.true_ids,
        decoder=decoder,
        heads=config.heads,
        truncated=data.truncated,
        values=data.values,
        patience=config.patience,
        history=history,
        stage=stage,
    )


def _targets(data: Prepared, heads: Any, views: int) -> dict[str, NDArray[np.int32]]:
    """Each head's labels for the training samples of every view."""
    targets = level_targets(data.vocabulary, heads, data.train.true_ids)
    return {name: np.tile(values, views) for name, values in targets.items()}


def _fit(
    model: Any,
    inputs: NDArray[Any],
    targets: dict[str, NDArray[np.int32]],
    scorer: BestOnValidation,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    verbose: int,
) -> None:
    """Fit on shuffled ``inputs`` and leave the best validation epoch's weights in ``model``."""
    order = np.random.default_rng(seed).permutation(len(inputs))
    model.fit(
        np.asarray(inputs, dtype="float32")[order],
        {name: values[order] for name, values in targets.items()},
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=[scorer],
        verbose=verbose,
    )
    if scorer.best_weights is not None:
        model.set_weights(scorer.best_weights)


def _head_model(data: Prepared, config: TrainConfig, feature_size: int) -> Any:
    """Pooled features in, the chosen head design out (dropout before the heads)."""
    inputs = keras.Input(shape=(feature_size,), name="features")
    x = keras.layers.Dropout(config.dropout, name="dropout")(inputs)
    vocabulary = data.vocabulary
    outputs = attach_heads(
        x,
        heads=config.heads,
        level_sizes=vocabulary.sizes,
        leaf_size=len(vocabulary.leaves),
        leaf_paths=vocabulary.encode_many(vocabulary.leaves),
    )
    return keras.Model(inputs, outputs, name="heads")


def _settings(config: TrainConfig, size: int, cut: str | None) -> dict[str, Any]:
    return {
        "backbone": config.backbone,
        "image_size": size,
        "weights": _weights_identity(config.weights),
        "cut": cut,
        "keras": keras.__version__,
    }


def _assemble(config: TrainConfig, data: Prepared, backbone: Any, head_model: Any) -> Any:
    """The exportable model: a fresh backbone and heads, given the trained weights by name."""
    vocabulary = data.vocabulary
    full = build_model(
        config.backbone,
        [len(level) for level in vocabulary.levels],
        heads=config.heads,
        leaf_size=len(vocabulary.leaves),
        image_size=data.size,
        weights=None,
        dropout=config.dropout,
        name=config.name.replace("-", "_"),
        leaf_paths=vocabulary.encode_many(vocabulary.leaves),
    )
    target = _features_model(full.get_layer(f"{config.backbone}_backbone"))
    source = _features_model(backbone)
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())
    for layer in head_model.layers:
        if layer.weights:
            full.get_layer(layer.name).set_weights(layer.get_weights())
    return full


def _check_assembly(
    full: Any, reference: Any, reference_inputs: NDArray[Any], images: NDArray[np.uint8]
) -> None:
    """Raise ModelError unless ``full`` on ``images`` gives what ``reference`` gave."""
    got = predict_outputs(full, images, 32)
    want = predict_outputs(reference, reference_inputs, 32)
    for name, values in want.items():
        gap = float(np.max(np.abs(got[name] - values))) if len(values) else 0.0
        if gap > _ASSEMBLY_TOLERANCE:
            raise ModelError(
                f"the assembled model disagrees with the trained parts on head {name!r} by "
                f"{gap:.4g} (tolerance {_ASSEMBLY_TOLERANCE})"
            )


def train_transfer(config: TrainConfig) -> TrainResult:
    """Train heads (and optionally the top blocks) on a frozen pretrained backbone; export."""
    started = time.monotonic()
    if config.weights is None:
        raise ModelError("transfer learning needs pretrained weights (--weights)")
    check_views(config.feature_views)
    if config.augmented_epochs < 0 or (config.augmented_epochs and not config.fine_tune_blocks):
        raise ModelError(
            "augmented_epochs needs fine_tune_blocks (the blocks it trains), "
            f"got augmented_epochs={config.augmented_epochs}, "
            f"fine_tune_blocks={config.fine_tune_blocks}"
        )
    keras.utils.set_random_seed(config.seed)
    data = prepare_data(config)
    progress = config.verbose > 0
    backbone = build_backbone(config.backbone, image_size=data.size, weights=config.weights)
    features_model = _features_model(backbone)
    cut = cut_layer_name(features_model, config.fine_tune_blocks)
    cache = FeatureCache(data.cache_dir)
    settings = _settings(config, data.size, cut)
    timings: dict[str, float] = {}

    began = time.monotonic()
    train_in, train_hits = _cached_features(
        backbone,
        data.train.images,
        config.feature_views,
        cache=cache,
        settings=settings,
        cut=cut,
        progress=progress,
    )
    valid_in, valid_hits = _cached_features(
        backbone,
        data.validation.images,
        1,
        cache=cache,
        settings=settings,
        cut=cut,
        progress=progress,
    )
    timings["features_s"] = time.monotonic() - began
    computed = config.feature_views * len(data.train.images) + len(data.validation.images)
    computed -= train_hits + valid_hits
    log.info(
        "features_ready",
        cached=train_hits + valid_hits,
        computed=computed,
        seconds=round(timings["features_s"], 1),
    )
    train_flat = train_in.reshape(-1, *train_in.shape[2:])
    valid_flat = np.asarray(valid_in[0], dtype="float32")
    top = _top_model(backbone, cut) if cut is not None else None
    if top is not None:
        began = time.monotonic()
        train_pooled = extract(top, train_flat, dtype="float32", desc="pool", progress=progress)
        valid_pooled = extract(top, valid_flat, dtype="float32", desc="pool", progress=progress)
        timings["pool_s"] = time.monotonic() - began
    else:
        train_pooled, valid_pooled = np.asarray(train_flat), np.asarray(valid_flat)

    decoder = Decoder(data.truncated, data.vocabulary)
    targets = _targets(data, config.heads, config.feature_views)
    history: dict[str, list[float]] = {}
    head_model = _head_model(data, config, train_pooled.shape[-1])
    compile_model(
        head_model,
        level_weights=config.level_weights,
        learning_rate=config.learning_rate,
        heads=config.heads,
    )
    scorer = _scorer(data, decoder, config, history, valid_pooled, stage=0.0)
    began = time.monotonic()
    _fit(
        head_model,
        train_pooled,
        targets,
        scorer,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        verbose=config.verbose,
    )
    timings["heads_s"] = time.monotonic() - began
    best, best_epoch = scorer.best, scorer.best_epoch
    reference, reference_inputs = head_model, valid_pooled

    backbone_changed = top is not None
    if top is not None:
        for layer in top.layers:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        tuned_in = keras.Input(shape=train_flat.shape[1:], name="activations")
        # Identity layers give the outputs their heads' names (a nested model's outputs
        # would all be named after the nested model).
        tuned_out = {
            name: keras.layers.Identity(name=name)(tensor)
            for name, tensor in head_model(top(tuned_in)).items()
        }
        tuned = keras.Model(tuned_in, tuned_out, name="fine_tune")
        compile_model(
            tuned,
            level_weights=config.level_weights,
            learning_rate=config.fine_tune_learning_rate,
            heads=config.heads,
        )
        tuner = _scorer(data, decoder, config, history, valid_flat, stage=1.0)
        tuner.best = best  # fine-tuning must beat the heads alone to be kept
        before = tuned.get_weights()
        began = time.monotonic()
        _fit(
            tuned,
            train_flat,
            targets,
            tuner,
            epochs=config.fine_tune_epochs,
            batch_size=config.batch_size,
            seed=config.seed + 1,
            verbose=config.verbose,
        )
        timings["fine_tune_s"] = time.monotonic() - began
        if tuner.best_weights is None:
            tuned.set_weights(before)
            backbone_changed = False
            log.info("fine_tune_not_better", heads_score=best)
        else:
            heads_epochs = sum(1 for stage in history["stage"] if stage == 0.0)
            best, best_epoch = tuner.best, heads_epochs + tuner.best_epoch
        reference, reference_inputs = tuned, valid_flat

    full = _assemble(config, data, backbone, head_model)
    sample = slice(0, min(16, len(data.validation.images)))
    _check_assembly(
        full, reference, np.asarray(reference_inputs[sample]), data.validation.images[sample]
    )
    augmented_kept = False
    if config.augmented_epochs and cut is not None:
        augmenter = _scorer(data, decoder, config, history, data.validation.images, stage=2.0)
        augmenter.best = best  # it must beat the stages before to be kept
        epochs_before = len(history.get("loss", []))
        began = time.monotonic()
        augmented_kept = tune_augmented(
            full,
            _features_model(full.get_layer(f"{config.backbone}_backbone")),
            cut,
            AugmentedBatches(
                data.train.images,
                level_targets(data.vocabulary, config.heads, data.train.true_ids),
                batch_size=config.batch_size,
                seed=config.seed + 2,
            ),
            augmenter,
            epochs=config.augmented_epochs,
            learning_rate=config.fine_tune_learning_rate,
            level_weights=config.level_weights,
            heads=config.heads,
            verbose=config.verbose,
        )
        timings["augmented_s"] = time.monotonic() - began
        if augmented_kept:
            best, best_epoch = augmenter.best, epochs_before + augmenter.best_epoch
        else:
            log.info("augmented_not_better", score=best)
    elapsed = time.monotonic() - started
    summary = {
        "labels": [str(p) for p, _ in config.sources] or str(config.dataset or config.labels),
        "images": {"train": len(data.train.images), "validation": len(data.validation.images)},
        "leaves": dict(sorted(Counter(int(i) for i in data.train.true_ids).items())),
        "transfer": {
            "weights": str(config.weights),
            "feature_views": config.feature_views,
            "fine_tune_blocks": config.fine_tune_blocks,
            "fine_tune_kept": backbone_changed,
            "augmented_epochs": config.augmented_epochs,
            "augmented_kept": augmented_kept,
            "cut": cut,
            "cached_features": train_hits + valid_hits,
            "computed_features": computed,
            **{name: round(value, 1) for name, value in timings.items()},
        },
        "epochs": len(history.get("loss", [])),
        "best_epoch": best_epoch,
        "image_size": data.size,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "training_time_s": round(elapsed, 1),
        "parameters": count_params(full),
    }
    model_dir = config.output / "model"
    save_model(
        full,
        model_dir,
        name=config.name,
        backbone=config.backbone,
        image_size=data.size,
        heads=config.heads,
        truncated=data.truncated,
        vocabulary=data.vocabulary,
        level_weights=config.level_weights,
        training=summary,
        metrics={
            "val_weighted_score": best,
            "val_leaf_accuracy": history["val_leaf_accuracy"][best_epoch]
            if 0 <= best_epoch < len(history.get("val_leaf_accuracy", []))
            else None,
        },
    )
    (config.output / "history.json").write_text(json.dumps(history, indent=1))
    (config.output / "config.json").write_text(json.dumps(asdict(config), indent=1, default=str))
    plot_training_curves(history, config.output / "training_curves.png")
    if config.weights == IMAGENET_LITE and not (backbone_changed or augmented_kept):
        # The backbone is the packaged one: the heads alone rebuild the model (model.bundle).
        save_bundle(
            config.output / "heads",
            head_model,
            name=config.name,
            backbone=config.backbone,
            image_size=data.size,
            heads=config.heads,
            dropout=config.dropout,
            truncated=data.truncated,
            vocabulary=data.vocabulary,
            training=summary,
        )
    return TrainResult(
        model_dir, history, best_epoch, best, len(history.get("loss", [])), elapsed, "transfer"
    )
