"""Tests of model.metrics: every metric on hand-made examples, business values on the real data."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from model.errors import ModelError, TaxonomyError
from model.metrics import (
    DEFAULT_THRESHOLDS,
    OTHER,
    CalibrationBin,
    CoveragePoint,
    accuracy,
    calibration_bins,
    confusion_top,
    coverage_curve,
    expected_calibration_error,
    macro_accuracy,
    macro_f1,
    mean_tree_distance,
    node_values,
    per_class_recall,
    per_level_accuracy,
    read_business_values,
    read_business_values_many,
    topk_accuracy,
    tree_distance,
    weighted_accuracy,
)
from model.taxonomy import Taxonomy, TruncatedTaxonomy

# A hand-made taxonomy, depth 3.
# Tree:  1 A ── 2 B ── 3 C
#          └─ 4 D
#        5 E ── 6 F
SMALL = """\
1 - A
2 - A > B
3 - A > B > C
4 - A > D
5 - E
6 - E > F
"""

# Raw business values of SMALL's categories. Cut at depth 2, C (3) rolls up into B (2):
# B = 5 + 10 = 15, D = 20, F = 1, A = 15 + 20 = 35, E = 1.
SMALL_VALUES = {3: 10.0, 2: 5.0, 4: 20.0, 6: 1.0}

# Real taxonomy ids used in the hand examples.
APPAREL = 166  # Apparel & Accessories (depth 1)
CLOTHING = 1604  # Apparel & Accessories > Clothing (depth 2)
SHOES = 187  # Apparel & Accessories > Shoes (depth 2)
SHIRTS = 212  # Apparel & Accessories > Clothing > Shirts & Tops (depth 3)
DRESSES = 2271  # Apparel & Accessories > Clothing > Dresses (depth 3)
PET_SUPPLIES = 2  # Animals & Pet Supplies > Pet Supplies (depth 2)
ANIMALS = 1  # Animals & Pet Supplies (depth 1)
FRUITS = 5795  # Food ... > Fruits & Vegetables > Fresh & Frozen Fruits (depth 4)
APPLES = 6566  # ... > Fresh & Frozen Fruits > Apples (depth 5)


@pytest.fixture(scope="module")
def small() -> TruncatedTaxonomy:
    """SMALL cut at depth 2."""
    return Taxonomy.parse(SMALL, source="small.txt").truncate(2)


@pytest.fixture(scope="module")
def real(taxonomy_file: Path) -> TruncatedTaxonomy:
    """The real Google Product Taxonomy cut at depth 4, as the project uses it."""
    return Taxonomy.load(taxonomy_file).truncate(4)


@pytest.fixture(scope="module")
def business_file(shared_data: Path) -> Path:
    """The shared illustrative business values."""
    return shared_data / "product-images" / "business-value.csv"


def _write(tmp_path: Path, text: str) -> Path:
    """Write ``text`` to a CSV file in ``tmp_path`` and return its path."""
    path = tmp_path / "values.csv"
    path.write_text(text, encoding="utf-8")
    return path


class TestReadBusinessValues:
    """read_business_values: a validated id → value mapping, errors naming file and line."""

    def test_reads_ids_and_values(self, tmp_path: Path) -> None:
        """Each row gives its id and value, whatever the column order and extra columns."""
        path = _write(tmp_path, "business_value,note,google_category_id\n12.5,x,3\n0,y,7\n")
        assert {3: 12.5, 7: 0.0} == read_business_values(path)

    def test_header_only_gives_no_values(self, tmp_path: Path) -> None:
        """A file with a header and no rows gives an empty mapping."""
        path = _write(tmp_path, "google_category_id,business_value\n")
        assert {} == read_business_values(path)

    @pytest.mark.parametrize(
        ("text", "line", "reason"),
        [
            ("id,business_value\n1,2\n", 1, "missing google_category_id"),
            ("google_category_id,value\n1,2\n", 1, "missing business_value"),
            ("google_category_id,business_value\n1,2\n2,-1\n", 3, ">= 0, got '-1'"),
            ("google_category_id,business_value\n1,nan\n", 2, "finite number"),
            ("google_category_id,business_value\n1,2\n2,3\n3,inf\n", 4, "finite number"),
            ("google_category_id,business_value\n1,lots\n", 2, "got 'lots'"),
            ("google_category_id,business_value\n1\n", 2, "got None"),
            ("google_category_id,business_value\nshoes,2\n", 2, "whole number >= 1"),
            ("google_category_id,business_value\n0,2\n", 2, "whole number >= 1"),
            ("google_category_id,business_value\n5,1\n6,2\n5,3\n", 4, "first on line 2"),
        ],
    )
    def test_bad_row_names_file_and_line(
        self, tmp_path: Path, text: str, line: int, reason: str
    ) -> None:
        """A bad header or row raises ModelError starting 'file:line:' and saying why."""
        path = _write(tmp_path, text)
        with pytest.raises(ModelError) as caught:
            read_business_values(path)
        message = str(caught.value)
        assert message.startswith(f"{path}:{line}: ")
        assert reason in message

    def test_missing_file_names_file(self, tmp_path: Path) -> None:
        """A file that cannot be read raises ModelError naming it."""
        path = tmp_path / "absent.csv"
        with pytest.raises(ModelError, match=r"absent\.csv: cannot read"):
            read_business_values(path)

    def test_real_file_loads_every_row(self, business_file: Path) -> None:
        """The shared business-value file loads, one value per data row."""
        with business_file.open(newline="", encoding="utf-8") as stream:
            rows = {
                int(r["google_category_id"]): float(r["business_value"])
                for r in csv.DictReader(stream)
            }
        assert rows == read_business_values(business_file)


class TestNodeValues:
    """node_values: business values rolled up into the truncated tree."""

    def test_hand_example(self, small: TruncatedTaxonomy) -> None:
        """Every node gets its own value plus everything beneath it, deeper ids included."""
        assert {1: 35.0, 2: 15.0, 4: 20.0, 5: 1.0, 6: 1.0} == node_values(small, SMALL_VALUES)

    def test_node_without_values_gets_zero(self, small: TruncatedTaxonomy) -> None:
        """A node with no value on or beneath it gets 0.0."""
        assert 0.0 == node_values(small, {6: 1.0})[4]

    @pytest.mark.parametrize("node", [APPAREL, CLOTHING, SHIRTS, 430, FRUITS, ANIMALS])
    def test_real_values_roll_up(
        self, real: TruncatedTaxonomy, business_file: Path, node: int
    ) -> None:
        """A real node's value is the CSV sum over the categories whose path starts with its own."""
        prefix = real.category(node).path
        expected = 0.0
        with business_file.open(newline="", encoding="utf-8") as stream:
            for row in csv.DictReader(stream):
                path = real.taxonomy.category(int(row["google_category_id"])).path
                if path[: len(prefix)] == prefix:
                    expected += float(row["business_value"])
        values = node_values(real, read_business_values(business_file))
        assert expected == pytest.approx(values[node])

    def test_real_roots_add_up_to_the_file_total(
        self, real: TruncatedTaxonomy, business_file: Path
    ) -> None:
        """The roots' values add up to the sum of the whole file (nothing lost or counted twice)."""
        raw = read_business_values(business_file)
        values = node_values(real, raw)
        assert sum(raw.values()) == pytest.approx(sum(values[root] for root in real.levels[0]))


