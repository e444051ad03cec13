"""The frontier, in one run (issue 16, item 3): accuracy against end-to-end products/s on a CPU.

For every candidate CPU model, EfficientNet-Lite0 with `marginal` heads at 128, 160 and 224 px
and Lite1 at 240 px (trained as `make demo-heads` trains the demo's heads; the 224 px one is
the demo's own), each under Keras, LiteRT float32 and LiteRT int8, and today's from-scratch
default MobileNetV3-Small at 128 px (Keras), it measures:

- validation accuracy: depth-4 leaf accuracy on the validation splits of `product-images/`
  and `fashion-products/`, as `enrich export-litert` measures it for each runtime (the
  decoding of `enrich evaluate`); MobileNetV3-Small's is the documented figure of
  `docs/results/scratch/` (training it again costs 25 minutes a model on this machine);
- solo inference images/s: `model.litert.measure_speed`, every runtime of one input size
  interleaved, at the service's batch size, on real photos (decoding excluded);
- end-to-end warm products/s: `enrich serve` as a child process on real Kafka and Redis with
  `ENRICH_RUNTIME` set for the runtime, through a backlog whose every image is already in
  Redis (`bench.service_bench.Bench`: from ready to the last output's timestamp);
- their ratio, the model's size, whether it is on the Pareto frontier;

then draws accuracy against products/s and names the CPU default it recommends, and why.

    deploy/local/with-services.sh nice -n 10 .venv/bin/python -m bench.frontier

Trained models and their flat buffers are kept under `.run/frontier/` (a rerun skips
training and conversion; `--fresh` redoes them); features and decoded images are cached in
`.run/quality/cache` as `make quality` does. Writes `frontier.md`, `frontier.json` and
`frontier.png` under `--output` (default `docs/results/frontier/`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.checkout import checkout_label
from bench.frontier_points import (
    ACCURACY_TARGET,
    CACHE,
    DEFAULT_MODELS,
    FILL_PHOTOS,
    RATE_TARGET,
    REPO,
    RUNTIMES,
    SCRATCH,
    SOURCES,
    TARGET_SOURCE,
    WARM_SECONDS,
    WORK,
    Point,
    Spec,
    accuracy_of,
    analysis,
    command_line,
    frontier,
    markdown,
    method,
    not_measured,
    parse_spec,
    plot,
    recommend,
    recommended_commands,
    say,
    warm_products,
)


def _shared() -> Path:
    from bench.harness import shared_data

    return shared_data()


def _data_args(shared: Path) -> list[str]:
    args: list[str] = []
    for source in SOURCES:
        args += ["--labels", str(shared / source / "labels.csv"), "--images", str(shared / source)]
    taxonomy = shared / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt"
    return [*args, "--taxonomy", str(taxonomy)]


def train_args(spec: Spec, shared: Path, output: Path) -> list[str]:
    """`enrich train` for ``spec``: `make demo-heads`' recipe at the spec's size."""
    values: list[str] = []
    for source in SOURCES:
        values += ["--business-values", str(shared / source / "business-value.csv")]
    return [
        "train", *_data_args(shared), *values,
        "--backbone", spec.backbone, "--weights", "imagenet-lite", "--heads", "marginal",
        "--image-size", str(spec.size), "--holdout", "0.1", "--batch-size", "64",
        "--learning-rate", "1e-3", "--epochs", "40", "--name", f"frontier-{spec.key}-marginal",
        *(["--fine-tune-blocks", str(spec.tuned)] if spec.tuned else []),
        "--cache-dir", CACHE, "--output", str(output), "--verbose", "0",
    ]  # fmt: skip


def export_args(model_dir: Path, shared: Path) -> list[str]:
    """`enrich export-litert` with int8, accuracy measured on both sources' validation."""
    return ["export-litert", str(model_dir), "--quantize", "int8", *_data_args(shared),
            "--cache-dir", CACHE]  # fmt: skip


