"""Evaluation metrics of the category classifier, in plain numpy over taxonomy ids.

Category ids are Google Product Taxonomy ids. Functions that take a
:class:`~model.taxonomy.TruncatedTaxonomy` map every id they are given to its node with
``truncate_id`` first, so ids deeper than the cut work too. The definitions, exactly
(``n`` is the number of samples, ``t_i`` the true and ``p_i`` the predicted id of sample ``i``):

- **business values** (:func:`read_business_values`): a CSV of ``google_category_id,
  business_value``, one illustrative purchase volume per category, finite and ``>= 0``.
  :func:`read_business_values_many` merges several such files; a category may be in more
  than one only with the same value.
- **node value** (:func:`node_values`): ``v(N)`` = the sum of the business values of ``N``
  and of every category beneath ``N`` in the full taxonomy; 0 when none has a value.
- **accuracy** (:func:`accuracy`): ``#{i : t_i = p_i} / n``.
- **top-k accuracy** (:func:`topk_accuracy`): over the samples whose label is not -1, the
  share whose label ``t`` ranks below ``k``, where the rank of ``t`` is the number of
  classes with a higher probability plus the number of lower-index classes with the same
  one (ties broken by index as ``argmax`` does, like the Keras metric of
  :mod:`model.build`). ``None`` when every label is -1.
- **macro-F1** (:func:`macro_f1`): the unweighted mean over the classes ``C`` that occur
  among the true or the predicted ids of ``F1(c) = 2 TP / (2 TP + FP + FN)`` (equal to the
  harmonic mean of precision and recall, and 0 when ``TP = 0``). A class that is neither
  true nor predicted for any sample is not a class. Given ``classes``, the mean is over
  those classes only (``enrich evaluate`` passes the true classes, so a class with no
  sample is left out; predictions of it still count as misses of the true class).
- **per-class recall** (:func:`per_class_recall`): for each true class ``c``,
  ``#{i : t_i = c = p_i} / #{i : t_i = c}``. **Macro accuracy** (:func:`macro_accuracy`,
  balanced accuracy) is its unweighted mean over the true classes: every class weighs the
  same however many samples it has; a class with no sample is not in the mean.
- **business-value-weighted accuracy** (:func:`weighted_accuracy`):
  ``sum_i v(t_i) [t_i = p_i] / sum_i v(t_i)``: accuracy where every sample weighs its true
  node's value, so a miss on a valuable category costs more.
- **tree distance** (:func:`tree_distance`): the number of edges on the path between two
  nodes through their lowest common ancestor, ``depth(a) + depth(b) - 2 depth(lca)``; nodes
  under different roots meet at a virtual root of depth 0, so their distance is
  ``depth(a) + depth(b)``. :func:`mean_tree_distance` is its mean over the samples.
- **per-level accuracy** (:func:`per_level_accuracy`): at level ``k``, over the samples
  whose true node is at depth ``>= k``, the share whose predicted node has the same
  ancestor at level ``k`` as the true node; a prediction shallower than ``k`` is wrong.
  ``None`` for a level no true node reaches.
- **top confusion** (:func:`confusion_top`): counts of (true, predicted) over the samples
  whose true node is one of the ``n`` most valuable true nodes present (by ``v``, then id);
  a prediction outside those ``n`` counts in a final "other" column. Rows are normalised
  to sum to 1.
- **coverage curve** (:func:`coverage_curve`): for each threshold ``θ``, coverage is the
  share of samples with confidence ``>= θ`` (those the service would not abstain on) and
  accuracy is the share of those that are correct (``None`` when there are none).
- **calibration** (:func:`calibration_bins`, :func:`expected_calibration_error`): the
  confidences are put in ``B`` (default 15) equal-width bins, bin ``b`` holding the
  confidences in ``(b/B, (b+1)/B]`` (a confidence of 0 goes in the first bin); per bin its
  mean confidence and its accuracy (share correct). ``ECE = sum_b (n_b / n) |acc_b -
  conf_b|`` over the non-empty bins: 0 when confidence matches the hit rate.

Every function raises :class:`~model.errors.ModelError` for input it cannot score (no
samples, sequences of different lengths); an id that is not a category raises
:class:`~model.errors.TaxonomyError`.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from model.errors import ModelError
from model.taxonomy import TruncatedTaxonomy

__all__ = [
    "DEFAULT_THRESHOLDS",
    "OTHER",
    "CalibrationBin",
    "ConfusionTop",
    "CoveragePoint",
    "Ids",
    "accuracy",
    "calibration_bins",
    "confusion_top",
    "coverage_curve",
    "expected_calibration_error",
    "macro_accuracy",
    "macro_f1",
    "mean_tree_distance",
    "node_values",
    "per_class_recall",
    "per_level_accuracy",
    "read_business_values",
    "read_business_values_many",
    "topk_accuracy",
    "tree_distance",
    "weighted_accuracy",
]

Ids = Sequence[int] | NDArray[np.integer[Any]]
"""Category ids, one per sample: a list of ints or an integer numpy array."""

OTHER = -1
"""The id of the confusion matrix's last column: predictions outside its rows."""