class TestAccuracy:
    """accuracy: the share of exact matches."""

    @pytest.mark.parametrize(
        ("true", "pred", "expected"),
        [
            ([1, 2, 3, 4], [1, 2, 3, 4], 1.0),
            ([1, 2, 3, 4], [1, 0, 3, 0], 0.5),
            ([7], [8], 0.0),
        ],
    )
    def test_share_of_matches(self, true: list[int], pred: list[int], expected: float) -> None:
        """Accuracy is matches divided by samples."""
        assert expected == accuracy(true, pred)

    def test_accepts_numpy_arrays(self) -> None:
        """Integer numpy arrays work like lists."""
        assert 0.5 == accuracy(np.array([1, 2]), np.array([1, 3]))

    @pytest.mark.parametrize(("true", "pred"), [([], []), ([1, 2], [1])])
    def test_empty_or_mismatched_is_an_error(self, true: list[int], pred: list[int]) -> None:
        """No samples, or sequences of different lengths, raise ModelError."""
        with pytest.raises(ModelError):
            accuracy(true, pred)


class TestTopkAccuracy:
    """topk_accuracy: the true class among the k most probable, masked labels left out."""

    PROBS = np.array(
        [
            [0.5, 0.3, 0.2],
            [0.5, 0.3, 0.2],
            [0.1, 0.1, 0.8],
            [0.1, 0.2, 0.7],
        ]
    )
    LABELS = np.array([0, 2, -1, 1])

    @pytest.mark.parametrize(("k", "expected"), [(1, 1 / 3), (2, 2 / 3), (3, 1.0), (10, 1.0)])
    def test_hand_example(self, k: int, expected: float) -> None:
        """Of the 3 unmasked samples, labels rank 0, 2 and 1: 1, 2 and 3 hits by k."""
        assert expected == pytest.approx(topk_accuracy(self.LABELS, self.PROBS, k))

    def test_all_masked_is_none(self) -> None:
        """With every label masked there is nothing to score: None."""
        assert None is topk_accuracy(np.array([-1, -1]), self.PROBS[:2], 1)

    def test_ties_go_to_the_lower_index(self) -> None:
        """A class tied with a lower-index class ranks after it, as argmax does."""
        probs = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]])
        assert 0.5 == topk_accuracy(np.array([0, 1]), probs, 1)

    @pytest.mark.parametrize(
        ("labels", "probs", "k"),
        [
            (np.array([0]), np.array([[1.0]]), 0),
            (np.array([3]), np.array([[0.5, 0.5]]), 1),
            (np.array([-2]), np.array([[0.5, 0.5]]), 1),
            (np.array([0, 1]), np.array([[0.5, 0.5]]), 1),
            (np.array([0.0]), np.array([[0.5, 0.5]]), 1),
        ],
    )
    def test_bad_input_is_an_error(self, labels: np.ndarray, probs: np.ndarray, k: int) -> None:
        """A bad k, a label out of range, float labels or mismatched shapes raise ModelError."""
        with pytest.raises(ModelError):
            topk_accuracy(labels, probs, k)


