"""Image backbones as data: a registry of feature extractors with their preprocessing inside.

Every backbone is a :class:`BackboneSpec` in :data:`BACKBONES`, built by one function,
:func:`build_backbone`, into a ``keras.Model`` that takes a batch of **uint8 RGB** images
``(image_size, image_size, 3)`` and returns the pooled feature vector. The normalisation a
backbone expects lives in the graph, so callers (training, the service, exports) feed raw
decoded pixels and never repeat a backbone-specific ``preprocess_input``.

The model built for backbone ``name`` is named ``f"{name}_backbone"`` and holds three
layers: the input ``f"{name}_image"``, an :class:`ImagePreprocessing` layer
``f"{name}_preprocessing"`` and the feature extractor ``f"{name}_features"`` (a
``keras.applications`` model, an EfficientNet-Lite of :mod:`model.efficientnet_lite`, or the
small plain conv net ``tiny``).

What each backbone expects, and where it is done (``keras.applications`` 3.x):

==========================  ===========================================================
backbone                    preprocessing
==========================  ===========================================================
xception, inception_v3      ``x / 127.5 - 1`` (mode ``"tf"``), in ImagePreprocessing
resnet50                    RGB -> BGR, minus the ImageNet BGR mean, no scaling
                            (mode ``"caffe"``), in ImagePreprocessing
efficientnet_b0..b3         inside the application: ``x / 255`` then ImageNet mean/std;
                            this module sets the stem's Normalization statistics itself
                            (see :func:`_set_imagenet_statistics`)
efficientnet_v2_s           inside the application: ``x / 128 - 1`` (Rescaling)
mobilenet_v3_small/large    inside the application: ``x / 127.5 - 1`` (Rescaling)
efficientnet_lite0..2       ``x / 127.5 - 1`` (mode ``"tf"``), in ImagePreprocessing
tiny                        ``x / 127.5 - 1`` (mode ``"tf"``), in ImagePreprocessing
==========================  ===========================================================

For every ``keras.applications`` backbone, :func:`preprocessing_layer` computes exactly what
that application's ``preprocess_input`` computes (an identity for the ones that normalise
inside their own graph), so a pretrained weight file sees the inputs it was trained on.

Only ``keras``, ``keras.ops``, ``keras.layers`` and numpy are used, so the backbones run on
the TensorFlow, JAX and PyTorch backends alike. Pretrained weights come from a local file;
for the EfficientNet-Lite backbones from ``weights="imagenet-lite"``: the ImageNet weights
installed with the project's optional ``pretrained`` extra (see :mod:`model.efficientnet_lite`);
or, for the ``keras.applications`` backbones, from ``weights="imagenet"``, which hands over
to Keras: the application is built with its own ImageNet weights, whose file Keras fetches
from its storage on first use and caches in ``$KERAS_HOME/models`` (``~/.keras/models``).
That is the only download; on a machine that cannot reach Keras' storage it fails unless
the file is already cached, and a local copy can be passed as a weight file instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, get_args

import keras
import numpy as np
from keras import layers, ops

from model import efficientnet_lite
from model.errors import ModelError

__all__ = [
    "BACKBONES",
    "IMAGENET",
    "IMAGENET_LITE",
    "BackboneBuilder",
    "BackboneSpec",
    "ImagePreprocessing",
    "PackagedWeights",
    "PreprocessingMode",
    "backbone_names",
    "batch_normalization_layers",
    "build_backbone",
    "native_size",
    "preprocessing_layer",
]

PreprocessingMode = Literal["none", "tf", "caffe"]
"""What :class:`ImagePreprocessing` does after casting uint8 pixels to float.

``"none"``: nothing (the backbone normalises inside its own graph); ``"tf"``:
``x / 127.5 - 1``, pixels to [-1, 1]; ``"caffe"``: RGB to BGR, then the ImageNet BGR mean
``(103.939, 116.779, 123.68)`` subtracted, no scaling. The names are those of
``keras.applications.imagenet_utils.preprocess_input``.
"""

BackboneBuilder = Callable[[tuple[int, int, int], str], Any]
"""Builds a feature extractor: ``(input_shape, model_name) -> keras.Model``.

The model takes float images already preprocessed as the spec's ``preprocessing`` mode
says, has freshly initialised weights (Keras' ImageNet ones for a spec's
``keras_imagenet`` builder), and returns the globally average-pooled features.
"""

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".hdf5")

IMAGENET_LITE = "imagenet-lite"
"""The ``weights`` value of :func:`build_backbone` that loads a backbone's packaged weights."""