MASK_LABEL = -1
"""The label of a sample that a head has no target for (too shallow for that level)."""

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(step * 0.05, 2) for step in range(21))
"""0.0, 0.05, ..., 1.0: rounded, so that a confidence of exactly 0.85 meets the threshold 0.85."""

_ID_COLUMN = "google_category_id"
_VALUE_COLUMN = "business_value"


def _ids(ids: Ids) -> list[int]:
    """Return the ids as a list of Python ints."""
    return [int(value) for value in ids]


def _pair(true: Ids, pred: Ids) -> tuple[list[int], list[int]]:
    """Return both id sequences as lists; raise ModelError when empty or of different lengths."""
    true_list, pred_list = _ids(true), _ids(pred)
    if len(true_list) != len(pred_list):
        raise ModelError(
            f"{len(true_list)} true ids but {len(pred_list)} predicted ids: one each per sample"
        )
    if not true_list:
        raise ModelError("no samples to score")
    return true_list, pred_list


def _truncated_pair(
    truncated: TruncatedTaxonomy, true: Ids, pred: Ids
) -> tuple[list[int], list[int]]:
    """Like :func:`_pair`, with every id mapped to its node of ``truncated``."""
    true_list, pred_list = _pair(true, pred)
    return (
        [truncated.truncate_id(node) for node in true_list],
        [truncated.truncate_id(node) for node in pred_list],
    )


