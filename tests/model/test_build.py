"""Tests of model.build: the heads, compiling, parameter counts (the masked loss and metrics and
the level weights are in test_build_losses.py)."""

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import keras
import numpy as np
import pytest

from model.build import (
    LEAF_HEAD,
    MASK_LABEL,
    build_model,
    compile_model,
    count_params,
    head_names,
    level_names,
)
from model.errors import ModelError

SIZE = 32  # image side: the tiny backbone's minimum, for speed
LEVEL_SIZES = (2, 3, 4)
LEAF_SIZE = 5
BATCH = 4


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
