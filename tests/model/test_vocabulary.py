"""Tests of model.vocabulary: per-level label spaces, label encoding, leaves and JSON."""

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.errors import ModelError
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import MISSING, Vocabulary

# The vocabulary the shared product-image labels reach at depth 4, level by level.
LABEL_LEVELS = (
    (166, 412),
    (167, 187, 413, 422, 1604),
    (173, 203, 204, 207, 212, 418, 428, 430, 1581, 2271, 2887, 5724, 6797),
    (1954, 5598, 5787, 5793, 5795),
)
SHOES = 187  # Apparel & Accessories > Shoes: depth 2
CLOTHING = 1604  # Apparel & Accessories > Clothing: depth 2, labels beneath it
DRESSES = 2271  # ... > Clothing > Dresses: depth 3
APPLES = 6566  # Food ... > Fresh & Frozen Fruits > Apples: depth 5
FRESH_FRUITS = 5795  # Food ... > Fruits & Vegetables > Fresh & Frozen Fruits: depth 4
ANIMALS = 1  # Animals & Pet Supplies: a root no label reaches

# A small taxonomy, depth 3.  1 A ── 2 B ── 3 C
#                                 └─ 4 D
#                             5 E
SMALL = "1 - A\n2 - A > B\n3 - A > B > C\n4 - A > D\n5 - E\n"


@pytest.fixture(scope="module")
def taxonomy(taxonomy_file: Path) -> Taxonomy:
    """The real Google Product Taxonomy, version 2021-09-21."""
    return Taxonomy.load(taxonomy_file)


@pytest.fixture(scope="module")
def truncated(taxonomy: Taxonomy) -> TruncatedTaxonomy:
    """The real taxonomy cut at depth 4."""
    return taxonomy.truncate(4)


@pytest.fixture(scope="module")
def labels(shared_data: Path) -> list[int]:
    """The google_category_id of every row of the shared product-image labels.csv."""
    with (shared_data / "product-images" / "labels.csv").open(newline="", encoding="utf-8") as file:
        return [int(row["google_category_id"]) for row in csv.DictReader(file)]


@pytest.fixture(scope="module")
def vocabulary(truncated: TruncatedTaxonomy, labels: list[int]) -> Vocabulary:
    """The vocabulary of the shared labels at depth 4."""
    return Vocabulary.from_labels(truncated, labels)


@pytest.fixture(scope="module")
def small() -> TruncatedTaxonomy:
    """The hand-made taxonomy SMALL cut at depth 3."""
    return Taxonomy.parse(SMALL, source="small.txt").truncate(3)


class TestFromLabels:
    """Vocabulary.from_labels: the categories the labels reach and all their ancestors."""

    def test_level_sizes_of_the_shared_labels(self, vocabulary: Vocabulary) -> None:
        """At depth 4 the shared labels reach 2, 5, 13 and 5 categories per level."""
        assert (2, 5, 13, 5) == vocabulary.sizes

    def test_levels_of_the_shared_labels(self, vocabulary: Vocabulary) -> None:
        """Each level lists the ids it reaches, sorted."""
        assert LABEL_LEVELS == vocabulary.levels

    def test_depth_is_the_truncation_depth(self, vocabulary: Vocabulary) -> None:
        """The vocabulary has one level per level of the truncated taxonomy."""
        assert 4 == vocabulary.depth

    def test_closed_under_ancestors(
        self, vocabulary: Vocabulary, truncated: TruncatedTaxonomy
    ) -> None:
        """Every ancestor of every node is in the vocabulary at its level."""
        missing = [
            (level, ancestor)
            for level, nodes in enumerate(vocabulary.levels, start=1)
            for node in nodes
            for ancestor_level, ancestor in enumerate(truncated.path_ids(node), start=1)
            if ancestor not in vocabulary.levels[ancestor_level - 1]
        ]
        assert [] == missing

    def test_every_label_is_covered(self, vocabulary: Vocabulary, labels: list[int]) -> None:
        """Every label, deep ones truncated, encodes without error."""
        assert (len(labels), 4) == vocabulary.encode_many(labels).shape

    def test_leaves_are_the_nodes_without_a_child(
        self, vocabulary: Vocabulary, truncated: TruncatedTaxonomy
    ) -> None:
        """The leaves are the nodes no other node has as parent, a shallower one included."""
        nodes = {node for level in vocabulary.levels for node in level}
        parents = {truncated.category(node).parent_id for node in nodes}
        assert tuple(sorted(nodes - parents)) == vocabulary.leaves
        assert SHOES in vocabulary.leaves

    def test_repeats_and_order_do_not_matter(self, truncated: TruncatedTaxonomy) -> None:
        """Repeated labels in any order give the same vocabulary."""
        expected = Vocabulary.from_labels(truncated, [DRESSES, SHOES, APPLES])
        actual = Vocabulary.from_labels(truncated, [APPLES, SHOES, APPLES, DRESSES, SHOES])
        assert expected == actual

    def test_deep_label_is_truncated(self, truncated: TruncatedTaxonomy) -> None:
        """A label below the truncation depth brings its depth-4 ancestor, not itself."""
        vocabulary = Vocabulary.from_labels(truncated, [APPLES])
        assert ((412,), (422,), (430,), (FRESH_FRUITS,)) == vocabulary.levels

    @pytest.mark.parametrize(
        "labels",
        [
            pytest.param([], id="no-labels"),
            pytest.param([SHOES], id="too-shallow"),
            pytest.param([DRESSES, 999_999_999], id="unknown-id"),
        ],
    )
    def test_refuses_labels_that_leave_a_head_empty_or_are_unknown(
        self, truncated: TruncatedTaxonomy, labels: list[int]
    ) -> None:
        """No label reaching the last level, or an unknown id, raises ModelError."""
        with pytest.raises(ModelError):
            Vocabulary.from_labels(truncated, labels)


