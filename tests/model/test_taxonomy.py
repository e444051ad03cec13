"""Tests of model.taxonomy: parsing, lookups, truncation and roll-ups of the Google taxonomy."""

import csv
from pathlib import Path

import pytest

from model.errors import TaxonomyError
from model.taxonomy import Category, LabelCoverage, Taxonomy, TruncatedTaxonomy

# A small taxonomy, depth 5, with a parent listed after its child (8 before 2).
# Tree:  1 A ── 2 B ── 3 C ── 4 D ── 5 E
#          │      └─ 8 H
#          └─ 6 F
#        7 G
SMALL = """\
# Google_Product_Taxonomy_Version: 2000-01-01
# a comment that is not the version

1 - A
8 - A > B > H
2 - A > B
3 - A > B > C
4 - A > B > C > D
5 - A > B > C > D > E
6 - A > F
7 - G
"""


def _location(error: BaseException) -> str:
    """Return the 'source:line' prefix of an error message."""
    return str(error).partition(": ")[0]


@pytest.fixture(scope="module")
def small() -> Taxonomy:
    """The hand-made taxonomy SMALL."""
    return Taxonomy.parse(SMALL, source="small.txt")


@pytest.fixture(scope="module")
def real(taxonomy_file: Path) -> Taxonomy:
    """The real Google Product Taxonomy, version 2021-09-21."""
    return Taxonomy.load(taxonomy_file)


@pytest.fixture(scope="module")
def image_labels(shared_data: Path) -> list[int]:
    """The google_category_id of every row of the shared product-image labels.csv."""
    with (shared_data / "product-images" / "labels.csv").open(newline="", encoding="utf-8") as file:
        return [int(row["google_category_id"]) for row in csv.DictReader(file)]


class TestCategory:
    """Category: depth and path string."""

    def test_depth_is_path_length(self) -> None:
        """A category's depth is the number of names in its path."""
        category = Category(id=3, name="C", path=("A", "B", "C"), parent_id=2)
        assert 3 == category.depth

    def test_path_string_joins_with_separator(self) -> None:
        """The path string joins the names with ' > ', as Google writes it."""
        category = Category(id=3, name="C", path=("A", "B", "C"), parent_id=2)
        assert "A > B > C" == category.path_string


