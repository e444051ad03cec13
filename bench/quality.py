"""`make quality`: the transfer-learning quality grid on both shared sources, into docs/results/.

For every backbone variant x depth x head design x seed: `model.transfer.train_transfer` on
the train splits of `product-images/` and `fashion-products/` together (early stopping and
every choice on a 10% hold-out of the train split), then `model.evaluate.evaluate` of the
exported model on the sources' own validation splits, which training never sees. Backbone
features are cached under `.run/quality/cache`, so seeds and head designs reuse them (and a
rerun computes none).

    python -m bench.quality            # the grid (about 1.5 h on 2 cores, cold cache)
    python -m bench.quality --quick    # Lite0 frozen, depth 4 and 5, 3 heads x 3 seeds

Writes `docs/results/quality.json` (every run), `quality.md` (means over seeds with the
spread), `accuracy_vs_speed.png`, and each seed-0 run's full report under
`docs/results/<variant>-d<depth>-<heads>/`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.checkout import checkout_label

REPO = Path(__file__).resolve().parent.parent
COMMIT = "unknown"  # set by main() when the run starts
SHARED = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
RUNS = REPO / ".run" / "quality"
HEADS = ("leaf", "multi", "marginal")
SEEDS = (0, 1, 2)
DEPTHS = (4, 5)


@dataclass(frozen=True)
class Variant:
    """One backbone setting of the grid."""

    name: str
    backbone: str
    fine_tune_blocks: int = 0
    fine_tune_epochs: int = 3
    feature_views: int = 2
    augmented_epochs: int = 0


GRID = (
    Variant("lite0-frozen", "efficientnet_lite0"),
    Variant("lite0-tuned", "efficientnet_lite0", fine_tune_blocks=2),
    Variant("lite0-tuned5", "efficientnet_lite0", fine_tune_blocks=5),
    Variant("lite1-frozen", "efficientnet_lite1"),
    Variant("lite1-tuned", "efficientnet_lite1", fine_tune_blocks=2),
    Variant("lite1-tuned5", "efficientnet_lite1", fine_tune_blocks=5),
    Variant("lite1-tuned8", "efficientnet_lite1", fine_tune_blocks=8),
    Variant("lite1-tuned5-long", "efficientnet_lite1", fine_tune_blocks=5, fine_tune_epochs=10),
    Variant("lite1-tuned5-zoom", "efficientnet_lite1", fine_tune_blocks=5, feature_views=4),
    Variant("lite1-tuned5-aug", "efficientnet_lite1", fine_tune_blocks=5, augmented_epochs=5),
    Variant("lite1-tuned5-aug10", "efficientnet_lite1", fine_tune_blocks=5, augmented_epochs=10),
    Variant("lite2-frozen", "efficientnet_lite2"),
)
VARIANTS = {variant.name: variant for variant in GRID}
QUICK = ("lite0-frozen",)


def _sources() -> tuple[tuple[Path, Path], ...]:
    return tuple(
        (SHARED / name / "labels.csv", SHARED / name)
        for name in ("product-images", "fashion-products")
    )


def _values() -> tuple[Path, ...]:
    return tuple(
        SHARED / name / "business-value.csv" for name in ("product-images", "fashion-products")
    )


def run_one(variant: Variant, depth: int, heads: str, seed: int, out: Path) -> dict[str, Any]:
    """Train and evaluate one cell of the grid; return its figures."""
    from model.backbones import IMAGENET_LITE
    from model.evaluate import EvaluateConfig, evaluate
    from model.train import TrainConfig
    from model.transfer import train_transfer

    name = f"{variant.name}-d{depth}-{heads}"
    run_dir = RUNS / "runs" / f"{name}-s{seed}"
    sources = _sources()
    values = _values()
    config = TrainConfig(
        labels=sources[0][0],
        images_root=sources[0][1],
        sources=sources,
        taxonomy=SHARED / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt",
        output=run_dir,
        depth=depth,
        backbone=variant.backbone,
        image_size=None,
        weights=IMAGENET_LITE,
        heads=heads,  # type: ignore[arg-type]
        epochs=40,
        batch_size=64,
        learning_rate=1e-3,
        patience=6,
        holdout=0.1,
        business_values=values[0],
        business_values_files=values[1:],
        fine_tune_blocks=variant.fine_tune_blocks,
        fine_tune_epochs=variant.fine_tune_epochs,
        feature_views=variant.feature_views,
        augmented_epochs=variant.augmented_epochs,
        cache_dir=RUNS / "cache",
        seed=seed,
        name=f"quality-{name}",
        verbose=0,
    )
    began = time.monotonic()
    result = train_transfer(config)
    train_s = time.monotonic() - began
    report_dir = out / name if seed == 0 else run_dir / "evaluation"
    report = evaluate(
        EvaluateConfig(
            model_dir=result.model_dir,
            labels=None,
            images_root=None,
            sources=sources,
            taxonomy=config.taxonomy,
            business_values=values,
            output=report_dir,
            split="validation",
            cache_dir=RUNS / "cache",
            progress=False,
        )
    )
    metadata = json.loads((result.model_dir / "metadata.json").read_text())
    return {
        "commit": COMMIT,
        "variant": variant.name,
        "backbone": variant.backbone,
        "fine_tune_blocks": variant.fine_tune_blocks,
        "fine_tune_epochs": variant.fine_tune_epochs,
        "feature_views": variant.feature_views,
        "augmented_epochs": variant.augmented_epochs,
        "depth": depth,
        "heads": heads,
        "seed": seed,
        "train_s": round(train_s, 1),
        "transfer": metadata["training"]["transfer"],
        "holdout_weighted_score": result.best_score,
        "leaf_accuracy": report["leaf_accuracy"],
        "macro_accuracy": report["macro_accuracy"],
        "weighted_score": report["weighted_score"],
        "macro_f1": report["macro_f1"],
        "ece": report["ece"],
        "images_per_s": report["inference"]["images_per_s"],
        "sources": {
            source["name"]: {
                key: source.get(key)
                for key in (
                    "images",
                    "leaf_accuracy",
                    "macro_accuracy",
                    "weighted_score",
                    "macro_f1",
                )
            }
            for source in report["sources"]
        },
    }


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {statistics.pstdev(values):.4f}"


def summarise(results: list[dict[str, Any]], out: Path, command: str) -> None:
    """Write quality.md (means over seeds with the spread) and the accuracy/speed picture."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["variant"], row["depth"], row["heads"]), []).append(row)
    sources = sorted({s for row in results for s in row["sources"]})
    commits = sorted({str(row.get("commit", "unknown")) for row in results})
    lines = [
        "# Quality grid: pretrained backbones x head designs x seeds",
        "",
        f"Run on {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU "
        f"cores, from commit(s) {', '.join(f'`{c}`' for c in commits)}:",
        "",
        f"    {command}",
        "",
        "Trained on the train splits of `product-images/` and `fashion-products/` together "
        "(early stopping on a 10% hold-out of the train split); evaluated on both sources' "
        "own validation splits. Mean over seeds ± population standard deviation.",
        "",
        "| variant | depth | heads | seeds | hold-out weighted | leaf acc. (micro) | macro acc. "
        "| weighted | macro-F1 | ECE | "
        + " | ".join(f"{s} leaf acc." for s in sources)
        + " | images/s | train s |",
        "|" + " --- |" * (12 + len(sources)),
    ]
    for (variant, depth, heads), rows in sorted(groups.items()):
        cells = [
            variant,
            str(depth),
            heads,
            str(len(rows)),
            *(
                _mean_spread([r[key] for r in rows])
                for key in (
                    "holdout_weighted_score",
                    "leaf_accuracy",
                    "macro_accuracy",
                    "weighted_score",
                    "macro_f1",
                    "ece",
                )
            ),
            *(
                _mean_spread([r["sources"][s]["leaf_accuracy"] for r in rows if s in r["sources"]])
                for s in sources
            ),
            f"{statistics.fmean(r['images_per_s'] or 0.0 for r in rows):.0f}",
            f"{statistics.fmean(r['train_s'] for r in rows):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    _plot(groups, out / "accuracy_vs_speed.png")


def _plot(groups: dict[tuple[str, int, str], list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=False)
    markers = {"leaf": "o", "multi": "s", "marginal": "^"}
    for axis, depth in zip(axes, DEPTHS, strict=True):
        for (variant, d, heads), rows in sorted(groups.items()):
            if d != depth:
                continue
            accuracy = [r["leaf_accuracy"] for r in rows]
            speed = statistics.fmean(r["images_per_s"] or 0.0 for r in rows)
            spread = statistics.pstdev(accuracy) if len(accuracy) > 1 else 0.0
            axis.errorbar(
                speed, statistics.fmean(accuracy), yerr=spread, marker=markers[heads],
                capsize=3, label=f"{variant} {heads}",
            )  # fmt: skip
        axis.set_title(f"depth {depth}: leaf accuracy against inference speed")
        axis.set_xlabel("images/s (this CPU, batch 64)")
        axis.set_ylabel("leaf accuracy, validation (mean ± sd over seeds)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Lite0 frozen only (under 15 min)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument(
        "--variants", nargs="+", choices=sorted(VARIANTS), help="only these backbone variants"
    )
    parser.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    parser.add_argument("--fresh", action="store_true", help="forget earlier cells")
    parser.add_argument(
        "--resume", action="store_true", help="skip the cells quality.json already has"
    )
    parser.add_argument("--depths", nargs="+", type=int, choices=DEPTHS, default=list(DEPTHS))
    args = parser.parse_args(argv)
    if not (SHARED / "fashion-products" / "labels.csv").is_file():
        print(f"quality: no shared data at {SHARED} (set SHARED_DATA)", file=sys.stderr)
        return 1
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    global COMMIT
    COMMIT = checkout_label()
    args.output.mkdir(parents=True, exist_ok=True)
    names = args.variants or (QUICK if args.quick else tuple(VARIANTS))
    cells = [
        (VARIANTS[name], depth, heads, seed)
        for name in names
        for depth in args.depths
        for heads in args.heads
        for seed in SEEDS[: args.seeds]
    ]
    command = "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    commands_path = args.output / "quality.commands"
    commands = commands_path.read_text().splitlines() if commands_path.exists() else []
    if args.fresh:
        commands = []
    commands_path.write_text("\n".join(dict.fromkeys([*commands, command.strip()])) + "\n")
    results_path = args.output / "quality.json"
    # Earlier cells stay (a rerun of the same cell replaces it), so the grid can be run in
    # parts, e.g. one variant at a time, and resumed.
    results: list[dict[str, Any]] = (
        json.loads(results_path.read_text()) if results_path.exists() and not args.fresh else []
    )
    if args.resume:
        done = {(r["variant"], r["depth"], r["heads"], r["seed"]) for r in results}
        cells = [cell for cell in cells if (cell[0].name, *cell[1:]) not in done]
    began = time.monotonic()
    for number, (variant, depth, heads, seed) in enumerate(cells, start=1):
        row = run_one(variant, depth, heads, seed, args.output)
        key = (variant.name, depth, heads, seed)
        results = [r for r in results if (r["variant"], r["depth"], r["heads"], r["seed"]) != key]
        results.append(row)
        results_path.write_text(json.dumps(results, indent=1))
        summarise(results, args.output, "\n    ".join(dict.fromkeys([*commands, command.strip()])))
        print(
            f"[{number}/{len(cells)} {time.monotonic() - began:.0f}s] {variant.name} d{depth} "
            f"{heads} seed {seed}: leaf {row['leaf_accuracy']:.4f} weighted "
            f"{row['weighted_score']:.4f} ({row['train_s']:.0f}s)",
            flush=True,
        )
    print(f"quality grid: {len(results)} runs in {time.monotonic() - began:.0f}s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
