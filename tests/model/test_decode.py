"""Tests of model.decode: head outputs to a path that exists, confidences, abstention."""

import csv
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.decode import (
    CLASSIFIED,
    EPSILON,
    LOW_CONFIDENCE,
    Alternative,
    Decoder,
    PathNode,
    Prediction,
    Status,
)
from model.errors import ModelError
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary

# A small taxonomy, depth 3, with leaves at every depth:
#   1 A ── 2 B ── 3 H        level 1: A D G         (1, 6, 9)
#     │     └──── 4 I        level 2: B C E F       (2, 5, 7, 8)
#     └─ 5 C                 level 3: H I           (3, 4)
#   6 D ── 7 E               leaves:  H I C E F G   (3, 4, 5, 7, 8, 9)
#     └─ 8 F
#   9 G
SMALL = """\
# Google_Product_Taxonomy_Version: 2000-01-01
1 - A
2 - A > B
3 - A > B > H
4 - A > B > I
5 - A > C
6 - D
7 - D > E
8 - D > F
9 - G
"""
SMALL_LEAVES = (3, 4, 5, 7, 8, 9)

Probs = list[np.ndarray]


@pytest.fixture(scope="module")
def small() -> TruncatedTaxonomy:
    """The hand-made taxonomy SMALL cut at depth 3."""
    return Taxonomy.parse(SMALL, source="small.txt").truncate(3)


@pytest.fixture(scope="module")
def small_vocabulary(small: TruncatedTaxonomy) -> Vocabulary:
    """Every node of SMALL."""
    return Vocabulary.full(small)


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


def rows(*values: list[float]) -> np.ndarray:
    """A (batch, classes) float32 array of head outputs."""
    return np.array(values, dtype=np.float32)


def decoder(small: TruncatedTaxonomy, vocabulary: Vocabulary, **kwargs: Any) -> Decoder:
    """A decoder on SMALL."""
    return Decoder(small, vocabulary, **kwargs)


def path_ids(prediction: Prediction) -> tuple[int, ...]:
    """The ids along a prediction's path."""
    return tuple(node.id for node in prediction.path)


def rounded(value: float) -> float:
    """A confidence or probability rounded to 6 decimals, to compare with hand values."""
    return round(value, 6)


def rounded_path(prediction: Prediction) -> tuple[PathNode, ...]:
    """The prediction's path with its confidences rounded."""
    return tuple(replace(node, confidence=rounded(node.confidence)) for node in prediction.path)


def rounded_alternatives(prediction: Prediction) -> tuple[Alternative, ...]:
    """The prediction's alternatives with their probabilities rounded."""
    return tuple(
        alt._replace(probability=rounded(alt.probability)) for alt in prediction.alternatives
    )


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


