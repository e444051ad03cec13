"""service.open_set: a text-only answer checked against the zero-shot classifier, with the
real taxonomy and the real zero-shot scorer (no Kafka: the check itself)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from model.decode import CLASSIFIED, PathNode, Prediction
from model.open_set import OPEN_SET_RULE
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.text_features import TextFields
from model.zero_shot import ZeroShotClassifier
from service.enrich import Verdict, ZeroShotSignal
from service.metrics import Metrics
from service.open_set import OpenSetCheck
from service.records import signal_entry

SHIRTS, SHOES, SOCKS = 212, 187, 209
KNOWN = (SHIRTS, SHOES, SOCKS)
"""The leaves the (imagined) text model learnt."""


@pytest.fixture(scope="module")
def truncated(taxonomy_file: Path) -> TruncatedTaxonomy:
    return Taxonomy.load(taxonomy_file).truncate(4)


@pytest.fixture(scope="module")
def zero_shot(taxonomy_file: Path) -> Iterator[ZeroShotSignal]:
    signal = ZeroShotSignal(ZeroShotClassifier.from_taxonomy(taxonomy_file, depth=4))
    signal.start()
    yield signal
    signal.close()


def _text_verdict(truncated: TruncatedTaxonomy, leaf: int, confidence: float) -> Verdict:
    """What the enricher decided from the text model alone: ``leaf`` at ``confidence``."""
    path = tuple(
        PathNode(level=level, id=node, name=truncated.name(node), confidence=confidence)
        for level, node in enumerate(truncated.path_ids(leaf), start=1)
    )
    prediction = Prediction(CLASSIFIED, leaf, leaf, path, confidence, ())
    entry = signal_entry("TEXT", "USED", prediction=prediction, model_version="text-1")
    return Verdict(CLASSIFIED, prediction, "TEXT", [entry])


def _check(zero_shot: ZeroShotSignal, verdict: Verdict, title: str) -> tuple[Verdict, Metrics]:
    metrics = Metrics()
    check = OpenSetCheck(zero_shot, KNOWN, metrics)
    return asyncio.run(check.check(verdict, TextFields(title=title))), metrics


def _counted(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("enrich_open_set_total", {"reason": reason})
    return value or 0.0


def test_a_category_the_text_model_never_learnt_is_given_zero_shot(
    truncated: TruncatedTaxonomy, zero_shot: ZeroShotSignal
) -> None:
    """A puzzle the text model calls a shirt at 0.42 gets the zero-shot puzzle leaf instead,
    still decided TEXT, with the zero-shot answer as a second TEXT signal."""
    verdict = _text_verdict(truncated, SHIRTS, 0.42)
    checked, metrics = _check(zero_shot, verdict, "Kids wooden puzzle")
    assert checked.prediction is not None
    assert checked.status == CLASSIFIED
    assert checked.decided_by == "TEXT"
    assert checked.prediction.path_string.startswith("Toys & Games > Puzzles")
    assert [e["model_version"][:10] for e in checked.signals] == ["text-1", "zero-shot-"]
    assert _counted(metrics, "UNKNOWN_CATEGORY") == 1


def test_a_confident_contradiction_abstains_to_the_common_ancestor(
    truncated: TruncatedTaxonomy, zero_shot: ZeroShotSignal
) -> None:
    """Socks the text model calls shoes: the zero-shot leaf (socks, known) contradicts it, so
    the record abstains to what both share (Apparel & Accessories), LOW_CONFIDENCE."""
    verdict = _text_verdict(truncated, SHOES, 0.95)
    checked, metrics = _check(zero_shot, verdict, "Men Solid Black Cotton Socks Pack of 3")
    assert checked.prediction is not None
    assert checked.status == "LOW_CONFIDENCE"
    assert checked.prediction.path_string == "Apparel & Accessories"
    assert _counted(metrics, "DISAGREEMENT") == 1


def test_agreement_keeps_the_text_models_leaf(
    truncated: TruncatedTaxonomy, zero_shot: ZeroShotSignal
) -> None:
    """A T-shirt both call a shirt keeps the text model's answer, untouched."""
    verdict = _text_verdict(truncated, SHIRTS, 0.99)
    checked, metrics = _check(zero_shot, verdict, "Nike Women White T-Shirt")
    assert checked.prediction is verdict.prediction
    assert checked.status == CLASSIFIED
    assert _counted(metrics, "TEXT") == 1


def test_a_title_the_zero_shot_cannot_read_keeps_the_text_answer(
    truncated: TruncatedTaxonomy, zero_shot: ZeroShotSignal
) -> None:
    """No word of the title matches a category: the text answer stands, the zero-shot entry
    says it abstained, and the metric counts NO_MATCH."""
    verdict = _text_verdict(truncated, SHIRTS, 0.9)
    checked, metrics = _check(zero_shot, verdict, "Zorblax Quintessa 3000")
    assert checked.prediction is verdict.prediction
    assert checked.signals[-1]["outcome"] == "ABSTAINED"
    assert _counted(metrics, "NO_MATCH") == 1


def test_the_service_rule_is_the_one_the_published_open_set_figures_measured() -> None:
    """ENRICH_OPEN_SET's settings are those docs/results/open_set/ was measured with: changing
    them without running bench/open_set.py again would leave the published figures wrong."""
    page = Path(__file__).resolve().parents[2] / "docs" / "results" / "open_set" / "open_set.json"
    assert json.loads(page.read_text())["second"] == asdict(OPEN_SET_RULE)
