"""Open set (issue 15): the text model denied 5 fashion leaves, with the zero-shot classifier.

    .venv/bin/python -m bench.open_set            # trains once (cached), writes docs/results/
    .venv/bin/python -m bench.open_set --no-write  # print only

Protocol, fixed before anything was measured:

1. **Held-out leaves.** The fashion-products rows are truncated to depth 4 and the leaves
   ranked by their number of rows in the file's train split (ties by id); the leaves ranked
   6th to 10th are held out (:func:`held_out_leaves`): common enough to measure, not the
   catalog's bulk.
2. **Training.** The supervised text model (``model.text_train.train_text``: marginal heads,
   ``TextFeaturizer(4096)``, a 0.1 hold-out of the train split for early stopping) is trained
   on the labels file *without any row* of those leaves (a filtered copy of the file under
   ``--run-dir``); the model is cached there and retrained only when the held-out leaves or
   the settings change (or with ``--retrain``).
3. **Rule.** :func:`model.open_set.combine` with its default settings (each model's own
   threshold, 0.5): chosen a priori, checked only on the seen leaves' training hold-out.
4. **Figures** on (a) the held-out leaves' products of the file's validation split, (b) the
   seen leaves' products of the validation split and (c) the seen leaves' training hold-out
   (what the rule may be looked at on), for the rule, the text model alone and the
   zero-shot classifier alone (both at threshold 0.5).

Added after the pre-registered rule missed the target (and reported as the weaker
evidence): a **calibration** on a pseudo open set built from train-split rows only. A second
text model is trained on the train split without the held-out leaves and without the leaves
ranked 11th-15th; the grid :data:`GRID` is scored on those leaves' train rows (pseudo
unknown) and on that model's hold-out (pseudo seen), and :func:`calibrate` picks one by a
fixed criterion. The calibrated rule is reported beside the pre-registered one.

Per product, exactly one of: **right** (``CLASSIFIED``, or an abstention, whose answered
category is the true one or lies under it), **honest abstention** (not right; the answer is a
strict ancestor on the true path, or ``LOW_CONFIDENCE`` anywhere: reported apart as *on path*
and *off path*), **confident wrong** (``CLASSIFIED`` off the true path). The issue's target:
right + honest >= 0.90 on (a). Writes ``open_set.md`` and ``open_set.json`` to ``--output``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.open_set_report import (
    CALIBRATED,
    OUTCOMES,
    RULE,
    TEXT_ALONE,
    ZERO_SHOT,
    describe,
    markdown,
)
from model.data import LabelRow, assign_splits, hold_out_validation, read_labels
from model.decode import CLASSIFIED, LOW_CONFIDENCE, Prediction
from model.open_set import OpenSetSettings, combine_many, cut_at
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.text_classifier import TextClassifier
from model.text_features import TextFeaturizer
from model.text_train import TextTrainConfig, row_text, train_text
from model.zero_shot import ZeroShotClassifier

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
RESULTS = REPO / "docs" / "results" / "open_set"
RANKS = (6, 10)
"""The held-out leaves: these ranks (1-based, inclusive) by train-split rows."""
TARGET = 0.90
"""The issue's target: right + honest abstention on the held-out leaves' products."""
PSEUDO_RANKS = (11, 15)
"""The pseudo-unknown leaves of the calibration: these ranks, from training rows only."""
HOLDOUT = 0.1
FEATURES = 4096
PREREGISTERED = OpenSetSettings()
"""The rule fixed before anything was measured: ``combine``'s a-priori defaults."""
GRID = tuple(
    OpenSetSettings(text_threshold=threshold, zero_shot_ancestors=ancestors)
    for ancestors in (False, True)
    for threshold in (0.5, 0.7, 0.9, 0.95, 0.99)
)
"""The settings the calibration on the pseudo open set chooses among (the first is the
pre-registered rule)."""


def held_out_leaves(
    rows: Sequence[LabelRow], truncated: TruncatedTaxonomy, ranks: tuple[int, int] = RANKS
) -> list[int]:
    """The depth-truncated leaves ranked ``ranks[0]``..``ranks[1]`` by train-split rows."""
    counts = Counter(truncated.truncate_id(row.category_id) for row in rows if row.split == "train")
    ranked = sorted(counts, key=lambda leaf: (-counts[leaf], leaf))
    return ranked[ranks[0] - 1 : ranks[1]]