class TestFull:
    """Vocabulary.full: every node of the truncated taxonomy."""

    def test_sizes_equal_the_taxonomy_levels(self, truncated: TruncatedTaxonomy) -> None:
        """The full vocabulary at depth 4 has 21, 192, 1349 and 2203 categories per level."""
        assert (21, 192, 1349, 2203) == Vocabulary.full(truncated).sizes

    def test_levels_and_leaves_equal_the_taxonomy(self, truncated: TruncatedTaxonomy) -> None:
        """Its levels and leaves are the truncated taxonomy's own."""
        vocabulary = Vocabulary.full(truncated)
        assert (truncated.levels, truncated.leaves) == (vocabulary.levels, vocabulary.leaves)

    def test_shallow_taxonomy_is_refused(self) -> None:
        """A taxonomy shallower than the truncation depth leaves a level empty: ModelError."""
        with pytest.raises(ModelError, match="level 3"):
            Vocabulary.full(Taxonomy.parse("1 - A\n2 - A > B\n").truncate(3))


class TestConstruction:
    """Vocabulary(...): the checks every vocabulary passes."""

    def test_accepts_a_closed_vocabulary(self, small: TruncatedTaxonomy) -> None:
        """Levels closed under ancestors build; a shallower node without children is a leaf."""
        vocabulary = Vocabulary(small, ((1, 5), (2,), (3,)))
        assert (3, 5) == vocabulary.leaves

    @pytest.mark.parametrize(
        ("levels", "message"),
        [
            pytest.param(((1,), (2,)), "needs 3 levels", id="too-few-levels"),
            pytest.param(((1,), (2,), ()), "level 3 .* empty", id="empty-level"),
            pytest.param(((5, 1), (2,), (3,)), "not sorted", id="unsorted"),
            pytest.param(((1, 1), (2,), (3,)), "not sorted and unique", id="repeated"),
            pytest.param(((5,), (2,), (3,)), "without its parent 1", id="missing-parent"),
            pytest.param(((1,), (2, 3), (3,)), "at level 3", id="wrong-level"),
            pytest.param(((1,), (2,), (77,)), "77", id="unknown-id"),
        ],
    )
    def test_refuses_inconsistent_levels(
        self, small: TruncatedTaxonomy, levels: Any, message: str
    ) -> None:
        """Missing or empty levels, disorder, orphans, misplaced or unknown ids: ModelError."""
        with pytest.raises(ModelError, match=message):
            Vocabulary(small, levels)

    def test_node_below_the_cut_is_refused(self, taxonomy: Taxonomy) -> None:
        """A category deeper than the truncation depth is not a node: ModelError."""
        with pytest.raises(ModelError):
            Vocabulary(taxonomy.truncate(1), ((166, 187),))

    def test_equality_ignores_the_taxonomy_object(self) -> None:
        """Vocabularies with the same levels on two taxonomy objects are equal."""
        first = Taxonomy.parse(SMALL).truncate(3)
        second = Taxonomy.parse(SMALL).truncate(3)
        assert Vocabulary.full(first) == Vocabulary.full(second)

    def test_contains_nodes_of_every_level(self, vocabulary: Vocabulary) -> None:
        """`in` is true for a node of any level and false for anything else."""
        assert (True, True, True, False, False) == tuple(
            node in vocabulary for node in (166, SHOES, FRESH_FRUITS, ANIMALS, APPLES)
        )


