"""Fine-tuning the top blocks end to end on randomly augmented images (transfer's last stage).

Cached activations (:mod:`model.transfer`) let the top blocks learn in minutes, but they see
every training image in the same few views (:mod:`model.views`) each epoch, and they learn
those by heart (train accuracy 0.997 while the hold-out falls). This stage goes on from
there with the whole assembled model (uint8 images in, heads out) on images augmented anew
for every batch: a random square crop of 80-100% of the side, resized back, mirrored half
of the time, with brightness (+-15%) and contrast (0.8-1.2) jitter, as end-to-end training
(:mod:`model.train`) does. Only what fine-tuning on activations trained learns here: the
blocks above the cut, the final 1x1 convolution and the heads; the layers below the cut and
every BatchNormalization stay frozen. The learning rate (the fine-tuning one) decays along a
cosine over the epochs asked for.

Each epoch runs the whole backbone forward over every training image (nothing can be
cached: the inputs change), so it costs many times an epoch on cached activations; it is
off unless asked for (``augmented_epochs``). The augmentation is numpy and Pillow on the
data side, so the stage runs on any Keras backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.build import compile_model
from model.errors import ModelError
from model.heads import HeadsKind
from model.validation import BestOnValidation

__all__ = ["AugmentedBatches", "augment_batch", "set_top_trainable", "tune_augmented"]

_CROP = (0.8, 1.0)
_BRIGHTNESS = 0.15
_CONTRAST = (0.8, 1.2)


def augment_batch(images: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """Each image of ``(n, size, size, 3)`` uint8 cropped, mirrored and jittered at random.

    The shape and dtype are kept. The same ``rng`` state gives the same batch.
    """
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
        raise ModelError(f"augment_batch needs (n, size, size, 3) images, got {images.shape}")
    size = images.shape[1]
    out = np.empty_like(images)
    for index, image in enumerate(images):
        side = max(1, round(size * rng.uniform(*_CROP)))
        top = int(rng.integers(0, size - side + 1))
        left = int(rng.integers(0, size - side + 1))
        crop = image[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if side != size:
            resized = Image.fromarray(np.ascontiguousarray(crop)).resize(
                (size, size), Image.Resampling.BILINEAR
            )
            crop = np.asarray(resized)
        pixels = crop.astype(np.float32) + rng.uniform(-_BRIGHTNESS, _BRIGHTNESS) * 255.0
        mean = pixels.mean(axis=(0, 1), keepdims=True)
        pixels = (pixels - mean) * rng.uniform(*_CONTRAST) + mean
        out[index] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return out


class AugmentedBatches(keras.utils.PyDataset):  # type: ignore[misc]
    """Shuffled batches of freshly augmented images and their head targets.

    The order is reshuffled after every epoch; batch ``i`` of epoch ``e`` is augmented with
    a generator seeded by ``(seed, e, i)``, so a run is reproducible.
    """

    def __init__(
        self,
        images: NDArray[np.uint8],
        targets: Mapping[str, NDArray[np.int32]],
        *,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        if len(images) == 0:
            raise ModelError("no training images to fine-tune on")
        for name, values in targets.items():
            if len(values) != len(images):
                raise ModelError(
                    f"head {name!r} has {len(values)} targets for {len(images)} images"
                )
        self.images = images
        self.targets = dict(targets)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self._order = self._shuffled()

    def _shuffled(self) -> NDArray[np.int64]:
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[NDArray[np.uint8], dict[str, NDArray[np.int32]]]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        chosen = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        batch = augment_batch(self.images[chosen], rng)
        return batch, {name: values[chosen] for name, values in self.targets.items()}

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._shuffled()


def set_top_trainable(features: Any, cut: str, heads: Sequence[Any]) -> int:
    """Freeze ``features`` up to and including layer ``cut``; train what lies above, but BN.

    ``heads`` are the model's layers after the backbone (they are all made trainable).
    Returns how many layers were left trainable. A ``cut`` the extractor lacks raises
    ModelError.
    """
    names = [layer.name for layer in features.layers]
    if cut not in names:
        raise ModelError(f"{features.name} has no layer {cut!r} to cut at")
    features.trainable = True
    top = keras.Model(features.get_layer(cut).output, features.output)
    above = {id(layer) for layer in top.layers}
    trainable = 0
    for layer in features.layers:
        layer.trainable = id(layer) in above and not isinstance(
            layer, keras.layers.BatchNormalization
        )
        trainable += int(layer.trainable and bool(layer.weights))
    for layer in heads:
        layer.trainable = True
        trainable += int(bool(layer.weights))
    return trainable


def tune_augmented(
    model: Any,
    features: Any,
    cut: str,
    batches: AugmentedBatches,
    scorer: BestOnValidation,
    *,
    epochs: int,
    learning_rate: float,
    level_weights: Sequence[float] | None,
    heads: HeadsKind,
    verbose: int,
) -> bool:
    """Train ``model`` on ``batches``; keep its best epoch if it beats ``scorer.best``.

    The learning rate starts at ``learning_rate`` and decays along a cosine to 1% of it over
    the ``epochs``.

    ``features`` is the backbone's feature extractor inside ``model`` and ``cut`` the last
    frozen layer. Returns whether the weights changed: when no epoch beats the score the
    scorer started from, the model's weights are put back as they were.
    """
    backbone_layers = {id(layer) for layer in features.layers}
    after_backbone = [
        layer
        for layer in model.layers
        if layer.weights and not isinstance(layer, keras.Model) and id(layer) not in backbone_layers
    ]
    set_top_trainable(features, cut, after_backbone)
    before = model.get_weights()
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate, decay_steps=max(1, epochs * len(batches)), alpha=0.01
    )
    compile_model(model, level_weights=level_weights, learning_rate=schedule, heads=heads)
    model.fit(batches, epochs=epochs, callbacks=[scorer], verbose=verbose)
    if scorer.best_weights is None:
        model.set_weights(before)
        return False
    model.set_weights(scorer.best_weights)
    return True
