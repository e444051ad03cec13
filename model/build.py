"""The classifier: a backbone with one softmax head per taxonomy level, its loss and metrics.

:func:`build_model` puts heads on a backbone from :mod:`model.backbones`:

* ``heads="multi"``: one softmax ``Dense`` head per level of the truncated taxonomy, named
  ``level_1`` ... ``level_D``, each over that level's vocabulary. The model's outputs are a
  dict ``{"level_1": probs, ...}``.
* ``heads="leaf"``: the flat baseline, one softmax head ``leaf`` over every leaf of the
  truncated taxonomy, on the same code path (output ``{"leaf": probs}``).
* ``heads="marginal"``: one leaf softmax marginalised to every level, with depth-weighted
  level losses (outputs ``leaf`` and ``level_1`` ... ``level_D``; see :mod:`model.heads`).

Labels are sparse class indices per head, with :data:`MASK_LABEL` (``-1``) where a
product's category is shallower than the head's level: :class:`MaskedSparseCategoricalCrossentropy`
and the masked accuracy metrics skip those samples. :func:`compile_model` wires loss,
per-level loss weights (:func:`default_level_weights`, :func:`parse_level_weights`) and
metrics. Everything is backend-neutral Keras 3 (``keras``, ``keras.ops``, numpy).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import keras
import numpy as np
from keras import layers, ops

from model.backbones import build_backbone
from model.errors import ModelError
from model.heads import LEAF_HEAD, HeadsKind, attach_heads, level_names, loss_heads
from model.heads import check_heads as _check_heads

__all__ = [
    "LEAF_HEAD",
    "MASK_LABEL",
    "HeadsKind",
    "MaskedSparseCategoricalAccuracy",
    "MaskedSparseCategoricalCrossentropy",
    "MaskedSparseTopKCategoricalAccuracy",
    "build_model",
    "compile_model",
    "count_params",
    "default_level_weights",
    "head_names",
    "level_names",
    "parse_level_weights",
]

MASK_LABEL = -1
"""The label of a sample that has no class at a head's level (its category is shallower)."""


def head_names(model: Any) -> tuple[str, ...]:
    """Return the names of ``model``'s outputs (its heads), in output order."""
    return tuple(model.output_names)