def read_business_values(path: str | os.PathLike[str]) -> dict[int, float]:
    """Read a business-value CSV: a header naming ``google_category_id`` and ``business_value``.

    Returns each category id mapped to its value, in file order. Raises :class:`ModelError`
    as ``"file:line: reason"`` for a missing column, an id that is not a whole number
    ``>= 1``, a value that is not a finite number ``>= 0``, or an id listed twice; and
    ``"file: reason"`` when the file cannot be read.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelError(f"{file}: cannot read the business values: {error}") from error
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [column for column in (_ID_COLUMN, _VALUE_COLUMN) if column not in header]
    if missing:
        raise ModelError(
            f"{file}:1: the header must name {_ID_COLUMN} and {_VALUE_COLUMN}; "
            f"missing {', '.join(missing)} (got {header!r})"
        )
    values: dict[int, float] = {}
    first_line: dict[int, int] = {}
    for row in reader:
        line = reader.line_num
        raw_id, raw_value = row.get(_ID_COLUMN), row.get(_VALUE_COLUMN)
        try:
            category_id = int((raw_id or "").strip())
        except ValueError:
            category_id = 0
        if category_id < 1:
            raise ModelError(
                f"{file}:{line}: {_ID_COLUMN} must be a whole number >= 1, got {raw_id!r}"
            )
        try:
            value = float((raw_value or "").strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise ModelError(
                f"{file}:{line}: {_VALUE_COLUMN} of category {category_id} must be a finite "
                f"number >= 0, got {raw_value!r}"
            )
        if category_id in values:
            raise ModelError(
                f"{file}:{line}: duplicate category id {category_id} "
                f"(first on line {first_line[category_id]})"
            )
        values[category_id] = value
        first_line[category_id] = line
    return values


def read_business_values_many(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> dict[int, float]:
    """Read and merge business-value CSVs (one path, or several) with :func:`read_business_values`.

    A category listed in several files must have the same value in each; otherwise
    :class:`ModelError` names the category and both files. Returns ids in first-seen order.
    """
    files = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not files:
        raise ModelError("no business-value files given")
    merged: dict[int, float] = {}
    origin: dict[int, Path] = {}
    for path in files:
        file = Path(path)
        for category_id, value in read_business_values(file).items():
            if category_id in merged and merged[category_id] != value:
                raise ModelError(
                    f"category {category_id} has business value {merged[category_id]:g} in "
                    f"{origin[category_id]} but {value:g} in {file}"
                )
            merged.setdefault(category_id, value)
            origin.setdefault(category_id, file)
    return merged


def node_values(truncated: TruncatedTaxonomy, values: Mapping[int, float]) -> dict[int, float]:
    """Return every node of ``truncated`` mapped to its value (see the module docstring).

    ``values`` are per-category business values keyed by full-taxonomy ids; a node with no
    value on or beneath it gets 0.0.
    """
    return truncated.sum_up(values)


def accuracy(true: Ids, pred: Ids) -> float:
    """Return the share of samples whose predicted id equals the true id."""
    true_list, pred_list = _pair(true, pred)
    return sum(t == p for t, p in zip(true_list, pred_list, strict=True)) / len(true_list)


def topk_accuracy(labels: ArrayLike, probs: ArrayLike, k: int) -> float | None:
    """Return the share of unmasked samples whose label ranks among the ``k`` most probable.

    ``labels`` are class indices ``(n,)``, -1 for a masked sample; ``probs`` are ``(n,
    classes)``. Ties are broken by class index (see the module docstring). ``None`` when
    every sample is masked.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ModelError(f"k must be a whole number >= 1, got {k!r}")
    label_array = np.asarray(labels)
    prob_array = np.asarray(probs, dtype=np.float64)
    if label_array.ndim != 1 or prob_array.ndim != 2 or len(label_array) != len(prob_array):
        raise ModelError(
            f"labels must be (n,) and probs (n, classes); got {label_array.shape} "
            f"and {prob_array.shape}"
        )
    if not np.issubdtype(label_array.dtype, np.integer):
        raise ModelError(f"labels must be integers, got dtype {label_array.dtype}")
    classes = prob_array.shape[1]
    bad = (label_array < MASK_LABEL) | (label_array >= classes)
    if bad.any():
        raise ModelError(
            f"labels must be -1 or a class index below {classes}, got {int(label_array[bad][0])}"
        )
    kept = label_array != MASK_LABEL
    if not kept.any():
        return None
    kept_labels = label_array[kept]
    kept_probs = prob_array[kept]
    target = kept_probs[np.arange(len(kept_labels)), kept_labels][:, None]
    index = np.arange(classes)[None, :]
    ahead = (kept_probs > target) | ((kept_probs == target) & (index < kept_labels[:, None]))
    rank = ahead.sum(axis=1)
    return float(np.mean(rank < k))


