"""How `bench.open_set` scores answers: one outcome per product (right, honest on or off the
true path, confident wrong), the shares of each, and a per-leaf diagnosis."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.open_set_report import OUTCOMES
from model.decode import CLASSIFIED, LOW_CONFIDENCE, Prediction
from model.taxonomy import TruncatedTaxonomy

__all__ = ["breakdown", "figures", "outcome", "pooled"]


def outcome(truncated: TruncatedTaxonomy, prediction: Prediction, true_id: int) -> str:
    """``right``, ``honest_on_path``, ``honest_off_path`` or ``confident_wrong``."""
    true_path = truncated.path_ids(true_id)
    answer = tuple(node.id for node in prediction.path)
    if answer[: len(true_path)] == true_path:
        return "right"
    if answer == true_path[: len(answer)]:
        return "honest_on_path"
    if prediction.status == LOW_CONFIDENCE:
        return "honest_off_path"
    return "confident_wrong"


def figures(
    truncated: TruncatedTaxonomy, predictions: Sequence[Prediction], truth: Sequence[int]
) -> dict[str, Any]:
    """The shares of each outcome, right + honest, coverage and classified accuracy."""
    kinds = Counter(outcome(truncated, p, t) for p, t in zip(predictions, truth, strict=True))
    total = len(truth)
    share = {kind: kinds[kind] / total for kind in OUTCOMES}
    classified = [p.status == CLASSIFIED for p in predictions]
    covered = sum(classified)
    right_classified = sum(
        c and outcome(truncated, p, t) == "right"
        for p, t, c in zip(predictions, truth, classified, strict=True)
    )
    return {
        "products": total,
        **share,
        "honest": share["honest_on_path"] + share["honest_off_path"],
        "right_or_honest": 1.0 - share["confident_wrong"],
        "coverage": covered / total,
        "classified_accuracy": right_classified / covered if covered else None,
    }


def breakdown(
    truncated: TruncatedTaxonomy, predictions: Sequence[Prediction], truth: Sequence[int]
) -> list[dict[str, Any]]:
    """Per true leaf: its products' outcome counts and its most frequent confident wrong
    answers (a diagnosis of what the rule gets wrong; nothing is chosen from it)."""
    out: list[dict[str, Any]] = []
    for leaf in sorted(set(truth), key=lambda node: truncated.name(node)):
        mine = [p for p, t in zip(predictions, truth, strict=True) if t == leaf]
        kinds = Counter(outcome(truncated, p, leaf) for p in mine)
        wrong = Counter(p.name for p in mine if outcome(truncated, p, leaf) == "confident_wrong")
        out.append(
            {
                "leaf": truncated.name(leaf),
                "products": len(mine),
                **{kind: kinds[kind] for kind in OUTCOMES},
                "wrong_answers": dict(wrong.most_common(3)),
            }
        )
    return out


def pooled(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`figures` of several product sets taken together (weighted by their products)."""
    total = sum(part["products"] for part in parts)
    if not total:
        return {"products": 0}
    keys = (*OUTCOMES, "honest", "right_or_honest", "coverage")
    merged: dict[str, Any] = {
        key: sum(part[key] * part["products"] for part in parts) / total for key in keys
    }
    covered = sum(part["coverage"] * part["products"] for part in parts)
    right_classified = sum(
        (part["classified_accuracy"] or 0.0) * part["coverage"] * part["products"] for part in parts
    )
    merged["classified_accuracy"] = right_classified / covered if covered else None
    return {"products": total, **merged}