IMAGENET = "imagenet"
"""The ``weights`` value of :func:`build_backbone` that hands over to ``keras.applications``.

The application is built with ``weights="imagenet"``: Keras' own ImageNet weight file,
fetched from Keras' storage on first use and cached in ``$KERAS_HOME/models``.
"""


class PackagedWeights(Protocol):
    """Pretrained weights installed with a package rather than given as a file path."""

    def locate(self) -> Path:
        """Return the weight file, or raise ModelError saying what to install."""

    def load(self, features: Any, path: Path) -> None:
        """Load the file at ``path`` into the feature extractor ``features``."""


@keras.saving.register_keras_serializable(package="enrich")
class ImagePreprocessing(layers.Layer):  # type: ignore[misc]
    """Casts uint8 RGB pixels to float and applies a backbone's input normalisation.

    ``mode`` is a :data:`PreprocessingMode`. The arithmetic is done in float32 whatever the
    dtype policy, then cast to the layer's compute dtype (float16 under mixed precision).
    """

    def __init__(self, mode: PreprocessingMode = "none", **kwargs: Any) -> None:
        """Make the layer for ``mode``; ``kwargs`` go to ``keras.layers.Layer``."""
        super().__init__(**kwargs)
        if mode not in get_args(PreprocessingMode):
            raise ModelError(
                f"unknown preprocessing mode {mode!r}; valid: "
                f"{', '.join(get_args(PreprocessingMode))}"
            )
        self.mode: PreprocessingMode = mode

    def call(self, inputs: Any) -> Any:
        """Return the preprocessed float images."""
        x = ops.cast(inputs, "float32")
        if self.mode == "tf":
            x = x / 127.5 - 1.0
        elif self.mode == "caffe":
            x = ops.flip(x, axis=-1) - ops.convert_to_tensor(
                np.asarray(_CAFFE_BGR_MEAN, dtype="float32")
            )
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Return ``input_shape``: preprocessing is per pixel."""
        return input_shape

    def get_config(self) -> dict[str, Any]:
        """Return the layer's config, ``mode`` included."""
        config: dict[str, Any] = super().get_config()
        config["mode"] = self.mode
        return config


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    ``native_size`` is the image side the architecture was designed (and pretrained) at;
    ``min_size`` the smallest side it can be built at; ``preprocessing`` what
    :class:`ImagePreprocessing` does before ``builder``'s model (``"none"`` when the model
    normalises inside); ``imagenet_stem`` marks the EfficientNet (V1) models, whose stem
    Normalization layer gets the ImageNet statistics set by this module; ``packaged`` the
    weights ``weights="imagenet-lite"`` loads, ``None`` where there are none;
    ``keras_imagenet`` builds the same application with ``keras.applications``' ImageNet
    weights (``weights="imagenet"``), ``None`` where Keras has none.
    """

    name: str
    native_size: int
    min_size: int
    preprocessing: PreprocessingMode
    builder: BackboneBuilder
    imagenet_stem: bool = False
    packaged: PackagedWeights | None = None
    keras_imagenet: BackboneBuilder | None = None


def _application(factory: Any, weights: str | None = None, **options: Any) -> BackboneBuilder:
    """Wrap a ``keras.applications`` constructor as a :data:`BackboneBuilder`.

    ``weights`` goes to the constructor: ``None`` (fresh weights) or ``"imagenet"`` (Keras'
    file, which ``keras.utils.get_file`` finds in Keras' cache or fetches into it).
    """

    def build(input_shape: tuple[int, int, int], model_name: str) -> Any:
        # Built under its default name (EfficientNetV2 looks its block configuration up by
        # name), renamed afterwards.
        model = factory(
            input_shape=input_shape, include_top=False, weights=weights, pooling="avg", **options
        )
        model.name = model_name
        return model

    return build


def _keras_app(
    name: str,
    native: int,
    minimum: int,
    preprocessing: PreprocessingMode,
    factory: Any,
    *,
    imagenet_stem: bool = False,
    **options: Any,
) -> BackboneSpec:
    """The spec of a ``keras.applications`` backbone, with and without Keras' ImageNet weights."""
    return BackboneSpec(
        name,
        native,
        minimum,
        preprocessing,
        _application(factory, **options),
        imagenet_stem=imagenet_stem,
        keras_imagenet=_application(factory, IMAGENET, **options),
    )


def _tiny(input_shape: tuple[int, int, int], model_name: str) -> Any:
    """A small plain conv net for tests and smoke runs: four Conv-BN-ReLU blocks, stride 2."""
    inputs = keras.Input(shape=input_shape, name="tiny_input")
    x = inputs
    for block, filters in enumerate((16, 32, 64, 128), start=1):
        x = layers.Conv2D(
            filters, 3, strides=2, padding="same", use_bias=False, name=f"tiny_block{block}_conv"
        )(x)
        x = layers.BatchNormalization(name=f"tiny_block{block}_bn")(x)
        x = layers.ReLU(name=f"tiny_block{block}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="tiny_pool")(x)
    return keras.Model(inputs, x, name=model_name)


def _lite(name: str) -> BackboneSpec:
    """The spec of EfficientNet-Lite variant ``name``, with its packaged ImageNet weights."""
    variant = efficientnet_lite.LITE_VARIANTS[name]

    def build(input_shape: tuple[int, int, int], model_name: str) -> Any:
        return efficientnet_lite.build_lite_features(name, input_shape, model_name)

    return BackboneSpec(
        name,
        variant.native_size,
        32,
        "tf",
        build,
        packaged=efficientnet_lite.PackagedLiteWeights(name),
    )


_apps = keras.applications
# EfficientNetV2 picks its built-in preprocessing from the model name it is built under:
# V1-style mean/std for "efficientnetv2-b<k>", x / 128 - 1 for "efficientnetv2-s" and the
# other large variants.
_SPECS = (
    _keras_app("xception", 299, 71, "tf", _apps.Xception),
    _keras_app("inception_v3", 299, 75, "tf", _apps.InceptionV3),
    _keras_app("efficientnet_b0", 224, 32, "none", _apps.EfficientNetB0, imagenet_stem=True),
    _keras_app("efficientnet_b1", 240, 32, "none", _apps.EfficientNetB1, imagenet_stem=True),
    _keras_app("efficientnet_b2", 260, 32, "none", _apps.EfficientNetB2, imagenet_stem=True),
    _keras_app("efficientnet_b3", 300, 32, "none", _apps.EfficientNetB3, imagenet_stem=True),
    *(_lite(name) for name in efficientnet_lite.LITE_VARIANTS),
    _keras_app(
        "efficientnet_v2_s", 384, 32, "none", _apps.EfficientNetV2S, include_preprocessing=True
    ),
    _keras_app(
        "mobilenet_v3_small", 224, 32, "none", _apps.MobileNetV3Small, include_preprocessing=True
    ),
    _keras_app(
        "mobilenet_v3_large", 224, 32, "none", _apps.MobileNetV3Large, include_preprocessing=True
    ),
    _keras_app("resnet50", 224, 32, "caffe", _apps.ResNet50),
    BackboneSpec("tiny", 64, 32, "tf", _tiny),
)

BACKBONES: Mapping[str, BackboneSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
"""Every backbone :func:`build_backbone` can build, by name."""


def backbone_names() -> tuple[str, ...]:
    """Return the registered backbone names, sorted."""
    return tuple(sorted(BACKBONES))


def _spec(name: object) -> BackboneSpec:
    """Return the spec of backbone ``name``, or raise ModelError listing the valid names."""
    spec = BACKBONES.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ModelError(f"unknown backbone {name!r}; valid: {', '.join(backbone_names())}")
    return spec


def native_size(name: str) -> int:
    """Return the image side backbone ``name`` was designed for (e.g. 299 for xception)."""
    return _spec(name).native_size


def preprocessing_layer(name: str, *, layer_name: str | None = None) -> ImagePreprocessing:
    """Return a new preprocessing layer of backbone ``name``: uint8 pixels to its input.

    It is the layer :func:`build_backbone` puts in front of the feature extractor, named
    ``layer_name`` (default ``f"{name}_preprocessing"``).
    """
    spec = _spec(name)
    return ImagePreprocessing(spec.preprocessing, name=layer_name or f"{name}_preprocessing")


def _check_image_size(spec: BackboneSpec, image_size: object) -> int:
    """Return the image side to build at, or raise ModelError quoting the bad value."""
    if image_size is None:
        return spec.native_size
    if not isinstance(image_size, int | np.integer) or isinstance(image_size, bool):
        raise ModelError(
            f"image_size must be a whole number of pixels, got {image_size!r} "
            f"({type(image_size).__name__})"
        )
    if image_size < spec.min_size:
        raise ModelError(
            f"image_size {image_size!r} is too small for backbone {spec.name!r}: "
            f"its minimum is {spec.min_size} (native {spec.native_size})"
        )
    return int(image_size)


def _check_bn_momentum(bn_momentum: object) -> float | None:
    """Return the BatchNormalization momentum to set, or raise ModelError quoting it."""
    if bn_momentum is None:
        return None
    if not isinstance(bn_momentum, float | int | np.floating) or isinstance(bn_momentum, bool):
        raise ModelError(f"bn_momentum must be a number in [0, 1), got {bn_momentum!r}")
    momentum = float(bn_momentum)
    if not 0.0 <= momentum < 1.0:
        raise ModelError(f"bn_momentum must be in [0, 1), got {bn_momentum!r}")
    return momentum


def _check_weights(spec: BackboneSpec, weights: object) -> Path | None:
    """Return the weight file to load, or raise ModelError naming the path.

    ``weights="imagenet-lite"`` gives the spec's packaged weight file; ModelError when the
    backbone has none or its package is not installed. ``weights="imagenet"`` gives ``None``
    (Keras finds its own file); ModelError when ``keras.applications`` has none for it.
    """
    if weights is None:
        return None
    if not isinstance(weights, str | Path):
        raise ModelError(
            f"weights must be None, {IMAGENET!r}, {IMAGENET_LITE!r} or the path of a local "
            f"weight file, got {weights!r}"
        )
    if weights == IMAGENET:
        if spec.keras_imagenet is None:
            keras_names = (name for name in backbone_names() if BACKBONES[name].keras_imagenet)
            instead = (
                f"its ImageNet weights are weights={IMAGENET_LITE!r}"
                if spec.packaged is not None
                else "it has no pretrained weights: use None or a local weight file"
            )
            raise ModelError(
                f"weights {IMAGENET!r} (keras.applications' ImageNet weights) exist only for "
                f"{', '.join(keras_names)}, not {spec.name!r}; {instead}"
            )
        return None
    if weights == IMAGENET_LITE:
        if spec.packaged is None:
            packaged = ", ".join(name for name in backbone_names() if BACKBONES[name].packaged)
            raise ModelError(
                f"weights {IMAGENET_LITE!r} exist only for {packaged}, not {spec.name!r}"
            )
        return spec.packaged.locate()
    path = Path(weights)
    if not path.name.endswith(_WEIGHT_SUFFIXES):
        raise ModelError(
            f"weight file {str(path)!r} must end in one of {', '.join(_WEIGHT_SUFFIXES)}"
        )
    if not path.is_file():
        raise ModelError(f"weight file {str(path)!r} does not exist (nothing is downloaded)")
    return path


def _keras_cache_dir() -> str:
    """Return where ``keras.utils.get_file`` caches application weights: Keras home/models."""
    try:  # Keras 3 has no public accessor; it reads $KERAS_HOME once, at import.
        from keras.src.backend.config import keras_home

        home = str(keras_home())
    except ImportError:  # pragma: no cover - a Keras that moved it
        home = os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))
    return os.path.join(os.path.expanduser(home), "models")


def _keras_imagenet_features(spec: BackboneSpec, input_shape: tuple[int, int, int]) -> Any:
    """Build ``spec``'s feature extractor with ``keras.applications``' ImageNet weights.

    Keras finds its weight file in its cache or fetches it; ModelError (``from`` Keras'
    error) when it cannot. For the EfficientNet (V1) models, whose stem Keras changes for
    ``weights="imagenet"`` (an extra ``Rescaling`` after the Normalization layer, because
    its files hold the standard deviations as variance), the weights are copied into the
    registry's own graph instead, where :func:`_set_imagenet_statistics` sets the stem, so
    the preprocessing in the graph is the same whatever the weights.
    """
    if spec.keras_imagenet is None:  # pragma: no cover - _check_weights refuses it first
        raise ModelError(f"backbone {spec.name!r} has no keras.applications ImageNet weights")
    model_name = f"{spec.name}_features"
    try:
        pretrained = spec.keras_imagenet(input_shape, model_name)
    except Exception as error:  # get_file raises a bare Exception when the fetch fails
        raise ModelError(
            f"could not get keras.applications' ImageNet weights of backbone {spec.name!r}: "
            f"{error}. Keras fetches the weight file from its storage on first use and caches "
            f"it in {_keras_cache_dir()}; without access to that storage, give a local copy "
            "of the file with --weights FILE"
        ) from error
    if not spec.imagenet_stem:
        return pretrained
    features = spec.builder(input_shape, model_name)
    # The extra Rescaling has no weights, so both lists hold the same weights in one order.
    features.set_weights(pretrained.get_weights())
    return features


def _walk_layers(layer: Any) -> Iterator[Any]:
    """Yield ``layer`` and every layer nested in it, depth first."""
    yield layer
    for child in getattr(layer, "layers", ()):
        yield from _walk_layers(child)


def batch_normalization_layers(model: Any) -> list[Any]:
    """Return every BatchNormalization layer in ``model``, nested models included."""
    return [layer for layer in _walk_layers(model) if isinstance(layer, layers.BatchNormalization)]


def _set_imagenet_statistics(features: Any) -> None:
    """Make an EfficientNet (V1) stem compute ``(x / 255 - mean) / std`` with ImageNet stats.

    ``keras.applications.EfficientNetB*`` starts with ``Rescaling(1/255)`` and an un-adapted
    ``Normalization`` layer whose mean and variance are weights: 0 and 1 when built with
    ``weights=None`` (so the stem only rescales), and the ImageNet mean with the *standard
    deviations as variance* in Keras' pretrained files, which Keras corrects with an extra
    ``Rescaling`` it adds only for ``weights="imagenet"``. Setting mean and variance
    (``std**2``) here, after any weight file is loaded, gives the normalisation the
    pretrained weights expect whether or not a file was loaded, without that extra layer.
    """
    normalization = next(
        (layer for layer in features.layers if isinstance(layer, layers.Normalization)), None
    )
    if normalization is None:
        raise ModelError(f"{features.name}: no Normalization layer in the EfficientNet stem")
    normalization.adapt_mean.assign(np.asarray(_IMAGENET_MEAN_RGB, dtype="float32"))
    normalization.adapt_variance.assign(np.square(np.asarray(_IMAGENET_STD_RGB, dtype="float32")))
    normalization.finalize_state()


def build_backbone(
    name: str,
    *,
    image_size: int | None = None,
    weights: str | Path | None = None,
    bn_momentum: float | None = None,
) -> Any:
    """Build backbone ``name``: uint8 RGB ``(image_size, image_size, 3)`` in, pooled features out.

    ``image_size`` defaults to the backbone's native size. ``weights`` is ``None`` (fresh
    weights), the path of a local ``.weights.h5`` / ``.h5`` file of pretrained weights for
    the bare application (``include_top=False``), e.g. Keras' ``*_notop.h5``, loaded by
    layer order (no ``by_name``) into the feature extractor, ``"imagenet-lite"``: the
    ImageNet weights of an EfficientNet-Lite backbone from the ``pretrained`` extra, or
    ``"imagenet"``: ``keras.applications``' own ImageNet weights of a Keras backbone, whose
    file Keras fetches on first use and caches (ModelError when it cannot).
    ``bn_momentum``, when given, is set as the ``momentum`` of every BatchNormalization
    layer (Keras' 0.99 / 0.999 defaults make moving statistics lag far behind in short
    from-scratch runs).

    Arguments are checked before anything is built; a bad name, size, momentum or weight
    file raises :class:`ModelError` quoting the value (and listing valid names). The model
    is named ``f"{name}_backbone"``; see the module docstring for its layers.
    """
    spec = _spec(name)
    size = _check_image_size(spec, image_size)
    momentum = _check_bn_momentum(bn_momentum)
    weight_file = _check_weights(spec, weights)
    if keras.config.image_data_format() != "channels_last":
        raise ModelError(
            "backbones need keras.config.image_data_format() == 'channels_last', "
            f"it is {keras.config.image_data_format()!r}"
        )

    if weights == IMAGENET:
        features = _keras_imagenet_features(spec, (size, size, 3))
    else:
        features = spec.builder((size, size, 3), f"{name}_features")
    if weight_file is not None and weights == IMAGENET_LITE and spec.packaged is not None:
        spec.packaged.load(features, weight_file)
    elif weight_file is not None:
        try:
            features.load_weights(str(weight_file))
        except (ValueError, OSError, KeyError) as error:
            raise ModelError(
                f"weight file {str(weight_file)!r} does not fit backbone {name!r}: {error}"
            ) from error
    if spec.imagenet_stem:
        _set_imagenet_statistics(features)
    if momentum is not None:
        for layer in batch_normalization_layers(features):
            layer.momentum = momentum

    image = keras.Input(shape=(size, size, 3), dtype="uint8", name=f"{name}_image")
    x = preprocessing_layer(name)(image)
    return keras.Model(image, features(x), name=f"{name}_backbone")