def enrich(args: Sequence[str], log: Path) -> float:
    """Run ``enrich ARGS`` (this interpreter, the repository's code); its output to ``log``;
    returns the seconds it took. Raises RuntimeError when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with log.open("ab") as stream:
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            cwd=REPO,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"enrich {args[0]} failed ({done.returncode}); see {log}")
    return time.monotonic() - began


def _metadata(model_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((model_dir / "metadata.json").read_text())
    return result


def _complete(model_dir: Path) -> bool:
    return (model_dir / "checksums.sha256").is_file() and (model_dir / "metadata.json").is_file()


def _exported(model_dir: Path) -> bool:
    if not _complete(model_dir):
        return False
    entry = _metadata(model_dir).get("litert") or {}
    return {"none", "int8"} <= set(entry.get("files", {})) and "validation" in entry.get(
        "keras", {}
    )


def demo_heads(spec: Spec) -> Path | None:
    """The demo's heads bundle when it is ``spec``'s backbone and size."""
    from service.demo import HEADS_DIR

    bundle = json.loads((HEADS_DIR / "bundle.json").read_text())
    same = bundle.get("backbone") == spec.backbone and int(bundle["input_size"]) == spec.size
    return HEADS_DIR if same and not spec.tuned else None


def prepare(spec: Spec, shared: Path, fresh: bool, timings: dict[str, Any]) -> Path:
    """``spec``'s model directory with its float and int8 flat buffers, trained and exported
    unless a complete one is under `WORK` already."""
    run_dir = WORK / spec.key
    model_dir = run_dir / "model"
    log = WORK / "logs" / f"{spec.key}.log"
    if fresh or not _complete(model_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        heads = demo_heads(spec)
        began = time.monotonic()
        if heads is not None:
            from model.bundle import materialise

            say(f"{spec.key}: materialising the demo's heads ({heads})")
            materialise(heads, model_dir)
        else:
            say(f"{spec.key}: training (log {log})")
            enrich(train_args(spec, shared, run_dir), log)
        timings["train_s"] = round(time.monotonic() - began, 1)
    else:
        say(f"{spec.key}: reusing {model_dir}")
    if fresh or not _exported(model_dir):
        say(f"{spec.key}: export-litert --quantize int8 (log {log})")
        timings["export_s"] = round(enrich(export_args(model_dir, shared), log), 1)
    record = run_dir / "frontier-timings.json"
    if timings:
        record.write_text(json.dumps(timings))
    elif record.exists():
        timings.update(json.loads(record.read_text()), reused=True)
    timings.update(recipe(spec))
    return model_dir


def recipe(spec: Spec) -> dict[str, str]:
    """How ``spec``'s model is made, as commands to type (``$S``: the shared data)."""
    directory = Path(f"runs/{spec.key}")
    if demo_heads(spec) is not None:
        made = (
            'python -c "from pathlib import Path; from model.bundle import materialise; '
            f"materialise(Path('service/demo_assets/heads'), Path('{directory}/model'))\""
        )
    else:
        made = "enrich " + " ".join(train_args(spec, Path("$S"), directory))
    exported = "enrich " + " ".join(export_args(directory / "model", Path("$S")))
    return {"made_by": made, "exported_by": exported, "directory": f"{directory}/model"}


