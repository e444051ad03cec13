"""The pure parts of bench/posthoc.py on made-up probabilities: accuracy per source, the prior
correction, how ensembles are ranked, test-time views averaged, and runs on different splits
refused. The measurement
itself (trained quality-grid models) runs as `python -m bench.posthoc`, not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.posthoc import (
    Part,
    PosthocError,
    accuracies,
    adjust,
    ensembles,
    report,
    source_of,
    view_sets,
)


def _part(probabilities: list[list[float]], truth: list[int], sources: list[str]) -> Part:
    return Part(np.array(probabilities, dtype=np.float32), np.array(truth), np.array(sources))


PI, FP = "product-images", "fashion-products"


@pytest.mark.parametrize(
    ("path", "source"),
    [("/d/product-images/grocery/a.jpg", PI), ("/d/fashion-products/images/1.jpg", FP)],
)
def test_the_source_is_read_from_the_image_path(path: str, source: str) -> None:
    assert source_of(path) == source


def test_accuracy_is_given_per_source_and_overall() -> None:
    part = _part([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [0, 0, 0], [PI, PI, FP])

    assert accuracies(part.probabilities, part) == {PI: 0.5, FP: 1.0, "all": 2 / 3}


def test_tau_zero_keeps_the_decision_and_a_full_correction_favours_the_rare_leaf() -> None:
    probabilities = np.array([[0.6, 0.4]], dtype=np.float32)
    prior = np.array([0.9, 0.1])

    assert adjust(probabilities, prior, 0.0).argmax() == 0
    assert adjust(probabilities, prior, 1.0).argmax() == 1


def test_a_leaf_never_seen_in_training_gets_the_smallest_prior_not_an_infinite_boost() -> None:
    adjusted = adjust(np.array([[0.7, 0.3]], dtype=np.float32), np.array([1.0, 0.0]), 1.0)

    assert np.isfinite(adjusted).all()
    assert adjusted.argmax() == 0


def test_ensembles_average_the_members_and_rank_by_the_hold_out() -> None:
    truth, sources = [0, 1], [PI, FP]
    parts = {
        "a": {"hold-out": _part([[0.9, 0.1], [0.6, 0.4]], truth, sources),
              "validation": _part([[0.9, 0.1], [0.6, 0.4]], truth, sources)},
        "b": {"hold-out": _part([[0.4, 0.6], [0.1, 0.9]], truth, sources),
              "validation": _part([[0.4, 0.6], [0.1, 0.9]], truth, sources)},
    }  # fmt: skip

    ranked = ensembles(["a", "b"], parts)

    assert [members for members, _ in ranked] == [("a", "b"), ("a",), ("b",)]
    assert ranked[0][1]["hold-out"]["all"] == 1.0  # the mean gets both right
    assert ranked[1][1]["hold-out"] == {PI: 1.0, FP: 0.0, "all": 0.5}


def test_runs_trained_on_different_splits_are_refused(tmp_path: Path) -> None:
    for name, split in (("one", "train"), ("two", "validation")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "split.csv").write_text(
            f"image_path,google_category_id,product_id,split\n/x/a.jpg,212,a,{split}\n"
        )

    with pytest.raises(PosthocError, match="another split"):
        report([tmp_path / "one", tmp_path / "two"], "cmd")


def _viewed(views: list[list[list[float]]], truth: list[int], sources: list[str]) -> Part:
    arrays = tuple(np.array(v, dtype=np.float32) for v in views)
    return Part(arrays[0], np.array(truth), np.array(sources), arrays)


def test_test_time_views_average_the_views_probabilities_and_can_turn_a_decision() -> None:
    image = [[0.45, 0.55], [0.9, 0.1]]  # the first image alone is wrong
    mirror = [[0.75, 0.25], [0.8, 0.2]]
    part = _viewed([image, mirror], [0, 0], [PI, FP])

    figures = view_sets({"hold-out": part})

    assert list(figures) == ["image", "image + mirror"]  # 4 views need views 2 and 3
    assert figures["image"]["hold-out"]["all"] == 0.5
    assert figures["image + mirror"]["hold-out"] == {PI: 1.0, FP: 1.0, "all": 1.0}
    np.testing.assert_allclose(part.averaged((0, 1)), [[0.6, 0.4], [0.85, 0.15]])


def test_a_view_that_was_not_computed_is_an_error_not_a_shorter_mean() -> None:
    part = _viewed([[[1.0, 0.0]]], [0], [PI])

    with pytest.raises(PosthocError, match="not computed"):
        part.averaged((0, 1))