class TestMacroF1:
    """macro_f1: the mean per-class F1 over the classes true or predicted."""

    def test_hand_example(self) -> None:
        """Classes 1, 2, 3 have F1 2/3, 1/2 and 0, so the mean is 7/18."""
        # Class 1: TP 1, FP 0, FN 1 → 2/3. Class 2: TP 1, FP 2, FN 0 → 2/4.
        # Class 3: TP 0, FP 0, FN 1 → 0.
        assert 7 / 18 == pytest.approx(macro_f1([1, 1, 2, 3], [1, 2, 2, 2]))

    def test_class_only_predicted_counts(self) -> None:
        """A class that is predicted but never true is a class, with F1 0."""
        # Class 1: TP 1, FN 1 → 2/3; class 9: FP 1 → 0.
        assert 1 / 3 == pytest.approx(macro_f1([1, 1], [1, 9]))

    def test_perfect_is_one(self) -> None:
        """Every prediction right gives 1.0."""
        assert 1.0 == macro_f1([4, 5, 5, 6], [4, 5, 5, 6])

    @pytest.mark.parametrize(
        ("classes", "expected"),
        [
            ({1}, 2 / 3),  # class 9 (only predicted) is left out
            ({1, 9}, 1 / 3),  # the default's classes
            ({1, 7}, 1 / 3),  # class 7: no sample, no prediction: F1 0
        ],
    )
    def test_given_classes_are_the_mean(self, classes: set[int], expected: float) -> None:
        """With classes, the mean is over exactly those classes."""
        assert expected == pytest.approx(macro_f1([1, 1], [1, 9], classes=classes))

    def test_no_classes_is_an_error(self) -> None:
        """An empty class set raises ModelError."""
        with pytest.raises(ModelError, match="no classes"):
            macro_f1([1], [1], classes=[])

    def test_empty_is_an_error(self) -> None:
        """No samples raise ModelError."""
        with pytest.raises(ModelError):
            macro_f1([], [])


