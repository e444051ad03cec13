"""Late fusion: one category from the image model's and the text model's probabilities.

Each model gives a probability distribution over its own leaves (:func:`leaf_distribution`:
the flat head as it is, a multi-head model's consistent-path scores normalised). The two
models may know different leaves of the same truncated taxonomy, so :class:`LateFusion`
works on the *union* of their vocabularies and treats the signals as conditionally
independent given the category:

    p(c | image, text)  ∝  p(c | image) · [ p(c | text) / p_text(c) ] ** text_weight

with ``p_text`` the text model's prior, taken as uniform over its leaves. The bracket is the
text's likelihood ratio: above 1 for the categories the text points at, below 1 for those it
speaks against, and exactly 1 (no information) for every category the text model was never
trained on. So a text model that knows 40 clothing leaves can sharpen the image's choice
among clothing but cannot drag a grocery photo into clothing unless the image itself leaves
room for it. A leaf of one model that is an inner node of the union (the other model knows
deeper categories under it) passes its evidence to the union leaves beneath it: the image's
probability shared equally, the text's ratio copied. Union leaves the image model cannot
predict get the image row's smallest probability.

The fused distribution is decoded by a :class:`~model.decode.Decoder` over the union
vocabulary, with the same threshold and alternatives as each model alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.build import LEAF_HEAD, HeadsKind, level_names
from model.decode import EPSILON, Decoder, Prediction
from model.errors import ModelError
from model.heads import decodes_from_leaf
from model.taxonomy import Category, Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary

__all__ = [
    "FusionSettings",
    "LateFusion",
    "Scored",
    "leaf_distribution",
    "merged_taxonomy",
    "scored_outputs",
]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Scored:
    """One model's answer for one product: its decoded prediction and its leaf distribution
    (over that model's vocabulary leaves, summing to 1)."""

    prediction: Prediction
    leaves: NDArray[np.float32]


@dataclass(frozen=True)
class FusionSettings:
    """How much the text's evidence counts against the image's (1 = as much)."""

    text_weight: float = 1.0

    def __post_init__(self) -> None:
        """Refuse a weight that is not a finite number >= 0."""
        if not (np.isfinite(self.text_weight) and self.text_weight >= 0):
            raise ModelError(f"text_weight must be a number >= 0, got {self.text_weight!r}")


def leaf_distribution(
    decoder: Decoder, heads: HeadsKind, outputs: Mapping[str, NDArray[np.float32]]
) -> FloatArray:
    """Per row, the probability of each of the decoder's leaves (rows sum to 1)."""
    if decodes_from_leaf(heads):
        probs = np.clip(np.asarray(outputs[LEAF_HEAD], dtype=np.float64), 0.0, None)
    else:
        levels = [outputs[name] for name in level_names(decoder.vocabulary.depth)]
        probs = decoder.leaf_distribution(levels)
    total = probs.sum(axis=1, keepdims=True)
    return np.asarray(probs / np.where(total > 0, total, 1.0), dtype=np.float64)


def scored_outputs(
    decoder: Decoder, heads: HeadsKind, outputs: Mapping[str, NDArray[np.float32]]
) -> list[Scored]:
    """Decode one batch of head outputs and keep each row's leaf distribution beside it."""
    if decodes_from_leaf(heads):
        predictions = decoder.decode_leaf(outputs[LEAF_HEAD])
    else:
        predictions = decoder.decode_multi(
            [outputs[name] for name in level_names(decoder.vocabulary.depth)]
        )
    leaves = leaf_distribution(decoder, heads, outputs).astype(np.float32)
    return [Scored(p, row) for p, row in zip(predictions, leaves, strict=True)]


def merged_taxonomy(*vocabularies: Vocabulary) -> TruncatedTaxonomy:
    """One truncated taxonomy holding every node of ``vocabularies`` (their paths must agree:
    the same id names the same category in each)."""
    categories: dict[int, Category] = {}
    versions = {v.truncated.taxonomy.version for v in vocabularies}
    for vocabulary in vocabularies:
        for level in vocabulary.levels:
            for node in level:
                category = vocabulary.truncated.category(node)
                known = categories.setdefault(node, category)
                if known.path != category.path:
                    raise ModelError(
                        f"category {node} is {known.path_string!r} in one model and "
                        f"{category.path_string!r} in the other"
                    )
    if len(versions) != 1:
        raise ModelError(
            f"the models use different taxonomy versions: {sorted(map(str, versions))}"
        )
    ordered = sorted(categories.values(), key=lambda c: (c.depth, c.id))  # parents first
    taxonomy = Taxonomy(ordered, version=versions.pop(), source="<fused models>")
    return taxonomy.truncate(vocabularies[0].depth)


def _union_leaf_map(
    truncated: TruncatedTaxonomy, own: Sequence[int], union: Sequence[int]
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.bool_]]:
    """For each union leaf: the index of the own leaf on its path (or -1), the share of that
    leaf's probability it gets (1 / number of union leaves under it), and whether it has one."""
    position = {leaf: i for i, leaf in enumerate(own)}
    source = np.full(len(union), -1, dtype=np.intp)
    for j, leaf in enumerate(union):
        for node in reversed(truncated.path_ids(leaf)):
            if node in position:
                source[j] = position[node]
                break
    covered = source >= 0
    counts = np.bincount(source[covered], minlength=len(own)).astype(np.float64)
    share = np.zeros(len(union))
    share[covered] = 1.0 / counts[source[covered]]
    return source, share, covered


