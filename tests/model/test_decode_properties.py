"""Property tests of model.decode: for random head outputs every decoded answer is a path that
exists, with its confidences and alternatives as a brute force over the taxonomy has them."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.decode import (
    CLASSIFIED,
    EPSILON,
    LOW_CONFIDENCE,
    Decoder,
    Prediction,
)
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary
from tests.support.decode import path_ids

Probs = list[np.ndarray]


@pytest.fixture(scope="module")
def real(taxonomy_file: Path) -> TruncatedTaxonomy:
    """The real Google Product Taxonomy cut at depth 4."""
    return Taxonomy.load(taxonomy_file).truncate(4)


@pytest.fixture(scope="module")
def real_vocabulary(real: TruncatedTaxonomy, shared_data: Path) -> Vocabulary:
    """The vocabulary the shared product-image labels reach (2, 5, 13, 5 per level)."""
    with (shared_data / "product-images" / "labels.csv").open(newline="", encoding="utf-8") as file:
        labels = [int(row["google_category_id"]) for row in csv.DictReader(file)]
    return Vocabulary.from_labels(real, labels)


@pytest.fixture(scope="module")
def cases(
    small: TruncatedTaxonomy,
    small_vocabulary: Vocabulary,
    real: TruncatedTaxonomy,
    real_vocabulary: Vocabulary,
) -> dict[str, tuple[TruncatedTaxonomy, Vocabulary]]:
    """The taxonomies and vocabularies the property tests decode over, by name."""
    return {"small": (small, small_vocabulary), "real": (real, real_vocabulary)}


# Brute force, independent of the decoder: the leaves, each leaf's path score, each node's
# flat-head confidence, all from the taxonomy and the vocabulary's level lists.


def brute_leaves(truncated: TruncatedTaxonomy, vocabulary: Vocabulary) -> list[int]:
    """The vocabulary's nodes that are no other node's parent, sorted."""
    nodes = {node for level in vocabulary.levels for node in level}
    parents = {truncated.category(node).parent_id for node in nodes}
    return sorted(nodes - parents)


def brute_confidence(
    vocabulary: Vocabulary, probs: Probs, row: int, level: int, node: int
) -> float:
    """A node's multi-head confidence: its level head's probability."""
    return float(probs[level - 1][row, vocabulary.levels[level - 1].index(node)])


def brute_score(
    truncated: TruncatedTaxonomy, vocabulary: Vocabulary, probs: Probs, row: int, leaf: int
) -> float:
    """Sum over the leaf's path of log(max(p, EPSILON)) of each node's level probability."""
    return sum(
        math.log(max(brute_confidence(vocabulary, probs, row, level, node), EPSILON))
        for level, node in enumerate(truncated.path_ids(leaf), start=1)
    )


def brute_flat_confidence(
    truncated: TruncatedTaxonomy, leaves: list[int], leaf_probs: np.ndarray, row: int, node: int
) -> float:
    """A node's flat-head confidence: the sum of the probabilities of the leaves beneath it."""
    return sum(
        float(leaf_probs[row, column])
        for column, leaf in enumerate(leaves)
        if node in truncated.path_ids(leaf)
    )


@st.composite
def distributions(draw: st.DrawFn, size: int, batch: int) -> np.ndarray:
    """A (batch, size) float32 array of softmax-like rows, with zeros and ties likely."""
    values = st.one_of(st.sampled_from([0.0, 0.25, 1.0]), st.floats(0.0, 1.0))
    out = []
    for _ in range(batch):
        raw = draw(st.lists(values, min_size=size, max_size=size))
        total = math.fsum(raw)
        out.append([value / total for value in raw] if total > 0 else [1.0 / size] * size)
    return np.array(out, dtype=np.float32)


PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def check_prediction_shape(
    truncated: TruncatedTaxonomy,
    leaves: list[int],
    prediction: Prediction,
    top_k: int,
) -> None:
    """The properties every prediction has, whatever the head outputs."""
    # The answer is a path that exists, from the root down, on the chosen leaf's path.
    assert truncated.path_ids(prediction.category_id) == path_ids(prediction)
    assert tuple(range(1, len(prediction.path) + 1)) == tuple(n.level for n in prediction.path)
    leaf_path = truncated.path_ids(prediction.leaf_id)
    assert leaf_path[: len(prediction.path)] == path_ids(prediction)
    assert prediction.leaf_id in leaves
    assert prediction.path[-1].confidence == prediction.confidence
    # Confidences and probabilities are probabilities.
    assert all(0.0 <= node.confidence <= 1.0 for node in prediction.path)
    assert all(0.0 <= alt.probability <= 1.0 for alt in prediction.alternatives)
    # Alternatives: distinct leaves, most probable first, at most top_k, summing to <= 1.
    alternatives = prediction.alternatives
    probabilities = [alt.probability for alt in alternatives]
    assert min(top_k, len(leaves)) == len(alternatives)
    assert len(alternatives) == len({alt.leaf_id for alt in alternatives})
    assert set(leaves) >= {alt.leaf_id for alt in alternatives}
    assert sorted(probabilities, reverse=True) == probabilities
    assert math.fsum(probabilities) <= 1.0 + 1e-9