def _write_filtered(source: Path, target: Path, keep: Callable[[dict[str, str]], bool]) -> int:
    """Copy the CSV ``source`` to ``target`` with only the rows ``keep`` accepts; their count."""
    with source.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        fields = list(reader.fieldnames or [])
        kept = [row for row in reader if keep(row)]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    return len(kept)


def train_without(
    labels: Path,
    taxonomy: Path,
    truncated: TruncatedTaxonomy,
    denied: Sequence[int],
    run_dir: Path,
    *,
    train_split_only: bool = False,
    retrain: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train the text model on ``labels`` without the ``denied`` leaves' rows (cached).

    With ``train_split_only`` the file's validation rows are left out as well (the pseudo
    open set is built from training rows alone). Returns the model directory and what the
    run was told (its cache key).
    """
    key = {
        "labels": str(labels.resolve()),
        "denied": sorted(denied),
        "train_split_only": train_split_only,
        "features": FEATURES,
        "heads": "marginal",
        "holdout": HOLDOUT,
    }
    stamp = run_dir / "open_set_key.json"
    model_dir = run_dir / "model"
    cached = not retrain and stamp.exists() and (model_dir / "metadata.json").exists()
    if cached and json.loads(stamp.read_text()) == key:
        return model_dir, key
    filtered = run_dir / "labels-seen.csv"
    refused = set(denied)

    def keep(row: dict[str, str]) -> bool:
        if train_split_only and row.get("split", "").strip().lower() != "train":
            return False
        return truncated.truncate_id(int(row["google_category_id"])) not in refused

    _write_filtered(labels, filtered, keep)
    train_text(
        TextTrainConfig(
            labels=(filtered,),
            taxonomy=taxonomy,
            output=run_dir,
            heads="marginal",
            holdout=HOLDOUT,
            featurizer=TextFeaturizer(FEATURES),
            name="open-set-text-classifier",
            verbose=0,
        )
    )
    stamp.write_text(json.dumps(key, indent=1) + "\n")
    return model_dir, key


@dataclass(frozen=True)
class Answers:
    """Both models' predictions for a set of products, with the true categories."""

    truth: list[int]
    text: list[Prediction]
    zero_shot: list[Prediction]


def answer(
    rows: Sequence[LabelRow],
    truncated: TruncatedTaxonomy,
    text_model: TextClassifier,
    zero_shot: ZeroShotClassifier,
) -> Answers:
    """Ask both models about ``rows`` (the text model at threshold 0: full paths)."""
    texts = [row_text(r) for r in rows]
    return Answers(
        [truncated.truncate_id(r.category_id) for r in rows],
        text_model.classify(texts),
        zero_shot.classify(texts),
    )


def _holdout(rows: Sequence[LabelRow], truncated: TruncatedTaxonomy) -> list[LabelRow]:
    """The early-stopping hold-out ``train_text`` took from these rows' train split."""
    return [r for r in hold_out_validation(rows, truncated, HOLDOUT) if r.split == "validation"]


def calibrate(
    truncated: TruncatedTaxonomy,
    unknown: Answers,
    seen: Answers,
    known: set[int],
) -> tuple[OpenSetSettings, list[dict[str, Any]]]:
    """Pick the settings of :data:`GRID` on the pseudo open set, by the fixed criterion.

    Criterion: among the settings whose right + honest on the pseudo-unknown products is at
    least :data:`TARGET`, the one with the most right answers on the pseudo-seen hold-out
    (the first in grid order on a tie); when none reaches it, the one with the highest right
    + honest on the pseudo-unknown products.
    """
    rows: list[dict[str, Any]] = []
    for settings in GRID:
        rows.append(
            {
                "settings": asdict(settings),
                "unknown": figures(
                    truncated,
                    [
                        a.prediction
                        for a in combine_many(unknown.text, unknown.zero_shot, known, settings)
                    ],
                    unknown.truth,
                ),
                "seen": figures(
                    truncated,
                    [
                        a.prediction
                        for a in combine_many(seen.text, seen.zero_shot, known, settings)
                    ],
                    seen.truth,
                ),
            }
        )
    passing = [i for i, row in enumerate(rows) if row["unknown"]["right_or_honest"] >= TARGET]
    if passing:
        best = max(passing, key=lambda i: (rows[i]["seen"]["right"], -i))
    else:
        best = max(range(len(rows)), key=lambda i: (rows[i]["unknown"]["right_or_honest"], -i))
    rows[best]["chosen"] = True
    return GRID[best], rows


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


