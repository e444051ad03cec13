"""Consistent decoding: head outputs to a category path that exists in the taxonomy.

The multi-head model gives one probability vector per level; taking each level's argmax on
its own can give a path that does not exist (a level-3 category under another level-2 one).
:class:`Decoder` instead scores every leaf of the vocabulary (a shallower leaf counts) by the
sum of the log-probabilities of the nodes on its path,

    score(leaf) = sum over levels k <= depth(leaf) of log(max(p_k[node_k(leaf)], EPSILON)),

and answers the best-scoring leaf. The leaves' probabilities reported as alternatives are
``exp(score)`` normalised over all leaves. The flat baseline's single head gives leaf
probabilities directly (``score = log p``, the choice is its argmax); the confidence of a
node there is the sum of the probabilities of the leaves beneath it.

A node's confidence is its level's probability (multi-head) or its summed leaf probability
(flat). When the chosen leaf's confidence is below the threshold, the decoder abstains: it
answers the deepest ancestor on the leaf's path whose confidence clears the threshold, or the
root when none does, with status ``LOW_CONFIDENCE``.

Everything per batch is vectorised with numpy over a precomputed ``(leaves, depth)`` index
matrix: a batch of 256 decodes in milliseconds on the full taxonomy at depth 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypedDict

import numpy as np
from numpy.typing import NDArray

from model.errors import ModelError
from model.taxonomy import PATH_SEPARATOR, TruncatedTaxonomy
from model.vocabulary import Vocabulary

__all__ = [
    "CLASSIFIED",
    "EPSILON",
    "LOW_CONFIDENCE",
    "Alternative",
    "Decoder",
    "PathNode",
    "Prediction",
    "PredictionRecord",
    "Status",
    "abstention",
]

Status = Literal["CLASSIFIED", "LOW_CONFIDENCE"]
CLASSIFIED: Status = "CLASSIFIED"
LOW_CONFIDENCE: Status = "LOW_CONFIDENCE"

EPSILON = 1e-12
"""Probabilities are clipped to at least this before taking logs, so a 0 scores -27.6."""

FloatArray = NDArray[np.float64]

_ROUNDING = 1e-6
"""How far outside [0, 1] a head output may stray by float rounding before it is refused."""


@dataclass(frozen=True)
class PathNode:
    """One node of a predicted path: its level (1 = root), id, name and confidence."""

    level: int
    id: int
    name: str
    confidence: float


class Alternative(NamedTuple):
    """A candidate leaf: its id, its ``" > "``-joined path, its probability over all leaves."""

    leaf_id: int
    path_string: str
    probability: float


class PathNodeRecord(TypedDict):
    """A ``PathNode`` of the Avro contract."""

    level: int
    id: int
    name: str
    confidence: float


class CategoryRecord(TypedDict):
    """The ``Category`` record of the Avro contract."""

    id: int
    name: str
    path: list[PathNodeRecord]
    path_string: str


class AlternativeRecord(TypedDict):
    """An ``Alternative`` record of the Avro contract."""

    id: int
    path: str
    probability: float


class PredictionRecord(TypedDict):
    """The ``category`` and ``alternatives`` fields of a ``CategoryEnrichment`` record."""

    category: CategoryRecord
    alternatives: list[AlternativeRecord]


@dataclass(frozen=True)
class Prediction:
    """The decoded answer for one image.

    ``leaf_id`` is the best leaf, always; ``category_id`` is that leaf when ``status`` is
    ``CLASSIFIED``, or the ancestor the decoder fell back to when ``LOW_CONFIDENCE``.
    ``path`` runs from the root down to ``category_id``; ``confidence`` is that node's.
    ``alternatives`` are the top-k leaves, most probable first.
    """

    status: Status
    category_id: int
    leaf_id: int
    path: tuple[PathNode, ...]
    confidence: float
    alternatives: tuple[Alternative, ...]

    @property
    def name(self) -> str:
        """Return the chosen category's own name."""
        return self.path[-1].name

    @property
    def path_string(self) -> str:
        """Return the chosen category's path, names joined with ``" > "``."""
        return PATH_SEPARATOR.join(node.name for node in self.path)

    def to_record(self) -> PredictionRecord:
        """Return the ``category`` and ``alternatives`` fields of the Avro contract."""
        return {
            "category": {
                "id": self.category_id,
                "name": self.name,
                "path": [
                    {
                        "level": node.level,
                        "id": node.id,
                        "name": node.name,
                        "confidence": node.confidence,
                    }
                    for node in self.path
                ],
                "path_string": self.path_string,
            },
            "alternatives": [
                {"id": alt.leaf_id, "path": alt.path_string, "probability": alt.probability}
                for alt in self.alternatives
            ],
        }


