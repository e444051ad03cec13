"""Head designs: the marginal head's level outputs are sums of its leaf probabilities."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from model.build import build_model, compile_model
from model.decode import Decoder
from model.errors import ModelError
from model.heads import LevelMarginal, attach_heads, decodes_from_leaf, loss_heads
from model.taxonomy import Taxonomy
from model.vocabulary import Vocabulary

# Shirts & tops (212, depth 3), skirts (1581, depth 3), shoes (187, depth 2), apples (6566,
# depth 5 -> 2889 fruits at depth 4) and bananas (6574 -> 2889): leaves at depths 2 to 4.
CATEGORIES = (212, 1581, 187, 6566, 6574, 5795)


@pytest.fixture(scope="module")
def vocabulary(taxonomy_file: Path) -> Vocabulary:
    """A depth-4 vocabulary over real categories whose leaves sit at different depths."""
    truncated = Taxonomy.load(taxonomy_file).truncate(4)
    return Vocabulary.from_labels(truncated, CATEGORIES)


def test_level_marginal_sums_leaf_probabilities_into_their_ancestors() -> None:
    """Each node gets the sum of its leaves; a leaf shallower than the level goes nowhere."""
    layer = LevelMarginal([0, 0, 1, -1], 2)
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 0.0]], dtype="float32")
    out = keras.ops.convert_to_numpy(layer(probs))
    np.testing.assert_allclose(out, [[0.3, 0.3], [0.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize(
    ("index", "size"),
    [([0, 2], 2), ([-2, 0], 2), ([0], 0)],
)
def test_level_marginal_refuses_indices_outside_the_level(index: list[int], size: int) -> None:
    """An ancestor index outside [-1, size) is a ModelError, not a silently wrong matrix."""
    with pytest.raises(ModelError, match="leaf_index"):
        LevelMarginal(index, size)


def test_marginal_model_outputs_consistent_levels_and_survives_saving(
    vocabulary: Vocabulary, tmp_path: Path
) -> None:
    """Level k of the marginal model is exactly the decoder's sum of leaves, after a reload."""
    paths = vocabulary.encode_many(vocabulary.leaves)
    model = build_model(
        "tiny",
        vocabulary.sizes,
        heads="marginal",
        leaf_size=len(vocabulary.leaves),
        image_size=32,
        leaf_paths=paths,
    )
    assert sorted(model.output_names) == ["leaf", "level_1", "level_2", "level_3", "level_4"]
    compile_model(model, level_weights=None, learning_rate=1e-3, heads="marginal")
    images = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    labels = [CATEGORIES[i % 6] for i in range(8)]
    targets = {f"level_{k + 1}": vocabulary.encode_many(labels)[:, k] for k in range(4)}
    targets["leaf"] = vocabulary.leaf_indices(labels)
    history = model.fit(images, targets, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    outputs = {k: np.asarray(v) for k, v in loaded.predict(images, verbose=0).items()}
    decoder = Decoder(vocabulary.truncated, vocabulary)
    expected = decoder.level_confidences(outputs["leaf"])
    for level in range(4):
        np.testing.assert_allclose(outputs[f"level_{level + 1}"], expected[level], atol=1e-5)
    for prediction in decoder.decode_leaf(outputs["leaf"]):
        ids = [node.id for node in prediction.path]
        assert ids == list(vocabulary.truncated.path_ids(prediction.leaf_id))


def test_marginal_head_needs_the_leaf_paths(vocabulary: Vocabulary) -> None:
    """Without leaf paths, or with paths of the wrong shape, the marginal head is refused."""
    features = keras.Input((8,))
    leaves = len(vocabulary.leaves)
    with pytest.raises(ModelError, match="leaf_paths"):
        attach_heads(features, heads="marginal", level_sizes=vocabulary.sizes, leaf_size=leaves)
    with pytest.raises(ModelError, match="shape"):
        attach_heads(
            features,
            heads="marginal",
            level_sizes=vocabulary.sizes,
            leaf_size=leaves,
            leaf_paths=np.zeros((leaves, 2), dtype=np.int64),
        )


@pytest.mark.parametrize(
    ("heads", "from_leaf", "losses"),
    [
        ("multi", False, ("level_1", "level_2", "level_3")),
        ("leaf", True, ("leaf",)),
        ("marginal", True, ("level_1", "level_2", "level_3", "leaf")),
    ],
)
def test_each_design_decodes_and_trains_on_its_own_outputs(
    heads: str, from_leaf: bool, losses: tuple[str, ...]
) -> None:
    """Flat and marginal decode from the leaf softmax; multi and marginal train the levels."""
    # The marginal design also trains its leaf output (half of its loss).
    assert decodes_from_leaf(heads) is from_leaf  # type: ignore[arg-type]
    assert loss_heads(heads, 3) == losses  # type: ignore[arg-type]
