"""Head designs: how pooled image features become taxonomy probabilities.

Three designs, all on the same pooled features, all backend-neutral Keras:

* ``"multi"``: one independent softmax ``Dense`` per level, ``level_1`` ... ``level_D``,
  trained with depth-weighted losses. The decoder combines the levels into a path.
* ``"leaf"``: the flat baseline, one softmax ``leaf`` over the leaves of the truncated
  taxonomy, trained with one loss.
* ``"marginal"``: one softmax ``leaf`` over the leaves, **marginalised** to every level:
  ``level_k`` is the sum of the leaf probabilities beneath each level-``k`` node
  (:class:`LevelMarginal`, a fixed 0/1 matrix, no weights). The training loss is the leaf
  loss (weight ``D``, the depth) plus the depth-weighted level losses of ``"multi"`` (weights
  ``2k / (D + 1)``, summing to ``D``): half the signal from the leaf, half from the
  hierarchy, which punishes a wrong leaf less when its ancestors are right. Predictions
  decode from ``leaf``, so a path is always a real
  path and its level confidences are the marginals (abstention to an ancestor works as for
  the flat head). It keeps the hierarchy in the training signal without the multi-head
  design's independent level softmaxes, which can disagree with each other.

:func:`attach_heads` builds the chosen design on a features tensor; :mod:`model.build`
uses it for whole models, :mod:`model.transfer` for heads trained on cached features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import keras
import numpy as np
from keras import layers, ops
from numpy.typing import NDArray

from model.errors import ModelError

__all__ = [
    "LEAF_HEAD",
    "HeadsKind",
    "LevelMarginal",
    "attach_heads",
    "check_heads",
    "decodes_from_leaf",
    "level_names",
    "loss_heads",
]

HeadsKind = Literal["multi", "leaf", "marginal"]
"""``"multi"``: one head per level; ``"leaf"``: one flat head; ``"marginal"``: a leaf
softmax marginalised to every level, with depth-weighted level losses."""

LEAF_HEAD = "leaf"
"""The name of the leaf softmax output (flat and marginal designs)."""


def level_names(depth: int) -> tuple[str, ...]:
    """Return the head names of a ``depth``-level model: ``("level_1", ..., "level_<depth>")``."""
    return tuple(f"level_{level}" for level in range(1, depth + 1))


def check_heads(heads: object) -> HeadsKind:
    """Return ``heads`` if it is a :data:`HeadsKind`, else raise ModelError quoting it."""
    if heads not in get_args(HeadsKind):
        raise ModelError(f"unknown heads {heads!r}; valid: {', '.join(get_args(HeadsKind))}")
    return heads  # type: ignore[return-value]


def decodes_from_leaf(heads: HeadsKind) -> bool:
    """Say whether predictions of a ``heads`` model are decoded from its ``leaf`` output."""
    return heads in ("leaf", "marginal")


def loss_heads(heads: HeadsKind, depth: int) -> tuple[str, ...]:
    """Return the outputs that carry a training loss, in the order of their weights.

    ``leaf``: the leaf head; ``multi``: ``level_1..level_depth``; ``marginal``: the level
    marginals, then the leaf head.
    """
    if heads == "leaf":
        return (LEAF_HEAD,)
    if heads == "marginal":
        return (*level_names(depth), LEAF_HEAD)
    return level_names(depth)


@keras.saving.register_keras_serializable(package="enrich")
class LevelMarginal(layers.Layer):  # type: ignore[misc]
    """Sums leaf probabilities into the probabilities of one level's nodes.

    ``leaf_index[j]`` is the index, in this level's vocabulary, of leaf ``j``'s ancestor at
    this level, or -1 when leaf ``j`` is shallower than the level (its probability then goes
    to no node of this level, so the level's probabilities sum to less than 1 by exactly the
    mass of shallower leaves). ``size`` is the level's vocabulary size. No trainable weights.
    """

    def __init__(self, leaf_index: Sequence[int], size: int, **kwargs: Any) -> None:
        """Make the layer; raises ModelError when an index is outside ``[-1, size)``."""
        super().__init__(**kwargs)
        index = [int(i) for i in leaf_index]
        if size < 1 or any(i < -1 or i >= size for i in index):
            raise ModelError(f"leaf_index must hold values in [-1, {size}), size >= 1")
        self.leaf_index = index
        self.size = int(size)
        matrix = np.zeros((len(index), self.size), dtype="float32")
        for row, column in enumerate(index):
            if column >= 0:
                matrix[row, column] = 1.0
        self._matrix: NDArray[np.float32] = matrix

    def call(self, leaf_probs: Any) -> Any:
        """Return ``leaf_probs @ matrix``: ``(batch, leaves)`` to ``(batch, size)``."""
        matrix = ops.convert_to_tensor(self._matrix, dtype=leaf_probs.dtype)
        return ops.matmul(leaf_probs, matrix)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Return ``(batch, size)``."""
        return (input_shape[0], self.size)

    def get_config(self) -> dict[str, Any]:
        """Return the layer's config (the index list and the level size)."""
        return {**super().get_config(), "leaf_index": self.leaf_index, "size": self.size}


def attach_heads(
    features: Any,
    *,
    heads: HeadsKind,
    level_sizes: Sequence[int],
    leaf_size: int | None = None,
    leaf_paths: NDArray[np.integer[Any]] | None = None,
) -> dict[str, Any]:
    """Return the output tensors of design ``heads`` on a pooled ``features`` tensor.

    ``level_sizes[k]`` is the vocabulary size of level ``k + 1``; ``leaf_size`` the number of
    leaves (``"leaf"`` and ``"marginal"``); ``leaf_paths`` (``"marginal"`` only) the
    ``(leaves, depth)`` matrix of each leaf's node index per level, -1 below the leaf (what
    :meth:`model.vocabulary.Vocabulary.encode_many` returns for the leaves). Every head
    computes in float32. Raises ModelError when an argument the design needs is missing or
    does not fit.
    """
    kind = check_heads(heads)
    depth = len(level_sizes)
    if kind == "multi":
        return {
            name: layers.Dense(size, activation="softmax", dtype="float32", name=name)(features)
            for name, size in zip(level_names(depth), level_sizes, strict=True)
        }
    if leaf_size is None or leaf_size < 1:
        raise ModelError(f"heads={kind!r} needs leaf_size, a class count >= 1; got {leaf_size!r}")
    leaf = layers.Dense(leaf_size, activation="softmax", dtype="float32", name=LEAF_HEAD)(features)
    if kind == "leaf":
        return {LEAF_HEAD: leaf}
    if leaf_paths is None:
        raise ModelError("heads='marginal' needs leaf_paths, each leaf's node index per level")
    paths = np.asarray(leaf_paths)
    if paths.shape != (leaf_size, depth):
        raise ModelError(
            f"leaf_paths must have shape ({leaf_size}, {depth}) for {leaf_size} leaves and "
            f"{depth} levels, got {paths.shape}"
        )
    outputs: dict[str, Any] = {LEAF_HEAD: leaf}
    for level, (name, size) in enumerate(zip(level_names(depth), level_sizes, strict=True)):
        outputs[name] = LevelMarginal(paths[:, level].tolist(), size, dtype="float32", name=name)(
            leaf
        )
    return outputs