class TestWeightedAccuracy:
    """weighted_accuracy: accuracy with each sample weighted by its true node's value."""

    def test_hand_example(self, small: TruncatedTaxonomy) -> None:
        """True B, D, F (values 15, 20, 1); B and F right: (15 + 1) / (15 + 20 + 1)."""
        assert 16 / 36 == pytest.approx(
            weighted_accuracy([2, 4, 6], [2, 2, 6], small, SMALL_VALUES)
        )

    def test_deeper_ids_are_truncated(self, small: TruncatedTaxonomy) -> None:
        """C (depth 3) counts as its node B, on the true and the predicted side."""
        assert 16 / 36 == pytest.approx(
            weighted_accuracy([3, 4, 6], [3, 2, 6], small, SMALL_VALUES)
        )

    def test_zero_value_samples_do_not_count(self, small: TruncatedTaxonomy) -> None:
        """A sample whose true node has value 0 weighs nothing, right or wrong."""
        assert 1.0 == weighted_accuracy([2, 4], [2, 6], small, {2: 1.0})

    def test_numpy_inputs(self, small: TruncatedTaxonomy) -> None:
        """Integer numpy arrays work like lists."""
        true, pred = np.array([2, 4, 6]), np.array([2, 2, 6], dtype=np.int64)
        assert 16 / 36 == pytest.approx(weighted_accuracy(true, pred, small, SMALL_VALUES))

    def test_no_value_is_an_error(self, small: TruncatedTaxonomy) -> None:
        """When no sample's true node has a value, ModelError says so."""
        with pytest.raises(ModelError, match="no sample has a business value"):
            weighted_accuracy([4, 6], [4, 6], small, {2: 3.0})

    def test_empty_is_an_error(self, small: TruncatedTaxonomy) -> None:
        """No samples raise ModelError."""
        with pytest.raises(ModelError, match="no samples"):
            weighted_accuracy([], [], small, SMALL_VALUES)

    def test_unknown_id_is_a_taxonomy_error(self, small: TruncatedTaxonomy) -> None:
        """An id that is not a category raises TaxonomyError."""
        with pytest.raises(TaxonomyError):
            weighted_accuracy([99], [2], small, SMALL_VALUES)


class TestTreeDistance:
    """tree_distance: edges between two nodes through their lowest common ancestor."""

    @pytest.mark.parametrize(
        ("a", "b", "expected"),
        [
            (SHIRTS, SHIRTS, 0),  # same node
            (CLOTHING, SHIRTS, 1),  # parent and child
            (SHIRTS, CLOTHING, 1),  # child and parent
            (SHIRTS, DRESSES, 2),  # siblings
            (CLOTHING, SHOES, 2),  # siblings one level up
            (SHIRTS, SHOES, 3),  # via Apparel & Accessories
            (APPAREL, SHIRTS, 2),  # grandparent
            (SHIRTS, PET_SUPPLIES, 3 + 2),  # different roots: the sum of depths
            (APPAREL, ANIMALS, 1 + 1),  # two roots
            (APPLES, FRUITS, 0),  # Apples (depth 5) is cut to its depth-4 node
        ],
    )
    def test_real_taxonomy(self, real: TruncatedTaxonomy, a: int, b: int, expected: int) -> None:
        """Hand-counted distances on the real taxonomy cut at depth 4."""
        assert expected == tree_distance(real, a, b)

    def test_mean(self, real: TruncatedTaxonomy) -> None:
        """The mean over samples of 0, 1 and 5 edges is 2."""
        true = [SHIRTS, CLOTHING, SHIRTS]
        pred = [SHIRTS, SHIRTS, PET_SUPPLIES]
        assert 2.0 == mean_tree_distance(real, true, pred)


