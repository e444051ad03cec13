"""Tests of model.backbones: the registry, uint8 input with preprocessing inside, BN momentum."""

import functools
import hashlib
import socket
import time
import urllib.error
from pathlib import Path
from types import ModuleType
from typing import Any

import keras
import numpy as np
import pytest

from model.backbones import (
    BACKBONES,
    IMAGENET,
    IMAGENET_LITE,
    ImagePreprocessing,
    batch_normalization_layers,
    build_backbone,
    native_size,
    preprocessing_layer,
)
from model.errors import ModelError

# Backbones cheap enough to build in well under a second on two CPU cores.
LIGHT = ("tiny", "mobilenet_v3_small")
MOMENTUM = 0.5  # differs from every Keras default (0.9, 0.99, 0.999)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype="float32")
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype="float32")


def small_size(name: str) -> int:
    """The side the tests build a backbone at: 64, or its minimum when that is larger."""
    return max(64, BACKBONES[name].min_size)


def each_backbone() -> list[Any]:
    """Every registered backbone as a parameter, the heavy ones marked slow."""
    return [
        pytest.param(name, marks=() if name in LIGHT else pytest.mark.slow, id=name)
        for name in sorted(BACKBONES)
    ]


@functools.cache
def built(name: str) -> Any:
    """Backbone ``name`` at its small size with bn_momentum MOMENTUM, built once per session."""
    return build_backbone(name, image_size=small_size(name), bn_momentum=MOMENTUM)