def _commit() -> str:
    """The short commit of the checkout, '+dirty' when files differ; 'unknown' outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _shown(path: Path) -> str:
    """A path as the results show it: relative to the shared data folder when under it."""
    resolved = path.resolve()
    return str(resolved.relative_to(SHARED)) if resolved.is_relative_to(SHARED) else str(path)


def _methods(
    answers: Answers, known: set[int], calibrated: OpenSetSettings
) -> list[tuple[str, str, list[Prediction]]]:
    """Every compared method's answers for one set of products."""

    def rule(settings: OpenSetSettings) -> list[Prediction]:
        answered = combine_many(answers.text, answers.zero_shot, known, settings)
        return [a.prediction for a in answered]

    return [
        (
            RULE,
            "model.open_set.combine with its a-priori defaults (fixed before measuring)",
            rule(PREREGISTERED),
        ),
        (
            CALIBRATED,
            f"combine with {describe(calibrated)} (chosen on training rows only, after the "
            "pre-registered rule had missed the target)",
            rule(calibrated),
        ),
        (
            TEXT_ALONE,
            "the supervised model trained without the held-out leaves",
            [cut_at(p, 0.5) for p in answers.text],
        ),
        (
            f"text model alone, threshold {calibrated.text_threshold:g}",
            "the calibrated rule's text threshold without the zero-shot classifier",
            [cut_at(p, calibrated.text_threshold) for p in answers.text],
        ),
        (
            ZERO_SHOT,
            "ZeroShotClassifier, synonyms='general' (strict), all 3,270 leaves",
            answers.zero_shot,
        ),
        (
            "text model alone, threshold 0",
            "never abstains (how enrich evaluate counts the leaf)",
            answers.text,
        ),
    ]