def serving_copy(model_dir: Path, variant: str, target: Path) -> Path:
    """A copy of ``model_dir`` whose default flat buffer is ``variant``, so that
    ``ENRICH_RUNTIME=litert`` serves it (the service serves a directory's default)."""
    from model.classifier import listed_checksums, write_checksums

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(model_dir, target)
    metadata = _metadata(target)
    metadata["litert"] = {
        **metadata["litert"],
        "default": variant,
        "default_reason": f"{variant}: set by bench.frontier to serve this flat buffer",
    }
    (target / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    write_checksums(target, list(listed_checksums(target)))
    return target


def scratch_accuracy() -> tuple[dict[str, float], str]:
    """MobileNetV3-Small's documented validation accuracy (docs/results/scratch/leaf)."""
    report = REPO / "docs" / "results" / "scratch" / "leaf" / "report.json"
    if not report.exists():
        return {}, "not measured"
    data = json.loads(report.read_text())
    return {TARGET_SOURCE: float(data["leaf_accuracy"])}, (
        "MobileNetV3-Small: the documented figure of docs/results/scratch/leaf (trained from "
        f"scratch on `{TARGET_SOURCE}` only, `leaf` heads, 25 minutes, "
        f"{data['data']['images']} validation photos); not retrained here, so no both-source "
        "figure; the speeds are of an untrained model of the same architecture and size"
    )


@dataclass
class Candidate:
    """A point to measure and where its model is served from."""

    point: Point
    serve_dir: Path
    runtime: str
    """``ENRICH_RUNTIME`` for it: ``keras`` or ``litert``."""
    model_dir: Path


def candidates(
    specs: Sequence[Spec], shared: Path, fresh: bool, timings: dict[str, Any]
) -> list[Candidate]:
    """Every model prepared, every runtime of it a candidate; MobileNetV3-Small last."""
    from bench.service_limits import default_model

    found: list[Candidate] = []
    for spec in specs:
        stage: dict[str, Any] = {}
        model_dir = prepare(spec, shared, fresh, stage)
        timings[spec.key] = stage
        entry = _metadata(model_dir)["litert"]
        stage["export_default"] = entry["default"]
        for variant in RUNTIMES:
            key = f"{spec.key}-{variant}"
            if variant == "keras":
                serve_dir, runtime = model_dir, "keras"
                megabytes = (model_dir / "model.keras").stat().st_size / 1e6
            else:
                serve_dir = serving_copy(model_dir, variant, WORK / "serve" / key)
                runtime = "litert"
                megabytes = entry["files"][variant]["bytes"] / 1e6
            point = Point(
                key,
                spec.label,
                spec.backbone,
                spec.size,
                variant,
                accuracy=accuracy_of(entry, variant),
                megabytes=round(megabytes, 2),
            )
            found.append(Candidate(point, serve_dir, runtime, model_dir))
    backbone, label, size = SCRATCH
    model_dir = default_model(shared, WORK / f"{backbone}-{size}")
    accuracy, note = scratch_accuracy()
    point = Point(
        f"mnv3s-{size}-keras",
        label,
        backbone,
        size,
        "keras",
        accuracy=accuracy,
        accuracy_note=note,
        megabytes=round((model_dir / "model.keras").stat().st_size / 1e6, 2),
    )
    found.append(Candidate(point, model_dir, "keras", model_dir))
    return found


def by_size(found: Sequence[Candidate]) -> dict[int, list[Candidate]]:
    """Candidates grouped by input size (one image cache and one speed round each)."""
    groups: dict[int, list[Candidate]] = {}
    for candidate in found:
        groups.setdefault(candidate.point.size, []).append(candidate)
    return groups


def solo(found: Sequence[Candidate], photos: Sequence[Any], batch: int, rounds: int) -> None:
    """Each candidate's solo images/s, runtimes of one size interleaved (`measure_speed`)."""
    import keras
    import numpy as np

    from model.classifier import read_model_directory
    from model.litert import LiteRTRuntime, measure_speed
    from model.preprocess import decode_image
    from model.runtime import KerasRuntime, cpu_threads

    for size, group in by_size(found).items():
        runtimes: dict[str, Any] = {}
        loaded: dict[Path, tuple[Any, dict[str, Any]]] = {}
        for c in group:
            if c.model_dir not in loaded:
                model, metadata, _ = read_model_directory(
                    c.model_dir, taxonomy=None, modality="image"
                )
                loaded[c.model_dir] = (model, metadata)
            model, metadata = loaded[c.model_dir]
            runtimes[c.point.key] = (
                KerasRuntime(model)
                if c.point.variant == "keras"
                else LiteRTRuntime.from_directory(
                    c.model_dir, metadata, c.point.variant, num_threads=cpu_threads()
                )
            )
        images = np.stack([decode_image(p.data, size) for p in photos[:batch]])
        say(f"solo, {size} px: {', '.join(runtimes)}")
        speeds = measure_speed(runtimes, images, batch=batch, rounds=rounds)
        for c in group:
            c.point.solo_ips = round(speeds[c.point.key], 1)
            say(f"    {c.point.key}: {c.point.solo_ips} images/s")
        del runtimes, loaded
        keras.backend.clear_session()
        gc.collect()


def end_to_end(
    found: Sequence[Candidate], photos: Sequence[Any], seconds: float, repeats: int
) -> dict[str, Any]:
    """Each candidate's warm products/s through `enrich serve`; returns the runs' details.

    Per input size, one cold run fills Redis with `FILL_PHOTOS` photos (the fastest
    candidate of that size serving it), then each candidate serves a backlog over those
    photos in a fresh process (`bench.service_bench.Bench.measured_run`), ``repeats`` times,
    the size's candidates taking turns."""
    from bench.harness import ImageHosts
    from bench.service_bench import Bench
    from bench.service_limits import IMAGE_HOSTS, QUICK

    class Runs(Bench):
        """service_bench's runs, with `ENRICH_RUNTIME` for the candidate under test."""

        runtime = "auto"

        def env(self, **settings: str) -> dict[str, str]:
            return super().env(runtime=self.runtime, **settings)

    bench = Runs(argparse.Namespace(model=None, profile=False, quick=True), QUICK)
    bench.dlq = bench.kafka.topic("dead-letter", partitions=1)
    hosts = ImageHosts(photos, hosts=IMAGE_HOSTS).start()
    try:
        for size, group in by_size(found).items():
            urls = [hosts.url(i, tag=f"{bench.run_id}-{size}") for i in range(len(photos))]
            filler = max(group, key=lambda c: c.point.solo_ips or 0.0)
            bench.model_dir, bench.runtime = filler.serve_dir, filler.runtime
            say(f"fill, {size} px: {len(urls)} photos into Redis ({filler.point.key})")
            outputs, _, _ = bench.measured_run(f"fill-{size}", urls, profile=False, rate_floor=5)
            bench.details[f"fill-{size}_products"] = len(outputs)
            for repeat in range(repeats):
                for c in group:
                    warm(bench, hosts, c, urls, seconds, f"{c.point.key}-r{repeat}")
    finally:
        hosts.stop()
        bench.kafka.cleanup()
    return {**bench.details, "logs": str(bench.work)}


def warm(
    bench: Any, hosts: Any, c: Candidate, urls: Sequence[str], seconds: float, name: str
) -> None:
    """One warm run of ``c`` through a fresh `enrich serve`; adds to its point's figures."""
    count = warm_products(c.point.solo_ips, seconds)
    warm_urls = [urls[i % len(urls)] for i in range(count)]
    bench.model_dir, bench.runtime = c.serve_dir, c.runtime
    fetched = hosts.requests["image"]
    say(f"warm, {name}: {count} products")
    floor = max(5.0, 0.1 * (c.point.solo_ips or 50.0))
    try:
        outputs, ready, _ = bench.measured_run(name, warm_urls, profile=False, rate_floor=floor)
    except RuntimeError as exc:
        c.point.error = str(exc)
        say(f"    failed: {exc}")
        return
    c.point.warm_runs.append(round(bench.split_rate(name, outputs, ready, 0), 1))
    c.point.warm_pps = round(sum(c.point.warm_runs) / len(c.point.warm_runs), 1)
    c.point.products = len(outputs)
    halves = {
        f"{run}-{half}": figures
        for run in range(len(c.point.warm_runs))
        for half, figures in bench.details.get(f"{c.point.key}-r{run}_inference", {}).items()
    }
    statuses = c.point.service.get("statuses", {})
    for status, number in bench.details.get(f"{name}_statuses", {}).items():
        statuses[status] = statuses.get(status, 0) + number
    c.point.service = {
        **_whole_run(halves),
        "image_fetches": c.point.service.get("image_fetches", 0)
        + hosts.requests["image"]
        - fetched,
        "statuses": statuses,
    }
    say(f"    {c.point.warm_runs[-1]} products/s {c.point.service}")


def _whole_run(halves: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The two halves' service figures, averaged weighted by their seconds."""
    parts = [h for h in halves.values() if h.get("seconds")]
    total = sum(h["seconds"] for h in parts)
    merged: dict[str, Any] = {}
    for name in (
        "inference_busy_share",
        "inference_images_per_busy_s",
        "service_cores",
        "service_cpu_ms_per_image",
        "images_per_s",
    ):
        values = [(h[name], h["seconds"]) for h in parts if h.get(name) is not None]
        if values and total:
            merged[name] = round(sum(v * s for v, s in values) / sum(s for _, s in values), 3)
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare, measure, write the page, its JSON and its picture."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        type=parse_spec,
        default=[parse_spec(m) for m in DEFAULT_MODELS],
        help=f"BACKBONE:PX[:tunedN], e.g. lite0:128 (default: {' '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--rounds", type=int, default=15, help="solo speed rounds")
    parser.add_argument("--warm-seconds", type=float, default=WARM_SECONDS)
    parser.add_argument("--repeats", type=int, default=2, help="warm runs per point")
    parser.add_argument("--fresh", action="store_true", help="train and export again")
    parser.add_argument(
        "--prepare-only", action="store_true", help="train and export, measure nothing"
    )
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "frontier")
    words = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(words)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.harness import dumps, load_photos
    from bench.service_report import machine
    from model.runtime import cpu_threads
    from service.config import load_settings

    began = time.monotonic()
    load_start = os.getloadavg()[0]
    shared = _shared()
    stages: dict[str, Any] = {}
    found = candidates(args.models, shared, args.fresh, stages)
    prepared = time.monotonic()
    if args.prepare_only:
        say(f"prepared in {prepared - began:.0f} s: {json.dumps(stages, indent=1)}")
        return 0
    photos = load_photos(shared, FILL_PHOTOS)
    batch = load_settings().batch_max_size
    solo(found, photos, batch, args.rounds)
    timed = time.monotonic()
    details = end_to_end(found, photos, args.warm_seconds, args.repeats)
    finished = time.monotonic()
    points = [c.point for c in found]
    best, reason = recommend(points)
    result: dict[str, Any] = {
        "date": dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": checkout_label("model", "bench"),
        "command": command_line(words),
        "machine": machine(),
        "batch": batch,
        "threads": cpu_threads(),
        "rounds": args.rounds,
        "warm_seconds": args.warm_seconds,
        "repeats": args.repeats,
        "total_s": round(finished - began, 1),
        "stages_s": {
            "models": round(prepared - began, 1),
            "solo": round(timed - prepared, 1),
            "end to end": round(finished - timed, 1),
        },
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "targets": {"accuracy": ACCURACY_TARGET, "source": TARGET_SOURCE, "warm_pps": RATE_TARGET},
        "recommended": best.key if best else None,
        "recommendation_reason": reason,
        "recommended_commands": recommended_commands(best, stages) if best else [],
        "frontier": [p.key for p in frontier(points)],
        "stages": stages,
        "points": [p.to_json() for p in points],
        "analysis": analysis(points),
        "not_measured": not_measured(points),
        "runs": details,
    }
    result["method"] = method(result, args.models)
    args.output.mkdir(parents=True, exist_ok=True)
    plot(points, args.output / "frontier.png", best)
    text = markdown(result, points)
    (args.output / "frontier.md").write_text(text)
    (args.output / "frontier.json").write_text(dumps(result))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