class TestPerLevelAccuracy:
    """per_level_accuracy: ancestors compared level by level over samples deep enough."""

    def test_hand_example(self, small: TruncatedTaxonomy) -> None:
        """Level 1: all 4 roots right; level 2: of B, D, F only B is right (F's pred is a root)."""
        # true B, D, E, F → roots A, A, E, E; pred B, B, F, E → roots A, A, E, E.
        # Level 2 skips E (depth 1): B→B right, D→B wrong, F→E (too shallow) wrong.
        assert [1.0, pytest.approx(1 / 3)] == per_level_accuracy(
            small, [2, 4, 5, 6], [2, 2, 6, 5], 2
        )

    def test_level_no_true_node_reaches_is_none(self) -> None:
        """Levels deeper than every true node are None."""
        deep = Taxonomy.parse(SMALL, source="small.txt").truncate(3)
        assert [0.5, 0.5, None] == per_level_accuracy(deep, [2, 4], [3, 6], 3)

    def test_bad_depth_is_an_error(self, small: TruncatedTaxonomy) -> None:
        """A depth below 1 raises ModelError."""
        with pytest.raises(ModelError):
            per_level_accuracy(small, [2], [2], 0)


class TestConfusionTop:
    """confusion_top: the most valuable true categories against the predictions."""

    # True B 3 times, D twice, F 4 times (values 15, 20, 1).
    # With n=2 the rows are D then B; F is left out.
    TRUE = (2, 2, 2, 4, 4, 6, 6, 6, 6)
    PRED = (2, 4, 6, 4, 1, 6, 6, 6, 2)

    def test_hand_example(self, small: TruncatedTaxonomy) -> None:
        """Rows by value, columns the same plus 'other', counts and row shares by hand."""
        confusion = confusion_top(small, self.TRUE, self.PRED, SMALL_VALUES, n=2)
        assert (4, 2) == confusion.ids
        assert (4, 2, OTHER) == confusion.columns
        assert ("D", "B") == confusion.names
        assert (20.0, 15.0) == confusion.values
        assert [[1, 0, 1], [1, 1, 1]] == confusion.counts.tolist()
        np.testing.assert_allclose([[0.5, 0.0, 0.5], [1 / 3, 1 / 3, 1 / 3]], confusion.normalised)

    def test_ties_by_id_and_fewer_rows_than_n(self, small: TruncatedTaxonomy) -> None:
        """Equal values are ordered by id; n above the true categories present gives them all."""
        confusion = confusion_top(small, [6, 4, 2], [6, 4, 2], {4: 1.0, 2: 1.0}, n=50)
        assert (2, 4, 6) == confusion.ids
        assert [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]] == confusion.counts.tolist()

    def test_deeper_ids_are_truncated(self, small: TruncatedTaxonomy) -> None:
        """A true C (depth 3) is a row of B; a predicted C counts in B's column."""
        confusion = confusion_top(small, [3, 3], [3, 4], SMALL_VALUES, n=1)
        assert (2,) == confusion.ids
        assert [[1, 1]] == confusion.counts.tolist()

    def test_write_csv(self, small: TruncatedTaxonomy, tmp_path: Path) -> None:
        """The CSV has the header, then one row per true category, shares to 4 decimals."""
        path = tmp_path / "confusion.csv"
        confusion_top(small, self.TRUE, self.PRED, SMALL_VALUES, n=2).write_csv(path)
        with path.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
        assert [
            ["true_id", "true_name", "value", "D (4)", "B (2)", "other"],
            ["4", "D", "20", "0.5000", "0.0000", "0.5000"],
            ["2", "B", "15", "0.3333", "0.3333", "0.3333"],
        ] == rows

    @pytest.mark.parametrize("n", [0, -3])
    def test_bad_n_is_an_error(self, small: TruncatedTaxonomy, n: int) -> None:
        """n below 1 raises ModelError."""
        with pytest.raises(ModelError):
            confusion_top(small, [2], [2], SMALL_VALUES, n=n)


