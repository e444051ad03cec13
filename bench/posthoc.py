"""What trained quality-grid models give without training again: prior correction and ensembles.

    .venv/bin/python -m bench.posthoc RUN_DIR [RUN_DIR ...] [--output FILE.md]

Each RUN_DIR is a run of `bench.quality` (``.run/quality/runs/<cell>``: ``model/`` and the
``split.csv`` it was trained with). Every run must share one split, so that no model has
trained on another's hold-out. For each model the leaf probabilities are computed once on
the hold-out (``split.csv``'s ``validation`` rows, a part of the train split) and on the
sources' validation splits (its ``test`` rows), and kept in ``.run/posthoc/``. Then:

- **prior correction** (logit adjustment) of the first run: the leaf probabilities divided by
  the training prior to the power tau, tau from 0 (the model as it is) to 1;
- **ensembles**: the mean of the members' leaf probabilities, for every set of 1 to 3 runs
  and for all runs, ranked by their hold-out leaf accuracy (ties: fewer members first);
- **test-time views** of every run: the mean of its leaf probabilities over fixed views of
  each image (:mod:`model.views`: the image, its mirror image, a zoom on the centre and its
  mirror), as `TEST_VIEWS` names them; the training used the same views' features.

Choosing by the hold-out is the rule; the validation columns are what that choice would
report. Only models decoded from a leaf output (`leaf` and `marginal` heads) qualify.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.harness import REPO_ROOT, shared_data

CACHE = REPO_ROOT / ".run" / "posthoc"
TAUS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
TOP = 12
SPLITS = {"hold-out": "validation", "validation": "test"}
"""Our names of the two evaluated parts against split.csv's."""
TEST_VIEWS = {"image": (0,), "image + mirror": (0, 1), "4 views": (0, 1, 2, 3)}
"""The test-time view sets measured, by name: the views (`model.views`) averaged."""


class PosthocError(RuntimeError):
    """The runs cannot be compared (different splits, a multi-head model)."""


@dataclass(frozen=True)
class Part:
    """Leaf probabilities of one model on one part, with the true leaf and source per image."""

    probabilities: NDArray[np.float32]
    truth: NDArray[np.int64]
    sources: NDArray[np.str_]
    views: tuple[NDArray[np.float32], ...] = ()
    """The leaf probabilities of each test-time view (`model.views`), view 0 first."""

    def averaged(self, views: Sequence[int]) -> NDArray[np.float32]:
        """The mean of the leaf probabilities of ``views`` (a :class:`PosthocError` for a view
        that was not computed)."""
        missing = [v for v in views if v >= len(self.views)]
        if missing:
            raise PosthocError(f"views {missing} were not computed (have {len(self.views)})")
        return np.mean([self.views[v] for v in views], axis=0)


def source_of(image_path: str) -> str:
    """The shared source an image belongs to, from its path."""
    return "product-images" if "/product-images/" in image_path else "fashion-products"


def accuracies(probabilities: NDArray[np.float32], part: Part) -> dict[str, float]:
    """Leaf accuracy per source and over all images of ``part``."""
    right = probabilities.argmax(axis=1) == part.truth
    result = {name: float(right[part.sources == name].mean()) for name in sorted(set(part.sources))}
    result["all"] = float(right.mean())
    return result


def adjust(probabilities: NDArray[np.float32], prior: NDArray[np.float64], tau: float) -> NDArray:
    """Logit adjustment: log p - tau log prior (a leaf never seen in training keeps its rank
    at the smallest prior)."""
    floor = prior[prior > 0].min()
    return np.log(probabilities + 1e-12) - tau * np.log(np.maximum(prior, floor))


def ensembles(
    names: Sequence[str], parts: dict[str, dict[str, Part]], largest: int = 3
) -> list[tuple[tuple[str, ...], dict[str, dict[str, float]]]]:
    """Every set of 1 to ``largest`` runs, and all of them: accuracies of the mean of their
    leaf probabilities, best hold-out accuracy first (ties: fewer members, then names)."""
    sets = {c for k in range(1, largest + 1) for c in itertools.combinations(names, k)}
    sets.add(tuple(names))
    rows = []
    for members in sets:
        figures = {}
        for part_name in SPLITS:
            mean = np.mean([parts[m][part_name].probabilities for m in members], axis=0)
            figures[part_name] = accuracies(mean, parts[members[0]][part_name])
        rows.append((members, figures))
    return sorted(rows, key=lambda r: (-r[1]["hold-out"]["all"], len(r[0]), r[0]))


def view_sets(parts: dict[str, Part]) -> dict[str, dict[str, dict[str, float]]]:
    """Accuracies of each set of `TEST_VIEWS` (those whose views were computed), per part."""
    count = min(len(part.views) for part in parts.values())
    return {
        name: {p: accuracies(part.averaged(views), part) for p, part in parts.items()}
        for name, views in TEST_VIEWS.items()
        if max(views) < count
    }