class TestIndex:
    """Vocabulary.index: a node's position in its level's head."""

    @pytest.mark.parametrize(
        ("level", "node", "expected"),
        [(1, 166, 0), (1, 412, 1), (2, SHOES, 1), (3, DRESSES, 9), (4, FRESH_FRUITS, 4)],
    )
    def test_position_in_the_level(
        self, vocabulary: Vocabulary, level: int, node: int, expected: int
    ) -> None:
        """The index is the node's position among its level's sorted ids."""
        assert expected == vocabulary.index(level, node)

    def test_node_of_another_level_is_refused(self, vocabulary: Vocabulary) -> None:
        """A node asked for at another level raises ModelError."""
        with pytest.raises(ModelError, match="level 1"):
            vocabulary.index(1, SHOES)

    @pytest.mark.parametrize("level", [0, 5])
    def test_level_out_of_range_is_refused(self, vocabulary: Vocabulary, level: int) -> None:
        """Levels outside 1..depth raise ValueError."""
        with pytest.raises(ValueError, match="between 1 and 4"):
            vocabulary.index(level, 166)


class TestEncode:
    """Vocabulary.encode and encode_many: per-level label indices, -1 below a category."""

    @pytest.mark.parametrize(
        ("category", "expected"),
        [
            pytest.param(SHOES, (0, 1, MISSING, MISSING), id="shoes-depth-2"),
            pytest.param(418, (1, 2, 5, MISSING), id="milk-depth-3"),
            pytest.param(DRESSES, (0, 4, 9, MISSING), id="dresses-depth-3"),
            pytest.param(5598, (0, 4, 1, 1), id="coats-depth-4"),
            pytest.param(APPLES, (1, 3, 7, 4), id="apples-depth-5-truncated"),
            pytest.param(CLOTHING, (0, 4, MISSING, MISSING), id="inner-node"),
        ],
    )
    def test_label_indices_per_level(
        self, vocabulary: Vocabulary, category: int, expected: tuple[int, ...]
    ) -> None:
        """Each level gets the index of the category's ancestor there, -1 beyond its depth."""
        assert expected == vocabulary.encode(category)

    def test_missing_is_minus_one(self) -> None:
        """The masked label value is -1."""
        assert -1 == MISSING

    @pytest.mark.parametrize("category", [ANIMALS, 999_999_999])
    def test_uncovered_or_unknown_category_is_refused(
        self, vocabulary: Vocabulary, category: int
    ) -> None:
        """A category outside the vocabulary, or not in the taxonomy, raises ModelError."""
        with pytest.raises(ModelError):
            vocabulary.encode(category)

    def test_encode_many_stacks_rows(self, vocabulary: Vocabulary) -> None:
        """encode_many gives one int64 row of encode per category, in order."""
        actual = vocabulary.encode_many([SHOES, APPLES, SHOES])
        expected = np.array([[0, 1, -1, -1], [1, 3, 7, 4], [0, 1, -1, -1]], dtype=np.int64)
        assert (np.dtype(np.int64), expected.tolist()) == (actual.dtype, actual.tolist())

    def test_encode_many_of_nothing_is_empty(self, vocabulary: Vocabulary) -> None:
        """No categories give a (0, depth) array."""
        assert (0, 4) == vocabulary.encode_many([]).shape


class TestLeafIndex:
    """Vocabulary.leaf_index and leaf_indices: the flat head's label index."""

    @pytest.mark.parametrize(
        ("category", "leaf"),
        [(SHOES, SHOES), (DRESSES, DRESSES), (APPLES, FRESH_FRUITS), (5598, 5598)],
    )
    def test_position_among_the_leaves(
        self, vocabulary: Vocabulary, category: int, leaf: int
    ) -> None:
        """A category (truncated first) indexes its node's position among the leaves."""
        assert vocabulary.leaves.index(leaf) == vocabulary.leaf_index(category)

    @pytest.mark.parametrize("category", [166, CLOTHING, 430])
    def test_non_leaf_is_refused(self, vocabulary: Vocabulary, category: int) -> None:
        """A node with labels beneath it is not a leaf: ModelError."""
        with pytest.raises(ModelError, match="not a leaf"):
            vocabulary.leaf_index(category)

    def test_uncovered_category_is_refused(self, vocabulary: Vocabulary) -> None:
        """A category outside the vocabulary raises ModelError."""
        with pytest.raises(ModelError):
            vocabulary.leaf_index(ANIMALS)

    def test_leaf_indices_of_many(self, vocabulary: Vocabulary) -> None:
        """leaf_indices gives leaf_index of each category as int64, in order."""
        actual = vocabulary.leaf_indices([APPLES, SHOES, APPLES])
        leaves = vocabulary.leaves
        expected = [leaves.index(FRESH_FRUITS), leaves.index(SHOES), leaves.index(FRESH_FRUITS)]
        assert (np.dtype(np.int64), expected) == (actual.dtype, actual.tolist())


