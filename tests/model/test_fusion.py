"""Tests of model.fusion: an image model's and a text model's leaf distributions, fused."""

from __future__ import annotations

import numpy as np
import pytest

from model.decode import Decoder
from model.errors import ModelError
from model.fusion import (
    FusionSettings,
    LateFusion,
    Scored,
    leaf_distribution,
    merged_taxonomy,
    scored_outputs,
)
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary

# Depth 3:  1 Food ── 2 Fruit ── 3 Apples       6 Apparel ── 7 Tops ── 8 Shirts
#                  │          └─ 4 Pears                          └─ 9 Blouses
#                  └─ 5 Bread                              └─ 10 Skirts
TAXONOMY = """\
# Google_Product_Taxonomy_Version: 2000-01-01
1 - Food
2 - Food > Fruit
3 - Food > Fruit > Apples
4 - Food > Fruit > Pears
5 - Food > Bread
6 - Apparel
7 - Apparel > Tops
8 - Apparel > Tops > Shirts
9 - Apparel > Tops > Blouses
10 - Apparel > Skirts
"""


@pytest.fixture
def truncated() -> TruncatedTaxonomy:
    return Taxonomy.parse(TAXONOMY).truncate(3)


def _vocabulary(truncated: TruncatedTaxonomy, leaves: list[int]) -> Vocabulary:
    """A vocabulary on a taxonomy of just its own nodes, as a model directory carries it."""
    full = Vocabulary.from_labels(truncated, leaves)
    own = Taxonomy(
        [truncated.category(node) for level in full.levels for node in level],
        version=truncated.taxonomy.version,
    ).truncate(3)
    return Vocabulary.from_json(full.to_json(), own)


def _row(vocabulary: Vocabulary, probs: dict[int, float]) -> np.ndarray:
    """A one-row leaf distribution over ``vocabulary``'s leaves."""
    row = np.array([probs.get(leaf, 0.0) for leaf in vocabulary.leaves], dtype=np.float64)
    return row[None, :] / row.sum()


def _best(fusion: LateFusion, fused: np.ndarray) -> int:
    return fusion.decoder.leaves[int(np.argmax(fused[0]))]


def test_text_settles_what_the_image_leaves_open(truncated: TruncatedTaxonomy) -> None:
    """Image torn between shirts and blouses, the title says blouse: the fused answer is
    blouses, with more confidence than either had."""
    image = _vocabulary(truncated, [3, 4, 5, 8, 9, 10])
    text = _vocabulary(truncated, [8, 9, 10])
    fusion = LateFusion(image, text)
    fused = fusion.fuse(
        _row(image, {8: 0.5, 9: 0.4, 10: 0.1}), _row(text, {8: 0.1, 9: 0.85, 10: 0.05})
    )
    assert 9 == _best(fusion, fused)
    assert fused[0].max() > 0.85


def test_text_cannot_drag_a_clear_image_into_its_own_domain(truncated: TruncatedTaxonomy) -> None:
    """A clothing-only text model, confident on a bread photo's odd title, does not beat an
    image that is sure of bread: categories the text never learnt keep the image's odds."""
    image = _vocabulary(truncated, [3, 4, 5, 8, 9, 10])
    text = _vocabulary(truncated, [8, 9, 10])
    fusion = LateFusion(image, text)
    image_row = _row(image, {5: 0.97, 8: 0.01, 9: 0.01, 10: 0.01})
    fused = fusion.fuse(image_row, _row(text, {8: 0.9, 9: 0.05, 10: 0.05}))
    assert 5 == _best(fusion, fused)


def test_zero_text_weight_is_the_image_alone(truncated: TruncatedTaxonomy) -> None:
    """With text_weight 0 the fused distribution is the image's, leaf for leaf."""
    image = _vocabulary(truncated, [3, 4, 5, 8, 9, 10])
    text = _vocabulary(truncated, [8, 9, 10])
    fusion = LateFusion(image, text, settings=FusionSettings(text_weight=0.0))
    image_row = _row(image, {3: 0.1, 4: 0.2, 5: 0.1, 8: 0.3, 9: 0.2, 10: 0.1})
    fused = fusion.fuse(image_row, _row(text, {9: 0.99, 8: 0.005, 10: 0.005}))
    np.testing.assert_allclose(fused, fusion.image_evidence(image_row), atol=1e-12)
    assert 8 == _best(fusion, fused)


