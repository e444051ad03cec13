"""The pure parts of bench/posthoc.py on made-up probabilities: accuracy per source, the prior
correction, how ensembles are ranked, and runs on different splits refused. The measurement
itself (trained quality-grid models) runs as `python -m bench.posthoc`, not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.posthoc import Part, PosthocError, accuracies, adjust, ensembles, report, source_of


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
