"""Transfer's last stage: the top blocks end to end on images augmented anew for every batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from model.augmented_tune import (
    AugmentedBatches,
    augment_batch,
    set_top_trainable,
    tune_augmented,
)
from model.backbones import IMAGENET_LITE
from model.build import build_model
from model.errors import ModelError
from model.train import TrainConfig
from model.transfer import _features_model, cut_layer_name, train_transfer
from tests.support.labels import write_small_labels

SIZE = 64


@pytest.fixture(scope="module")
def small_labels(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real shared photos of four classes (shirts, skirts, apples, cabbage), 8 + 3 each."""
    return write_small_labels(
        shared_data,
        tmp_path_factory.mktemp("labels") / "labels.csv",
        {"train": 8, "validation": 3},
        ("212", "1581", "6566", "7336"),
    )


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_augment_batch_keeps_shape_and_is_reproducible_per_generator_state() -> None:
    """Same generator state, same batch; another state, other pixels; shape and dtype kept."""
    images = _images(6)
    first = augment_batch(images, np.random.default_rng(7))
    again = augment_batch(images, np.random.default_rng(7))
    other = augment_batch(images, np.random.default_rng(8))
    assert first.shape == images.shape
    assert first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, images), "the images are changed"


def test_augment_batch_moves_pixels_only_by_crop_mirror_and_photometric_jitter() -> None:
    """A flat image stays flat (crop and mirror cannot change it); a mirrored one may flip."""
    flat = np.full((4, SIZE, SIZE, 3), 120, dtype=np.uint8)
    out = augment_batch(flat, np.random.default_rng(0))
    for image in out:
        assert len(np.unique(image)) == 1, "brightness and contrast move every pixel alike"
        assert abs(int(image[0, 0, 0]) - 120) <= round(0.15 * 255) + 1
    # A left-dark, right-bright image: over many draws both orientations appear.
    ramp = np.zeros((1, SIZE, SIZE, 3), dtype=np.uint8)
    ramp[:, :, SIZE // 2 :] = 255
    rng = np.random.default_rng(1)
    left_brighter = {
        bool(a[:, :4].mean() > a[:, -4:].mean())
        for a in (augment_batch(ramp, rng)[0] for _ in range(20))
    }
    assert left_brighter == {True, False}


def test_augment_batch_refuses_what_is_not_a_batch_of_square_rgb_images() -> None:
    """A batch of the wrong shape is a ModelError naming the shape, not a crash in Pillow."""
    with pytest.raises(ModelError, match=r"\(2, 8, 6, 3\)"):
        augment_batch(np.zeros((2, 8, 6, 3), dtype=np.uint8), np.random.default_rng(0))


def test_batches_cover_every_image_once_per_epoch_in_a_new_order() -> None:
    """Each epoch serves every image once (the last batch shorter); the order then changes."""
    images = _images(10)
    labels = np.arange(10, dtype=np.int32)
    batches = AugmentedBatches(images, {"leaf": labels}, batch_size=4, seed=3)
    assert len(batches) == 3

    def epoch() -> list[int]:
        served = [batches[i] for i in range(len(batches))]
        assert [len(x) for x, _ in served] == [4, 4, 2]
        assert all(x.shape[1:] == (SIZE, SIZE, 3) for x, _ in served)
        return [int(v) for _, t in served for v in t["leaf"]]

    first = epoch()
    assert sorted(first) == list(range(10))
    assert epoch() == first, "the same epoch serves the same order"
    batches.on_epoch_end()
    second = epoch()
    assert sorted(second) == list(range(10))
    assert second != first
    with pytest.raises(IndexError):
        batches[3]


def test_batches_refuse_targets_that_do_not_match_the_images() -> None:
    """A head with a target count other than the image count is refused when built."""
    with pytest.raises(ModelError, match="'leaf' has 3 targets for 4 images"):
        AugmentedBatches(_images(4), {"leaf": np.zeros(3, np.int32)}, batch_size=2, seed=0)
    with pytest.raises(ModelError, match="no training images"):
        AugmentedBatches(_images(0), {"leaf": np.zeros(0, np.int32)}, batch_size=2, seed=0)


def _model() -> tuple[Any, Any, str]:
    model = build_model("efficientnet_lite0", [3], heads="leaf", leaf_size=3, image_size=SIZE)
    features = _features_model(model.get_layer("efficientnet_lite0_backbone"))
    return model, features, str(cut_layer_name(features, 2))


def test_only_layers_above_the_cut_and_the_heads_train_and_batch_norm_never() -> None:
    """Below the cut nothing trains; above it everything but BatchNormalization does."""
    model, features, cut = _model()
    heads = [model.get_layer("leaf")]
    count = set_top_trainable(features, cut, heads)
    names = [layer.name for layer in features.layers]
    above = names[names.index(cut) + 1 :]
    for layer in features.layers:
        expected = layer.name in above and not isinstance(layer, keras.layers.BatchNormalization)
        assert layer.trainable is expected, layer.name
    assert {name.split("_")[0] for name in above if name.startswith("block")} == {
        "block14",
        "block15",
    }
    assert all(layer.trainable for layer in heads)
    assert count == sum(
        1 for layer in [*features.layers, *heads] if layer.trainable and layer.weights
    )
    with pytest.raises(ModelError, match="no layer 'nowhere'"):
        set_top_trainable(features, "nowhere", heads)


class _Scorer(keras.callbacks.Callback):  # type: ignore[misc]
    """Stands in for the validation scorer: every epoch is better, or none is."""

    def __init__(self, improves: bool) -> None:
        super().__init__()
        self.improves = improves
        self.best_weights: list[Any] | None = None
        self.epochs = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs += 1
        if self.improves:
            self.best_weights = [np.array(w) for w in self.model.get_weights()]


def _tune(model: Any, features: Any, cut: str, scorer: _Scorer) -> bool:
    batches = AugmentedBatches(
        _images(8), {"leaf": np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)}, batch_size=4, seed=0
    )
    return tune_augmented(
        model,
        features,
        cut,
        batches,
        scorer,  # type: ignore[arg-type]
        epochs=2,
        learning_rate=1e-2,
        level_weights=None,
        heads="leaf",
        verbose=0,
    )