class TestCoverageCurve:
    """coverage_curve: the share kept and its accuracy as the threshold rises."""

    def test_hand_example(self) -> None:
        """Confidences 0.9, 0.6, 0.3, 0.1 (first two right) at thresholds 0, 0.5, 0.95."""
        points = coverage_curve([0.9, 0.6, 0.3, 0.1], [True, True, False, False], [0.0, 0.5, 0.95])
        assert [
            CoveragePoint(0.0, 1.0, 0.5),
            CoveragePoint(0.5, 0.5, 1.0),
            CoveragePoint(0.95, 0.0, None),
        ] == points

    def test_threshold_equal_to_confidence_keeps(self) -> None:
        """A sample whose confidence equals the threshold is kept."""
        assert [CoveragePoint(0.85, 0.5, 0.0)] == coverage_curve(
            np.array([0.85, 0.2]), np.array([False, True]), [0.85]
        )

    def test_default_thresholds(self) -> None:
        """The default thresholds run 0.0 to 1.0 in steps of 0.05."""
        points = coverage_curve([0.5], [True])
        assert 21 == len(points)
        assert DEFAULT_THRESHOLDS == tuple(point.threshold for point in points)
        assert math.isclose(0.05, points[1].threshold)
        assert 1.0 == points[-1].threshold

    @pytest.mark.parametrize(("confidences", "correct"), [([], []), ([0.5], [True, False])])
    def test_empty_or_mismatched_is_an_error(
        self, confidences: list[float], correct: list[bool]
    ) -> None:
        """No samples, or sequences of different lengths, raise ModelError."""
        with pytest.raises(ModelError):
            coverage_curve(confidences, correct)


class TestReadBusinessValuesMany:
    """read_business_values_many: several files merged, disagreements refused."""

    def test_merges_files_and_accepts_agreeing_repeats(self, tmp_path: Path) -> None:
        """Categories of every file are kept; one listed twice with the same value is fine."""
        first = tmp_path / "a.csv"
        first.write_text("google_category_id,business_value\n1,10\n2,20\n")
        second = tmp_path / "b.csv"
        second.write_text("google_category_id,business_value\n2,20\n3,30\n")
        assert {1: 10.0, 2: 20.0, 3: 30.0} == read_business_values_many([first, second])

    def test_one_path_reads_like_read_business_values(self, business_file: Path) -> None:
        """A single path, bare or in a list, gives the same mapping as the one-file reader."""
        expected = read_business_values(business_file)
        assert expected == read_business_values_many(business_file)
        assert expected == read_business_values_many([business_file])

    def test_disagreement_names_both_files(self, tmp_path: Path) -> None:
        """A category with two values raises ModelError naming the category and both files."""
        first = tmp_path / "a.csv"
        first.write_text("google_category_id,business_value\n2,20\n")
        second = tmp_path / "b.csv"
        second.write_text("google_category_id,business_value\n2,25\n")
        with pytest.raises(ModelError) as caught:
            read_business_values_many([first, second])
        message = str(caught.value)
        assert "category 2" in message
        assert str(first) in message
        assert str(second) in message

    def test_the_two_shared_files_agree(self, shared_data: Path, business_file: Path) -> None:
        """The shared product-images and fashion-products values merge without conflict."""
        fashion = shared_data / "fashion-products" / "business-value.csv"
        merged = read_business_values_many([business_file, fashion])
        assert read_business_values(business_file).items() <= merged.items()
        assert read_business_values(fashion).items() <= merged.items()

    def test_no_files_is_an_error(self) -> None:
        """An empty list raises ModelError."""
        with pytest.raises(ModelError, match="no business-value files"):
            read_business_values_many([])