class TestTaxonomyParse:
    """Taxonomy.parse: text to categories, with errors naming source and line."""

    def test_reads_version_from_header(self, small: Taxonomy) -> None:
        """The version header line gives the version."""
        assert "2000-01-01" == small.version

    def test_version_is_none_without_header(self) -> None:
        """Without a version header the version is None."""
        assert None is Taxonomy.parse("1 - A\n").version

    def test_reads_every_category_line(self, small: Taxonomy) -> None:
        """Comment and blank lines are skipped; every category line becomes a category."""
        assert [1, 8, 2, 3, 4, 5, 6, 7] == [category.id for category in small]

    def test_builds_category_with_parent(self, small: Taxonomy) -> None:
        """A category gets its name, path and parent id, even when the parent comes later."""
        expected = Category(id=8, name="H", path=("A", "B", "H"), parent_id=2)
        assert expected == small.category(8)

    def test_root_has_no_parent(self, small: Taxonomy) -> None:
        """A root category's parent id is None."""
        assert None is small.category(7).parent_id

    def test_accepts_iterable_of_lines(self) -> None:
        """An iterable of lines, with line endings, parses like the joined text."""
        taxonomy = Taxonomy.parse(["1 - A\n", "2 - A > B\r\n"])
        assert ("A", "B") == taxonomy.category(2).path

    def test_tolerates_byte_order_mark_and_spacing(self) -> None:
        """A leading byte-order mark and extra spaces around names are ignored."""
        taxonomy = Taxonomy.parse("\ufeff1 - A\n2  -  A  >  B  \n")
        assert ("A", "B") == taxonomy.category(2).path

    @pytest.mark.parametrize(
        ("damaged", "repaired"),
        [
            ("MadroГ±o", "Madroño"),
            ("PiГ±atas", "Piñatas"),
            ("Fencing Jackets & LamГ©s", "Fencing Jackets & Lamés"),
            ("Madroño", "Madroño"),
            ("Животные", "Животные"),
        ],
    )
    def test_repairs_double_encoded_names(self, damaged: str, repaired: str) -> None:
        """Names whose UTF-8 was read as cp1251 are repaired; sound names are left alone."""
        assert repaired == Taxonomy.parse(f"1 - {damaged}\n").category(1).name

    def test_repaired_child_finds_repaired_parent(self) -> None:
        """A damaged child line still finds its parent whether the parent line is damaged."""
        taxonomy = Taxonomy.parse("1 - Piñatas\n2 - PiГ±atas > Small\n")
        assert 1 == taxonomy.category(2).parent_id

    @pytest.mark.parametrize(
        ("text", "line"),
        [
            ("1 - A\nnot a category\n", 2),
            ("1 - A\n\n# comment\nx - A > B\n", 4),
            ("1 - A\n2 A > B\n", 2),
            ("1 - A\n2 - \n", 2),
            ("1 - A\n2 - A >  > B\n", 2),
            ("1 - A\n2 - A > B >\n", 2),
            ("-1 - A\n", 1),
        ],
    )
    def test_unparsable_line_names_source_and_line(self, text: str, line: int) -> None:
        """A line that is not 'ID - Name > ...' raises an error naming the source and line."""
        with pytest.raises(TaxonomyError) as caught:
            Taxonomy.parse(text, source="bad.txt")
        assert f"bad.txt:{line}" == _location(caught.value)

    def test_duplicate_id_names_second_line(self) -> None:
        """A repeated id raises an error naming the line of the repeat and the id."""
        with pytest.raises(TaxonomyError) as caught:
            Taxonomy.parse("# header\n1 - A\n2 - A > B\n2 - A > C\n", source="dup.txt")
        assert ("dup.txt:4", True) == (_location(caught.value), "id 2" in str(caught.value))

    def test_duplicate_path_names_second_line(self) -> None:
        """A repeated path under another id raises an error naming the line of the repeat."""
        with pytest.raises(TaxonomyError) as caught:
            Taxonomy.parse("1 - A\n2 - A > B\n3 - A > B\n", source="dup.txt")
        assert "dup.txt:3" == _location(caught.value)

    def test_missing_parent_names_child_line(self) -> None:
        """A path whose parent path has no line raises an error naming the child's line."""
        text = "1 - A\n2 - A > B\n3 - A > X > C\n4 - A > B > D\n"
        with pytest.raises(TaxonomyError) as caught:
            Taxonomy.parse(text, source="orphan.txt")
        assert ("orphan.txt:3", True) == (_location(caught.value), "'A > X'" in str(caught.value))

    def test_missing_parent_found_after_reading_all_lines(self) -> None:
        """The parent check runs after all lines, so the first orphan in file order is named."""
        text = "3 - A > B > C\n1 - A\n5 - Z > Y\n"
        with pytest.raises(TaxonomyError) as caught:
            Taxonomy.parse(text, source="orphan.txt")
        assert "orphan.txt:1" == _location(caught.value)