class LateFusion:
    """Fuses an image model's and a text model's leaf distributions (see the module doc)."""

    def __init__(
        self,
        image_vocabulary: Vocabulary,
        text_vocabulary: Vocabulary,
        *,
        settings: FusionSettings | None = None,
        threshold: float = 0.0,
        top_k: int = 5,
    ) -> None:
        """Build the union vocabulary, its decoder and the two models' leaf maps.

        Each vocabulary may sit on a taxonomy of just its own model's nodes (what a model
        directory carries); the union's taxonomy is rebuilt from both.
        """
        if image_vocabulary.depth != text_vocabulary.depth:
            raise ModelError(
                f"the image model has depth {image_vocabulary.depth} and the text model "
                f"{text_vocabulary.depth}: they cannot be fused"
            )
        self.settings = settings or FusionSettings()
        truncated = merged_taxonomy(image_vocabulary, text_vocabulary)
        leaves = set(image_vocabulary.leaves) | set(text_vocabulary.leaves)
        self.vocabulary = Vocabulary.from_labels(truncated, sorted(leaves))
        self.decoder = Decoder(truncated, self.vocabulary, threshold=threshold, top_k=top_k)
        union = self.decoder.leaves
        self._image = _union_leaf_map(truncated, image_vocabulary.leaves, union)
        text_source, _share, text_covered = _union_leaf_map(
            truncated, text_vocabulary.leaves, union
        )
        self._text_source = text_source
        self._text_covered = text_covered
        self._text_leaves = len(text_vocabulary.leaves)

    def image_evidence(self, image: NDArray[Any]) -> FloatArray:
        """The image rows' probabilities spread over the union leaves (rows sum to 1)."""
        probs = np.asarray(image, dtype=np.float64)
        source, share, covered = self._image
        out = np.empty((probs.shape[0], len(source)))
        out[:, covered] = probs[:, source[covered]] * share[covered]
        if not covered.all():
            out[:, ~covered] = probs.min(axis=1, keepdims=True)
        return np.asarray(out / out.sum(axis=1, keepdims=True), dtype=np.float64)

    def text_ratio(self, text: NDArray[Any]) -> FloatArray:
        """The text rows' likelihood ratios on the union leaves (1 where it knows nothing)."""
        probs = np.asarray(text, dtype=np.float64)
        ratio = np.ones((probs.shape[0], len(self._text_source)))
        covered = self._text_covered
        ratio[:, covered] = probs[:, self._text_source[covered]] * self._text_leaves
        return ratio

    def fuse(self, image: NDArray[Any], text: NDArray[Any]) -> FloatArray:
        """The fused distribution over the union leaves for rows of both models' leaves."""
        if len(image) != len(text):
            raise ModelError(f"{len(image)} image rows but {len(text)} text rows")
        logs = np.log(np.clip(self.image_evidence(image), EPSILON, None))
        weight = self.settings.text_weight
        logs += weight * np.log(np.clip(self.text_ratio(text), EPSILON, None))
        logs -= logs.max(axis=1, keepdims=True)
        fused = np.exp(logs)
        return np.asarray(fused / fused.sum(axis=1, keepdims=True), dtype=np.float64)

    def decide(self, image: Sequence[Scored], text: Sequence[Scored]) -> list[Prediction]:
        """Fused predictions for pairs of image and text answers of the same products."""
        if not image:
            return []
        fused = self.fuse(np.stack([s.leaves for s in image]), np.stack([s.leaves for s in text]))
        return self.decoder.decode_leaf(fused)
