"""Image only, text only and the two fused, on one labelled source's validation split.

    python -m bench.fusion --image-model DIR --text-model DIR \
        [--labels ../shared/data/fashion-products/labels.csv] [--text-weight 1.0 ...]

Both models must be trained on the same truncated taxonomy; the validation split is the
labels file's own (70/15/15 where it has none), so neither model saw it in training. Prints a
markdown table (leaf accuracy: the chosen leaf is the true one, at whatever depth the leaf
is; accuracy per level, over the rows whose true path reaches it; coverage: CLASSIFIED at
the threshold) and,
with ``--output``, writes it with a JSON copy. Every ``--text-weight`` given is a row; the
default fusion weight is 1 (the text's likelihood ratio counts as much as the image).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.classifier import Classifier
from model.data import assign_splits, read_labels
from model.decode import Prediction
from model.fusion import FusionSettings, LateFusion, Scored, scored_outputs
from model.taxonomy import TruncatedTaxonomy
from model.text_classifier import TextClassifier
from model.text_train import row_text

SHARED = Path(os.environ.get("SHARED_DATA", "../shared/data"))
_BATCH = 64


def image_scores(classifier: Classifier, paths: Sequence[Path]) -> list[Scored]:
    """The image model's answers for image files, in batches."""
    out: list[Scored] = []
    for start in range(0, len(paths), _BATCH):
        batch = np.stack([classifier.prepare(path) for path in paths[start : start + _BATCH]])
        outputs = classifier.predict_raw(batch)
        out += scored_outputs(classifier.decoder, classifier.info.heads, outputs)
    return out


def level_accuracy(
    truncated: TruncatedTaxonomy, predictions: Sequence[Prediction], truth: Sequence[int]
) -> list[float]:
    """Per level, how often the chosen leaf's node at that level is the true one's."""
    depth = truncated.depth
    hits = np.zeros(depth)
    counts = np.zeros(depth)
    for prediction, true_id in zip(predictions, truth, strict=True):
        true_path = truncated.path_ids(true_id)
        chosen = truncated.path_ids(prediction.leaf_id)
        for level in range(len(true_path)):
            counts[level] += 1
            hits[level] += level < len(chosen) and chosen[level] == true_path[level]
    return [float(h / c) if c else float("nan") for h, c in zip(hits, counts, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print the table (and write it with ``--output``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-model", type=Path, required=True)
    parser.add_argument("--text-model", type=Path, required=True)
    parser.add_argument("--labels", type=Path, default=SHARED / "fashion-products/labels.csv")
    parser.add_argument("--images", type=Path, default=None, help="default: the labels' folder")
    parser.add_argument("--text-weight", type=float, nargs="+", default=[1.0])
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--output", type=Path, default=None, help="folder for fusion.md/.json")
    args = parser.parse_args(argv)

    started = time.monotonic()
    image = Classifier.load(args.image_model, threshold=args.threshold)
    text = TextClassifier.load(args.text_model, threshold=args.threshold)
    truncated = image.truncated
    if (image.info.taxonomy_version, image.info.depth) != (
        text.info.taxonomy_version,
        text.info.depth,
    ):
        raise SystemExit("the two models were trained on different taxonomies or depths")
    images_dir = args.images or args.labels.parent
    rows = assign_splits(read_labels(args.labels), truncated)
    rows = [r for r in rows if r.split == "validation"]
    truth = [truncated.truncate_id(r.category_id) for r in rows]
    print(f"{len(rows)} validation rows of {args.labels}", file=sys.stderr)

    image_answers = image_scores(image, [images_dir / r.image for r in rows])
    texts = [row_text(r) for r in rows]
    features = text.featurizer.transform(texts)
    text_answers = scored_outputs(text.decoder, text.info.heads, text.predict_raw(features))
    has_text = ~features.empty()

    results: list[dict[str, Any]] = []

    def add(name: str, predictions: Sequence[Prediction]) -> None:
        covered = sum(p.status == "CLASSIFIED" for p in predictions) / len(predictions)
        leaf = sum(p.leaf_id == t for p, t in zip(predictions, truth, strict=True)) / len(truth)
        results.append(
            {
                "signals": name,
                "leaf_accuracy": leaf,
                "accuracy_by_level": level_accuracy(truncated, predictions, truth),
                "coverage": covered,
            }
        )

    add("image only", [s.prediction for s in image_answers])
    add("text only", [s.prediction for s in text_answers])
    for weight in args.text_weight:
        fusion = LateFusion(
            image.vocabulary,
            text.vocabulary,
            settings=FusionSettings(text_weight=weight),
            threshold=args.threshold,
        )
        fused = fusion.decide(image_answers, text_answers)
        # A row without text is answered by the image alone, as the service does.
        pairs = zip(fused, image_answers, has_text, strict=True)
        chosen = [f if t else i.prediction for f, i, t in pairs]
        add(f"fused (text weight {weight:g})", chosen)

    depth = truncated.depth
    header = "| signals | leaf | " + " | ".join(f"level {k}" for k in range(1, depth + 1))
    lines = [
        f"Validation split of `{args.labels}` ({len(rows)} rows), threshold {args.threshold}:",
        "",
        header + " | coverage |",
        "| --- |" + " --- |" * (depth + 2),
    ]
    for result in results:
        levels = " | ".join("-" if a != a else f"{a:.4f}" for a in result["accuracy_by_level"])
        lines.append(
            f"| {result['signals']} | {result['leaf_accuracy']:.4f} | {levels} "
            f"| {result['coverage']:.4f} |"
        )
    command = "python -m bench.fusion " + " ".join(argv if argv is not None else sys.argv[1:])
    lines += ["", f"Command: `{command}` ({time.monotonic() - started:.0f} s)."]
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "fusion.md").write_text(table + "\n")
        payload = {"rows": len(rows), "threshold": args.threshold, "results": results}
        (args.output / "fusion.json").write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