def _is_count(value: object) -> TypeGuard[int]:
    """Say whether ``value`` is an int (numpy ints included, bools not) of at least 1."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(value >= 1)


def _check_level_sizes(level_sizes: object) -> tuple[int, ...]:
    """Return the level vocabulary sizes as ints, or raise ModelError quoting them."""
    if isinstance(level_sizes, str | bytes) or not isinstance(level_sizes, Sequence):
        raise ModelError(f"level_sizes must be a sequence of class counts, got {level_sizes!r}")
    if not level_sizes or not all(_is_count(size) for size in level_sizes):
        raise ModelError(
            f"level_sizes must be one or more class counts >= 1, got {list(level_sizes)!r}"
        )
    return tuple(int(size) for size in level_sizes)


def build_model(
    backbone: str,
    level_sizes: Sequence[int],
    *,
    heads: HeadsKind = "multi",
    leaf_size: int | None = None,
    image_size: int | None = None,
    weights: str | Path | None = None,
    bn_momentum: float | None = None,
    dropout: float = 0.2,
    name: str = "taxonomy_classifier",
    leaf_paths: Any = None,
) -> Any:
    """Build the classifier: uint8 images in, a dict of per-head class probabilities out.

    ``level_sizes[k]`` is the vocabulary size of level ``k + 1`` (e.g.
    ``[len(level) for level in truncated.levels]``). With ``heads="multi"`` the model has
    one softmax head per level, ``level_1`` ... ``level_<len(level_sizes)>``, and
    ``leaf_size`` is ignored; with ``heads="leaf"`` it has the single head ``leaf`` over
    ``leaf_size`` classes (required); with ``heads="marginal"`` it has ``leaf`` and the
    level marginals ``level_1`` ... (``leaf_size`` and ``leaf_paths`` required, see
    :func:`model.heads.attach_heads`). ``backbone``, ``image_size``, ``weights`` and
    ``bn_momentum`` go to :func:`model.backbones.build_backbone`; ``dropout`` (in [0, 1))
    is applied to the pooled features before the heads. Heads compute in float32, so the
    model is safe under a mixed-precision policy.

    The input is ``image`` (uint8, ``(image_size, image_size, 3)``); the layers are that
    input, the backbone model ``f"{backbone}_backbone"``, ``dropout`` and the heads. Bad
    arguments raise :class:`ModelError` quoting the value, before anything is built.
    """
    kind = _check_heads(heads)
    sizes = _check_level_sizes(level_sizes)
    if kind != "multi" and not _is_count(leaf_size):
        raise ModelError(f"heads={kind!r} needs leaf_size, a class count >= 1; got {leaf_size!r}")
    if (
        not isinstance(dropout, float | int)
        or isinstance(dropout, bool)
        or not 0.0 <= dropout < 1.0
    ):
        raise ModelError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(name, str) or not name:
        raise ModelError(f"name must be a non-empty string, got {name!r}")

    features_model = build_backbone(
        backbone, image_size=image_size, weights=weights, bn_momentum=bn_momentum
    )
    size = features_model.input_shape[1]
    image = keras.Input(shape=(size, size, 3), dtype="uint8", name="image")
    features = features_model(image)
    features = layers.Dropout(float(dropout), name="dropout")(features)
    outputs = attach_heads(
        features,
        heads=kind,
        level_sizes=sizes,
        leaf_size=int(leaf_size) if _is_count(leaf_size) else None,
        leaf_paths=leaf_paths,
    )
    return keras.Model(image, outputs, name=name)


@keras.saving.register_keras_serializable(package="enrich")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):  # type: ignore[misc]
    """Sparse categorical cross-entropy that ignores samples labelled ``mask_label`` (-1).

    ``y_true`` holds class indices, shape ``(batch,)`` or ``(batch, 1)``; ``y_pred`` class
    probabilities (or logits with ``from_logits=True``), shape ``(batch, classes)``. With
    ``m_i = 1`` where ``y_true[i] != mask_label`` (else 0), ``w_i`` the sample weight (1
    when none is given) and ``l_i = -log p_i[y_true[i]]`` (Keras' sparse cross-entropy:
    probabilities clipped to ``[eps, 1 - eps]``), the loss of a batch is::

        sum_i(m_i * w_i * l_i) / max(sum_i(m_i), 1)

    i.e. the mean over the unmasked samples (weighted like Keras' ``sum_over_batch_size``,
    whose divisor is a count, not a sum of weights), and exactly 0 when every sample is
    masked: never NaN. Masked samples contribute nothing, their gradient included. The
    reduction is fixed (Keras' ``reduction`` argument is not taken), and the loss is not
    divided by the number of replicas under a ``tf.distribute`` strategy.
    """

    def __init__(
        self,
        *,
        from_logits: bool = False,
        mask_label: int = MASK_LABEL,
        name: str = "masked_sparse_categorical_crossentropy",
        dtype: Any = None,
    ) -> None:
        """Make the loss; ``mask_label`` is the label that means "no class at this level"."""
        super().__init__(name=name, reduction="sum_over_batch_size", dtype=dtype)
        self.from_logits = bool(from_logits)
        self.mask_label = int(mask_label)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Return the per-sample losses, 0 for masked samples (shape ``(batch,)``)."""
        labels, mask = _labels_and_mask(y_true, self.mask_label)
        losses = ops.sparse_categorical_crossentropy(
            ops.where(mask, labels, 0), y_pred, from_logits=self.from_logits
        )
        return ops.where(mask, losses, ops.zeros_like(losses))

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """Return the batch loss: the mean of :meth:`call` over the unmasked samples."""
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            labels, mask = _labels_and_mask(y_true, self.mask_label)
            losses = self.call(labels, y_pred)
            weights = ops.cast(mask, self.dtype)
            count = ops.sum(weights)
            if sample_weight is not None:
                weights = weights * ops.reshape(
                    ops.cast(ops.convert_to_tensor(sample_weight), self.dtype), (-1,)
                )
            return ops.sum(losses * weights) / ops.maximum(count, 1.0)

    def get_config(self) -> dict[str, Any]:
        """Return the loss's config."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "from_logits": self.from_logits,
            "mask_label": self.mask_label,
        }


def _labels_and_mask(y_true: Any, mask_label: int) -> tuple[Any, Any]:
    """Return ``y_true`` as int32 of shape ``(batch,)`` and the boolean mask of real labels."""
    labels = ops.convert_to_tensor(y_true)
    if len(labels.shape) == 2 and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)
    labels = ops.cast(labels, "int32")
    return labels, ops.not_equal(labels, mask_label)


@keras.saving.register_keras_serializable(package="enrich")
class MaskedSparseTopKCategoricalAccuracy(keras.metrics.Metric):  # type: ignore[misc]
    """Share of unmasked samples whose true class is among the ``k`` most probable.

    Samples labelled ``mask_label`` (-1) are left out of numerator and denominator; the
    result is 0 while no unmasked sample has been seen. A head with fewer than ``k``
    classes counts every unmasked sample as a hit. Ties are broken by class index, as
    ``argmax`` does: the true class ``t`` is ranked after every class with a higher
    probability and after every lower-index class with the same one, so ``k=1`` is exactly
    ``argmax == label`` (a head that outputs a uniform distribution is not "always right").
    Sample weights weight the hits and the count alike.
    """

    def __init__(
        self,
        k: int = 5,
        *,
        mask_label: int = MASK_LABEL,
        name: str | None = None,
        dtype: Any = None,
    ) -> None:
        """Make the metric; its default name is ``f"top{k}_accuracy"``."""
        if not _is_count(k):
            raise ModelError(f"k must be a whole number >= 1, got {k!r}")
        super().__init__(name=name or f"top{k}_accuracy", dtype=dtype)
        self.k = int(k)
        self.mask_label = int(mask_label)
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Add a batch: labels ``(batch,)`` or ``(batch, 1)``, probs ``(batch, classes)``."""
        labels, mask = _labels_and_mask(y_true, self.mask_label)
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        safe = ops.expand_dims(ops.where(mask, labels, 0), axis=-1)
        target = ops.take_along_axis(y_pred, safe, axis=-1)
        classes = ops.expand_dims(ops.arange(ops.shape(y_pred)[-1], dtype="int32"), axis=0)
        ahead = ops.logical_or(
            ops.greater(y_pred, target),
            ops.logical_and(ops.equal(y_pred, target), ops.less(classes, safe)),
        )
        rank = ops.sum(ops.cast(ahead, "int32"), axis=-1)
        weights = ops.cast(mask, self.dtype)
        if sample_weight is not None:
            weights = weights * ops.reshape(
                ops.cast(ops.convert_to_tensor(sample_weight), self.dtype), (-1,)
            )
        hits = ops.cast(ops.less(rank, self.k), self.dtype) * weights
        self.hits.assign_add(ops.sum(hits))
        self.count.assign_add(ops.sum(weights))

    def result(self) -> Any:
        """Return hits / unmasked count, 0 before any unmasked sample."""
        return ops.where(
            ops.greater(self.count, 0.0), self.hits / ops.maximum(self.count, 1e-12), 0.0
        )

    def reset_state(self) -> None:
        """Forget every batch seen."""
        self.hits.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        """Return the metric's config."""
        return {"name": self.name, "dtype": self.dtype, "k": self.k, "mask_label": self.mask_label}


@keras.saving.register_keras_serializable(package="enrich")
class MaskedSparseCategoricalAccuracy(MaskedSparseTopKCategoricalAccuracy):
    """Share of unmasked samples whose most probable class (``argmax``) is the label."""

    def __init__(
        self,
        *,
        mask_label: int = MASK_LABEL,
        name: str = "accuracy",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        """Make the metric (a top-1 accuracy); ``kwargs`` may only repeat ``k=1``."""
        if kwargs.pop("k", 1) != 1 or kwargs:
            raise ModelError(f"MaskedSparseCategoricalAccuracy takes no k != 1: {kwargs!r}")
        super().__init__(1, mask_label=mask_label, name=name, dtype=dtype)


def default_level_weights(depth: int) -> tuple[float, ...]:
    """Return the default loss weight of each level: proportional to the level, summing to depth.

    Level ``k`` of ``depth`` gets ``2k / (depth + 1)`` (for depth 4: 0.4, 0.8, 1.2, 1.6):
    the deepest level, the one customers care most about, weighs most, and the weights
    average 1, so the total loss is on the scale of an unweighted sum of the head losses.
    """
    if not _is_count(depth):
        raise ModelError(f"depth must be a whole number >= 1, got {depth!r}")
    return tuple(2.0 * level / (depth + 1) for level in range(1, depth + 1))


def _normalise(values: Iterable[object], depth: int, source: str) -> tuple[float, ...]:
    """Return ``values`` scaled to sum to ``depth``, or raise ModelError quoting ``source``."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ModelError(f"level weights {source!r}: expected a sequence of {depth} numbers")
    weights = list(values)
    if len(weights) != depth:
        raise ModelError(
            f"level weights {source!r}: {len(weights)} value(s) for a depth-{depth} model, "
            f"need {depth}"
        )
    numbers: list[float] = []
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(
            weight, int | float | np.integer | np.floating
        ):
            raise ModelError(f"level weights {source!r}: {weight!r} is not a number")
        numbers.append(float(weight))
    if not all(math.isfinite(weight) and weight >= 0.0 for weight in numbers):
        raise ModelError(f"level weights {source!r}: every weight must be a finite number >= 0")
    # Scale by the largest weight first, so that huge weights cannot overflow the sum.
    largest = max(numbers)
    if largest <= 0.0:
        raise ModelError(f"level weights {source!r}: at least one weight must be > 0")
    scaled = [weight / largest for weight in numbers]
    total = math.fsum(scaled)
    return tuple(depth * weight / total for weight in scaled)


def parse_level_weights(text: str, depth: int) -> tuple[float, ...]:
    """Parse comma-separated relative level weights, level 1 first, e.g. ``"1,2,3,4"``.

    The weights are relative: they are scaled to sum to ``depth`` like
    :func:`default_level_weights`, so ``parse_level_weights("1,2,3,4", 4)`` equals
    ``default_level_weights(4)``. A weight may be 0 (that level's head is not trained).
    Raises :class:`ModelError` quoting ``text`` for a wrong count, a non-number, a negative
    or non-finite weight, or all zeros.
    """
    if not _is_count(depth):
        raise ModelError(f"depth must be a whole number >= 1, got {depth!r}")
    if not isinstance(text, str):
        raise ModelError(f"level weights must be a string like '1,2,3,4', got {text!r}")
    parts = [part.strip() for part in text.split(",")]
    try:
        weights = [float(part) for part in parts]
    except ValueError:
        raise ModelError(
            f"level weights {text!r}: expected {depth} comma-separated numbers, level 1 first"
        ) from None
    return _normalise(weights, depth, text)


def compile_model(
    model: Any,
    *,
    level_weights: Sequence[float] | None,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    heads: HeadsKind,
    weight_decay: float | None = None,
    top_k: int = 5,
) -> Any:
    """Compile ``model`` from :func:`build_model` for training, in place; return it.

    Every head gets :class:`MaskedSparseCategoricalCrossentropy` and two metrics,
    :class:`MaskedSparseCategoricalAccuracy` (``accuracy``) and
    :class:`MaskedSparseTopKCategoricalAccuracy` (``top{top_k}_accuracy``), logged by Keras
    as ``level_4_accuracy``, ``val_level_4_top5_accuracy`` and so on. With
    ``heads="multi"`` ``level_weights`` gives one non-negative weight per level head, level
    1 first (scaled to sum to the depth, as :func:`parse_level_weights` does; ``None`` means
    :func:`default_level_weights`); the training loss is the weighted sum of the head
    losses, each weight going to its head by name (``level_k``), whatever order Keras keeps
    the outputs in. ``heads="marginal"`` is weighted the same way, on its level marginals
    (its ``leaf`` output carries no loss of its own). With ``heads="leaf"`` there is one loss
    and ``level_weights`` is ignored.
    The optimizer is Adam, or AdamW when ``weight_decay`` is given. ``heads`` must match
    the model's outputs; a mismatch raises :class:`ModelError`.
    """
    kind = _check_heads(heads)
    names = head_names(model)
    # Keras orders a dict of outputs by key ("level_10" before "level_2"), so the heads are
    # matched as a set and the weights are given by level name, never by output position.
    depth = len(names) - 1 if kind == "marginal" else len(names)
    expected = (LEAF_HEAD,) if kind == "leaf" else level_names(depth)
    if kind == "marginal":
        expected = (LEAF_HEAD, *expected)
    if sorted(names) != sorted(expected):
        raise ModelError(
            f"heads={kind!r} does not match the model's outputs {list(names)!r}; "
            f"expected {list(expected)!r}"
        )
    losses = loss_heads(kind, depth)
    if kind == "leaf":
        weights: tuple[float, ...] = (1.0,)
    elif level_weights is None:
        weights = default_level_weights(depth)
    else:
        weights = _normalise(level_weights, depth, str(level_weights))
    if kind == "marginal":
        weights = (*weights, float(depth))  # the leaf loss weighs as much as all the levels
    if isinstance(learning_rate, bool) or (
        isinstance(learning_rate, float | int)
        and not (math.isfinite(learning_rate) and learning_rate > 0.0)
    ):
        raise ModelError(f"learning_rate must be > 0, got {learning_rate!r}")
    if weight_decay is None:
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    elif (
        isinstance(weight_decay, float | int)
        and not isinstance(weight_decay, bool)
        and math.isfinite(weight_decay)
        and weight_decay >= 0.0
    ):
        optimizer = keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=float(weight_decay)
        )
    else:
        raise ModelError(f"weight_decay must be None or a number >= 0, got {weight_decay!r}")
    model.compile(
        optimizer=optimizer,
        loss={name: MaskedSparseCategoricalCrossentropy() for name in losses},
        loss_weights=dict(zip(losses, weights, strict=True)),
        metrics={
            name: [MaskedSparseCategoricalAccuracy(), MaskedSparseTopKCategoricalAccuracy(top_k)]
            for name in expected
        },
    )
    return model


def count_params(model: Any, *, trainable_only: bool = False) -> int:
    """Return the number of parameters of ``model`` (all, or only the trainable ones)."""
    if trainable_only:
        return int(sum(math.prod(weight.shape) for weight in model.trainable_weights))
    return int(model.count_params())