def images(size: int, count: int = 2, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB images."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype="uint8")


def numpy(tensor: Any) -> np.ndarray:
    """A backend tensor as a numpy array."""
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def features_of(backbone: Any) -> Any:
    """The feature extractor nested in a backbone model."""
    return backbone.get_layer(backbone.name.removesuffix("_backbone") + "_features")


LITE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
KERAS_MODULES: dict[str, ModuleType] = {
    "xception": keras.applications.xception,
    "inception_v3": keras.applications.inception_v3,
    "efficientnet_b0": keras.applications.efficientnet,
    "efficientnet_b1": keras.applications.efficientnet,
    "efficientnet_b2": keras.applications.efficientnet,
    "efficientnet_b3": keras.applications.efficientnet,
    "efficientnet_v2_s": keras.applications.efficientnet_v2,
    "mobilenet_v3_small": keras.applications.mobilenet_v3,
    "mobilenet_v3_large": keras.applications.mobilenet_v3,
    "resnet50": keras.applications.resnet50,
}


class TestRegistry:
    """BACKBONES and native_size: which backbones exist and their native input sizes."""

    def test_registers_the_expected_backbones(self) -> None:
        """The registry holds the ten keras.applications backbones, three Lite ones and tiny."""
        expected = {"tiny", *KERAS_MODULES, *LITE_BACKBONES}
        assert expected == set(BACKBONES)

    @pytest.mark.parametrize(
        ("name", "size"),
        [
            ("xception", 299),
            ("inception_v3", 299),
            ("efficientnet_b0", 224),
            ("efficientnet_b1", 240),
            ("efficientnet_b2", 260),
            ("efficientnet_b3", 300),
            ("efficientnet_lite0", 224),
            ("efficientnet_lite1", 240),
            ("efficientnet_lite2", 260),
            ("efficientnet_v2_s", 384),
            ("mobilenet_v3_small", 224),
            ("mobilenet_v3_large", 224),
            ("resnet50", 224),
            ("tiny", 64),
        ],
    )
    def test_native_size(self, name: str, size: int) -> None:
        """native_size gives each backbone's native input side."""
        assert size == native_size(name)

    def test_native_size_of_unknown_name_lists_valid_names(self) -> None:
        """native_size of an unknown name raises ModelError quoting it and naming valid ones."""
        with pytest.raises(ModelError, match=r"'resnet'.*efficientnet_b0.*tiny"):
            native_size("resnet")

    def test_default_image_size_is_native(self) -> None:
        """Without image_size a backbone is built at its native size."""
        assert (None, 64, 64, 3) == build_backbone("tiny").input_shape


class TestBuildBackbone:
    """build_backbone: every backbone builds, takes uint8 and has its preprocessing inside."""

    @pytest.mark.parametrize("name", each_backbone())
    def test_builds_uint8_model_with_pooled_features(self, name: str) -> None:
        """The model takes uint8 (size, size, 3) images and gives (batch, features) floats."""
        backbone = built(name)
        size = small_size(name)
        output = numpy(backbone(images(size), training=False))
        assert ("uint8", (None, size, size, 3)) == (backbone.input.dtype, backbone.input_shape)
        assert (2, features_of(backbone).output_shape[-1]) == output.shape
        assert np.isfinite(output).all()

    @pytest.mark.parametrize("name", each_backbone())
    def test_layers_have_predictable_names(self, name: str) -> None:
        """The model and its layers are named after the backbone."""
        backbone = built(name)
        expected = (
            f"{name}_backbone",
            [f"{name}_image", f"{name}_preprocessing", f"{name}_features"],
        )
        assert expected == (backbone.name, [layer.name for layer in backbone.layers])

    @pytest.mark.parametrize("name", each_backbone())
    def test_black_and_white_images_give_different_features(self, name: str) -> None:
        """Feeding uint8 zeros and uint8 255s gives different features."""
        backbone = built(name)
        size = small_size(name)
        black = np.zeros((1, size, size, 3), dtype="uint8")
        white = np.full((1, size, size, 3), 255, dtype="uint8")
        features = numpy(backbone(np.concatenate([black, white]), training=False))
        # Relative comparison: at initialisation, in inference mode, some backbones' features
        # are tiny (MobileNetV3: ~1e-11), since BatchNormalization still has mean 0, variance 1.
        assert not np.allclose(features[0], features[1], rtol=1e-3, atol=0.0)

    @pytest.mark.parametrize("name", each_backbone())
    def test_bn_momentum_is_set_on_every_batch_normalization(self, name: str) -> None:
        """bn_momentum becomes the momentum of every BatchNormalization layer."""
        momenta = {layer.momentum for layer in batch_normalization_layers(built(name))}
        assert {MOMENTUM} == momenta

    @pytest.mark.parametrize(("name", "momentum"), [("tiny", 0.99), ("mobilenet_v3_small", 0.999)])
    def test_without_bn_momentum_keras_defaults_stay(self, name: str, momentum: float) -> None:
        """Without bn_momentum the application's own BatchNormalization momenta stay."""
        backbone = build_backbone(name, image_size=32)
        assert {momentum} == {layer.momentum for layer in batch_normalization_layers(backbone)}

    def test_image_size_sets_input_shape(self) -> None:
        """image_size gives the side of the model's input."""
        assert (None, 48, 48, 3) == build_backbone("tiny", image_size=48).input_shape


class TestPreprocessing:
    """preprocessing_layer and ImagePreprocessing: the in-graph input normalisation."""

    @pytest.mark.parametrize("name", sorted(KERAS_MODULES))
    def test_matches_keras_preprocess_input(self, name: str) -> None:
        """The layer computes what the application's keras preprocess_input computes."""
        image = images(16, count=3, seed=1)
        expected = KERAS_MODULES[name].preprocess_input(image.astype("float32"))
        actual = numpy(preprocessing_layer(name)(image))
        np.testing.assert_allclose(expected, actual, rtol=1e-6, atol=1e-4)

    @pytest.mark.parametrize(
        ("mode", "pixel", "expected"),
        [
            ("none", (255, 0, 10), (255.0, 0.0, 10.0)),
            ("tf", (255, 0, 51), (1.0, -1.0, 51 / 127.5 - 1)),
            ("caffe", (255, 0, 10), (10 - 103.939, 0 - 116.779, 255 - 123.68)),
        ],
    )
    def test_mode_on_one_pixel(
        self, mode: Any, pixel: tuple[int, int, int], expected: tuple[float, ...]
    ) -> None:
        """Each mode maps an RGB pixel as written out by hand (caffe: BGR, minus the mean)."""
        image = np.array(pixel, dtype="uint8").reshape(1, 1, 1, 3)
        actual = numpy(ImagePreprocessing(mode)(image)).reshape(3)
        np.testing.assert_allclose(np.array(expected, dtype="float32"), actual, rtol=1e-6)

    def test_tiny_scales_to_minus_one_one(self) -> None:
        """tiny's preprocessing is x / 127.5 - 1."""
        image = images(8, seed=2)
        expected = image.astype("float32") / 127.5 - 1.0
        np.testing.assert_allclose(expected, numpy(preprocessing_layer("tiny")(image)), atol=1e-6)

    @pytest.mark.parametrize("name", ["xception", "resnet50", "tiny"])
    def test_is_not_a_no_op(self, name: str) -> None:
        """For backbones that normalise outside their application, white is not 255 any more."""
        white = np.full((1, 4, 4, 3), 255, dtype="uint8")
        assert not np.allclose(255.0, numpy(preprocessing_layer(name)(white)))

    @pytest.mark.parametrize(
        ("name", "layer_type", "expected"),
        [
            pytest.param(
                "efficientnet_b0",
                keras.layers.Normalization,
                lambda x: (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD,
                marks=pytest.mark.slow,
                id="efficientnet_b0",
            ),
            pytest.param(
                "efficientnet_v2_s",
                keras.layers.Rescaling,
                lambda x: x / 128.0 - 1.0,
                marks=pytest.mark.slow,
                id="efficientnet_v2_s",
            ),
            pytest.param(
                "mobilenet_v3_small",
                keras.layers.Rescaling,
                lambda x: x / 127.5 - 1.0,
                id="mobilenet_v3_small",
            ),
        ],
    )
    def test_builtin_stem_normalisation(self, name: str, layer_type: type, expected: Any) -> None:
        """Applications that normalise inside compute the range their weights expect."""
        features = features_of(built(name))
        stem = [layer for layer in features.layers[:4] if isinstance(layer, layer_type)][-1]
        image = images(small_size(name), seed=3).astype("float32")
        actual = numpy(keras.Model(features.inputs, stem.output)(image))
        np.testing.assert_allclose(expected(image), actual, rtol=1e-5, atol=1e-5)

    def test_config_round_trips(self) -> None:
        """A layer rebuilt from its config has the same mode and name."""
        layer = ImagePreprocessing("caffe", name="pre")
        copy = ImagePreprocessing.from_config(layer.get_config())
        assert ("caffe", "pre") == (copy.mode, copy.name)

    def test_unknown_mode_is_refused(self) -> None:
        """An unknown mode raises ModelError quoting it and listing the valid ones."""
        with pytest.raises(ModelError, match=r"'torch'.*none, tf, caffe"):
            ImagePreprocessing("torch")  # type: ignore[arg-type]


class TestBuildBackboneErrors:
    """build_backbone: bad arguments raise ModelError quoting the value, before building."""

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"name": "resnet"}, r"unknown backbone 'resnet'; valid: efficientnet_b0, .*, tiny"),
            ({"name": 50}, r"unknown backbone 50; valid"),
            ({"name": "tiny", "image_size": 16}, r"image_size 16 .* 'tiny': its minimum is 32"),
            ({"name": "xception", "image_size": 64}, r"image_size 64 .* minimum is 71"),
            ({"name": "inception_v3", "image_size": 71}, r"image_size 71 .* minimum is 75"),
            ({"name": "tiny", "image_size": 64.0}, r"whole number of pixels, got 64\.0"),
            ({"name": "tiny", "image_size": True}, r"whole number of pixels, got True"),
            ({"name": "tiny", "bn_momentum": 1.0}, r"bn_momentum must be in \[0, 1\), got 1\.0"),
            ({"name": "tiny", "bn_momentum": -0.1}, r"got -0\.1"),
            ({"name": "tiny", "bn_momentum": "0.9"}, r"got '0\.9'"),
            ({"name": "tiny", "weights": "imagenet.npz"}, r"'imagenet.npz' must end in one of"),
            ({"name": "tiny", "weights": 3}, r"path of a local weight file, got 3"),
        ],
    )
    def test_bad_argument(self, kwargs: dict[str, Any], message: str) -> None:
        """Each bad argument gives a ModelError whose message quotes it."""
        with pytest.raises(ModelError, match=message):
            build_backbone(**kwargs)

    def test_missing_weight_file_names_path(self, tmp_path: Path) -> None:
        """A weight file that does not exist raises ModelError naming its path."""
        path = tmp_path / "absent.weights.h5"
        with pytest.raises(ModelError, match=f"{path}'? does not exist"):
            build_backbone("tiny", weights=path)

    def test_weight_file_of_another_backbone_names_path(self, tmp_path: Path) -> None:
        """A weight file that does not fit the backbone raises ModelError naming its path."""
        path = tmp_path / "tiny.weights.h5"
        features_of(build_backbone("tiny", image_size=32)).save_weights(path)
        with pytest.raises(ModelError, match=f"{path}' does not fit backbone 'mobilenet_v3_small'"):
            build_backbone("mobilenet_v3_small", image_size=32, weights=path)


