"""Tests of model.build's losses and metrics: the masked loss, the masked accuracies and the
level weights."""

import itertools
import math
from typing import Any

import keras
import numpy as np
import pytest

from model.build import (
    MASK_LABEL,
    MaskedSparseCategoricalAccuracy,
    MaskedSparseCategoricalCrossentropy,
    MaskedSparseTopKCategoricalAccuracy,
    default_level_weights,
    parse_level_weights,
)
from model.errors import ModelError


def numpy(tensor: Any) -> np.ndarray:
    """A backend tensor as a numpy array."""
    return np.asarray(keras.ops.convert_to_numpy(tensor))


class TestMaskedLoss:
    """MaskedSparseCategoricalCrossentropy: the mean cross-entropy over unmasked samples."""

    PROBS = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.25, 0.25, 0.5]], dtype="float32"
    )
    LABELS = np.array([0, 1, MASK_LABEL, 2])

    def test_mean_over_unmasked_samples(self) -> None:
        """A masked sample is left out of the sum and of the count."""
        expected = -(math.log(0.7) + math.log(0.8) + math.log(0.5)) / 3
        actual = float(MaskedSparseCategoricalCrossentropy()(self.LABELS, self.PROBS))
        assert expected == pytest.approx(actual, rel=1e-6)

    def test_labels_of_shape_batch_by_one(self) -> None:
        """Labels shaped (batch, 1) give the same loss as (batch,)."""
        loss = MaskedSparseCategoricalCrossentropy()
        expected = float(loss(self.LABELS, self.PROBS))
        assert expected == pytest.approx(float(loss(self.LABELS[:, None], self.PROBS)))

    def test_sample_weights_weight_the_sum_not_the_count(self) -> None:
        """Sample weights scale each unmasked loss; the divisor stays the unmasked count."""
        weights = np.array([2.0, 1.0, 50.0, 1.0], dtype="float32")
        expected = -(2 * math.log(0.7) + math.log(0.8) + math.log(0.5)) / 3
        actual = float(MaskedSparseCategoricalCrossentropy()(self.LABELS, self.PROBS, weights))
        assert expected == pytest.approx(actual, rel=1e-6)

    def test_fully_masked_batch_is_zero_not_nan(self) -> None:
        """A batch with every sample masked has loss exactly 0."""
        labels = np.full(4, MASK_LABEL)
        assert 0.0 == float(MaskedSparseCategoricalCrossentropy()(labels, self.PROBS))

    def test_zero_probability_is_clipped(self) -> None:
        """A true class with probability 0 costs -log(epsilon), not infinity."""
        probs = np.array([[1.0, 0.0]], dtype="float32")
        expected = -math.log(keras.config.epsilon())
        actual = float(MaskedSparseCategoricalCrossentropy()(np.array([1]), probs))
        assert expected == pytest.approx(actual, rel=1e-5)

    def test_from_logits(self) -> None:
        """With from_logits=True the predictions are logits, softmaxed inside."""
        logits = np.log(self.PROBS)
        expected = float(MaskedSparseCategoricalCrossentropy()(self.LABELS, self.PROBS))
        actual = float(MaskedSparseCategoricalCrossentropy(from_logits=True)(self.LABELS, logits))
        assert expected == pytest.approx(actual, rel=1e-5)

    def test_call_gives_zero_for_masked_samples(self) -> None:
        """call() returns per-sample losses with 0 at the masked ones."""
        losses = numpy(MaskedSparseCategoricalCrossentropy().call(self.LABELS, self.PROBS))
        expected = [-math.log(0.7), -math.log(0.8), 0.0, -math.log(0.5)]
        np.testing.assert_allclose(expected, losses, rtol=1e-6)

    def test_masked_samples_get_no_gradient(self) -> None:
        """The gradient of the loss is 0 on every prediction of a masked sample."""
        if keras.backend.backend() != "tensorflow":
            pytest.skip("the gradient check uses tf.GradientTape")
        import tensorflow as tf

        probs = tf.Variable(self.PROBS)
        with tf.GradientTape() as tape:
            loss = MaskedSparseCategoricalCrossentropy()(self.LABELS, probs)
        gradient = tape.gradient(loss, probs).numpy()
        assert [0.0, 0.0, 0.0] == gradient[2].tolist()
        assert np.all(np.isfinite(gradient))
        assert np.any(gradient[0] != 0.0)

    def test_config_round_trip(self) -> None:
        """The loss serialises and deserialises with its settings."""
        loss = MaskedSparseCategoricalCrossentropy(from_logits=True, mask_label=-7, name="m")
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert (MaskedSparseCategoricalCrossentropy, True, -7, "m") == (
            type(again),
            again.from_logits,
            again.mask_label,
            again.name,
        )


