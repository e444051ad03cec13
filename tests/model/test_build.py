"""Tests of model.build: the heads, the masked loss and metrics, level weights, compiling."""

import itertools
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import keras
import numpy as np
import pytest

from model.build import (
    LEAF_HEAD,
    MASK_LABEL,
    MaskedSparseCategoricalAccuracy,
    MaskedSparseCategoricalCrossentropy,
    MaskedSparseTopKCategoricalAccuracy,
    build_model,
    compile_model,
    count_params,
    default_level_weights,
    head_names,
    level_names,
    parse_level_weights,
)
from model.errors import ModelError

SIZE = 32  # image side: the tiny backbone's minimum, for speed
LEVEL_SIZES = (2, 3, 4)
LEAF_SIZE = 5
BATCH = 4


def numpy(tensor: Any) -> np.ndarray:
    """A backend tensor as a numpy array."""
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def images(count: int = BATCH, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB images of side SIZE."""
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype="uint8")


def hand_loss(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Masked cross-entropy by hand: sum of w * -log p[label] over unmasked rows / their count."""
    epsilon = keras.config.epsilon()
    total, count = 0.0, 0
    for row, label in enumerate(labels.reshape(-1).tolist()):
        if label == MASK_LABEL:
            continue
        weight = 1.0 if weights is None else float(weights[row])
        total += weight * -math.log(min(max(float(probs[row, label]), epsilon), 1 - epsilon))
        count += 1
    return total / max(count, 1)


def hand_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of unmasked rows whose argmax is the label, 0 when none is unmasked."""
    kept = labels != MASK_LABEL
    return float(np.mean(np.argmax(probs[kept], axis=1) == labels[kept])) if kept.any() else 0.0


@pytest.fixture(scope="module")
def multi() -> Any:
    """A tiny three-level model, heads of 2, 3 and 4 classes, built once for the module."""
    return build_model("tiny", LEVEL_SIZES, image_size=SIZE)


@pytest.fixture(scope="module")
def leaf() -> Any:
    """A tiny flat-baseline model with one head of LEAF_SIZE classes."""
    return build_model("tiny", LEVEL_SIZES, heads="leaf", leaf_size=LEAF_SIZE, image_size=SIZE)


@pytest.fixture(scope="module")
def multi_outputs(multi: Any) -> dict[str, np.ndarray]:
    """The multi model's predictions on images()."""
    return {head: np.asarray(value) for head, value in multi.predict(images(), verbose=0).items()}


@pytest.fixture
def policy() -> Iterator[None]:
    """Restores Keras' global dtype policy after a test that changes it."""
    before = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(before)


class TestNames:
    """level_names and head_names: how heads are called."""

    @pytest.mark.parametrize(
        ("depth", "expected"),
        [(1, ("level_1",)), (4, ("level_1", "level_2", "level_3", "level_4"))],
    )
    def test_level_names(self, depth: int, expected: tuple[str, ...]) -> None:
        """A depth-D model's heads are level_1 .. level_D."""
        assert expected == level_names(depth)

    def test_head_names_of_models(self, multi: Any, leaf: Any) -> None:
        """head_names lists a model's outputs: the level heads, or the single leaf head."""
        actual = (tuple(sorted(head_names(multi))), head_names(leaf))
        assert (level_names(3), (LEAF_HEAD,)) == actual


class TestBuildModel:
    """build_model: a backbone with one softmax head per level, or one flat leaf head."""

    def test_multi_has_one_head_per_level(self, multi_outputs: dict[str, np.ndarray]) -> None:
        """heads='multi' outputs level_k of shape (batch, size of level k)."""
        expected = {
            name: (BATCH, size) for name, size in zip(level_names(3), LEVEL_SIZES, strict=True)
        }
        assert expected == {head: value.shape for head, value in multi_outputs.items()}

    def test_leaf_has_a_single_flat_head(self, leaf: Any) -> None:
        """heads='leaf' outputs only `leaf`, of shape (batch, leaf_size)."""
        outputs = leaf.predict(images(), verbose=0)
        assert {LEAF_HEAD: (BATCH, LEAF_SIZE)} == {h: v.shape for h, v in outputs.items()}

    def test_heads_output_probabilities(self, multi_outputs: dict[str, np.ndarray]) -> None:
        """Every head outputs float32 rows of non-negative values summing to 1."""
        for value in multi_outputs.values():
            assert np.float32 == value.dtype
            assert np.all(value >= 0.0)
            np.testing.assert_allclose(np.ones(BATCH), value.sum(axis=1), rtol=1e-5)

    def test_input_is_uint8_images(self, multi: Any) -> None:
        """The model takes uint8 images of the asked size, as input `image`."""
        (tensor,) = multi.inputs
        assert ("uint8", (None, SIZE, SIZE, 3)) == (tensor.dtype, tuple(tensor.shape))

    def test_layers_are_input_backbone_dropout_heads(self, multi: Any) -> None:
        """The layers are the input, the backbone model, dropout and the heads."""
        expected = {"image", "tiny_backbone", "dropout", *level_names(3)}
        assert expected == {layer.name for layer in multi.layers}

    def test_head_widths_are_the_level_sizes(self, multi: Any) -> None:
        """Each level head is a softmax Dense layer over its level's classes."""
        heads = [multi.get_layer(name) for name in level_names(3)]
        assert [(size, "softmax") for size in LEVEL_SIZES] == [
            (head.units, head.activation.__name__) for head in heads
        ]

    def test_leaf_ignores_level_count_for_its_head(self, leaf: Any) -> None:
        """The flat model has no level heads at all."""
        assert not any(layer.name.startswith("level_") for layer in leaf.layers)

    @pytest.mark.parametrize("backbone", ["tiny", "mobilenet_v3_small"])
    def test_heads_sit_on_any_backbone(self, backbone: str) -> None:
        """The same heads go on any registered backbone."""
        model = build_model(backbone, (2, 3), image_size=SIZE, name="other")
        assert ("other", {"level_1": (None, 2), "level_2": (None, 3)}) == (
            model.name,
            {name: tuple(model.get_layer(name).output.shape) for name in level_names(2)},
        )

    def test_heads_compute_in_float32_under_mixed_precision(self, policy: None) -> None:
        """Under mixed_float16 the heads still output float32 probabilities."""
        keras.config.set_dtype_policy("mixed_float16")
        model = build_model("tiny", (2,), heads="leaf", leaf_size=3, image_size=SIZE)
        assert "float32" == model.get_layer(LEAF_HEAD).compute_dtype
        assert np.float32 == np.asarray(model.predict(images(1), verbose=0)[LEAF_HEAD]).dtype

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            pytest.param({"heads": "tree"}, "tree", id="unknown-heads"),
            pytest.param({"level_sizes": []}, "level_sizes", id="no-levels"),
            pytest.param({"level_sizes": [2, 0]}, "level_sizes", id="zero-classes"),
            pytest.param({"level_sizes": [2, 2.5]}, "level_sizes", id="fraction"),
            pytest.param({"level_sizes": [True, 2]}, "level_sizes", id="bool"),
            pytest.param({"level_sizes": "23"}, "level_sizes", id="string"),
            pytest.param({"level_sizes": 3}, "level_sizes", id="not-a-sequence"),
            pytest.param({"heads": "leaf"}, "leaf_size", id="leaf-without-size"),
            pytest.param({"heads": "leaf", "leaf_size": 0}, "leaf_size", id="leaf-size-0"),
            pytest.param({"dropout": 1.0}, "dropout", id="dropout-1"),
            pytest.param({"dropout": -0.1}, "dropout", id="dropout-negative"),
            pytest.param({"dropout": True}, "dropout", id="dropout-bool"),
            pytest.param({"name": ""}, "name", id="empty-name"),
            pytest.param({"backbone": "nope"}, "nope", id="unknown-backbone"),
        ],
    )
    def test_bad_arguments_are_refused(self, kwargs: dict[str, Any], message: str) -> None:
        """Bad heads, sizes, leaf size, dropout, name or backbone raise ModelError."""
        arguments: dict[str, Any] = {
            "backbone": "tiny",
            "level_sizes": LEVEL_SIZES,
            "image_size": SIZE,
            **kwargs,
        }
        with pytest.raises(ModelError, match=message):
            build_model(**arguments)


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