def macro_f1(true: Ids, pred: Ids, classes: Iterable[int] | None = None) -> float:
    """Return the mean F1 over the classes that are true or predicted for some sample.

    With ``classes``, the mean is over those classes instead (a class with neither samples
    nor predictions scores 0); :class:`ModelError` when ``classes`` is empty.
    """
    true_list, pred_list = _pair(true, pred)
    hits: Counter[int] = Counter()
    true_counts = Counter(true_list)
    pred_counts = Counter(pred_list)
    for t, p in zip(true_list, pred_list, strict=True):
        if t == p:
            hits[t] += 1
    chosen = (
        true_counts.keys() | pred_counts.keys() if classes is None else {int(c) for c in classes}
    )
    if not chosen:
        raise ModelError("no classes to average the F1 over")
    # 2TP + FP + FN = (TP + FN) + (TP + FP) = true count + predicted count.
    scores = [
        2 * hits[c] / (true_counts[c] + pred_counts[c]) if true_counts[c] + pred_counts[c] else 0.0
        for c in chosen
    ]
    return float(sum(scores) / len(scores))


def per_class_recall(true: Ids, pred: Ids) -> dict[int, float]:
    """Return each true class's recall (share of its samples predicted as it), sorted by id."""
    true_list, pred_list = _pair(true, pred)
    totals = Counter(true_list)
    hits = Counter(t for t, p in zip(true_list, pred_list, strict=True) if t == p)
    return {c: hits[c] / totals[c] for c in sorted(totals)}


def macro_accuracy(true: Ids, pred: Ids) -> float:
    """Return the balanced accuracy: the mean of :func:`per_class_recall` over true classes."""
    recalls = per_class_recall(true, pred)
    return float(sum(recalls.values()) / len(recalls))


def weighted_accuracy(
    true_nodes: Ids,
    pred_nodes: Ids,
    truncated: TruncatedTaxonomy,
    values: Mapping[int, float],
) -> float:
    """Return the business-value-weighted accuracy (see the module docstring).

    Ids of any depth are truncated to their nodes; ``values`` are raw per-category business
    values (full-taxonomy ids), rolled up with :func:`node_values`. Raises
    :class:`ModelError` when no sample's true node has a value (the score is undefined).
    """
    true_list, pred_list = _truncated_pair(truncated, true_nodes, pred_nodes)
    rolled = node_values(truncated, values)
    weights = np.array([rolled[node] for node in true_list], dtype=np.float64)
    total = float(weights.sum())
    if total <= 0.0:
        raise ModelError(
            f"no sample has a business value: none of the {len(true_list)} true categories "
            "has a value on or beneath it, so the weighted accuracy is undefined"
        )
    correct = np.array([t == p for t, p in zip(true_list, pred_list, strict=True)])
    return float(weights[correct].sum() / total)


def tree_distance(truncated: TruncatedTaxonomy, a: int, b: int) -> int:
    """Return the number of edges between the nodes of ``a`` and ``b`` via their common ancestor.

    Under different roots the path goes through a virtual root: ``depth(a) + depth(b)``.
    """
    path_a, path_b = truncated.path_ids(int(a)), truncated.path_ids(int(b))
    common = 0
    for node_a, node_b in zip(path_a, path_b, strict=False):
        if node_a != node_b:
            break
        common += 1
    return len(path_a) + len(path_b) - 2 * common


def mean_tree_distance(truncated: TruncatedTaxonomy, true: Ids, pred: Ids) -> float:
    """Return the mean :func:`tree_distance` between each true and predicted node."""
    true_list, pred_list = _pair(true, pred)
    distances = [tree_distance(truncated, t, p) for t, p in zip(true_list, pred_list, strict=True)]
    return float(np.mean(distances))


