"""Tests of model.decode: head outputs to a path that exists, confidences, abstention (the
property tests on random outputs are in test_decode_properties.py)."""

import math
from typing import Any

import numpy as np
import pytest

from model.decode import (
    CLASSIFIED,
    LOW_CONFIDENCE,
    Alternative,
    Decoder,
    PathNode,
    Status,
)
from model.errors import ModelError
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary
from tests.support.decode import (
    SMALL,
    SMALL_LEAVES,
    decoder,
    path_ids,
    rounded,
    rounded_alternatives,
    rounded_path,
    rows,
)


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