class TestDecoderSetup:
    """Decoder(...): leaves, settings and their checks."""

    def test_leaves_are_the_vocabulary_leaves(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """The decoder scores every leaf of the vocabulary, shallower ones included."""
        assert SMALL_LEAVES == decoder(small, small_vocabulary).leaves

    def test_top_k_is_capped_at_the_leaf_count(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """Asking for more alternatives than leaves gives every leaf."""
        assert 6 == decoder(small, small_vocabulary, top_k=100).top_k

    def test_vocabulary_of_an_equal_taxonomy_object(self, small_vocabulary: Vocabulary) -> None:
        """A vocabulary built on another copy of the same taxonomy is accepted."""
        other = Taxonomy.parse(SMALL).truncate(3)
        assert small_vocabulary == Decoder(other, small_vocabulary).vocabulary

    def test_vocabulary_of_another_depth_is_refused(self, small_vocabulary: Vocabulary) -> None:
        """A vocabulary that does not fit the taxonomy raises ModelError."""
        with pytest.raises(ModelError):
            Decoder(Taxonomy.parse(SMALL).truncate(2), small_vocabulary)

    @pytest.mark.parametrize(
        "kwargs",
        [
            pytest.param({"threshold": -0.1}, id="threshold-negative"),
            pytest.param({"threshold": 1.1}, id="threshold-above-1"),
            pytest.param({"threshold": math.nan}, id="threshold-nan"),
            pytest.param({"threshold": True}, id="threshold-bool"),
            pytest.param({"threshold": "0.5"}, id="threshold-text"),
            pytest.param({"top_k": 0}, id="top-k-zero"),
            pytest.param({"top_k": 2.5}, id="top-k-fraction"),
            pytest.param({"top_k": True}, id="top-k-bool"),
        ],
    )
    def test_bad_settings_are_refused(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary, kwargs: dict[str, Any]
    ) -> None:
        """A threshold outside [0, 1] or a top_k below 1 or not whole raises ModelError."""
        with pytest.raises(ModelError):
            decoder(small, small_vocabulary, **kwargs)


class TestDecodeMulti:
    """Decoder.decode_multi on hand-made outputs with known answers."""

    # Per-level argmax is A, E, H: E is not under A and H not under E, so no such path.
    # Path products: H, I 0.6*0.05*0.5 = 0.015, C 0.6*0.05 = 0.03, E 0.4*0.9 = 0.36,
    # F and G ~ 0. The best existing path is D > E, with probability 0.36 / 0.42 = 6/7.
    INCONSISTENT = (
        rows([0.6, 0.4, 0.0]),
        rows([0.05, 0.05, 0.9, 0.0]),
        rows([0.5, 0.5]),
    )

    def test_decodes_an_existing_path_where_the_argmax_path_does_not_exist(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """The answer is D > E, the best path that exists, not the argmax path A > E > H."""
        (prediction,) = decoder(small, small_vocabulary).decode_multi(self.INCONSISTENT)
        expected = (
            CLASSIFIED,
            7,
            7,
            (PathNode(1, 6, "D", 0.4), PathNode(2, 7, "E", 0.9)),
            "D > E",
            "E",
        )
        assert expected == (
            prediction.status,
            prediction.category_id,
            prediction.leaf_id,
            rounded_path(prediction),
            prediction.path_string,
            prediction.name,
        )

    def test_alternatives_are_normalised_path_probabilities(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """The top alternatives are E (6/7) then C (1/14), with their path strings."""
        (prediction,) = decoder(small, small_vocabulary, top_k=2).decode_multi(self.INCONSISTENT)
        expected = (
            Alternative(7, "D > E", rounded(6 / 7)),
            Alternative(5, "A > C", rounded(1 / 14)),
        )
        assert expected == rounded_alternatives(prediction)

    def test_shallower_leaf_can_win(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """G, a leaf at level 1, wins with 0.6 over deeper paths of at most 0.05."""
        outputs = (rows([0.2, 0.2, 0.6]), rows([0.25, 0.25, 0.25, 0.25]), rows([0.5, 0.5]))
        (prediction,) = decoder(small, small_vocabulary, top_k=1).decode_multi(outputs)
        expected = (CLASSIFIED, 9, (9,), 0.6, (Alternative(9, "G", 0.75),))
        assert expected == (
            prediction.status,
            prediction.category_id,
            path_ids(prediction),
            rounded(prediction.confidence),
            rounded_alternatives(prediction),
        )

    def test_rows_decode_independently(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """Each row of a batch decodes on its own."""
        outputs = [
            np.concatenate([array, shallow])
            for array, shallow in zip(
                self.INCONSISTENT,
                (rows([0.2, 0.2, 0.6]), rows([0.25] * 4), rows([0.5, 0.5])),
                strict=True,
            )
        ]
        predictions = decoder(small, small_vocabulary).decode_multi(outputs)
        assert [7, 9] == [prediction.category_id for prediction in predictions]

    def test_to_record_follows_the_contract(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """to_record gives the category (id, name, path, path_string) and alternatives."""
        (prediction,) = decoder(small, small_vocabulary, top_k=1).decode_multi(self.INCONSISTENT)
        expected = {
            "category": {
                "id": 7,
                "name": "E",
                "path": [
                    {"level": 1, "id": 6, "name": "D", "confidence": 0.4},
                    {"level": 2, "id": 7, "name": "E", "confidence": 0.9},
                ],
                "path_string": "D > E",
            },
            "alternatives": [{"id": 7, "path": "D > E", "probability": rounded(6 / 7)}],
        }
        record = prediction.to_record()
        for node in record["category"]["path"]:
            node["confidence"] = rounded(node["confidence"])
        for alternative in record["alternatives"]:
            alternative["probability"] = rounded(alternative["probability"])
        assert expected == record

    def test_empty_batch_gives_no_predictions(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """A batch of no rows decodes to an empty list."""
        outputs = [np.zeros((0, size), dtype=np.float32) for size in small_vocabulary.sizes]
        assert [] == decoder(small, small_vocabulary).decode_multi(outputs)


class TestAbstention:
    """Below the threshold the decoder answers the deepest ancestor that clears it."""

    # I wins (0.9 * 0.6 * 0.55 = 0.297, H 0.243, C 0.18); its path confidences are
    # A 0.9, B 0.6, I 0.55.
    OUTPUTS = (rows([0.9, 0.05, 0.05]), rows([0.6, 0.2, 0.1, 0.1]), rows([0.45, 0.55]))

    @pytest.mark.parametrize(
        ("threshold", "status", "path", "confidence"),
        [
            pytest.param(0.0, CLASSIFIED, (1, 2, 4), 0.55, id="never-abstains-at-0"),
            pytest.param(0.5, CLASSIFIED, (1, 2, 4), 0.55, id="leaf-clears"),
            pytest.param(0.55, CLASSIFIED, (1, 2, 4), 0.55, id="equal-clears"),
            pytest.param(0.58, LOW_CONFIDENCE, (1, 2), 0.6, id="level-2-clears"),
            pytest.param(0.7, LOW_CONFIDENCE, (1,), 0.9, id="only-root-clears"),
            pytest.param(0.95, LOW_CONFIDENCE, (1,), 0.9, id="none-clears-root"),
        ],
    )
    def test_answers_the_deepest_node_that_clears(
        self,
        small: TruncatedTaxonomy,
        small_vocabulary: Vocabulary,
        threshold: float,
        status: Status,
        path: tuple[int, ...],
        confidence: float,
    ) -> None:
        """The status, path and confidence for thresholds around 0.9, 0.6 and 0.55."""
        coder = decoder(small, small_vocabulary, threshold=threshold)
        (prediction,) = coder.decode_multi(self.OUTPUTS)
        expected = (status, path[-1], 4, path, confidence)
        assert expected == (
            prediction.status,
            prediction.category_id,
            prediction.leaf_id,
            path_ids(prediction),
            rounded(prediction.confidence),
        )

    def test_alternatives_are_kept_when_abstaining(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """An abstained prediction still lists the best leaves, I first."""
        (prediction,) = decoder(small, small_vocabulary, threshold=0.7).decode_multi(self.OUTPUTS)
        assert 4 == prediction.alternatives[0].leaf_id

    def test_skips_a_low_middle_level(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """Path A 0.9 > B 0.45 > I 0.6 at threshold 0.61 falls back past B to A."""
        # Paths: I 0.9 * 0.45 * 0.6 = 0.243 beats H 0.162, G 0.05, C 0.045, E 0.02.
        outputs = (rows([0.9, 0.05, 0.05]), rows([0.45, 0.05, 0.4, 0.1]), rows([0.4, 0.6]))
        (prediction,) = decoder(small, small_vocabulary, threshold=0.61).decode_multi(outputs)
        assert (LOW_CONFIDENCE, 4, (1,)) == (
            prediction.status,
            prediction.leaf_id,
            path_ids(prediction),
        )


class TestDecodeLeaf:
    """Decoder.decode_leaf and level_confidences: the flat head, leaves H I C E F G."""

    LEAF = rows([0.1, 0.2, 0.15, 0.3, 0.05, 0.2])

    def test_level_confidences_are_sums_of_leaf_probabilities(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """Each node's confidence is the sum over the leaves beneath it, itself included."""
        levels = decoder(small, small_vocabulary).level_confidences(self.LEAF)
        expected = [[0.45, 0.35, 0.2], [0.3, 0.15, 0.3, 0.05], [0.1, 0.2]]
        for want, got in zip(expected, levels, strict=True):
            np.testing.assert_allclose([want], got, rtol=1e-6)

    def test_chooses_the_most_probable_leaf(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """E (0.3) wins; its path confidences are D 0.35 and E 0.3; ties keep leaf order."""
        (prediction,) = decoder(small, small_vocabulary, top_k=3).decode_leaf(self.LEAF)
        expected = (
            CLASSIFIED,
            (PathNode(1, 6, "D", 0.35), PathNode(2, 7, "E", 0.3)),
            (
                Alternative(7, "D > E", 0.3),
                Alternative(4, "A > B > I", 0.2),
                Alternative(9, "G", 0.2),
            ),
        )
        assert expected == (
            prediction.status,
            rounded_path(prediction),
            rounded_alternatives(prediction),
        )

    @pytest.mark.parametrize(
        ("threshold", "status", "path"),
        [
            (0.3, CLASSIFIED, (6, 7)),
            (0.32, LOW_CONFIDENCE, (6,)),
            (0.4, LOW_CONFIDENCE, (6,)),
        ],
    )
    def test_abstains_on_summed_confidences(
        self,
        small: TruncatedTaxonomy,
        small_vocabulary: Vocabulary,
        threshold: float,
        status: Status,
        path: tuple[int, ...],
    ) -> None:
        """The flat head abstains on the same rule, with summed confidences."""
        coder = decoder(small, small_vocabulary, threshold=threshold)
        (prediction,) = coder.decode_leaf(self.LEAF)
        assert (status, path) == (prediction.status, path_ids(prediction))


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


class TestErrors:
    """Outputs of the wrong shape or holding NaN, infinities or non-probabilities are refused."""

    @pytest.mark.parametrize(
        ("outputs", "message"),
        [
            pytest.param([rows([1.0, 0, 0]), rows([1.0, 0, 0, 0])], "expected 3", id="too-few"),
            pytest.param(
                [rows([1.0, 0, 0]), rows([1.0, 0, 0]), rows([1.0, 0])], "level_2", id="columns"
            ),
            pytest.param(
                [np.array([1.0, 0, 0]), rows([1.0, 0, 0, 0]), rows([1.0, 0])], "shape", id="1-d"
            ),
            pytest.param(
                [np.zeros((1, 1, 3)), rows([1.0, 0, 0, 0]), rows([1.0, 0])], "shape", id="3-d"
            ),
            pytest.param(
                [rows([math.nan, 0, 0]), rows([1.0, 0, 0, 0]), rows([1.0, 0])], "NaN", id="nan"
            ),
            pytest.param(
                [rows([1.0, 0, 0]), rows([math.inf, 0, 0, 0]), rows([1.0, 0])], "NaN", id="inf"
            ),
            pytest.param(
                [rows([1.0, 0, 0]), rows([1.0, 0, 0, 0]), rows([1.0, 0], [0, 1.0])],
                "batch sizes",
                id="batch-sizes",
            ),
            pytest.param(
                [rows([1.0, 0, 0]), rows([1.0, 0, 0, 0]), np.array([["a", "b"]])],
                "numbers",
                id="text",
            ),
            pytest.param(
                [rows([2.5, -1.0, 0.3]), rows([1.0, 0, 0, 0]), rows([1.0, 0])],
                r"\[0, 1\]",
                id="logits",
            ),
        ],
    )
    def test_bad_multi_outputs_are_refused(
        self,
        small: TruncatedTaxonomy,
        small_vocabulary: Vocabulary,
        outputs: list[Any],
        message: str,
    ) -> None:
        """decode_multi raises ModelError for a wrong count, shape, batch or value."""
        with pytest.raises(ModelError, match=message):
            decoder(small, small_vocabulary).decode_multi(outputs)

    @pytest.mark.parametrize(
        ("leaf_probs", "message"),
        [
            pytest.param(rows([0.5, 0.5]), "shape", id="width"),
            pytest.param(np.full(6, 1 / 6), "shape", id="1-d"),
            pytest.param(rows([math.nan, 0, 0, 0, 0, 1.0]), "NaN", id="nan"),
            pytest.param(rows([-0.5, 0, 0, 0, 0, 1.5]), r"\[0, 1\]", id="out-of-range"),
        ],
    )
    @pytest.mark.parametrize("method", ["decode_leaf", "level_confidences"])
    def test_bad_leaf_outputs_are_refused(
        self,
        small: TruncatedTaxonomy,
        small_vocabulary: Vocabulary,
        method: str,
        leaf_probs: Any,
        message: str,
    ) -> None:
        """decode_leaf and level_confidences raise ModelError for a wrong shape or value."""
        with pytest.raises(ModelError, match=message):
            getattr(decoder(small, small_vocabulary), method)(leaf_probs)

    def test_float_rounding_above_one_is_accepted(
        self, small: TruncatedTaxonomy, small_vocabulary: Vocabulary
    ) -> None:
        """A softmax value a rounding error above 1 decodes, its confidence capped at 1."""
        (prediction,) = decoder(small, small_vocabulary).decode_leaf(
            np.array([[0, 0, 0, 0, 0, 1.0 + 1e-7]])
        )
        assert (9, 1.0) == (prediction.category_id, prediction.confidence)