class TestTaxonomyLoad:
    """Taxonomy.load: a file on disk."""

    def test_loads_file_with_its_name_as_source(self, tmp_path: Path) -> None:
        """A file is read as UTF-8 and its path becomes the source."""
        file = tmp_path / "taxonomy.txt"
        file.write_text("# Google_Product_Taxonomy_Version: 1\n1 - Piñatas\n", encoding="utf-8")
        taxonomy = Taxonomy.load(file)
        assert (str(file), "1", "Piñatas") == (
            taxonomy.source,
            taxonomy.version,
            taxonomy.category(1).name,
        )

    def test_error_names_file_and_line(self, tmp_path: Path) -> None:
        """A parse error in a file names the file path and the line."""
        file = tmp_path / "taxonomy.txt"
        file.write_text("1 - A\n1 - B\n", encoding="utf-8")
        with pytest.raises(TaxonomyError) as caught:
            Taxonomy.load(file)
        assert f"{file}:2" == _location(caught.value)

    def test_invalid_utf8_names_file_and_line(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 raise an error naming the file and the line."""
        file = tmp_path / "taxonomy.txt"
        file.write_bytes(b"1 - A\n2 - A > B\n3 - A > Pi\xf1atas\n")
        with pytest.raises(TaxonomyError) as caught:
            Taxonomy.load(file)
        assert f"{file}:3" == _location(caught.value)

    def test_missing_file_raises_taxonomy_error(self, tmp_path: Path) -> None:
        """A file that cannot be read raises a TaxonomyError naming it."""
        file = tmp_path / "absent.txt"
        with pytest.raises(TaxonomyError) as caught:
            Taxonomy.load(file)
        assert str(file) == _location(caught.value)


class TestTaxonomyLookups:
    """Taxonomy lookups: by id, by path, children, path ids, ancestors, depth."""

    def test_len_and_contains(self, small: Taxonomy) -> None:
        """The taxonomy counts its categories and knows which ids it has."""
        assert (8, True, False) == (len(small), 5 in small, 9 in small)

    def test_depth_is_deepest_category(self, small: Taxonomy) -> None:
        """The depth is that of the deepest category."""
        assert 5 == small.depth

    def test_unknown_id_raises(self, small: Taxonomy) -> None:
        """Looking up an unknown id raises a TaxonomyError naming the source and the id."""
        with pytest.raises(TaxonomyError, match=r"^small\.txt: unknown category id 99$"):
            small.category(99)

    @pytest.mark.parametrize(
        ("path", "expected"),
        [("A > B > H", 8), (("A", "B", "H"), 8), (["G"], 7), ("A>F", 6)],
    )
    def test_by_path(self, small: Taxonomy, path: str | tuple[str, ...], expected: int) -> None:
        """A path, as a ' > ' string or a sequence of names, finds its category."""
        assert expected == small.by_path(path).id

    def test_unknown_path_raises(self, small: Taxonomy) -> None:
        """Looking up a path no category has raises a TaxonomyError."""
        with pytest.raises(TaxonomyError, match="no category at path 'A > Z'"):
            small.by_path("A > Z")

    @pytest.mark.parametrize(
        ("parent", "expected"),
        [(None, [1, 7]), (1, [2, 6]), (2, [3, 8]), (5, []), (7, [])],
    )
    def test_children_sorted_by_id(
        self, small: Taxonomy, parent: int | None, expected: list[int]
    ) -> None:
        """Children come sorted by id; None gives the roots; a leaf has none."""
        assert expected == [child.id for child in small.children(parent)]

    @pytest.mark.parametrize(
        ("category_id", "expected"),
        [(1, (1,)), (8, (1, 2, 8)), (5, (1, 2, 3, 4, 5)), (7, (7,))],
    )
    def test_path_ids(self, small: Taxonomy, category_id: int, expected: tuple[int, ...]) -> None:
        """The path ids run from the root down to the category itself."""
        assert expected == small.path_ids(category_id)

    @pytest.mark.parametrize(
        ("category_id", "level", "expected"),
        [(5, 1, 1), (5, 4, 4), (5, 5, 5), (8, 2, 2), (7, 2, None), (6, 3, None)],
    )
    def test_ancestor(
        self, small: Taxonomy, category_id: int, level: int, expected: int | None
    ) -> None:
        """The ancestor at a level is on the category's path, or None when it is shallower."""
        assert expected == small.ancestor(category_id, level)


class TestTruncate:
    """Taxonomy.truncate: nodes, leaves and per-level vocabularies."""

    @pytest.mark.parametrize(
        ("depth", "nodes", "leaves", "levels"),
        [
            (1, (1, 7), (1, 7), ((1, 7),)),
            (2, (1, 2, 6, 7), (2, 6, 7), ((1, 7), (2, 6))),
            (3, (1, 2, 3, 6, 7, 8), (3, 6, 7, 8), ((1, 7), (2, 6), (3, 8))),
            (5, (1, 2, 3, 4, 5, 6, 7, 8), (5, 6, 7, 8), ((1, 7), (2, 6), (3, 8), (4,), (5,))),
            (9, (1, 2, 3, 4, 5, 6, 7, 8), (5, 6, 7, 8), ((1, 7), (2, 6), (3, 8), (4,), (5,))),
        ],
    )
    def test_nodes_leaves_levels(
        self,
        small: Taxonomy,
        depth: int,
        nodes: tuple[int, ...],
        leaves: tuple[int, ...],
        levels: tuple[tuple[int, ...], ...],
    ) -> None:
        """Nodes are the categories down to the depth; leaves have no child among them."""
        truncated = small.truncate(depth)
        assert (nodes, leaves, levels) == (truncated.nodes, truncated.leaves, truncated.levels)

    def test_default_depth_is_four(self, small: Taxonomy) -> None:
        """Without an argument the taxonomy is cut at depth 4."""
        assert 4 == small.truncate().depth

    def test_depth_below_one_raises(self, small: Taxonomy) -> None:
        """A truncation depth below 1 is refused."""
        with pytest.raises(ValueError, match="at least 1"):
            small.truncate(0)


class TestTruncatedLookups:
    """TruncatedTaxonomy lookups: nodes by id, path and name; leaves; children."""

    @pytest.fixture
    def cut(self, small: Taxonomy) -> TruncatedTaxonomy:
        """SMALL cut at depth 2."""
        return small.truncate(2)

    def test_len_and_contains(self, cut: TruncatedTaxonomy) -> None:
        """The truncated taxonomy counts its nodes and knows which ids are nodes."""
        assert (4, True, False) == (len(cut), 6 in cut, 3 in cut)

    def test_category_and_name(self, cut: TruncatedTaxonomy) -> None:
        """A node's category and name come back by id."""
        assert (("A", "B"), "B") == (cut.category(2).path, cut.name(2))

    def test_id_for_path(self, cut: TruncatedTaxonomy) -> None:
        """A node's id comes back from its path."""
        assert 6 == cut.id_for_path("A > F")

    @pytest.mark.parametrize("category_id", [3, 5, 99])
    def test_category_below_cut_or_unknown_raises(
        self, cut: TruncatedTaxonomy, category_id: int
    ) -> None:
        """A category below the cut, or an unknown id, is not a node and raises."""
        with pytest.raises(TaxonomyError, match=f"small.txt: .*{category_id}"):
            cut.category(category_id)

    @pytest.mark.parametrize(("category_id", "expected"), [(1, False), (2, True), (7, True)])
    def test_is_leaf(self, cut: TruncatedTaxonomy, category_id: int, expected: bool) -> None:
        """A node at the cut depth, or one without children, is a leaf."""
        assert expected == cut.is_leaf(category_id)

    @pytest.mark.parametrize(
        ("parent", "expected"), [(None, (1, 7)), (1, (2, 6)), (2, ()), (7, ())]
    )
    def test_children(
        self, cut: TruncatedTaxonomy, parent: int | None, expected: tuple[int, ...]
    ) -> None:
        """Children stop at the cut depth; None gives the roots."""
        assert expected == cut.children(parent)


class TestLevelIndex:
    """TruncatedTaxonomy.level_index: a node's position in its level's vocabulary."""

    @pytest.mark.parametrize(
        ("level", "category_id", "expected"),
        [(1, 1, 0), (1, 7, 1), (2, 2, 0), (2, 6, 1), (3, 3, 0), (3, 8, 1)],
    )
    def test_position_in_sorted_level(
        self, small: Taxonomy, level: int, category_id: int, expected: int
    ) -> None:
        """The index is the node's position among its level's ids, sorted by id."""
        assert expected == small.truncate(3).level_index(level, category_id)

    @pytest.mark.parametrize(("level", "category_id"), [(1, 2), (3, 4), (2, 99)])
    def test_category_not_at_level_raises(
        self, small: Taxonomy, level: int, category_id: int
    ) -> None:
        """A category that is not a node at that level raises."""
        with pytest.raises(TaxonomyError, match=f"category {category_id} is not at level {level}"):
            small.truncate(3).level_index(level, category_id)

    @pytest.mark.parametrize("level", [0, 4])
    def test_level_out_of_range_raises(self, small: Taxonomy, level: int) -> None:
        """A level outside 1..depth is refused."""
        with pytest.raises(ValueError, match="level must be between 1 and 3"):
            small.truncate(3).level_index(level, 1)


class TestTruncateId:
    """TruncatedTaxonomy.truncate_id: any category to its node."""

    @pytest.mark.parametrize(
        ("depth", "category_id", "expected"),
        [(2, 5, 2), (2, 3, 2), (2, 8, 2), (2, 2, 2), (2, 6, 6), (2, 7, 7), (1, 5, 1), (4, 5, 4)],
    )
    def test_maps_to_ancestor_at_cut(
        self, small: Taxonomy, depth: int, category_id: int, expected: int
    ) -> None:
        """A deep category maps to its ancestor at the cut; a shallow one to itself."""
        assert expected == small.truncate(depth).truncate_id(category_id)

    def test_unknown_id_raises(self, small: Taxonomy) -> None:
        """An unknown id raises a TaxonomyError naming it."""
        with pytest.raises(TaxonomyError, match="unknown category id 99"):
            small.truncate(2).truncate_id(99)


class TestTruncatedPathIds:
    """TruncatedTaxonomy.path_ids: ids from the root down, cut at the depth."""

    @pytest.mark.parametrize(
        ("category_id", "expected"), [(5, (1, 2)), (8, (1, 2)), (6, (1, 6)), (7, (7,))]
    )
    def test_path_cut_at_depth(
        self, small: Taxonomy, category_id: int, expected: tuple[int, ...]
    ) -> None:
        """The path runs from the root down to the category's node."""
        assert expected == small.truncate(2).path_ids(category_id)


class TestTruncatedAncestor:
    """TruncatedTaxonomy.ancestor: the ancestor at a level within the cut."""

    @pytest.mark.parametrize(
        ("category_id", "level", "expected"),
        [(5, 1, 1), (5, 2, 2), (8, 2, 2), (6, 2, 6), (7, 1, 7), (7, 2, None), (1, 2, None)],
    )
    def test_ancestor_or_none(
        self, small: Taxonomy, category_id: int, level: int, expected: int | None
    ) -> None:
        """The ancestor at a level, or None when the category is shallower."""
        assert expected == small.truncate(2).ancestor(category_id, level)

    @pytest.mark.parametrize("level", [0, 3])
    def test_level_out_of_range_raises(self, small: Taxonomy, level: int) -> None:
        """A level outside 1..depth is refused."""
        with pytest.raises(ValueError, match="level must be between 1 and 2"):
            small.truncate(2).ancestor(5, level)


class TestSumUp:
    """TruncatedTaxonomy.sum_up: values rolled up into every node."""

    @pytest.mark.parametrize(
        ("depth", "values", "expected"),
        [
            (
                2,
                {5: 10.0, 3: 1.0, 8: 4.0, 1: 100.0, 6: 0.5, 7: 2.0},
                {1: 115.5, 2: 15.0, 6: 0.5, 7: 2.0},
            ),
            (
                3,
                {5: 10.0, 3: 1.0, 8: 4.0},
                {1: 15.0, 2: 15.0, 3: 11.0, 6: 0.0, 7: 0.0, 8: 4.0},
            ),
            (1, {}, {1: 0.0, 7: 0.0}),
        ],
    )
    def test_each_node_sums_itself_and_everything_beneath(
        self,
        small: Taxonomy,
        depth: int,
        values: dict[int, float],
        expected: dict[int, float],
    ) -> None:
        """Every node gets its own value plus those of all categories beneath it."""
        assert expected == small.truncate(depth).sum_up(values)

    def test_roots_total_equals_grand_total(self, small: Taxonomy) -> None:
        """No value is lost or counted twice: the roots add up to the sum of all values."""
        values = {category.id: float(category.id) for category in small}
        totals = small.truncate(2).sum_up(values)
        assert sum(values.values()) == totals[1] + totals[7]

    def test_unknown_id_raises_naming_it(self, small: Taxonomy) -> None:
        """A value for an id the taxonomy lacks raises a TaxonomyError naming the id."""
        with pytest.raises(TaxonomyError, match="unknown category id 42"):
            small.truncate(2).sum_up({5: 1.0, 42: 3.0})


class TestCoverage:
    """TruncatedTaxonomy.coverage: the nodes a set of labels reaches."""

    def test_labels_and_ancestors_per_level(self, small: Taxonomy) -> None:
        """Labels are truncated and deduplicated; each level lists the ancestors reached."""
        expected = LabelCoverage(labels=(2, 6), per_level=((1,), (2, 6)))
        assert expected == small.truncate(2).coverage([5, 3, 8, 6, 6, 2])

    def test_roots_and_counts(self, small: Taxonomy) -> None:
        """The coverage gives the roots reached and the count per level."""
        coverage = small.truncate(3).coverage([5, 7])
        assert ((1, 7), [2, 1, 1]) == (coverage.roots, coverage.counts)

    def test_unknown_label_raises(self, small: Taxonomy) -> None:
        """A label that is not a category raises a TaxonomyError naming it."""
        with pytest.raises(TaxonomyError, match="unknown category id 77"):
            small.truncate(2).coverage([5, 77])


class TestStats:
    """Taxonomy.stats and TruncatedTaxonomy.stats: summary figures."""

    def test_truncated_stats(self, small: Taxonomy) -> None:
        """The stats give version, category count, cut depth, nodes, leaves and level sizes."""
        expected = {
            "version": "2000-01-01",
            "categories": 8,
            "depth": 3,
            "nodes": 6,
            "leaves": 4,
            "per_level": [2, 2, 2],
        }
        assert expected == small.truncate(3).stats()

    def test_full_stats_without_depth(self, small: Taxonomy) -> None:
        """Without a depth the stats describe the whole tree."""
        expected = {
            "version": "2000-01-01",
            "categories": 8,
            "depth": 5,
            "nodes": 8,
            "leaves": 4,
            "per_level": [2, 2, 2, 1, 1],
        }
        assert expected == small.stats()


class TestRealTaxonomy:
    """The real Google Product Taxonomy file and the shared product-image labels."""

    def test_version_and_size(self, real: Taxonomy) -> None:
        """The real file is version 2021-09-21 with 5,595 categories, 21 roots, depth 7."""
        assert ("2021-09-21", 5595, 21, 7) == (
            real.version,
            len(real),
            len(real.children()),
            real.depth,
        )

    def test_stats_at_depth_four(self, real: Taxonomy) -> None:
        """Cut at depth 4 it has 3,765 nodes and 3,270 leaves in levels of 21/192/1349/2203."""
        expected = {
            "version": "2021-09-21",
            "categories": 5595,
            "depth": 4,
            "nodes": 3765,
            "leaves": 3270,
            "per_level": [21, 192, 1349, 2203],
        }
        assert expected == real.truncate(4).stats()

    def test_apples_truncate_to_fresh_and_frozen_fruits(self, real: Taxonomy) -> None:
        """Apples (6566, depth 5) map to Fresh & Frozen Fruits (5795) at depth 4."""
        truncated = real.truncate(4)
        assert (5, 5795, "Fresh & Frozen Fruits") == (
            real.category(6566).depth,
            truncated.truncate_id(6566),
            truncated.name(truncated.truncate_id(6566)),
        )

    def test_path_lookup(self, real: Taxonomy) -> None:
        """A real path string finds its category."""
        assert (
            6566
            == real.by_path(
                "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables"
                " > Fresh & Frozen Fruits > Apples"
            ).id
        )

    def test_labels_cover_two_roots_and_2_5_13_5_per_level(
        self, real: Taxonomy, image_labels: list[int]
    ) -> None:
        """At depth 4 the image labels reach 16 nodes under 2 roots, 2/5/13/5 per level."""
        coverage = real.truncate(4).coverage(image_labels)
        assert (16, 2, [2, 5, 13, 5]) == (
            len(coverage.labels),
            len(coverage.roots),
            coverage.counts,
        )

    def test_truncated_labels_are_the_leaves_of_what_they_reach(
        self, real: Taxonomy, image_labels: list[int]
    ) -> None:
        """No truncated label is an ancestor of another: the 16 are leaves of the covered tree."""
        truncated = real.truncate(4)
        labels = truncated.coverage(image_labels).labels
        ancestors = {
            node for label in labels for node in truncated.path_ids(label) if node != label
        }
        assert set() == ancestors & set(labels)

    def test_business_values_roll_up_without_loss(self, real: Taxonomy, shared_data: Path) -> None:
        """The shared business values summed up to the roots keep their grand total."""
        with (shared_data / "product-images" / "business-value.csv").open(
            newline="", encoding="utf-8"
        ) as f:
            values = {
                int(row["google_category_id"]): float(row["business_value"])
                for row in csv.DictReader(f)
            }
        truncated = real.truncate(4)
        totals = truncated.sum_up(values)
        assert sum(values.values()) == pytest.approx(
            sum(totals[root] for root in truncated.levels[0])
        )