def check_abstention(
    prediction: Prediction, leaf_confidences: list[float], threshold: float
) -> None:
    """CLASSIFIED at the leaf when it clears the threshold, else the deepest node that does."""
    if leaf_confidences[-1] >= threshold:
        assert (CLASSIFIED, prediction.leaf_id) == (prediction.status, prediction.category_id)
        return
    clearing = [level for level, value in enumerate(leaf_confidences) if value >= threshold]
    expected_depth = (clearing[-1] if clearing else 0) + 1
    assert (LOW_CONFIDENCE, expected_depth) == (prediction.status, len(prediction.path))


class TestProperties:
    """For random head outputs every decoded answer is consistent with the taxonomy."""

    @pytest.mark.parametrize("case", ["small", "real"])
    @PROPERTY_SETTINGS
    @given(data=st.data(), threshold=st.floats(0.0, 1.0), top_k=st.integers(1, 20))
    def test_multi_head(
        self,
        cases: dict[str, tuple[TruncatedTaxonomy, Vocabulary]],
        case: str,
        data: st.DataObject,
        threshold: float,
        top_k: int,
    ) -> None:
        """Existing path, confidences in [0, 1], ranked alternatives, best brute-force score."""
        truncated, vocabulary = cases[case]
        batch = data.draw(st.integers(1, 3))
        probs = [data.draw(distributions(size, batch)) for size in vocabulary.sizes]
        leaves = brute_leaves(truncated, vocabulary)
        coder = Decoder(truncated, vocabulary, threshold=threshold, top_k=top_k)
        everything = Decoder(truncated, vocabulary, top_k=len(leaves)).decode_multi(probs)
        for row, prediction in enumerate(coder.decode_multi(probs)):
            check_prediction_shape(truncated, leaves, prediction, top_k)
            scores = {leaf: brute_score(truncated, vocabulary, probs, row, leaf) for leaf in leaves}
            assert max(scores.values()) == pytest.approx(scores[prediction.leaf_id], abs=1e-9)
            leaf_confidences = [
                brute_confidence(vocabulary, probs, row, level, node)
                for level, node in enumerate(truncated.path_ids(prediction.leaf_id), start=1)
            ]
            assert pytest.approx(leaf_confidences[: len(prediction.path)]) == [
                node.confidence for node in prediction.path
            ]
            check_abstention(prediction, leaf_confidences, threshold)
            # Every leaf's probability is exp(score) normalised over the leaves.
            total = math.fsum(math.exp(score) for score in scores.values())
            expected = {leaf: math.exp(score) / total for leaf, score in scores.items()}
            alternatives = everything[row].alternatives
            assert pytest.approx(expected, abs=1e-9) == {
                alt.leaf_id: alt.probability for alt in alternatives
            }
            assert math.fsum(alt.probability for alt in alternatives) <= 1.0 + 1e-9

    @pytest.mark.parametrize("case", ["small", "real"])
    @PROPERTY_SETTINGS
    @given(data=st.data(), threshold=st.floats(0.0, 1.0), top_k=st.integers(1, 20))
    def test_flat_head(
        self,
        cases: dict[str, tuple[TruncatedTaxonomy, Vocabulary]],
        case: str,
        data: st.DataObject,
        threshold: float,
        top_k: int,
    ) -> None:
        """Existing path, argmax leaf, level confidences equal to sums of leaf probabilities."""
        truncated, vocabulary = cases[case]
        leaves = brute_leaves(truncated, vocabulary)
        batch = data.draw(st.integers(1, 3))
        leaf_probs = data.draw(distributions(len(leaves), batch))
        coder = Decoder(truncated, vocabulary, threshold=threshold, top_k=top_k)
        levels = coder.level_confidences(leaf_probs)
        for row, prediction in enumerate(coder.decode_leaf(leaf_probs)):
            check_prediction_shape(truncated, leaves, prediction, top_k)
            best = float(leaf_probs[row].max())
            assert best == float(leaf_probs[row, leaves.index(prediction.leaf_id)])
            leaf_confidences = [
                brute_flat_confidence(truncated, leaves, leaf_probs, row, node)
                for node in truncated.path_ids(prediction.leaf_id)
            ]
            assert pytest.approx(leaf_confidences[: len(prediction.path)]) == [
                node.confidence for node in prediction.path
            ]
            check_abstention(prediction, leaf_confidences, threshold)
            expected = [
                brute_flat_confidence(truncated, leaves, leaf_probs, row, node)
                for level in vocabulary.levels
                for node in level
            ]
            assert pytest.approx(expected, abs=1e-6) == [
                value for level in levels for value in level[row].tolist()
            ]
