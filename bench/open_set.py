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

**Second protocol** (written after the first one's figures, diagnosis table included, had
been seen; so its figure on the held-out leaves above is no clean test). The diagnosis showed
the zero-shot classifier stopping, confidently, at the right parent of a leaf the text model
never learnt while the text model named a sibling it knew; the pseudo open set shows no such
case (its zero-shot abstentions stop below the threshold), so the calibration cannot choose
for it. :data:`SECOND` is therefore fixed by reasoning, before it was measured anywhere:
every confident zero-shot stop counts as evidence (``zero_shot_ancestors`` and the new
``zero_shot_unknown_below``, rule 2b of :mod:`model.open_set`), with the first protocol's
calibrated ``text_threshold`` 0.7. Its clean test is on **fresh** held-out groups
(:data:`FRESH_RANKS`: the leaves ranked 11th-15th and 16th-20th), each denied to a text model
of its own trained on the whole labels file without them, scored on their validation rows,
which no earlier run had answered (the 11th-15th leaves' *train* rows were the first
protocol's pseudo-unknown products). The rule and these groups were committed before the
first run that scored them.

Per product, exactly one of: **right** (``CLASSIFIED``, or an abstention, whose answered
category is the true one or lies under it), **honest abstention** (not right; the answer is a
strict ancestor on the true path, or ``LOW_CONFIDENCE`` anywhere: reported apart as *on path*
and *off path*), **confident wrong** (``CLASSIFIED`` off the true path). The issue's target:
right + honest >= 0.90 on (a). Writes ``open_set.md`` and ``open_set.json`` to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.checkout import checkout_label, shown_path
from bench.open_set_report import (
    CALIBRATED,
    RULE,
    SECOND_RULE,
    TEXT_ALONE,
    ZERO_SHOT,
    describe,
    markdown,
)
from bench.open_set_scoring import breakdown, figures, pooled
from bench.open_set_training import HOLDOUT, train_without
from model.data import LabelRow, assign_splits, hold_out_validation, read_labels
from model.decode import Prediction
from model.open_set import OPEN_SET_RULE, OpenSetSettings, combine_many, cut_at
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.text_classifier import TextClassifier
from model.text_train import row_text
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
PREREGISTERED = OpenSetSettings()
"""The rule fixed before anything was measured: ``combine``'s a-priori defaults."""
GRID = tuple(
    OpenSetSettings(text_threshold=threshold, zero_shot_ancestors=ancestors)
    for ancestors in (False, True)
    for threshold in (0.5, 0.7, 0.9, 0.95, 0.99)
)
"""The settings the calibration on the pseudo open set chooses among (the first is the
pre-registered rule)."""
SECOND = OPEN_SET_RULE
"""The second protocol's rule (text_threshold 0.7, zero_shot_ancestors, zero_shot_unknown_below),
fixed before it was measured (the module docstring says how); the service's ENRICH_OPEN_SET
uses this same object."""
FRESH_RANKS = ((11, 15), (16, 20))
"""The second protocol's fresh held-out groups: each denied to a text model of its own."""


def held_out_leaves(
    rows: Sequence[LabelRow], truncated: TruncatedTaxonomy, ranks: tuple[int, int] = RANKS
) -> list[int]:
    """The depth-truncated leaves ranked ``ranks[0]``..``ranks[1]`` by train-split rows."""
    counts = Counter(truncated.truncate_id(row.category_id) for row in rows if row.split == "train")
    ranked = sorted(counts, key=lambda leaf: (-counts[leaf], leaf))
    return ranked[ranks[0] - 1 : ranks[1]]


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
            SECOND_RULE,
            f"combine with {describe(SECOND)} (the second protocol, fixed before it was measured)",
            rule(SECOND),
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


def fresh_groups(
    labels: Path,
    taxonomy_file: Path,
    run_dir: Path,
    rows: Sequence[LabelRow],
    taxonomy: Taxonomy,
    zero_shot: ZeroShotClassifier,
    calibrated: OpenSetSettings,
    *,
    retrain: bool = False,
) -> dict[str, Any]:
    """The second protocol's test: per :data:`FRESH_RANKS` group, a text model trained without
    it, every method on the group's validation products (and the rule's cost on the other
    leaves' validation products); then each method pooled over the groups."""
    truncated = taxonomy.truncate(4)
    validation = [r for r in rows if r.split == "validation"]
    groups: list[dict[str, Any]] = []
    for ranks in FRESH_RANKS:
        leaves = held_out_leaves(rows, truncated, ranks)
        model_dir, _ = train_without(
            labels,
            taxonomy_file,
            truncated,
            leaves,
            run_dir / f"fresh-{ranks[0]}-{ranks[1]}",
            retrain=retrain,
        )
        model = TextClassifier.load(model_dir, taxonomy=taxonomy)
        known = set(model.vocabulary.leaves)
        if known & set(leaves):
            raise SystemExit(
                f"a text model knows leaves it was denied: {sorted(known & set(leaves))}"
            )
        unknown = answer(
            [r for r in validation if truncated.truncate_id(r.category_id) in leaves],
            truncated,
            model,
            zero_shot,
        )
        seen = answer(
            [r for r in validation if truncated.truncate_id(r.category_id) not in leaves],
            truncated,
            model,
            zero_shot,
        )
        methods = _methods(unknown, known, calibrated)
        groups.append(
            {
                "ranks": list(ranks),
                "leaves": [
                    {
                        "id": leaf,
                        "path": " > ".join(truncated.category(leaf).path),
                        "validation_rows": _rows_of(validation, truncated, {leaf}),
                    }
                    for leaf in leaves
                ],
                "text_leaves": len(known),
                "results": {
                    method: figures(truncated, predictions, unknown.truth)
                    for method, _, predictions in methods
                },
                "seen": {
                    method: figures(truncated, predictions, seen.truth)
                    for method, _, predictions in _methods(seen, known, calibrated)
                    if method in (SECOND_RULE, TEXT_ALONE)
                },
                "per_leaf": breakdown(
                    truncated,
                    next(p for m, _, p in methods if m == SECOND_RULE),
                    unknown.truth,
                ),
            }
        )
    methods_seen = list(groups[0]["results"])
    return {
        "groups": groups,
        "pooled": {m: pooled([g["results"][m] for g in groups]) for m in methods_seen},
    }


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
        for position, settings in ((0, PREREGISTERED), (1, calibrated), (2, SECOND)):
            reasons = Counter(
                a.reason for a in combine_many(answers.text, answers.zero_shot, known, settings)
            )
            results[name][position]["reasons"] = dict(sorted(reasons.items()))

    held_answers = answer(sets["held_out_validation"], truncated, text_model, zero_shot)
    per_leaf = {
        method: breakdown(truncated, predictions, held_answers.truth)
        for method, _, predictions in _methods(held_answers, known, calibrated)[:3]
    }
    fresh = fresh_groups(
        args.labels,
        args.taxonomy,
        args.run_dir,
        rows,
        taxonomy,
        zero_shot,
        calibrated,
        retrain=args.retrain,
    )

    def measured(method: str) -> float:
        found = next(r for r in results["held_out_validation"] if r["method"] == method)
        value: float = found["figures"]["right_or_honest"]
        return value

    command = " ".join([".venv/bin/python -m bench.open_set", *arguments])
    report: dict[str, Any] = {
        "command": command,
        "commit": checkout_label(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "labels": shown_path(args.labels, SHARED),
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
        "second": asdict(SECOND),
        "fresh": fresh,
        "calibration": grid,
        "calibration_sets": {name: len(chosen) for name, chosen in calibration_sets.items()},
        "target": {
            "right_or_honest": TARGET,
            "preregistered": measured(RULE),
            "met_preregistered": measured(RULE) >= TARGET,
            "calibrated": measured(CALIBRATED),
            "met_calibrated": measured(CALIBRATED) >= TARGET,
            "second": measured(SECOND_RULE),
            "met_second": measured(SECOND_RULE) >= TARGET,
            "second_fresh": fresh["pooled"][SECOND_RULE]["right_or_honest"],
            "met_second_fresh": fresh["pooled"][SECOND_RULE]["right_or_honest"] >= TARGET,
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