class TestMacroAccuracy:
    """per_class_recall and macro_accuracy: balanced accuracy over the true classes."""

    @pytest.mark.parametrize(
        ("true", "pred", "recalls", "expected"),
        [
            # Class 1: 1 of 2 right; class 2: 1 of 1; class 3: 0 of 1.
            ([1, 1, 2, 3], [1, 2, 2, 2], {1: 0.5, 2: 1.0, 3: 0.0}, 0.5),
            # A big class right and a small one wrong: micro 0.9, macro 0.5.
            ([1] * 9 + [2], [1] * 10, {1: 1.0, 2: 0.0}, 0.5),
            # Predictions of a class with no sample (9) do not make it a class.
            ([1, 1], [1, 9], {1: 0.5}, 0.5),
            ([4, 5, 5], [4, 5, 5], {4: 1.0, 5: 1.0}, 1.0),
        ],
    )
    def test_hand_examples(
        self, true: list[int], pred: list[int], recalls: dict[int, float], expected: float
    ) -> None:
        """Each true class's recall, and their unweighted mean."""
        assert recalls == per_class_recall(true, pred)
        assert expected == pytest.approx(macro_accuracy(true, pred))

    def test_empty_is_an_error(self) -> None:
        """No samples raise ModelError."""
        with pytest.raises(ModelError):
            macro_accuracy([], [])


class TestCalibration:
    """calibration_bins and expected_calibration_error: 15 equal-width bins by default."""

    @pytest.mark.parametrize(
        ("confidences", "correct", "expected"),
        [
            # One bin (0.867, 0.933]: accuracy 3/4, confidence 0.9 → 0.15.
            ([0.9, 0.9, 0.9, 0.9], [1, 1, 1, 0], 0.15),
            # Bins (0.133, 0.2] and (0.733, 0.8], half the samples each: 0.5*0.2 + 0.5*0.2.
            ([0.2, 0.2, 0.8, 0.8], [0, 0, 1, 1], 0.2),
            # Confidence equals accuracy in its bin: perfectly calibrated.
            ([0.5, 0.5], [1, 0], 0.0),
            # Bin (0.933, 1]: confidence 0.975, accuracy 1 → 0.025; bin [0, 0.067]: 0.01, 0 →
            # 0.01; weighted by 2/4 each.
            ([1.0, 0.95, 0.0, 0.02], [1, 1, 0, 0], (0.025 + 0.01) / 2),
            # Everything wrong at full confidence is the worst case.
            ([1.0, 1.0, 1.0], [0, 0, 0], 1.0),
        ],
    )
    def test_hand_examples(
        self, confidences: list[float], correct: list[int], expected: float
    ) -> None:
        """The ECE is the count-weighted mean of |accuracy - confidence| over the bins."""
        assert expected == pytest.approx(expected_calibration_error(confidences, correct))

    def test_bins_hold_their_edges(self) -> None:
        """Bin b holds (b/15, (b+1)/15]: 0 and 1/15 go to the first, 0.2 to (2/15, 3/15]."""
        table = calibration_bins([0.0, 1 / 15, 0.2, 1.0], [True, False, True, True])
        assert 15 == len(table)
        assert [2, 0, 1] == [entry.count for entry in table[:3]]
        assert CalibrationBin(0.0, 1 / 15, 2, 1 / 30, 0.5) == table[0]
        assert 1 == table[-1].count
        assert table[5] == CalibrationBin(5 / 15, 6 / 15, 0, None, None)

    def test_one_bin_is_the_gap_of_the_means(self) -> None:
        """With a single bin the ECE is |mean accuracy - mean confidence|."""
        # Mean confidence 0.8, accuracy 2/3.
        assert 0.8 - 2 / 3 == pytest.approx(
            expected_calibration_error([0.9, 0.7, 0.8], [1, 0, 1], bins=1)
        )

    @pytest.mark.parametrize(
        ("confidences", "correct", "bins", "message"),
        [
            ([], [], 15, "no samples"),
            ([0.5], [1, 0], 15, "one each per sample"),
            ([1.2], [1], 15, r"\[0, 1\]"),
            ([-0.1], [1], 15, r"\[0, 1\]"),
            ([math.nan], [1], 15, r"\[0, 1\]"),
            ([0.5], [1], 0, "bins"),
        ],
    )
    def test_bad_input_is_an_error(
        self, confidences: list[float], correct: list[int], bins: int, message: str
    ) -> None:
        """No samples, mismatched lengths, confidences outside [0, 1] or no bins: ModelError."""
        with pytest.raises(ModelError, match=message):
            expected_calibration_error(confidences, correct, bins=bins)