class TestMaskedMetrics:
    """MaskedSparseCategoricalAccuracy and MaskedSparseTopKCategoricalAccuracy on hand batches."""

    # Row 3 ties classes 0 and 1: argmax takes 0.
    PROBS = np.array(
        [[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]], dtype="float32"
    )
    LABELS = np.array([1, 2, MASK_LABEL, 1])

    @staticmethod
    def result(metric: Any, labels: Any, probs: Any, weights: Any = None) -> float:
        """The metric's value after one batch."""
        metric.update_state(labels, probs, sample_weight=weights)
        return float(metric.result())

    @pytest.mark.parametrize(
        ("k", "expected"),
        [
            pytest.param(1, 1 / 3, id="top1"),
            pytest.param(2, 1.0, id="top2"),
            pytest.param(5, 1.0, id="k-above-classes"),
        ],
    )
    def test_top_k_over_unmasked_samples(self, k: int, expected: float) -> None:
        """Hits among the unmasked samples only; ties go to the lower class index."""
        metric = MaskedSparseTopKCategoricalAccuracy(k)
        assert expected == pytest.approx(self.result(metric, self.LABELS, self.PROBS))

    def test_accuracy_is_argmax_equals_label(self) -> None:
        """Accuracy is the share of unmasked samples whose argmax is the label."""
        metric = MaskedSparseCategoricalAccuracy()
        assert 1 / 3 == pytest.approx(self.result(metric, self.LABELS, self.PROBS))

    def test_uniform_prediction_is_not_always_right(self) -> None:
        """A uniform row counts as a hit only for class 0, as argmax would."""
        probs = np.full((3, 3), 1 / 3, dtype="float32")
        metric = MaskedSparseCategoricalAccuracy()
        assert 1 / 3 == pytest.approx(self.result(metric, np.array([0, 1, 2]), probs))

    def test_fully_masked_batch_gives_zero(self) -> None:
        """With no unmasked sample seen the result is 0, not NaN."""
        metric = MaskedSparseTopKCategoricalAccuracy(2)
        assert 0.0 == self.result(metric, np.full(4, MASK_LABEL), self.PROBS)

    def test_sample_weights_weight_hits_and_count(self) -> None:
        """Weights 1, 3, (masked), 1 with only the first a hit give 1 / 5."""
        weights = np.array([1.0, 3.0, 100.0, 1.0], dtype="float32")
        metric = MaskedSparseCategoricalAccuracy()
        assert 0.2 == pytest.approx(self.result(metric, self.LABELS, self.PROBS, weights))

    def test_labels_of_shape_batch_by_one(self) -> None:
        """Labels shaped (batch, 1) count like (batch,)."""
        metric = MaskedSparseCategoricalAccuracy()
        assert 1 / 3 == pytest.approx(self.result(metric, self.LABELS[:, None], self.PROBS))

    def test_batches_accumulate_and_reset(self) -> None:
        """Batches add up until reset_state, after which the result is 0."""
        metric = MaskedSparseCategoricalAccuracy()
        metric.update_state(self.LABELS, self.PROBS)
        metric.update_state(np.array([1]), np.array([[0.0, 1.0, 0.0]], dtype="float32"))
        accumulated = float(metric.result())
        metric.reset_state()
        assert (0.5, 0.0) == (round(accumulated, 6), float(metric.result()))

    def test_default_names(self) -> None:
        """Top-k is named top{k}_accuracy, the top-1 metric accuracy."""
        names = (
            MaskedSparseTopKCategoricalAccuracy().name,
            MaskedSparseTopKCategoricalAccuracy(3).name,
            MaskedSparseCategoricalAccuracy().name,
        )
        assert ("top5_accuracy", "top3_accuracy", "accuracy") == names

    @pytest.mark.parametrize("k", [0, -1, 2.5, True])
    def test_bad_k_is_refused(self, k: Any) -> None:
        """k must be a whole number >= 1: ModelError."""
        with pytest.raises(ModelError, match="k must be"):
            MaskedSparseTopKCategoricalAccuracy(k)

    @pytest.mark.parametrize("kwargs", [{"k": 2}, {"other": 1}])
    def test_accuracy_takes_no_other_k(self, kwargs: dict[str, Any]) -> None:
        """MaskedSparseCategoricalAccuracy refuses any k but 1 and unknown arguments."""
        with pytest.raises(ModelError):
            MaskedSparseCategoricalAccuracy(**kwargs)

    @pytest.mark.parametrize(
        "metric",
        [MaskedSparseTopKCategoricalAccuracy(3, mask_label=-2), MaskedSparseCategoricalAccuracy()],
        ids=["top3", "accuracy"],
    )
    def test_config_round_trip(self, metric: Any) -> None:
        """The metrics serialise and deserialise with their settings."""
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert (type(metric), metric.k, metric.mask_label, metric.name) == (
            type(again),
            again.k,
            again.mask_label,
            again.name,
        )


