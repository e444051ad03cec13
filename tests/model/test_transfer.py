"""Transfer learning: cached features, heads trained on them, top blocks fine-tuned, export."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from model.backbones import IMAGENET_LITE, build_backbone
from model.bundle import HEADS_FILE, materialise
from model.classifier import Classifier
from model.data import read_labels
from model.errors import ModelError
from model.feature_cache import FeatureCache
from model.train import TrainConfig
from model.transfer import cut_layer_name, train_transfer
from service.cli import cli
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


def _images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)


def _compute(calls: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    """A stand-in backbone: each image's mean per channel; records how many it was given."""

    def compute(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return images.mean(axis=(1, 2)).astype("float32")

    return compute


def test_feature_cache_computes_each_image_once(tmp_path: Path) -> None:
    """The same images and settings come from the cache; the computation ran once."""
    cache, calls = FeatureCache(tmp_path), []
    first, hits1 = cache.get_or_compute(_images(0), {"backbone": "b"}, _compute(calls))
    second, hits2 = cache.get_or_compute(_images(0), {"backbone": "b"}, _compute(calls))
    assert (hits1, hits2, calls) == (0, 4, [4])
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, _images(0).mean(axis=(1, 2)), rtol=1e-6)


def test_feature_cache_recomputes_only_a_changed_image(tmp_path: Path) -> None:
    """One changed pixel makes that image, and only it, computed again."""
    cache, calls = FeatureCache(tmp_path), []
    images = _images(0)
    cache.get_or_compute(images, {"backbone": "b"}, _compute(calls))
    images = images.copy()
    images[3, 7, 7, 2] ^= 1
    features, hits = cache.get_or_compute(images, {"backbone": "b"}, _compute(calls))
    assert (hits, calls) == (3, [4, 1])
    np.testing.assert_allclose(features, images.mean(axis=(1, 2)), rtol=1e-6)


def test_feature_cache_serves_any_selection_and_separates_settings(tmp_path: Path) -> None:
    """A subset in another order is all hits; another setting is another computation."""
    cache, calls = FeatureCache(tmp_path), []
    images = _images(0)
    cache.get_or_compute(images, {"backbone": "b", "view": 0}, _compute(calls))
    subset = images[[2, 0]]
    features, hits = cache.get_or_compute(subset, {"backbone": "b", "view": 0}, _compute(calls))
    assert (hits, calls) == (2, [4])
    np.testing.assert_allclose(features, subset.mean(axis=(1, 2)), rtol=1e-6)
    _, hits = cache.get_or_compute(images, {"backbone": "b", "view": 1}, _compute(calls))
    assert (hits, calls) == (0, [4, 4])


def test_feature_cache_recomputes_an_unreadable_chunk(tmp_path: Path) -> None:
    """A damaged chunk is ignored and its images computed again, not loaded or crashed on."""
    cache, calls = FeatureCache(tmp_path), []
    settings = {"backbone": "b"}
    cache.get_or_compute(_images(1), settings, _compute(calls))
    for chunk in cache.folder(settings).glob("*.features.npy"):
        chunk.write_bytes(b"\x93NUMPY trunc")
    features, hits = cache.get_or_compute(_images(1), settings, _compute(calls))
    assert (hits, calls) == (0, [4, 4])
    np.testing.assert_allclose(features, _images(1).mean(axis=(1, 2)), rtol=1e-6)


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
    assert transfer["cached_features"] == 0
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

    bundle = config.output / "heads"
    kept = transfer["fine_tune_kept"]
    assert bundle.is_dir() is not kept, "a bundle exactly when the backbone is untouched"
    if not kept:
        rebuilt = Classifier.load(materialise(bundle, tmp_path / "rebuilt"))
        again_predicted = rebuilt.classify([images / r.image for r in rows])
        assert [p.leaf_id for p in again_predicted] == [p.leaf_id for p in predictions]
        (bundle / HEADS_FILE).write_bytes((bundle / HEADS_FILE).read_bytes()[:-10])
        with pytest.raises(ModelError, match="checksum"):
            materialise(bundle, tmp_path / "damaged")

    again = train_transfer(config)
    rerun = json.loads((again.model_dir / "metadata.json").read_text())["training"]["transfer"]
    assert rerun["computed_features"] == 0, "every image's features came from the cache"
    counts = metadata["training"]["images"]
    assert rerun["cached_features"] == 2 * counts["train"] + counts["validation"]


@pytest.mark.slow
def test_train_command_learns_from_two_sources_at_once(
    shared_data: Path, taxonomy_file: Path, tmp_path: Path
) -> None:
    """`enrich train` with two --labels/--images pairs trains one vocabulary over both."""
    pairs = []
    for source, categories in (
        ("product-images", ("212", "6566")),
        ("fashion-products", ("187", "204")),
    ):
        folder = tmp_path / source
        folder.mkdir()
        labels = write_small_labels(
            shared_data, folder / "labels.csv", PER_CLASS, categories, source=source
        )
        pairs += ["--labels", str(labels), "--images", str(shared_data / source)]
    run = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        ["train", *pairs, "--taxonomy", str(taxonomy_file), "--output", str(run),
         "--backbone", "efficientnet_lite0", "--image-size", "96", "--weights", "imagenet-lite",
         "--heads", "marginal", "--epochs", "5", "--verbose", "0",
         "--business-values", str(shared_data / "product-images" / "business-value.csv"),
         "--business-values", str(shared_data / "fashion-products" / "business-value.csv")],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metadata = json.loads((run / "model" / "metadata.json").read_text())
    assert [Path(p).parent.name for p in metadata["training"]["labels"]] == [
        "product-images",
        "fashion-products",
    ]
    ids = {node["id"] for level in metadata["vocabulary"]["levels"] for node in level}
    assert {212, 5795, 187, 204} <= ids, "leaves of both sources are in the one vocabulary"
    with (run / "split.csv").open() as stream:
        paths = [row["image_path"] for row in csv.DictReader(stream)]
    assert any("/product-images/" in p for p in paths)
    assert any("/fashion-products/" in p for p in paths)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fine-tune-blocks", "2"], "need pretrained --weights"),
        (["--end-to-end"], "need pretrained --weights"),
        (["--feature-views", "5"], "1<=x<=4"),
        (["--weights", "imagenet-lite", "--augmented-epochs", "2"], "needs --fine-tune-blocks"),
        (["--weights", "no-such-file.h5"], "does not exist"),
        (["--labels", "{labels}"], "in pairs"),
    ],
)
def test_train_command_refuses_inconsistent_transfer_flags(
    extra: list[str],
    message: str,
    small_labels: Path,
    shared_data: Path,
    taxonomy_file: Path,
    tmp_path: Path,
) -> None:
    """Flags that cannot work together are a usage error before anything is read or built."""
    args = [
        "train", "--labels", str(small_labels), "--images", str(shared_data / "product-images"),
        "--taxonomy", str(taxonomy_file), "--output", str(tmp_path / "run"),
        *(part.format(labels=small_labels) for part in extra),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "run").exists()