def abstention(prior: Prediction) -> Prediction:
    """The answer when there is nothing to go on: ``LOW_CONFIDENCE`` at confidence 0, the path
    only the root of ``prior``'s leaf (at confidence 0 too), no alternatives. A confidence of
    0 is below every threshold, so nothing downstream mistakes it for evidence."""
    root = prior.path[0]
    return Prediction(
        status=LOW_CONFIDENCE,
        category_id=root.id,
        leaf_id=prior.leaf_id,
        path=(PathNode(level=1, id=root.id, name=root.name, confidence=0.0),),
        confidence=0.0,
        alternatives=(),
    )


class Decoder:
    """Turns a batch of head outputs into :class:`Prediction` objects on existing paths.

    ``threshold`` (in [0, 1]) is the confidence the chosen leaf needs to be answered as
    ``CLASSIFIED``; 0 never abstains. ``top_k`` (at least 1) is the number of alternatives,
    capped at the number of leaves. Raises :class:`ModelError` for a bad ``threshold`` or
    ``top_k``, or when ``vocabulary`` does not fit ``truncated``.
    """

    def __init__(
        self,
        truncated: TruncatedTaxonomy,
        vocabulary: Vocabulary,
        *,
        threshold: float = 0.0,
        top_k: int = 5,
    ) -> None:
        """Precompute the leaves' paths as a ``(leaves, depth)`` index matrix and mask."""
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float | np.integer | np.floating)
            or not 0.0 <= threshold <= 1.0
        ):
            raise ModelError(f"threshold must be a number in [0, 1], got {threshold!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
            raise ModelError(f"top_k must be a whole number >= 1, got {top_k!r}")
        if vocabulary.truncated is not truncated:
            vocabulary = Vocabulary.from_json(vocabulary.to_json(), truncated)
        self.truncated = truncated
        self.vocabulary = vocabulary
        self.threshold = float(threshold)
        self.top_k = min(int(top_k), len(vocabulary.leaves))
        self.leaves: tuple[int, ...] = vocabulary.leaves
        depth = vocabulary.depth
        count = len(self.leaves)
        index = np.zeros((count, depth), dtype=np.intp)
        mask = np.zeros((count, depth), dtype=bool)
        paths: list[tuple[int, ...]] = []
        for row, leaf in enumerate(self.leaves):
            path = truncated.path_ids(leaf)
            paths.append(path)
            for level, node in enumerate(path):
                index[row, level] = vocabulary.index(level + 1, node)
                mask[row, level] = True
        self._index = index
        self._mask = mask
        self._paths = paths
        self._names = {node: truncated.name(node) for level in vocabulary.levels for node in level}
        self._path_strings = [
            PATH_SEPARATOR.join(self._names[node] for node in path) for path in paths
        ]
        # For the flat head: per level, the leaves deep enough to have a node there, ordered
        # by that node's index, and where each node's run of leaves starts. Every node of the
        # vocabulary has at least one leaf beneath it, so the runs cover the whole level.
        self._groups: list[tuple[NDArray[np.intp], NDArray[np.intp]]] = []
        for level in range(depth):
            rows = np.flatnonzero(mask[:, level])
            order = rows[np.argsort(index[rows, level], kind="stable")]
            starts = np.searchsorted(index[order, level], np.arange(vocabulary.sizes[level]))
            self._groups.append((order.astype(np.intp), starts.astype(np.intp)))

    def _check(self, array: Any, size: int, what: str) -> FloatArray:
        """Return ``array`` as a 2-D float64 array of probabilities with ``size`` columns.

        Raises :class:`ModelError` for anything else: not numbers, another shape, NaN or
        infinite values, or values outside [0, 1] (beyond float rounding), e.g. logits.
        """
        try:
            probs = np.asarray(array, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ModelError(f"{what}: the model output is not an array of numbers") from error
        if probs.ndim != 2 or probs.shape[1] != size:
            raise ModelError(f"{what}: expected shape (batch, {size}), got {probs.shape}")
        if not np.all(np.isfinite(probs)):
            raise ModelError(f"{what}: the model output holds NaN or infinite values")
        if probs.size and (probs.min() < -_ROUNDING or probs.max() > 1.0 + _ROUNDING):
            raise ModelError(
                f"{what}: probabilities must be in [0, 1], got values in "
                f"[{probs.min():.6g}, {probs.max():.6g}] (logits instead of softmax outputs?)"
            )
        return np.clip(probs, 0.0, 1.0)

    def level_confidences(self, leaf_probs: Any) -> list[FloatArray]:
        """Return, per level, the flat head's probability of each node: the sum over its leaves.

        ``leaf_probs`` is ``(batch, leaves)``; the result has one ``(batch, size_k)`` array
        per level, in the vocabulary's order (what the multi-head model would output).
        """
        probs = self._check(leaf_probs, len(self.leaves), "leaf head")
        out: list[FloatArray] = []
        for order, starts in self._groups:
            out.append(np.add.reduceat(probs[:, order], starts, axis=1))
        return out

    def decode_multi(self, level_probs: Sequence[Any]) -> list[Prediction]:
        """Decode a batch of multi-head outputs: one ``(batch, size_k)`` array per level."""
        probs = self._check_levels(level_probs)
        return self._predictions(probs, self._path_scores(probs))

    def _check_levels(self, level_probs: Sequence[Any]) -> list[FloatArray]:
        """One checked ``(batch, size_k)`` array per level, all of one batch size."""
        sizes = self.vocabulary.sizes
        if len(level_probs) != len(sizes):
            raise ModelError(f"expected {len(sizes)} level outputs, got {len(level_probs)}")
        probs = [
            self._check(array, size, f"level_{level}")
            for level, (array, size) in enumerate(zip(level_probs, sizes, strict=True), start=1)
        ]
        batches = {array.shape[0] for array in probs}
        if len(batches) != 1:
            raise ModelError(f"the level outputs have different batch sizes {sorted(batches)}")
        return probs

    def _path_scores(self, probs: list[FloatArray]) -> FloatArray:
        """Each leaf's score: the sum of its path's log-probabilities (checked levels in)."""
        scores = np.zeros((probs[0].shape[0], len(self.leaves)))
        for level, array in enumerate(probs):
            logs = np.log(np.clip(array, EPSILON, None))
            scores += np.where(self._mask[:, level], logs[:, self._index[:, level]], 0.0)
        return scores

    def leaf_distribution(self, level_probs: Sequence[Any]) -> FloatArray:
        """A multi-head batch's leaf probabilities: ``exp(score)`` normalised over the leaves
        (the probabilities the alternatives report), ``(batch, leaves)``."""
        scores = self._path_scores(self._check_levels(level_probs))
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)

    def decode_leaf(self, leaf_probs: Any) -> list[Prediction]:
        """Decode a batch of the flat head's outputs, ``(batch, leaves)``."""
        probs = self._check(leaf_probs, len(self.leaves), "leaf head")
        scores = np.log(np.clip(probs, EPSILON, None))
        return self._predictions(self.level_confidences(probs), scores)

    def _predictions(self, confidences: list[FloatArray], scores: FloatArray) -> list[Prediction]:
        """Choose, abstain and rank alternatives for every row of ``scores``."""
        batch, count = scores.shape
        if batch == 0:
            return []
        rows = np.arange(batch)
        best = np.argmax(scores, axis=1)
        shifted = np.exp(scores - scores[rows, best][:, None])
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        k = self.top_k
        if k < count:
            top = np.sort(np.argpartition(-probabilities, k - 1, axis=1)[:, :k], axis=1)
        else:
            top = np.broadcast_to(np.arange(count), (batch, count))
        top_probs = np.take_along_axis(probabilities, top, axis=1)
        ranked = np.argsort(-top_probs, axis=1, kind="stable")
        top = np.take_along_axis(top, ranked, axis=1)
        top_probs = np.take_along_axis(top_probs, ranked, axis=1)
        path_conf = np.clip(
            np.stack(
                [
                    confidences[level][rows, self._index[best, level]]
                    for level in range(self.vocabulary.depth)
                ],
                axis=1,
            ),
            0.0,
            1.0,
        )
        predictions: list[Prediction] = []
        for row in range(batch):
            leaf = int(best[row])
            path = self._paths[leaf]
            nodes = tuple(
                PathNode(
                    level=level + 1,
                    id=node,
                    name=self._names[node],
                    confidence=float(path_conf[row, level]),
                )
                for level, node in enumerate(path)
            )
            chosen = len(nodes) - 1
            status = CLASSIFIED
            if nodes[chosen].confidence < self.threshold:
                status = LOW_CONFIDENCE
                chosen = 0
                for level in range(len(nodes) - 2, -1, -1):
                    if nodes[level].confidence >= self.threshold:
                        chosen = level
                        break
            alternatives = tuple(
                Alternative(
                    leaf_id=self.leaves[column],
                    path_string=self._path_strings[column],
                    probability=float(probability),
                )
                for column, probability in zip(
                    top[row].tolist(), top_probs[row].tolist(), strict=True
                )
            )
            predictions.append(
                Prediction(
                    status=status,
                    category_id=nodes[chosen].id,
                    leaf_id=self.leaves[leaf],
                    path=nodes[: chosen + 1],
                    confidence=nodes[chosen].confidence,
                    alternatives=alternatives,
                )
            )
        return predictions