@functools.cache
def _taxonomy() -> Any:
    """The shared Google taxonomy (the labels name categories deeper than a model's depth)."""
    from model.taxonomy import Taxonomy

    return Taxonomy.load(shared_data() / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt")


def _split_rows(run: Path) -> list[dict[str, str]]:
    with (run / "split.csv").open() as stream:
        return list(csv.DictReader(stream))


def _probabilities(run: Path, rows: list[dict[str, str]], views: int) -> dict[str, Part]:
    """The run's model on both parts, on the first ``views`` test-time views of every image
    (from the cache when its model is unchanged)."""
    from model.classifier import Classifier
    from model.data import LabelRow, load_images
    from model.heads import LEAF_HEAD, decodes_from_leaf
    from model.views import view

    stamp = hashlib.sha256((run / "model" / "model.keras").read_bytes()).hexdigest()[:16]
    cached = CACHE / f"{run.name}-{stamp}.npz"
    classifier = Classifier.load(run / "model", taxonomy=_taxonomy())
    if not decodes_from_leaf(classifier.info.heads):
        raise PosthocError(f"{run}: heads {classifier.info.heads!r} have no leaf output")
    vocabulary, truncated = classifier.vocabulary, classifier.truncated
    parts: dict[str, Part] = {}
    stored = dict(np.load(cached)) if cached.exists() else {}
    for ours, theirs in SPLITS.items():
        chosen = [r for r in rows if r["split"] == theirs]
        truth = np.array([vocabulary.leaf_index(truncated.truncate_id(int(r["google_category_id"])))
                          for r in chosen])  # fmt: skip
        sources = np.array([source_of(r["image_path"]) for r in chosen])
        keys = [ours if number == 0 else f"{ours}@{number}" for number in range(views)]
        if any(key not in stored for key in keys):
            labels = [LabelRow(r["image_path"], int(r["google_category_id"]), r["product_id"])
                      for r in chosen]  # fmt: skip
            images, failed = load_images(labels, Path("/"), classifier.input_size,
                                         cache_dir=REPO_ROOT / ".run" / "quality" / "cache",
                                         progress=False)  # fmt: skip
            if failed:
                raise PosthocError(f"{run}: {len(failed)} images unreadable")
            for number, key in enumerate(keys):
                if key not in stored:
                    stored[key] = np.concatenate(
                        [classifier.predict_raw(view(images[i : i + 64], number))[LEAF_HEAD]
                         for i in range(0, len(images), 64)])  # fmt: skip
        parts[ours] = Part(stored[ours], truth, sources, tuple(stored[key] for key in keys))
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cached, **stored)
    return parts


def _prior(run: Path, rows: list[dict[str, str]]) -> NDArray[np.float64]:
    from model.classifier import Classifier

    classifier = Classifier.load(run / "model", taxonomy=_taxonomy())
    counts = np.zeros(len(classifier.vocabulary.leaves))
    for row in rows:
        if row["split"] == "train":
            leaf = classifier.truncated.truncate_id(int(row["google_category_id"]))
            counts[classifier.vocabulary.leaf_index(leaf)] += 1
    return counts / counts.sum()


def _cells(figures: dict[str, float]) -> str:
    return " | ".join(f"{figures[k]:.4f}" for k in ("product-images", "fashion-products", "all"))


def report(runs: Sequence[Path], command: str, views: int = 4) -> str:
    """Measure and write the page (Markdown); ``views`` test-time views per image."""
    splits = {run: _split_rows(run) for run in runs}
    first = splits[runs[0]]
    for run, rows in splits.items():
        if rows != first:
            raise PosthocError(f"{run} was trained on another split than {runs[0]}")
    names = [run.name for run in runs]
    parts = {run.name: _probabilities(run, splits[run], views) for run in runs}
    head = ("| {} | hold-out: product-images | fashion-products | all "
            "| validation: product-images | fashion-products | all |")  # fmt: skip
    rule = "| --- | --- | --- | --- | --- | --- | --- |"
    lines = [
        "# Prior correction, ensembles and test-time views of trained models",
        "",
        f"Command: `{command}`; shared data: `{shared_data()}`. Leaf accuracy; the hold-out is "
        "the 10% of the train split every run kept apart, the validation the sources' own.",
        "",
        f"## Prior correction of `{names[0]}`",
        "",
        head.format("tau"),
        rule,
    ]
    prior = _prior(runs[0], first)
    base = parts[names[0]]
    for tau in TAUS:
        cells = [_cells(accuracies(adjust(base[p].probabilities, prior, tau), base[p]))
                 for p in SPLITS]  # fmt: skip
        lines.append(f"| {tau:.1f} | {cells[0]} | {cells[1]} |")
    ranked = ensembles(names, parts)
    singles = [row for row in ranked if len(row[0]) == 1]
    everything = [row for row in ranked if len(row[0]) == len(names)]
    sections = (
        ("Each model alone", singles),
        (f"All {len(names)} together", everything),
        (f"The {TOP} best sets of 1 to 3 by the hold-out", ranked[:TOP]),
    )
    lines += ["", "## Ensembles (the mean of the members' leaf probabilities)"]
    for title, rows in sections:
        lines += ["", f"### {title}", "", head.format("members"), rule]
        for members, figures in rows:
            lines.append(f"| {' + '.join(members)} | {_cells(figures['hold-out'])} "
                         f"| {_cells(figures['validation'])} |")  # fmt: skip
    lines += ["", "## Test-time views (the mean of one model's leaf probabilities over views)",
              "", head.format("model, views"), rule]  # fmt: skip
    for name in names:
        for label, figures in view_sets(parts[name]).items():
            lines.append(f"| {name}, {label} | {_cells(figures['hold-out'])} "
                         f"| {_cells(figures['validation'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the runs, measure, write the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs/results/posthoc.md")
    parser.add_argument("--views", type=int, default=4, choices=range(1, 5),
                        help="test-time views per image (model.views), 1 to 4")  # fmt: skip
    args = parser.parse_args(argv)
    command = "python -m bench.posthoc " + " ".join(str(r) for r in args.runs)
    args.output.write_text(report(args.runs, command, args.views))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