def per_level_accuracy(
    truncated: TruncatedTaxonomy, true_nodes: Ids, pred_nodes: Ids, depth: int
) -> list[float | None]:
    """Return the accuracy at each level 1 to ``depth`` (see the module docstring).

    Entry ``k - 1`` is level ``k``'s accuracy over the samples whose true node reaches level
    ``k``, or ``None`` when none does.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ModelError(f"depth must be a whole number >= 1, got {depth!r}")
    true_list, pred_list = _pair(true_nodes, pred_nodes)
    true_paths = [truncated.path_ids(node) for node in true_list]
    pred_paths = [truncated.path_ids(node) for node in pred_list]
    result: list[float | None] = []
    for level in range(1, depth + 1):
        hits = total = 0
        for true_path, pred_path in zip(true_paths, pred_paths, strict=True):
            if len(true_path) < level:
                continue
            total += 1
            if len(pred_path) >= level and pred_path[level - 1] == true_path[level - 1]:
                hits += 1
        result.append(hits / total if total else None)
    return result


@dataclass(frozen=True)
class ConfusionTop:
    """The confusion matrix of the most valuable true categories.

    ``ids`` are the rows' true nodes, most valuable first (ties by id); ``columns`` are the
    same ids followed by :data:`OTHER` (-1), every prediction outside ``ids``. ``names`` and
    ``values`` are the rows' own names and node values. ``counts[i, j]`` is the number of
    samples of true node ``ids[i]`` predicted as ``columns[j]``; ``normalised`` divides each
    row by its sum (a row with no samples stays 0).
    """

    ids: tuple[int, ...]
    columns: tuple[int, ...]
    names: tuple[str, ...]
    counts: NDArray[np.int64]
    normalised: NDArray[np.float64]
    values: tuple[float, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """Return one unique label per row, ``"name (id)"`` (taxonomy names repeat)."""
        return tuple(f"{name} ({node})" for name, node in zip(self.names, self.ids, strict=True))

    @property
    def column_labels(self) -> tuple[str, ...]:
        """Return the row labels followed by ``"other"`` for the last column."""
        return (*self.labels, "other")

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the row-normalised matrix as CSV, one row per true category.

        Header: ``true_id,true_name,value`` then :attr:`column_labels`; cells are rounded to
        4 decimals. Raises :class:`ModelError` when the file cannot be written.
        """
        file = Path(path)
        try:
            with file.open("w", newline="", encoding="utf-8") as stream:
                writer = csv.writer(stream)
                writer.writerow(["true_id", "true_name", "value", *self.column_labels])
                for row, (node, name, value) in enumerate(
                    zip(self.ids, self.names, self.values, strict=True)
                ):
                    writer.writerow(
                        [node, name, _number(value)]
                        + [f"{cell:.4f}" for cell in self.normalised[row]]
                    )
        except OSError as error:
            raise ModelError(f"{file}: cannot write the confusion matrix: {error}") from error


def _number(value: float) -> str:
    """Format a value without a needless ``.0``: ``1200`` but ``12.5``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def confusion_top(
    truncated: TruncatedTaxonomy,
    true_nodes: Ids,
    pred_nodes: Ids,
    values: Mapping[int, float],
    n: int = 50,
) -> ConfusionTop:
    """Return the confusion of the ``n`` most valuable true categories present in the data.

    Ids of any depth are truncated to their nodes; ``values`` are raw per-category business
    values rolled up with :func:`node_values`. Fewer than ``n`` rows when fewer distinct
    true nodes occur.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ModelError(f"n must be a whole number >= 1, got {n!r}")
    true_list, pred_list = _truncated_pair(truncated, true_nodes, pred_nodes)
    rolled = node_values(truncated, values)
    ids = tuple(sorted(set(true_list), key=lambda node: (-rolled[node], node))[:n])
    columns = (*ids, OTHER)
    row_of = {node: index for index, node in enumerate(ids)}
    counts = np.zeros((len(ids), len(columns)), dtype=np.int64)
    for t, p in zip(true_list, pred_list, strict=True):
        row = row_of.get(t)
        if row is not None:
            counts[row, row_of.get(p, len(ids))] += 1
    sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(
        counts, sums, out=np.zeros(counts.shape, dtype=np.float64), where=sums > 0
    )
    return ConfusionTop(
        ids=ids,
        columns=columns,
        names=tuple(truncated.name(node) for node in ids),
        counts=counts,
        normalised=normalised,
        values=tuple(rolled[node] for node in ids),
    )


@dataclass(frozen=True)
class CoveragePoint:
    """One point of the coverage curve: at ``threshold``, the share kept and their accuracy."""

    threshold: float
    coverage: float
    accuracy: float | None