def test_a_shallower_leaf_passes_its_evidence_down(truncated: TruncatedTaxonomy) -> None:
    """The image knows only 'Tops' where the text knows shirts and blouses: the image's Tops
    probability is shared between them and the text picks one."""
    image = _vocabulary(truncated, [3, 5, 7, 10])  # Tops is a leaf of the image model
    text = _vocabulary(truncated, [8, 9, 10])
    fusion = LateFusion(image, text)
    assert {3, 5, 8, 9, 10} == set(fusion.decoder.leaves)
    image_row = _row(image, {3: 0.05, 5: 0.05, 7: 0.8, 10: 0.1})
    evidence = fusion.image_evidence(image_row)
    share = dict(zip(fusion.decoder.leaves, evidence[0], strict=True))
    assert share[8] == pytest.approx(0.4)
    assert share[9] == pytest.approx(0.4)
    fused = fusion.fuse(image_row, _row(text, {8: 0.2, 9: 0.7, 10: 0.1}))
    assert 9 == _best(fusion, fused)


def test_decide_gives_predictions_on_the_union(truncated: TruncatedTaxonomy) -> None:
    """decide() answers a prediction per product, on a path of the union's taxonomy."""
    image = _vocabulary(truncated, [3, 4, 5])
    text = _vocabulary(truncated, [8, 9, 10])
    fusion = LateFusion(image, text, threshold=0.0)
    image_scored = Scored(prediction=None, leaves=_row(image, {3: 0.7, 4: 0.2, 5: 0.1})[0])  # type: ignore[arg-type]
    text_scored = Scored(prediction=None, leaves=_row(text, {8: 0.4, 9: 0.3, 10: 0.3})[0])  # type: ignore[arg-type]
    [prediction] = fusion.decide([image_scored], [text_scored])
    assert 3 == prediction.leaf_id
    assert "Food > Fruit > Apples" == prediction.path_string


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("depth", "depth"),
        ("path", "is 'Food > Fruit' in one model"),
        ("version", "different taxonomy versions"),
    ],
)
def test_models_that_cannot_be_fused_are_refused(
    truncated: TruncatedTaxonomy, change: str, message: str
) -> None:
    """Another depth, another path for the same id or another taxonomy version: ModelError."""
    image = _vocabulary(truncated, [3, 4, 5])
    if change == "depth":
        other = Vocabulary.from_labels(Taxonomy.parse(TAXONOMY).truncate(2), [7, 10])
    elif change == "path":
        renamed = TAXONOMY.replace("2 - Food > Fruit\n", "2 - Food > Fruits\n").replace(
            "Food > Fruit >", "Food > Fruits >"
        )
        other = Vocabulary.from_labels(Taxonomy.parse(renamed).truncate(3), [3])
    else:
        moved = TAXONOMY.replace("2000-01-01", "2001-01-01")
        other = Vocabulary.from_labels(Taxonomy.parse(moved).truncate(3), [8])
    with pytest.raises(ModelError, match=message):
        LateFusion(image, other)


def test_merged_taxonomy_holds_both_models_nodes(truncated: TruncatedTaxonomy) -> None:
    """The union taxonomy knows every node of both vocabularies and nothing else."""
    merged = merged_taxonomy(_vocabulary(truncated, [3]), _vocabulary(truncated, [8, 10]))
    assert {1, 2, 3, 6, 7, 8, 10} == {c.id for c in merged.taxonomy}


def test_leaf_distribution_of_a_multi_head_matches_its_alternatives(
    truncated: TruncatedTaxonomy,
) -> None:
    """A multi-head model's leaf distribution is what its alternatives report."""
    vocabulary = Vocabulary.from_labels(truncated, [3, 4, 5, 8, 9, 10])
    decoder = Decoder(truncated, vocabulary, top_k=6)
    rng = np.random.default_rng(0)
    outputs = {}
    for level, size in enumerate(vocabulary.sizes, start=1):
        raw = rng.random((2, size))
        outputs[f"level_{level}"] = (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)
    distribution = leaf_distribution(decoder, "multi", outputs)
    np.testing.assert_allclose(distribution.sum(axis=1), 1.0)
    scored = scored_outputs(decoder, "multi", outputs)
    for row, answer in enumerate(scored):
        reported = {a.leaf_id: a.probability for a in answer.prediction.alternatives}
        for leaf, probability in reported.items():
            column = decoder.leaves.index(leaf)
            assert probability == pytest.approx(distribution[row, column], rel=1e-5)


def test_a_negative_text_weight_is_refused() -> None:
    """FusionSettings refuses a weight below 0 or not finite."""
    with pytest.raises(ModelError, match="text_weight"):
        FusionSettings(text_weight=-1.0)
    with pytest.raises(ModelError, match="text_weight"):
        FusionSettings(text_weight=float("nan"))