def test_tuning_changes_only_the_top_blocks_and_the_heads() -> None:
    """Kept epochs move the weights above the cut and the heads; nothing below, no BN state."""
    model, features, cut = _model()
    names = [layer.name for layer in features.layers]
    below = [layer for layer in features.layers[: names.index(cut) + 1] if layer.weights]
    norms = [
        layer for layer in features.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    before_below = [[np.array(w) for w in layer.get_weights()] for layer in below]
    before_norms = [[np.array(w) for w in layer.get_weights()] for layer in norms]
    before_head = np.array(model.get_layer("leaf").get_weights()[0])
    before_top = [
        np.array(layer.get_weights()[0])
        for layer in features.layers[names.index(cut) + 1 :]
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)
    ]
    scorer = _Scorer(improves=True)
    assert _tune(model, features, cut, scorer) is True
    assert scorer.epochs == 2
    for layer, weights in zip(below, before_below, strict=True):
        for got, want in zip(layer.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=layer.name)
    for layer, weights in zip(norms, before_norms, strict=True):
        for got, want in zip(layer.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=layer.name)
    assert not np.array_equal(model.get_layer("leaf").get_weights()[0], before_head)
    convolutions = [
        layer
        for layer in features.layers[names.index(cut) + 1 :]
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)
    ]
    moved = [
        layer.name
        for layer, weights in zip(convolutions, before_top, strict=True)
        if not np.array_equal(layer.get_weights()[0], weights)
    ]
    assert len(moved) == len(convolutions) > 0, "every convolution above the cut learned"


def test_tuning_that_never_beats_the_score_puts_every_weight_back() -> None:
    """When no epoch beats the stages before, the model is exactly as it was."""
    model, features, cut = _model()
    before = [np.array(w) for w in model.get_weights()]
    assert _tune(model, features, cut, _Scorer(improves=False)) is False
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_transfer_refuses_augmented_epochs_without_blocks_to_train(tmp_path: Path) -> None:
    """augmented_epochs without fine_tune_blocks is a ModelError before any data is read."""
    config = TrainConfig(
        labels=tmp_path / "missing.csv",
        images_root=tmp_path,
        taxonomy=tmp_path / "missing.txt",
        output=tmp_path / "run",
        backbone="efficientnet_lite0",
        weights=IMAGENET_LITE,
        augmented_epochs=2,
    )
    with pytest.raises(ModelError, match="augmented_epochs needs fine_tune_blocks"):
        train_transfer(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_transfer_with_augmented_epochs_records_the_stage_and_still_classifies(
    small_labels: Path,
    shared_data: Path,
    taxonomy_file: Path,
    tmp_path: Path,
) -> None:
    """The third stage runs after the cached ones; its epochs are stage 2 of the history."""
    images = shared_data / "product-images"
    config = TrainConfig(
        labels=small_labels,
        images_root=images,
        taxonomy=taxonomy_file,
        output=tmp_path / "run",
        backbone="efficientnet_lite0",
        image_size=96,
        weights=IMAGENET_LITE,
        heads="marginal",
        epochs=20,
        batch_size=16,
        learning_rate=3e-3,
        patience=20,
        fine_tune_blocks=1,
        fine_tune_epochs=1,
        augmented_epochs=2,
        business_values=images / "business-value.csv",
        cache_dir=tmp_path / "cache",
        verbose=0,
    )
    result = train_transfer(config)
    metadata = json.loads((result.model_dir / "metadata.json").read_text())
    transfer = metadata["training"]["transfer"]
    assert transfer["augmented_epochs"] == 2
    assert isinstance(transfer["augmented_kept"], bool)
    assert transfer["augmented_s"] > 0
    assert result.history["stage"].count(2.0) == 2, "two augmented epochs were scored"
    assert (config.output / "heads").is_dir() is not (
        transfer["fine_tune_kept"] or transfer["augmented_kept"]
    ), "a heads-only bundle exactly when the packaged backbone is untouched"
    # Four classes, 12 validation photos: the kept model still separates them.
    assert result.history["val_leaf_accuracy"][result.best_epoch] >= 0.75