def _confidence_pairs(
    confidences: ArrayLike, correct: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Per-sample confidences and correctness flags as flat arrays; ModelError if unpaired."""
    confidence_array = np.asarray(confidences, dtype=np.float64).reshape(-1)
    correct_array = np.asarray(correct).reshape(-1).astype(bool)
    if len(confidence_array) != len(correct_array):
        raise ModelError(
            f"{len(confidence_array)} confidences but {len(correct_array)} correctness "
            "flags: one each per sample"
        )
    if not len(confidence_array):
        raise ModelError("no samples to score")
    return confidence_array, correct_array


def coverage_curve(
    confidences: ArrayLike,
    correct: ArrayLike,
    thresholds: Sequence[float] | None = None,
) -> list[CoveragePoint]:
    """Return coverage and accuracy at each threshold (default :data:`DEFAULT_THRESHOLDS`).

    ``confidences`` are per-sample confidences of the prediction, ``correct`` per-sample
    booleans; a sample is kept at threshold ``θ`` when its confidence is ``>= θ``.
    """
    confidence_array, correct_array = _confidence_pairs(confidences, correct)
    points: list[CoveragePoint] = []
    for threshold in DEFAULT_THRESHOLDS if thresholds is None else thresholds:
        kept = confidence_array >= threshold
        count = int(kept.sum())
        points.append(
            CoveragePoint(
                threshold=float(threshold),
                coverage=count / len(confidence_array),
                accuracy=float(correct_array[kept].mean()) if count else None,
            )
        )
    return points


DEFAULT_CALIBRATION_BINS = 15
"""Equal-width confidence bins of the expected calibration error and reliability diagram."""


@dataclass(frozen=True)
class CalibrationBin:
    """One confidence bin ``(lower, upper]``: its sample count, mean confidence and accuracy.

    ``confidence`` and ``accuracy`` are ``None`` for an empty bin.
    """

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


def calibration_bins(
    confidences: ArrayLike, correct: ArrayLike, bins: int = DEFAULT_CALIBRATION_BINS
) -> list[CalibrationBin]:
    """Return ``bins`` equal-width confidence bins over [0, 1] (see the module docstring).

    Confidences must lie in [0, 1]; :class:`ModelError` otherwise, for no samples, or for
    sequences of different lengths.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ModelError(f"bins must be a whole number >= 1, got {bins!r}")
    confidence_array, correct_array = _confidence_pairs(confidences, correct)
    outside = ~((confidence_array >= 0.0) & (confidence_array <= 1.0))
    if outside.any():
        raise ModelError(
            f"confidences must lie in [0, 1], got {float(confidence_array[outside][0])!r}"
        )
    # Bin b holds (b/B, (b+1)/B], 0 in the first: the first upper edge >= c. Comparing with
    # the edges themselves (not ceil(c * B)) keeps a confidence equal to an edge, such as
    # 0.2 = 3/15, in the bin whose bounds the report shows.
    uppers = np.arange(1, bins + 1, dtype=np.float64) / bins
    index = np.minimum(np.searchsorted(uppers, confidence_array, side="left"), bins - 1)
    result: list[CalibrationBin] = []
    for number in range(bins):
        members = index == number
        count = int(members.sum())
        result.append(
            CalibrationBin(
                lower=number / bins,
                upper=(number + 1) / bins,
                count=count,
                confidence=float(confidence_array[members].mean()) if count else None,
                accuracy=float(correct_array[members].mean()) if count else None,
            )
        )
    return result


def expected_calibration_error(
    confidences: ArrayLike, correct: ArrayLike, bins: int = DEFAULT_CALIBRATION_BINS
) -> float:
    """Return the expected calibration error over ``bins`` equal-width confidence bins."""
    table = calibration_bins(confidences, correct, bins)
    total = sum(entry.count for entry in table)
    return float(
        sum(
            entry.count / total * abs(entry.accuracy - entry.confidence)
            for entry in table
            if entry.accuracy is not None and entry.confidence is not None
        )
    )
