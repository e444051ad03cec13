"""Keras against LiteRT float, dynamic-range and int8 on the demo's EfficientNet-Lite0 model.

Materialises the demo's pretrained model (`service/demo_assets/heads/` with the packaged
ImageNet backbone), runs `model.litert.export_litert` on it with both quantisations (int8
calibrated on training images of both shared sources), then measures each runtime again,
interleaved, at batch 32 on real validation photos, and puts the figures beside the
validation accuracy the export measured on the sources' own validation splits (leaf accuracy
at depth 4, the same decoding as `enrich evaluate`).

    python -m bench.runtimes [--rounds 7] [--calibration 300] [--output docs/results]

Writes ``runtimes.md`` and ``runtimes.json`` under ``--output``; the work (model, decoded
images) goes under ``.run/runtimes``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from bench.checkout import checkout_label

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
WORK = REPO / ".run" / "runtimes"
SOURCES = ("product-images", "fashion-products")
LABELS = {
    "keras": "Keras (TensorFlow)",
    "none": "LiteRT float32",
    "dynamic": "LiteRT dynamic-range",
    "int8": "LiteRT int8",
}


def run(rounds: int, calibration_count: int) -> dict[str, Any]:
    """Export, measure and return every figure of the page."""
    from model.bundle import materialise
    from model.classifier import read_model_directory
    from model.litert import LiteRTRuntime, export_litert, measure_speed, read_labelled
    from model.runtime import KerasRuntime, cpu_threads
    from model.taxonomy import Taxonomy
    from service.demo import HEADS_DIR

    model_dir = WORK / "model"
    if model_dir.exists():
        for item in model_dir.iterdir():
            item.unlink()
    materialise(HEADS_DIR, model_dir)
    keras_model, metadata, _ = read_model_directory(model_dir, taxonomy=None, modality="image")
    size, depth = int(metadata["input_size"]), int(metadata["taxonomy"]["depth"])
    taxonomy = SHARED / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt"
    truncated = Taxonomy.load(taxonomy).truncate(depth)
    sources = tuple((SHARED / name / "labels.csv", SHARED / name) for name in SOURCES)
    cache = WORK / "cache"
    validation = read_labelled(sources, truncated, "validation", size, cache_dir=cache)
    calibration = read_labelled(
        sources, truncated, "train", size, limit=calibration_count, cache_dir=cache
    )
    began = time.perf_counter()
    entry = export_litert(
        model_dir,
        quantizations=("dynamic", "int8"),
        calibration=calibration.images,
        validation=validation,
    )
    export_s = time.perf_counter() - began
    _, metadata, _ = read_model_directory(model_dir, taxonomy=None, modality="image")
    threads = cpu_threads()
    runtimes: dict[str, Any] = {"keras": KerasRuntime(keras_model)}
    for name in entry["files"]:
        runtimes[name] = LiteRTRuntime.from_directory(
            model_dir, metadata, name, num_threads=threads
        )
    speeds = measure_speed(runtimes, validation.images[:32], batch=32, rounds=rounds)
    return {
        "entry": entry,
        "speeds": speeds,
        "export_s": export_s,
        "threads": threads,
        "validation_images": len(validation.images),
        "calibration_images": len(calibration.images),
        "model": {k: metadata[k] for k in ("name", "version", "backbone", "input_size", "heads")},
    }


def _row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    entry = result["entry"]
    figures = entry["keras"] if name == "keras" else entry["files"][name]
    keras_validation = entry["keras"]["validation"]
    validation = figures["validation"]
    return {
        "runtime": name,
        "file": "model.keras" if name == "keras" else figures["file"],
        "megabytes": None if name == "keras" else round(figures["bytes"] / 1e6, 2),
        "images_per_s": round(result["speeds"][name], 1),
        "speedup": round(result["speeds"][name] / result["speeds"]["keras"], 2),
        "accuracy": validation["accuracy"],
        "change_points": round(100 * (validation["accuracy"] - keras_validation["accuracy"]), 2),
        "sources": {s: v["accuracy"] for s, v in validation["sources"].items()},
        "max_abs_difference": figures.get("max_abs_difference"),
        "top1_agreement": figures.get("top1_agreement"),
        "default": name == entry["default"],
    }


def markdown(result: dict[str, Any], command: str) -> str:
    """The page: the command, the setting, the table, the default and the tolerance."""
    entry = result["entry"]
    rows = [_row(name, result) for name in ("keras", *entry["files"])]
    sources = list(rows[0]["sources"])
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    lines = [
        "# Runtimes: Keras against LiteRT (float, dynamic-range, int8)",
        "",
        f"Run on {time.strftime('%Y-%m-%d')} from `{result['commit']}` on this "
        f"project's {os.cpu_count()}-core CPU machine (no GPU; {platform.processor() or 'x86_64'},"
        f" shared with other work: load average {load[0]:.1f} at the end):",
        "",
        f"    {command}",
        "",
        f"Model: the demo's `{result['model']['name']}` ({result['model']['backbone']}, "
        f"{result['model']['input_size']} px, `{result['model']['heads']}` heads), materialised "
        "from `service/demo_assets/heads/`. Accuracy: leaf accuracy at depth 4 on the validation "
        f"splits of {' and '.join(f'`{s}/`' for s in sources)} ({result['validation_images']:,} "
        "photos no training saw), decoded as `enrich evaluate` does. int8 is calibrated on "
        f"{result['calibration_images']} training photos of both sources. Speed: median images/s "
        f"of {result['rounds']} interleaved rounds at batch 32 on real photos (decoding "
        f"excluded), LiteRT with XNNPACK on {result['threads']} threads. Difference and "
        f"agreement: against the Keras model on {entry['probe']['images']} validation photos "
        "(largest probability difference on any head; share of the same top leaf).",
        "",
        "| runtime | file | MB | images/s | x Keras | leaf accuracy | change (points) | "
        + " | ".join(sources)
        + " | max difference | top-1 agreement |",
        "| --- | --- | --- | --- | --- | --- | --- | "
        + " | ".join("---" for _ in sources)
        + " | --- | --- |",
    ]
    for row in rows:
        label = LABELS[row["runtime"]] + (" (default)" if row["default"] else "")
        difference = "" if row["max_abs_difference"] is None else f"{row['max_abs_difference']:.1e}"
        agreement = "" if row["top1_agreement"] is None else f"{row['top1_agreement']:.3f}"
        lines.append(
            f"| {label} | `{row['file']}` | {row['megabytes'] or ''} | "
            f"{row['images_per_s']:.0f} | {row['speedup']:.2f} | {row['accuracy']:.4f} | "
            f"{row['change_points']:+.2f} | "
            + " | ".join(f"{row['sources'][s]:.4f}" for s in sources)
            + f" | {difference} | {agreement} |"
        )
    lines += [
        "",
        f"Default flat buffer (`ENRICH_RUNTIME=auto` on a CPU, or `litert`): "
        f"`{entry['files'][entry['default']]['file']}`: {entry['default_reason']}. The rule "
        f"(`model.litert.pick_default`): the fastest of the float flat buffer and the quantised "
        f"ones that lose at most {entry['tolerance']['max_accuracy_drop_points']} points of "
        "validation accuracy against Keras. The float flat buffer must agree with Keras within "
        f"{entry['tolerance']['float_max_abs_difference']:.0e} on every probability, or the "
        f"export fails. Export (three conversions and every measurement): "
        f"{result['export_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run, print the table and write the page and its JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calibration", type=int, default=300)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    words = argv if argv is not None else sys.argv[1:]
    niceness = os.nice(0)
    command = (f"nice -n {niceness} " if niceness else "") + "python -m bench.runtimes "
    command += " ".join(shlex.quote(w) for w in words)
    result = run(args.rounds, args.calibration)
    commit = checkout_label("model", "bench")
    result.update(rounds=args.rounds, commit=commit, command=command.strip())
    text = markdown(result, command.strip())
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "runtimes.md").write_text(text)
    (args.output / "runtimes.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