class TestLevelWeights:
    """default_level_weights and parse_level_weights: relative loss weights per level."""

    @pytest.mark.parametrize("depth", range(1, 8))
    def test_default_increases_with_depth_and_sums_to_depth(self, depth: int) -> None:
        """The default weights rise strictly level by level and average 1."""
        weights = default_level_weights(depth)
        assert (depth, True) == (len(weights), all(a < b for a, b in itertools.pairwise(weights)))
        assert depth == pytest.approx(sum(weights))

    def test_default_for_depth_four(self) -> None:
        """Depth 4 gets 0.4, 0.8, 1.2, 1.6."""
        assert pytest.approx((0.4, 0.8, 1.2, 1.6)) == default_level_weights(4)

    @pytest.mark.parametrize("depth", [0, -1, 2.0, True, "4"])
    def test_default_refuses_a_bad_depth(self, depth: Any) -> None:
        """The depth must be a whole number >= 1: ModelError."""
        with pytest.raises(ModelError, match="depth"):
            default_level_weights(depth)

    @pytest.mark.parametrize(
        ("text", "depth", "expected"),
        [
            ("1,2,3,4", 4, (0.4, 0.8, 1.2, 1.6)),
            ("1,1,1,1", 4, (1.0, 1.0, 1.0, 1.0)),
            (" 5 , 5 , 5 , 5 ", 4, (1.0, 1.0, 1.0, 1.0)),
            ("2,0,2,0", 4, (2.0, 0.0, 2.0, 0.0)),
            ("0.5,1.5", 2, (0.5, 1.5)),
            ("7", 1, (1.0,)),
            ("1e308,1e308,1e308", 3, (1.0, 1.0, 1.0)),
        ],
    )
    def test_parse_scales_to_sum_to_depth(
        self, text: str, depth: int, expected: tuple[float, ...]
    ) -> None:
        """Relative weights are scaled so that they sum to the depth; 0 is allowed."""
        assert pytest.approx(expected) == parse_level_weights(text, depth)

    def test_parse_of_the_default_ratio_is_the_default(self) -> None:
        """'1,2,3,4' at depth 4 equals default_level_weights(4)."""
        assert pytest.approx(default_level_weights(4)) == parse_level_weights("1,2,3,4", 4)

    @pytest.mark.parametrize(
        ("text", "depth", "message"),
        [
            pytest.param("1,2", 4, "2 value", id="too-few"),
            pytest.param("1,2,3,4,5", 4, "5 value", id="too-many"),
            pytest.param("", 4, "comma-separated", id="empty"),
            pytest.param("1,,2,3", 4, "comma-separated", id="blank-part"),
            pytest.param("a,b,c,d", 4, "comma-separated", id="not-numbers"),
            pytest.param("-1,1,1,1", 4, ">= 0", id="negative"),
            pytest.param("nan,1,1,1", 4, "finite", id="nan"),
            pytest.param("inf,1,1,1", 4, "finite", id="infinite"),
            pytest.param("0,0,0,0", 4, "> 0", id="all-zero"),
            pytest.param("1,2,3,4", 0, "depth", id="bad-depth"),
        ],
    )
    def test_parse_refuses_bad_text(self, text: str, depth: int, message: str) -> None:
        """A wrong count, a non-number, a negative or non-finite weight, all zeros: ModelError."""
        with pytest.raises(ModelError, match=message):
            parse_level_weights(text, depth)

    def test_parse_error_quotes_the_text(self) -> None:
        """The error message quotes the text it could not use."""
        with pytest.raises(ModelError, match="'1,2'"):
            parse_level_weights("1,2", 4)
