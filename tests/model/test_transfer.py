"""Transfer learning: cached features, heads trained on them, top blocks fine-tuned, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.backbones import IMAGENET_LITE, build_backbone
from model.classifier import Classifier
from model.data import read_labels
from model.errors import ModelError
from model.train import TrainConfig
from model.transfer import FeatureCache, cut_layer_name, train_transfer
from tests.support.labels import write_small_labels

# Four depth-4 leaves under two roots: shirts & tops, skirts, fruits (apples), vegetables
# (cabbage), with leaves at depth 3 and 4.
CLASSES = ("212", "1581", "6566", "7336")
PER_CLASS = {"train": 8, "validation": 3}


@pytest.fixture(scope="module")
def small_labels(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few dozen real shared photos of four classes, with their train/validation split."""
    return write_small_labels(
        shared_data, tmp_path_factory.mktemp("labels") / "labels.csv", PER_CLASS, CLASSES
    )


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)


def test_feature_cache_computes_once_and_reuses(tmp_path: Path) -> None:
    """The same images and settings hit the cache; the computation runs only the first time."""
    cache = FeatureCache(tmp_path)
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(8, dtype="float32").reshape(4, 2)

    first, hit1 = cache.get_or_compute(_image(0), {"backbone": "b"}, compute)
    second, hit2 = cache.get_or_compute(_image(0), {"backbone": "b"}, compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("pixel", "one changed pixel is a changed image"),
        ("setting", "another backbone, size, weights, cut or view is another computation"),
    ],
)
def test_feature_cache_key_changes_with_any_pixel_or_setting(change: str, why: str) -> None:
    """A changed image or setting is a new key, so stale features are never served."""
    images, settings = _image(0), {"backbone": "b", "image_size": 8, "view": 0}
    base = FeatureCache.key(images, settings)
    if change == "pixel":
        images = images.copy()
        images[3, 7, 7, 2] ^= 1
    else:
        settings = {**settings, "view": 1}
    assert FeatureCache.key(images, settings) != base, why


def test_feature_cache_recomputes_an_unreadable_file(tmp_path: Path) -> None:
    """A truncated cache file is computed again rather than loaded or crashed on."""
    cache = FeatureCache(tmp_path)
    images, settings = _image(1), {"backbone": "b"}
    cache.path(cache.key(images, settings)).write_bytes(b"\x93NUMPY trunc")
    features, hit = cache.get_or_compute(images, settings, lambda: np.ones((4, 2), "float32"))
    assert not hit
    np.testing.assert_array_equal(features, np.ones((4, 2)))


def test_cut_layer_is_the_last_layer_below_the_tuned_blocks() -> None:
    """Tuning the top block of Lite0 caches what leaves block 14; impossible counts fail."""
    features = build_backbone("efficientnet_lite0", image_size=64).layers[-1]
    assert cut_layer_name(features, 0) is None
    assert cut_layer_name(features, 1) == "block14_add"
    assert cut_layer_name(features, 2).startswith("block13_")
    with pytest.raises(ModelError, match="between 1 and 15"):
        cut_layer_name(features, 16)
    tiny = build_backbone("tiny", image_size=32).layers[-1]
    with pytest.raises(ModelError, match="numbered blocks"):
        cut_layer_name(tiny, 1)


@pytest.mark.slow
@pytest.mark.parametrize(("heads", "fine_tune"), [("marginal", 0), ("leaf", 1)])
def test_transfer_trains_exports_and_reuses_its_features(
    heads: str,
    fine_tune: int,
    small_labels: Path,
    shared_data: Path,
    taxonomy_file: Path,
    tmp_path: Path,
) -> None:
    """Heads on cached ImageNet features learn the classes; a rerun computes no feature."""
    images = shared_data / "product-images"
    cache = tmp_path / "cache"
    config = TrainConfig(
        labels=small_labels,
        images_root=images,
        taxonomy=taxonomy_file,
        output=tmp_path / "run",
        backbone="efficientnet_lite0",
        image_size=128,
        weights=IMAGENET_LITE,
        heads=heads,  # type: ignore[arg-type]
        epochs=30,
        batch_size=16,
        learning_rate=3e-3,
        patience=30,
        fine_tune_blocks=fine_tune,
        fine_tune_epochs=2,
        business_values=images / "business-value.csv",
        cache_dir=cache,
        verbose=0,
    )
    result = train_transfer(config)
    metadata = json.loads((result.model_dir / "metadata.json").read_text())
    transfer = metadata["training"]["transfer"]
    assert transfer["cached_views"] == 0
    assert transfer["fine_tune_blocks"] == fine_tune
    assert metadata["heads"] == heads
    # Four classes, 12 validation photos: ImageNet features separate them (chance is 0.25).
    assert result.history["val_leaf_accuracy"][result.best_epoch] >= 0.75

    classifier = Classifier.load(result.model_dir, taxonomy=taxonomy_file)
    rows = [r for r in read_labels(small_labels) if r.split == "validation"]
    predictions = classifier.classify([images / r.image for r in rows])
    truncated = classifier.truncated
    hits = [
        p.leaf_id == truncated.truncate_id(r.category_id)
        for p, r in zip(predictions, rows, strict=True)
    ]
    assert np.mean(hits) >= 0.75

    again = train_transfer(config)
    rerun = json.loads((again.model_dir / "metadata.json").read_text())["training"]["transfer"]
    assert rerun["cached_views"] == 3, "two training views and one validation view reused"