class TestCompileModel:
    """compile_model: masked losses per head, per-level loss weights, metrics, optimizer."""

    LABELS: ClassVar[dict[str, np.ndarray]] = {
        "level_1": np.array([0, 1, 1, 0]),
        "level_2": np.array([2, MASK_LABEL, 0, MASK_LABEL]),
        "level_3": np.array([3, MASK_LABEL, MASK_LABEL, 1]),
    }

    def evaluate(self, model: Any, labels: dict[str, np.ndarray]) -> dict[str, float]:
        """The model's evaluation on images() and `labels`, in one batch."""
        return dict(model.evaluate(images(), labels, batch_size=BATCH, verbose=0, return_dict=True))

    def test_total_loss_is_the_weighted_sum_of_masked_head_losses(
        self, multi: Any, multi_outputs: dict[str, np.ndarray]
    ) -> None:
        """With weights '3,2,1' (scaled to 1.5, 1, 0.5) the loss is their weighted sum."""
        compile_model(multi, level_weights=(3, 2, 1), learning_rate=1e-3, heads="multi")
        results = self.evaluate(multi, self.LABELS)
        heads = {name: hand_loss(multi_outputs[name], self.LABELS[name]) for name in level_names(3)}
        assert pytest.approx(heads, rel=1e-4) == {
            name: results[f"{name}_loss"] for name in level_names(3)
        }
        expected = 1.5 * heads["level_1"] + 1.0 * heads["level_2"] + 0.5 * heads["level_3"]
        assert expected == pytest.approx(results["loss"], rel=1e-4)

    def test_default_weights_increase_with_depth(
        self, multi: Any, multi_outputs: dict[str, np.ndarray]
    ) -> None:
        """Without level_weights the loss is weighted 0.5, 1, 1.5 at depth 3."""
        compile_model(multi, level_weights=None, learning_rate=1e-3, heads="multi")
        results = self.evaluate(multi, self.LABELS)
        heads = [hand_loss(multi_outputs[name], self.LABELS[name]) for name in level_names(3)]
        expected = 0.5 * heads[0] + 1.0 * heads[1] + 1.5 * heads[2]
        assert expected == pytest.approx(results["loss"], rel=1e-4)

    def test_fully_masked_level_adds_zero(
        self, multi: Any, multi_outputs: dict[str, np.ndarray]
    ) -> None:
        """A level masked for the whole batch has loss 0 and adds nothing to the total."""
        compile_model(multi, level_weights=None, learning_rate=1e-3, heads="multi")
        labels = {**self.LABELS, "level_3": np.full(BATCH, MASK_LABEL)}
        results = self.evaluate(multi, labels)
        expected = 0.5 * hand_loss(multi_outputs["level_1"], labels["level_1"]) + hand_loss(
            multi_outputs["level_2"], labels["level_2"]
        )
        assert 0.0 == results["level_3_loss"]
        assert expected == pytest.approx(results["loss"], rel=1e-4)

    def test_metrics_are_masked_and_named_per_head(
        self, multi: Any, multi_outputs: dict[str, np.ndarray]
    ) -> None:
        """Each head logs <head>_accuracy and <head>_top<k>_accuracy over unmasked samples."""
        compile_model(multi, level_weights=None, learning_rate=1e-3, heads="multi", top_k=2)
        results = self.evaluate(multi, self.LABELS)
        names = {"loss"} | {
            f"{head}_{metric}"
            for head in level_names(3)
            for metric in ("loss", "accuracy", "top2_accuracy")
        }
        accuracy = {h: hand_accuracy(multi_outputs[h], self.LABELS[h]) for h in level_names(3)}
        assert names == set(results)
        assert pytest.approx(accuracy) == {h: results[f"{h}_accuracy"] for h in level_names(3)}

    def test_leaf_model_has_one_unweighted_loss(self, leaf: Any) -> None:
        """The flat model's total loss is its single head's masked loss."""
        compile_model(leaf, level_weights=(9, 1, 1), learning_rate=1e-3, heads="leaf")
        labels = np.array([4, MASK_LABEL, 0, 2])
        probs = np.asarray(leaf.predict(images(), verbose=0)[LEAF_HEAD])
        results = dict(
            leaf.evaluate(
                images(), {LEAF_HEAD: labels}, batch_size=BATCH, verbose=0, return_dict=True
            )
        )
        assert hand_loss(probs, labels) == pytest.approx(results["loss"], rel=1e-4)

    def test_training_on_a_fully_masked_level_stays_finite(self, multi: Any) -> None:
        """A training step where one level is masked for every sample leaves finite weights."""
        compile_model(multi, level_weights=None, learning_rate=1e-2, heads="multi")
        labels = {**self.LABELS, "level_2": np.full(BATCH, MASK_LABEL)}
        history = multi.fit(images(), labels, batch_size=BATCH, epochs=1, verbose=0)
        assert math.isfinite(history.history["loss"][0])
        assert all(np.all(np.isfinite(weight.numpy())) for weight in multi.weights)

    def test_weights_follow_level_names_beyond_nine_levels(self) -> None:
        """With 11 levels (Keras orders outputs level_1, level_10, ...) weights go by name."""
        model = build_model("tiny", [2] * 11, image_size=SIZE, dropout=0.0)
        weights = [0.0] * 11
        weights[9] = 1.0  # only level_10 counts
        compile_model(model, level_weights=weights, learning_rate=1e-3, heads="multi")
        labels = {name: np.array([0, 1, 0, 1]) for name in level_names(11)}
        results = dict(
            model.evaluate(images(), labels, batch_size=BATCH, verbose=0, return_dict=True)
        )
        assert 11 * results["level_10_loss"] == pytest.approx(results["loss"], rel=1e-5)

    @pytest.mark.parametrize(
        ("weight_decay", "optimizer"), [(None, "Adam"), (0.01, "AdamW"), (0, "AdamW")]
    )
    def test_optimizer(self, multi: Any, weight_decay: float | None, optimizer: str) -> None:
        """Adam, or AdamW with the weight decay when one is given."""
        compile_model(
            multi,
            level_weights=None,
            learning_rate=1e-3,
            heads="multi",
            weight_decay=weight_decay,
        )
        assert optimizer == type(multi.optimizer).__name__

    @pytest.mark.parametrize(
        ("model_name", "kwargs", "message"),
        [
            pytest.param("multi", {"heads": "leaf"}, "does not match", id="multi-as-leaf"),
            pytest.param("leaf", {"heads": "multi"}, "does not match", id="leaf-as-multi"),
            pytest.param(
                "leaf",
                {"heads": "multi", "level_weights": (1, 2, 3, 4)},
                "does not match",
                id="leaf-as-multi-with-weights",
            ),
            pytest.param("multi", {"heads": "tree"}, "tree", id="unknown-heads"),
            pytest.param("multi", {"level_weights": (1, 2)}, "2 value", id="weight-count"),
            pytest.param("multi", {"level_weights": (1, -1, 1)}, ">= 0", id="negative-weight"),
            pytest.param("multi", {"level_weights": (1, "a", 1)}, "not a number", id="text"),
            pytest.param("multi", {"level_weights": (0, 0, 0)}, "> 0", id="all-zero"),
            pytest.param("multi", {"learning_rate": 0.0}, "learning_rate", id="lr-zero"),
            pytest.param("multi", {"learning_rate": math.nan}, "learning_rate", id="lr-nan"),
            pytest.param("multi", {"learning_rate": True}, "learning_rate", id="lr-bool"),
            pytest.param("multi", {"weight_decay": -0.1}, "weight_decay", id="wd-negative"),
            pytest.param("multi", {"weight_decay": True}, "weight_decay", id="wd-bool"),
            pytest.param("multi", {"top_k": 0}, "k must be", id="top-k-zero"),
        ],
    )
    def test_bad_arguments_are_refused(
        self,
        request: pytest.FixtureRequest,
        model_name: str,
        kwargs: dict[str, Any],
        message: str,
    ) -> None:
        """Heads not matching the model, bad weights, rate, decay or k raise ModelError."""
        arguments: dict[str, Any] = {
            "level_weights": None,
            "learning_rate": 1e-3,
            "heads": "multi",
            **kwargs,
        }
        with pytest.raises(ModelError, match=message):
            compile_model(request.getfixturevalue(model_name), **arguments)


class TestCountParams:
    """count_params: all parameters, or only the trainable ones."""

    def test_counts_all_and_trainable(self, multi: Any) -> None:
        """The counts equal the sizes of all weights and of the trainable weights."""
        every = sum(int(np.prod(weight.shape)) for weight in multi.weights)
        trainable = sum(int(np.prod(weight.shape)) for weight in multi.trainable_weights)
        assert (every, trainable) == (
            count_params(multi),
            count_params(multi, trainable_only=True),
        )