class TestWeights:
    """build_backbone(weights=...): pretrained weights from a local file."""

    @staticmethod
    def _trained_tiny() -> Any:
        """A tiny backbone whose weights are all set to random values."""
        backbone = build_backbone("tiny", image_size=32)
        rng = np.random.default_rng(4)
        for weight in features_of(backbone).weights:
            value = rng.uniform(0.5, 1.5, weight.shape).astype(weight.dtype)
            weight.assign(value)
        return backbone

    def test_weights_h5_file_is_loaded(self, tmp_path: Path) -> None:
        """A .weights.h5 file saved from the feature extractor loads back into a new backbone."""
        source = self._trained_tiny()
        path = tmp_path / "tiny.weights.h5"
        features_of(source).save_weights(path)
        loaded = build_backbone("tiny", image_size=32, weights=str(path))
        image = images(32, seed=5)
        expected = numpy(source(image, training=False))
        np.testing.assert_array_equal(expected, numpy(loaded(image, training=False)))

    @pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
    def test_legacy_h5_file_is_loaded(self, tmp_path: Path) -> None:
        """A legacy .h5 file, the format of Keras' *_notop.h5 downloads, loads by layer order."""
        source = self._trained_tiny()
        path = tmp_path / "tiny_notop.h5"
        features_of(source).save(path)
        loaded = build_backbone("tiny", image_size=32, weights=path)
        image = images(32, seed=6)
        expected = numpy(source(image, training=False))
        np.testing.assert_array_equal(expected, numpy(loaded(image, training=False)))

    @pytest.mark.slow
    def test_efficientnet_stem_keeps_imagenet_statistics_after_loading(
        self, tmp_path: Path
    ) -> None:
        """A Keras-style EfficientNet file (variance = std) still gives (x/255 - mean) / std."""
        features = features_of(build_backbone("efficientnet_b0", image_size=32))
        stem = next(
            layer for layer in features.layers if isinstance(layer, keras.layers.Normalization)
        )
        stem.adapt_variance.assign(IMAGENET_STD)  # what Keras' pretrained files hold
        path = tmp_path / "efficientnetb0_notop.weights.h5"
        features.save_weights(path)
        loaded = features_of(build_backbone("efficientnet_b0", image_size=32, weights=path))
        stem = next(
            layer for layer in loaded.layers if isinstance(layer, keras.layers.Normalization)
        )
        image = images(32, seed=7).astype("float32")
        actual = numpy(keras.Model(loaded.inputs, stem.output)(image))
        expected = (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        np.testing.assert_allclose(expected, actual, rtol=1e-5, atol=1e-5)


# keras.applications' cache: `keras_home()` is $KERAS_HOME (or ~/.keras) read once, at import.
KERAS_CONFIG = keras.src.backend.config
KERAS_FILE_UTILS = keras.src.utils.file_utils
# The file keras.applications.MobileNetV3Small(include_top=False, weights="imagenet") looks
# for in <keras home>/models/, and the key of its md5 in WEIGHTS_HASHES (keras 3.x).
MOBILENET_KEY = "small_224_1.0_float"
MOBILENET_FILE = f"weights_mobilenet_v3_{MOBILENET_KEY}_no_top_v2.h5"


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Keras home, as keras.utils.get_file sees it, with its models/ cache folder."""
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(KERAS_CONFIG, "_KERAS_DIR", str(home))
    return home


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No network: every download or connection attempt is recorded and fails at once."""
    attempts: list[str] = []

    def refuse(target: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(str(target))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(KERAS_FILE_UTILS, "urlretrieve", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def cache_keras_file(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, key: str, path: Path, model: Any
) -> None:
    """Save ``model`` as Keras' legacy .h5 file at ``path``, registered under its md5."""
    model.save(path)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()  # the hash keras.utils.get_file checks
    monkeypatch.setitem(module.WEIGHTS_HASHES, key, (module.WEIGHTS_HASHES[key][0], md5))


def randomise(model: Any, seed: int) -> None:
    """Set every weight of ``model`` to a random value in [0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(weight.dtype))


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
class TestKerasImagenetWeights:
    """build_backbone(weights="imagenet"): keras.applications' own ImageNet weights."""

    def test_loads_the_file_keras_caches(
        self, keras_home: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The weight file Keras caches for the application is loaded, with no network."""
        source = keras.applications.MobileNetV3Small(
            input_shape=(224, 224, 3), include_top=False, weights=None
        )
        randomise(source, seed=8)
        cache_keras_file(
            monkeypatch,
            keras.src.applications.mobilenet_v3,
            MOBILENET_KEY,
            keras_home / "models" / MOBILENET_FILE,
            source,
        )
        loaded = features_of(build_backbone("mobilenet_v3_small", weights=IMAGENET))
        assert [] == offline
        expected = source.get_weights()
        actual = loaded.get_weights()
        assert len(expected) == len(actual)
        for want, got in zip(expected, actual, strict=True):
            np.testing.assert_array_equal(want, got)

    def test_nothing_cached_and_no_network_is_a_clear_error(
        self, keras_home: Path, offline: list[str]
    ) -> None:
        """Without a cached file or network, ModelError says where the file comes from."""
        started = time.monotonic()
        with pytest.raises(ModelError) as raised:
            build_backbone("mobilenet_v3_small", image_size=224, weights=IMAGENET)
        message = str(raised.value)
        assert "backbone 'mobilenet_v3_small'" in message
        assert "from its storage on first use" in message
        assert str(keras_home / "models") in message
        assert "--weights FILE" in message
        assert raised.value.__cause__ is not None
        assert [MOBILENET_FILE] == [url.rsplit("/", 1)[-1] for url in offline]
        assert time.monotonic() - started < 20

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("tiny", r"'imagenet' .* exist only for .*xception, not 'tiny'; it has no pretrained"),
            ("efficientnet_lite0", r"not 'efficientnet_lite0'; .* weights='imagenet-lite'"),
        ],
    )
    def test_backbone_without_keras_weights_is_refused(
        self, name: str, message: str, offline: list[str]
    ) -> None:
        """A backbone keras.applications has no ImageNet weights for raises ModelError."""
        with pytest.raises(ModelError, match=message):
            build_backbone(name, weights=IMAGENET)
        assert [] == offline

    def test_every_keras_application_has_them(self) -> None:
        """Exactly the keras.applications backbones take weights="imagenet"."""
        with_keras = {name for name, spec in BACKBONES.items() if spec.keras_imagenet}
        assert set(KERAS_MODULES) == with_keras
        assert IMAGENET_LITE != IMAGENET

    @pytest.mark.slow
    def test_efficientnet_stem_stays_as_without_weights(
        self, keras_home: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With Keras' EfficientNet file the graph and stem are those built without weights."""
        source = keras.applications.EfficientNetB0(
            input_shape=(224, 224, 3), include_top=False, weights=None
        )
        randomise(source, seed=9)
        stem = next(
            layer for layer in source.layers if isinstance(layer, keras.layers.Normalization)
        )
        stem.adapt_mean.assign(IMAGENET_MEAN)
        stem.adapt_variance.assign(IMAGENET_STD)  # what Keras' files hold
        cache_keras_file(
            monkeypatch,
            keras.src.applications.efficientnet,
            "b0",
            keras_home / "models" / "efficientnetb0_notop.h5",
            source,
        )
        loaded = features_of(build_backbone("efficientnet_b0", weights=IMAGENET))
        plain = features_of(build_backbone("efficientnet_b0"))
        assert [] == offline
        assert [type(layer) for layer in plain.layers] == [type(layer) for layer in loaded.layers]
        for layer in loaded.layers:
            if layer.weights and not isinstance(layer, keras.layers.Normalization):
                for want, got in zip(
                    source.get_layer(layer.name).get_weights(), layer.get_weights(), strict=True
                ):
                    np.testing.assert_array_equal(want, got)
        normalization = next(
            layer for layer in loaded.layers if isinstance(layer, keras.layers.Normalization)
        )
        image = images(224, seed=10).astype("float32")
        actual = numpy(keras.Model(loaded.inputs, normalization.output)(image))
        expected = (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        np.testing.assert_allclose(expected, actual, rtol=1e-5, atol=1e-5)