def _rows_of(rows: Sequence[LabelRow], truncated: TruncatedTaxonomy, leaves: set[int]) -> int:
    """How many of ``rows`` are filed under one of ``leaves``."""
    return sum(1 for r in rows if truncated.truncate_id(r.category_id) in leaves)


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or reuse) the models, calibrate, answer every set, write the results."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.open_set", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--labels", type=Path, default=SHARED / "fashion-products" / "labels.csv")
    parser.add_argument(
        "--taxonomy",
        type=Path,
        default=SHARED / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt",
    )
    parser.add_argument("--run-dir", type=Path, default=REPO / ".run" / "open_set")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--retrain", action="store_true", help="train even when cached")
    parser.add_argument("--no-write", action="store_true", help="print only")
    arguments = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(arguments)

    started = time.monotonic()
    taxonomy = Taxonomy.load(args.taxonomy)
    truncated = taxonomy.truncate(4)
    rows = assign_splits(read_labels(args.labels, require_image=False), truncated)
    held_out = held_out_leaves(rows, truncated)
    pseudo = held_out_leaves(rows, truncated, PSEUDO_RANKS)
    denied = set(held_out)
    print("held out: " + ", ".join(truncated.name(leaf) for leaf in held_out), file=sys.stderr)
    zero_shot = ZeroShotClassifier.from_taxonomy(taxonomy, depth=4)

    # The calibration: a second text model denied the pseudo leaves too, trained and judged
    # on train-split rows alone; no validation row and no held-out leaf's row is read.
    began = time.monotonic()
    pseudo_dir, pseudo_key = train_without(
        args.labels,
        args.taxonomy,
        truncated,
        [*held_out, *pseudo],
        args.run_dir / "pseudo",
        train_split_only=True,
        retrain=args.retrain,
    )
    pseudo_model = TextClassifier.load(pseudo_dir, taxonomy=taxonomy)
    pseudo_known = set(pseudo_model.vocabulary.leaves)
    train_rows = [r for r in rows if r.split == "train"]
    pseudo_rows = [
        r for r in train_rows if truncated.truncate_id(r.category_id) not in denied | set(pseudo)
    ]
    calibration_sets = {
        "pseudo_unknown": [r for r in train_rows if truncated.truncate_id(r.category_id) in pseudo],
        "pseudo_seen": _holdout(pseudo_rows, truncated),
    }
    calibrated, grid = calibrate(
        truncated,
        answer(calibration_sets["pseudo_unknown"], truncated, pseudo_model, zero_shot),
        answer(calibration_sets["pseudo_seen"], truncated, pseudo_model, zero_shot),
        pseudo_known,
    )

    model_dir, key = train_without(
        args.labels, args.taxonomy, truncated, held_out, args.run_dir, retrain=args.retrain
    )
    train_seconds = time.monotonic() - began
    text_model = TextClassifier.load(model_dir, taxonomy=taxonomy)
    known = set(text_model.vocabulary.leaves)
    leaked = (denied & known) | ((denied | set(pseudo)) & pseudo_known)
    if leaked:
        raise SystemExit(f"a text model knows leaves it was denied: {sorted(leaked)}")

    validation = [r for r in rows if r.split == "validation"]
    sets = {
        "held_out_validation": [
            r for r in validation if truncated.truncate_id(r.category_id) in denied
        ],
        "seen_validation": [
            r for r in validation if truncated.truncate_id(r.category_id) not in denied
        ],
        "seen_training_holdout": _holdout(
            [r for r in rows if truncated.truncate_id(r.category_id) not in denied], truncated
        ),
    }
    results: dict[str, list[dict[str, Any]]] = {}
    for name, chosen in sets.items():
        answers = answer(chosen, truncated, text_model, zero_shot)
        results[name] = [
            {
                "method": method,
                "detail": detail,
                "figures": figures(truncated, predictions, answers.truth),
            }
            for method, detail, predictions in _methods(answers, known, calibrated)
        ]
        for position, settings in ((0, PREREGISTERED), (1, calibrated)):
            reasons = Counter(
                a.reason for a in combine_many(answers.text, answers.zero_shot, known, settings)
            )
            results[name][position]["reasons"] = dict(sorted(reasons.items()))

    held_answers = answer(sets["held_out_validation"], truncated, text_model, zero_shot)
    per_leaf = {
        method: breakdown(truncated, predictions, held_answers.truth)
        for method, _, predictions in _methods(held_answers, known, calibrated)[:2]
    }

    def measured(method: str) -> float:
        found = next(r for r in results["held_out_validation"] if r["method"] == method)
        value: float = found["figures"]["right_or_honest"]
        return value

    command = " ".join([".venv/bin/python -m bench.open_set", *arguments])
    report: dict[str, Any] = {
        "command": command,
        "commit": _commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "labels": _shown(args.labels),
        "taxonomy_version": taxonomy.version,
        "held_out_rule": f"depth-4 leaves ranked {RANKS[0]}-{RANKS[1]} by train-split rows",
        "held_out": [
            {
                "id": leaf,
                "path": " > ".join(truncated.category(leaf).path),
                "train_rows": _rows_of(train_rows, truncated, {leaf}),
                "validation_rows": _rows_of(validation, truncated, {leaf}),
            }
            for leaf in held_out
        ],
        "pseudo_rule": f"depth-4 leaves ranked {PSEUDO_RANKS[0]}-{PSEUDO_RANKS[1]}",
        "pseudo": [
            {
                "id": leaf,
                "path": " > ".join(truncated.category(leaf).path),
                "train_rows": _rows_of(train_rows, truncated, {leaf}),
            }
            for leaf in pseudo
        ],
        "training": {
            **{k: v for k, v in key.items() if k != "labels"},
            "text_leaves": len(known),
            "pseudo_text_leaves": len(pseudo_known),
            "pseudo_denied": pseudo_key["denied"],
            "seconds_this_run": round(train_seconds, 1),
        },
        "preregistered": asdict(PREREGISTERED),
        "calibrated": asdict(calibrated),
        "calibration": grid,
        "calibration_sets": {name: len(chosen) for name, chosen in calibration_sets.items()},
        "target": {
            "right_or_honest": TARGET,
            "preregistered": measured(RULE),
            "met_preregistered": measured(RULE) >= TARGET,
            "calibrated": measured(CALIBRATED),
            "met_calibrated": measured(CALIBRATED) >= TARGET,
        },
        "sets": {name: len(chosen) for name, chosen in sets.items()},
        "results": results,
        "per_held_out_leaf": per_leaf,
        "seconds": round(time.monotonic() - started, 1),
    }
    page = markdown(report)
    print(page)
    if not args.no_write:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "open_set.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.output / "open_set.md").write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