class TestJson:
    """Vocabulary.to_json and from_json: saved with the model, checked on load."""

    def test_round_trip_through_json_text(
        self, vocabulary: Vocabulary, truncated: TruncatedTaxonomy
    ) -> None:
        """to_json survives json text and from_json gives an equal vocabulary."""
        data = json.loads(json.dumps(vocabulary.to_json()))
        assert vocabulary == Vocabulary.from_json(data, truncated)

    def test_data_names_version_depth_ids_and_names(self, vocabulary: Vocabulary) -> None:
        """The data holds the taxonomy version, the depth and each level's ids and names."""
        data = vocabulary.to_json()
        assert ("2021-09-21", 4) == (data["taxonomy_version"], data["depth"])
        assert [{"id": 166, "name": "Apparel & Accessories"}] == data["levels"][0][:1]
        assert [list(level) for level in LABEL_LEVELS] == [
            [entry["id"] for entry in level] for level in data["levels"]
        ]

    def test_round_trip_onto_another_taxonomy_object(
        self, vocabulary: Vocabulary, taxonomy_file: Path
    ) -> None:
        """The data reads back onto a freshly loaded copy of the same taxonomy."""
        fresh = Taxonomy.load(taxonomy_file).truncate(4)
        assert vocabulary == Vocabulary.from_json(vocabulary.to_json(), fresh)

    def test_other_depth_is_refused(self, vocabulary: Vocabulary, taxonomy: Taxonomy) -> None:
        """Data of a depth-4 vocabulary on a taxonomy cut at 3 raises ModelError."""
        with pytest.raises(ModelError, match="depth 4"):
            Vocabulary.from_json(vocabulary.to_json(), taxonomy.truncate(3))

    def test_renamed_category_is_refused(
        self, vocabulary: Vocabulary, truncated: TruncatedTaxonomy
    ) -> None:
        """A category whose saved name differs from the taxonomy's raises ModelError."""
        data = vocabulary.to_json()
        data["levels"][1][1]["name"] = "Footwear"
        with pytest.raises(ModelError, match="Footwear"):
            Vocabulary.from_json(data, truncated)

    def test_other_taxonomy_version_is_refused(
        self, vocabulary: Vocabulary, truncated: TruncatedTaxonomy
    ) -> None:
        """Data built on another taxonomy version raises ModelError."""
        data = {**vocabulary.to_json(), "taxonomy_version": "2019-07-10"}
        with pytest.raises(ModelError, match="2019-07-10"):
            Vocabulary.from_json(data, truncated)

    def test_unknown_id_is_refused(
        self, vocabulary: Vocabulary, truncated: TruncatedTaxonomy
    ) -> None:
        """An id that is not a node of the taxonomy raises ModelError."""
        data = vocabulary.to_json()
        data["levels"][3].append({"id": 999_999_999, "name": "Nowhere"})
        with pytest.raises(ModelError, match="999999999"):
            Vocabulary.from_json(data, truncated)

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param({"depth": 4, "levels": []}, id="no-version"),
            pytest.param({"taxonomy_version": None, "depth": 4}, id="no-levels"),
            pytest.param(
                {"taxonomy_version": None, "depth": 4, "levels": [[{"id": 166}]]}, id="no-name"
            ),
            pytest.param(
                {"taxonomy_version": None, "depth": 4, "levels": [[{"id": "x", "name": "A"}]]},
                id="id-not-a-number",
            ),
            pytest.param([1, 2, 3], id="not-a-mapping"),
        ],
    )
    def test_malformed_data_is_refused(self, truncated: TruncatedTaxonomy, data: Any) -> None:
        """Data missing a field or of the wrong type raises ModelError."""
        with pytest.raises(ModelError, match="malformed"):
            Vocabulary.from_json(data, truncated)
