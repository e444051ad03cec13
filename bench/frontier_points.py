"""The frontier's figures and page (`bench.frontier` measures them): candidate specs, points,
the Pareto frontier, the recommendation, the tables, the plot and the markdown."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".run" / "frontier"
CACHE = ".run/quality/cache"
"""Features and decoded images, shared with `make quality` (relative to the repository)."""
SOURCES = ("product-images", "fashion-products")
TARGET_SOURCE = "product-images"
ACCURACY_TARGET = 0.93
"""Issue 16's target: depth-4 leaf accuracy on `product-images` validation, at least."""
RATE_TARGET = 400.0
"""Issue 16's target: warm products/s end to end on this machine, at least."""
TOLERANCE_POINTS = 0.5
"""Accuracy points the recommendation gives up for speed (as `model.litert.MAX_ACCURACY_DROP`
does for a quantised flat buffer)."""
FILL_PHOTOS = 1000
"""Distinct photos (URLs) of the warm runs; a run's products cycle over them."""
WARM_SECONDS = 20.0
"""A warm run gets about this many seconds of products at the model's solo rate."""
MIN_PRODUCTS, MAX_PRODUCTS = 1500, 12_000
BACKBONES = {
    "lite0": ("efficientnet_lite0", "EfficientNet-Lite0"),
    "lite1": ("efficientnet_lite1", "EfficientNet-Lite1"),
    "lite2": ("efficientnet_lite2", "EfficientNet-Lite2"),
}
DEFAULT_MODELS = ("lite0:128", "lite0:160", "lite0:224", "lite1:240", "lite1:240:tuned5")
SCRATCH = ("mobilenet_v3_small", "MobileNetV3-Small", 128)
RUNTIMES = {"keras": "Keras", "none": "LiteRT float32", "int8": "LiteRT int8"}
"""Variant → label: ``keras`` is the Keras model, the others flat buffers of it."""


def say(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- what is measured ---------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One trained model: a pretrained backbone at one input size."""

    short: str
    """``lite0``, ``lite1``, ``lite2``."""
    size: int
    tuned: int = 0
    """Backbone blocks fine-tuned after the heads (`enrich train --fine-tune-blocks`)."""

    @property
    def backbone(self) -> str:
        """The registry name (`model.backbones`)."""
        return BACKBONES[self.short][0]

    @property
    def label(self) -> str:
        """The backbone's name in the tables (with its fine-tuned blocks, when any)."""
        name = BACKBONES[self.short][1]
        return f"{name}, top {self.tuned} blocks tuned" if self.tuned else name

    @property
    def key(self) -> str:
        """``lite0-128`` (``lite1-240-tuned5``): its folder under `WORK`."""
        return f"{self.short}-{self.size}" + (f"-tuned{self.tuned}" if self.tuned else "")


def parse_spec(text: str) -> Spec:
    """``lite0:160`` or ``lite1:240:tuned5`` → Spec; argparse's type."""
    short, _, rest = text.partition(":")
    size, _, tuned = rest.partition(":")
    blocks = tuned.removeprefix("tuned")
    if (
        short not in BACKBONES
        or not size.isdigit()
        or (tuned and (not tuned.startswith("tuned") or not blocks.isdigit()))
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected BACKBONE:PX or BACKBONE:PX:tunedN with BACKBONE one of "
            f"{', '.join(BACKBONES)}"
        )
    return Spec(short, int(size), int(blocks) if tuned else 0)


@dataclass
class Point:
    """One model under one runtime, with everything measured about it."""

    key: str
    model: str
    backbone: str
    size: int
    variant: str
    """``keras``, ``none`` (LiteRT float32) or ``int8``."""
    accuracy: dict[str, float] = field(default_factory=dict)
    """Depth-4 leaf accuracy on validation: ``both`` and one entry per source."""
    accuracy_note: str = "measured"
    megabytes: float | None = None
    solo_ips: float | None = None
    warm_pps: float | None = None
    """The mean of `warm_runs`."""
    warm_runs: list[float] = field(default_factory=list)
    """Warm products/s of each run (fresh processes, interleaved with the size's others)."""
    products: int | None = None
    service: dict[str, Any] = field(default_factory=dict)
    """The service's own counters over the warm run (inference busy share...)."""
    error: str | None = None

    @property
    def runtime(self) -> str:
        """The runtime's label."""
        return RUNTIMES[self.variant]

    @property
    def target_accuracy(self) -> float | None:
        """Accuracy on the target's source (`TARGET_SOURCE`)."""
        return self.accuracy.get(TARGET_SOURCE)

    @property
    def ratio(self) -> float | None:
        """Warm products/s over solo images/s."""
        if self.warm_pps is None or not self.solo_ips:
            return None
        return self.warm_pps / self.solo_ips

    def to_json(self) -> dict[str, Any]:
        """Every field and the derived ones."""
        return {**asdict(self), "runtime": self.runtime, "ratio": self.ratio}


def accuracy_of(entry: Mapping[str, Any], variant: str) -> dict[str, float]:
    """The validation accuracies of ``variant`` in a model's ``litert`` metadata entry:
    ``{"both": a, "<source>": a, ...}`` (empty when not measured)."""
    figures = entry.get("keras", {}) if variant == "keras" else entry.get("files", {})[variant]
    validation = figures.get("validation")
    if not validation:
        return {}
    accuracies = {"both": float(validation["accuracy"])}
    for source, values in validation.get("sources", {}).items():
        accuracies[str(source)] = float(values["accuracy"])
    return accuracies


def warm_products(solo_ips: float | None, seconds: float = WARM_SECONDS) -> int:
    """How many products a warm run gets: ``seconds`` at the solo rate, within bounds."""
    wanted = int((solo_ips or 0.0) * seconds)
    return max(MIN_PRODUCTS, min(MAX_PRODUCTS, wanted))


def frontier(points: Iterable[Point]) -> list[Point]:
    """The points no other point beats on both target accuracy and warm products/s, slowest
    first."""
    known = [
        (p, float(p.target_accuracy), float(p.warm_pps))
        for p in points
        if p.target_accuracy is not None and p.warm_pps is not None
    ]
    kept = [
        p
        for p, accuracy, rate in known
        if not any(a >= accuracy and r >= rate and (a > accuracy or r > rate) for _, a, r in known)
    ]
    return sorted(kept, key=lambda p: p.warm_pps or 0.0)


def recommend(
    points: Sequence[Point],
    accuracy_target: float = ACCURACY_TARGET,
    rate_target: float = RATE_TARGET,
    tolerance_points: float = TOLERANCE_POINTS,
) -> tuple[Point | None, str]:
    """The CPU default to recommend, and why.

    The fastest point that meets both targets; if none does, among the points that keep up
    with ``rate_target``, the fastest within ``tolerance_points`` of the most accurate of them
    (so a quantised runtime that loses a tenth of a point for twice the speed wins); if none
    keeps up, the fastest point within ``tolerance_points`` of the most accurate one.
    """
    known = [p for p in points if p.target_accuracy is not None and p.warm_pps is not None]
    if not known:
        return None, "nothing was measured end to end with a known accuracy"

    def accuracy(p: Point) -> float:
        return float(p.target_accuracy or 0.0)

    def rate(p: Point) -> float:
        return float(p.warm_pps or 0.0)

    both = [p for p in known if accuracy(p) >= accuracy_target and rate(p) >= rate_target]
    if both:
        best = max(both, key=rate)
        return best, (
            f"it meets both targets ({accuracy(best):.4f} on {TARGET_SOURCE} >= "
            f"{accuracy_target}, {rate(best):.0f} >= {rate_target:.0f} products/s warm) and is "
            + (
                f"the fastest of the {len(both)} that do"
                if len(both) > 1
                else "the only one that does"
            )
        )
    fast = [p for p in known if rate(p) >= rate_target]
    pool = fast or known
    top = max(accuracy(p) for p in pool)
    near = [p for p in pool if 100 * (top - accuracy(p)) <= tolerance_points]
    best = max(near, key=lambda p: (rate(p), accuracy(p)))
    short = 100 * (accuracy_target - accuracy(best))
    if fast:
        why = (
            f"no candidate meets both targets; of the {len(fast)} that serve at least "
            f"{rate_target:.0f} products/s warm it is the fastest within {tolerance_points} "
            f"points of the most accurate ({accuracy(best):.4f} on {TARGET_SOURCE}, "
            f"{short:.1f} points short of {accuracy_target}; {rate(best):.0f} products/s)"
        )
    else:
        why = (
            f"no candidate serves {rate_target:.0f} products/s warm; it is the fastest within "
            f"{tolerance_points} points of the most accurate ({accuracy(best):.4f} on "
            f"{TARGET_SOURCE}; {rate(best):.0f} products/s)"
        )
    return best, why


# -- the pages ----------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def rate_cell(point: Point) -> str:
    """Warm products/s: the mean, with the range when there were several runs."""
    runs = point.warm_runs
    if len(runs) < 2 or point.warm_pps is None:
        return _num(point.warm_pps)
    return f"{point.warm_pps:,.0f} ({min(runs):,.0f}-{max(runs):,.0f})"


def table(points: Sequence[Point], recommended: Point | None = None) -> list[str]:
    """The Markdown table of every point (the recommended one in bold, frontier marked)."""
    on_frontier = {p.key for p in frontier(points)}
    lines = [
        "| model | px | runtime | product-images | both sources | fashion-products | "
        "solo images/s | warm products/s | ratio | MB | frontier |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        note = "" if p.accuracy_note == "measured" else " *"
        name = f"**{p.model}**" if recommended is not None and p is recommended else p.model
        lines.append(
            f"| {name} | {p.size} | {p.runtime} | "
            f"{_num(p.accuracy.get('product-images'), 4)}{note if p.accuracy else ''} | "
            f"{_num(p.accuracy.get('both'), 4)} | {_num(p.accuracy.get('fashion-products'), 4)} | "
            f"{_num(p.solo_ips)} | {rate_cell(p)} | {_num(p.ratio, 2)} | "
            f"{_num(p.megabytes, 1)} | {'yes' if p.key in on_frontier else ''} |"
        )
    return lines


def service_table(points: Sequence[Point]) -> list[str]:
    """What the service's own counters said during each warm run."""
    lines = [
        "| model | px | runtime | products | inference busy | images per busy s | "
        "service CPU (cores) | service CPU ms per product | image fetches |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        s = p.service
        if not s:
            continue
        lines.append(
            f"| {p.model} | {p.size} | {p.runtime} | {_num(p.products)} | "
            f"{_num(s.get('inference_busy_share'), 2)} | "
            f"{_num(s.get('inference_images_per_busy_s'))} | {_num(s.get('service_cores'), 2)} "
            f"| {_num(s.get('service_cpu_ms_per_image'), 2)} | {_num(s.get('image_fetches'))} |"
        )
    return lines


def target_lines(points: Sequence[Point]) -> list[str]:
    """Whether any point meets issue 16's targets, and the closest on each axis."""
    known = [p for p in points if p.target_accuracy is not None and p.warm_pps is not None]
    if not known:
        return ["Nothing was measured end to end with a known accuracy."]
    met = [
        p
        for p in known
        if (p.target_accuracy or 0.0) >= ACCURACY_TARGET and (p.warm_pps or 0.0) >= RATE_TARGET
    ]
    accurate = max(known, key=lambda p: p.target_accuracy or 0.0)
    fastest = max(known, key=lambda p: p.warm_pps or 0.0)
    fast = [p for p in known if (p.warm_pps or 0.0) >= RATE_TARGET]
    verdict = (
        f"**met** by {', '.join(f'{p.model} {p.size} px {p.runtime}' for p in met)}."
        if met
        else "**not met** by any candidate."
    )
    lines = [
        f"Issue 16's target, a CPU default with depth-4 leaf accuracy >= {ACCURACY_TARGET} on "
        f"`{TARGET_SOURCE}` validation served end to end at >= {RATE_TARGET:.0f} products/s "
        f"warm on this machine: {verdict} The most accurate point, {accurate.model} "
        f"{accurate.size} px {accurate.runtime}, scores {accurate.target_accuracy:.4f} at "
        f"{accurate.warm_pps:.0f} products/s; the fastest, {fastest.model} {fastest.size} px "
        f"{fastest.runtime}, serves {fastest.warm_pps:.0f} products/s at "
        f"{fastest.target_accuracy:.4f}."
    ]
    if fast:
        best_fast = max(fast, key=lambda p: p.target_accuracy or 0.0)
        lines[0] += (
            f" At >= {RATE_TARGET:.0f} products/s the best accuracy is "
            f"{best_fast.target_accuracy:.4f} ({best_fast.model} {best_fast.size} px "
            f"{best_fast.runtime})."
        )
    return lines


def plot(points: Sequence[Point], path: Path, recommended: Point | None = None) -> None:
    """Accuracy on `TARGET_SOURCE` (filled) and on both sources (hollow) against warm
    products/s, the Pareto frontier joined, the targets drawn; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"keras": "o", "none": "s", "int8": "^"}
    colours: dict[str, Any] = {}
    palette = plt.get_cmap("tab10")
    figure, axes = plt.subplots(figsize=(11.5, 6.5))
    accuracies = [ACCURACY_TARGET]
    rates = [RATE_TARGET * 1.5]
    try:
        for p in points:
            if p.warm_pps is None:
                continue
            family = f"{p.model} {p.size} px"
            colour = colours.setdefault(family, palette(len(colours) % 10))
            rates.append(p.warm_pps)
            for source, filled in ((TARGET_SOURCE, True), ("both", False)):
                value = p.accuracy.get(source)
                if value is None:
                    continue
                accuracies.append(value)
                style = (
                    {"color": colour} if filled else {"facecolors": "none", "edgecolors": colour}
                )
                axes.scatter([p.warm_pps], [value], marker=markers[p.variant], s=60, zorder=3,
                             **style)  # fmt: skip
                if filled:
                    axes.annotate(f"{family}\n{p.runtime}", (p.warm_pps, value), fontsize=7,
                                  textcoords="offset points", xytext=(6, -4))  # fmt: skip
        line = [(p.warm_pps or 0.0, p.target_accuracy or 0.0) for p in frontier(points)]
        if line:
            axes.plot(*zip(*line, strict=True), color="0.4", linestyle="--", linewidth=1,
                      zorder=2, label=f"frontier ({TARGET_SOURCE})")  # fmt: skip
        if recommended is not None and recommended.warm_pps is not None:
            axes.scatter([recommended.warm_pps], [recommended.target_accuracy or 0.0], s=260,
                         facecolors="none", edgecolors="red", linewidths=1.5, zorder=4,
                         label="recommended CPU default")  # fmt: skip
        axes.axhline(ACCURACY_TARGET, color="green", linewidth=0.8, linestyle=":")
        axes.axvline(RATE_TARGET, color="green", linewidth=0.8, linestyle=":")
        axes.fill_between([RATE_TARGET, max(rates) * 1.1], ACCURACY_TARGET, 1.0, color="green",
                          alpha=0.07, label="issue 16's target")  # fmt: skip
        for variant, marker in markers.items():
            axes.scatter([], [], marker=marker, color="0.3", label=RUNTIMES[variant])
        axes.scatter([], [], marker="o", facecolors="none", edgecolors="0.3",
                     label="hollow: both sources")  # fmt: skip
        axes.set_ylim(min(accuracies) - 0.02, min(1.0, max(accuracies) + 0.02))
        axes.set_xlim(0, max(rates) * 1.1)
        axes.set_xlabel("end-to-end warm products/s (enrich serve, real Kafka + Redis)")
        axes.set_ylabel(f"depth-4 leaf accuracy, validation ({TARGET_SOURCE} filled)")
        axes.set_title("Accuracy against service throughput on this CPU")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=120)
    finally:
        plt.close(figure)


def serve_command(point: Point, export_default: str | None, model_dir: str) -> str:
    """How to serve ``point``'s model and runtime with the service as it is."""
    if point.variant == "keras":
        return f"ENRICH_RUNTIME=keras enrich serve --model {model_dir}"
    if export_default == point.variant:
        return f"ENRICH_RUNTIME=auto enrich serve --model {model_dir}   # the default flat buffer"
    return (
        f"enrich export-litert {model_dir}   # float only, so it is the default\n"
        f"ENRICH_RUNTIME=litert enrich serve --model {model_dir}"
        if point.variant == "none"
        else f"# the export's default is {export_default}: this flat buffer needs "
        f"metadata.json's litert.default set to {point.variant}"
    )


def preparation_note(stages: Mapping[str, Mapping[str, Any]]) -> str:
    """How long the models reused from an earlier run took to make, if any were."""
    reused = [s for s in stages.values() if s.get("reused")]
    if not reused:
        return ""
    seconds = sum(float(s.get("train_s", 0)) + float(s.get("export_s", 0)) for s in reused)
    return (
        f", with {len(reused)} model{'s' if len(reused) > 1 else ''} an earlier run had "
        "trained and exported (that took "
        f"{seconds / 60:.1f} minutes more)"
    )


def markdown(result: Mapping[str, Any], points: Sequence[Point]) -> str:
    """The page."""
    recommended = next((p for p in points if p.key == result.get("recommended")), None)
    machine = result["machine"]
    lines = [
        "# The frontier: accuracy against end-to-end throughput on a CPU",
        "",
        f"Run on {result['date']} from `{result['commit']}` on this project's "
        f"{machine['cores']}-core CPU machine ({machine['cpu']}, {machine['memory_gib']} GiB; no "
        f"GPU; TensorFlow {machine['tensorflow']}), Kafka and Redis on the same machine; "
        f"{result['total_s'] / 60:.1f} minutes in all "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in result['stages_s'].items())})"
        f"{preparation_note(result.get('stages', {}))}; load average "
        f"{result['load_average'][0]:.1f} at the start, {result['load_average'][1]:.1f} at the "
        "end:",
        "",
        f"    {result['command']}",
        "",
        "![accuracy against warm products/s](frontier.png)",
        "",
        "Depth-4 leaf accuracy on the validation splits (637 `product-images` and 1,003 "
        "`fashion-products` photos no training saw); solo images/s: the runtime alone at the "
        f"service's batch size ({result['batch']}); warm products/s: `enrich serve` end to end "
        "with every image in Redis; ratio: warm over solo; MB: the file served "
        "(`model.keras` or the flat buffer); frontier: no other point is both more accurate on "
        "`product-images` and faster. With several warm runs a point shows their mean and, "
        "in brackets, the slowest and fastest.",
        "",
        *table(points, recommended),
        "",
    ]
    if any(p.accuracy_note != "measured" for p in points):
        lines += [
            "\\* "
            + "; ".join(sorted({p.accuracy_note for p in points if p.accuracy_note != "measured"})),
            "",
        ]
    lines += [*target_lines(points), "", "## Recommended CPU default", ""]
    if recommended is None:
        lines += [f"None: {result['recommendation_reason']}.", ""]
    else:
        lines += [
            f"**{recommended.model} at {recommended.size} px, {recommended.runtime}**: "
            f"{result['recommendation_reason']}.",
            "",
            *[f"    {line}" for line in result["recommended_commands"]],
            "",
        ]
    for paragraph in result.get("analysis", []):
        lines += [paragraph, ""]
    lines += ["## How it was measured", ""]
    lines += [f"- {line}" for line in result["method"]]
    lines += ["", "## The service during the warm runs", "", *service_table(points), ""]
    if result.get("not_measured"):
        lines += ["## Not measured", "", *[f"- {line}" for line in result["not_measured"]], ""]
    return "\n".join(lines)


# -- the work -----------------------------------------------------------------------------


def command_line(argv: Sequence[str]) -> str:
    niceness = os.nice(0)
    words = ["python", "-m", "bench.frontier", *argv]
    prefix = "deploy/local/with-services.sh " + (f"nice -n {niceness} " if niceness else "")
    return prefix + shlex.join(words)


def method(result: Mapping[str, Any], specs: Sequence[Spec]) -> list[str]:
    """The page's "How it was measured" items."""
    models = ", ".join(f"{s.label} {s.size} px" for s in specs)
    return [
        f"Models: {models}, `marginal` heads on the frozen ImageNet backbone (`--weights "
        "imagenet-lite`), trained on both shared sources' train splits with `make demo-heads`' "
        "recipe (Adam 1e-3, batch 64, up to 40 epochs, 10% hold-out, features cached); the "
        "224 px Lite0 model is the demo's own heads (`service/demo_assets/heads/`)"
        + "".join(
            f"; {s.label} {s.size} px then fine-tunes those blocks "
            f"(`--fine-tune-blocks {s.tuned}`: 3 epochs at 1e-4, BatchNorm frozen)"
            for s in specs
            if s.tuned
        )
        + ". How each was made: `frontier.json` (`stages`).",
        "Runtimes: `enrich export-litert MODEL --quantize int8` (float32 and int8 flat buffers, "
        "int8 calibrated on 300 training photos); it also measures each runtime's accuracy. "
        "The service serves a directory's default flat buffer, so each flat buffer is served "
        "from a copy whose `litert.default` names it (`ENRICH_RUNTIME=litert`); Keras with "
        "`ENRICH_RUNTIME=keras`.",
        f"Solo: `model.litert.measure_speed`, median of {result['rounds']} interleaved rounds "
        f"of one batch of {result['batch']} real photos per runtime of a size, LiteRT (XNNPACK) "
        f"on {result['threads']} threads, in one process with nothing else running.",
        f"End to end: `bench.service_bench.Bench` runs `enrich serve` (4 partitions, default "
        f"settings, the runtime in `ENRICH_RUNTIME`) over a backlog of "
        f"{MIN_PRODUCTS:,}-{MAX_PRODUCTS:,} products (about {result['warm_seconds']:.0f} s at "
        f"the solo rate) cycling over {FILL_PHOTOS:,} shared photos whose pixels a cold run of "
        "the same input size had put in Redis; products/s from the service's readiness (model "
        "loaded and warmed, backlog waiting) to the last output's Kafka timestamp; a fresh "
        "process per point; `image fetches` counts the image server's answers during the run "
        "(0: every image came from Redis).",
        "Preparing the models (train or materialise, then export; kept in `.run/frontier/`, "
        "so a rerun reuses them): "
        + "; ".join(
            f"{key} {stage.get('train_s', 0):.0f} s + {stage.get('export_s', 0):.0f} s"
            + (" (an earlier run's, reused)" if stage.get("reused") else "")
            for key, stage in result["stages"].items()
        )
        + ".",
    ]


def analysis(points: Sequence[Point]) -> list[str]:
    """A few sentences read off the measured points (ratios, int8's effect)."""
    lines: list[str] = []
    ratios = [p.ratio for p in points if p.ratio is not None]
    if ratios:
        lines.append(
            f"Warm products/s reach {min(ratios):.2f}-{max(ratios):.2f} of the solo images/s: "
            "the service's own work (consume, Avro, the Redis reads, produce) shares the two "
            "cores with inference, so the faster the runtime, the larger the share the "
            "pipeline takes (the table below: inference busy share and service CPU per product)."
        )
    above = [p for p in points if p.ratio is not None and p.ratio > 1.0]
    if above:
        lines.append(
            "A ratio above 1 ("
            + ", ".join(f"{p.model} {p.size} px {p.runtime} {p.ratio:.2f}" for p in above)
            + ") means the service's inference thread ran that runtime faster per busy second "
            "than the solo measurement did in the benchmark's own process (the table below: "
            "images per busy second); for such slow runtimes the pipeline costs nothing "
            "measurable, and the solo figure carries a few percent of noise."
        )
    pairs = []
    for p in points:
        if p.variant != "int8":
            continue
        keras_point = next((q for q in points if q.key == p.key.replace("-int8", "-keras")), None)
        if keras_point and keras_point.warm_pps and p.warm_pps and keras_point.target_accuracy:
            pairs.append(
                f"{p.model} {p.size} px {p.warm_pps / keras_point.warm_pps:.1f}x "
                f"({100 * ((p.target_accuracy or 0) - keras_point.target_accuracy):+.2f} "
                f"points on {TARGET_SOURCE}, "
                f"{100 * (p.accuracy.get('both', 0) - keras_point.accuracy.get('both', 0)):+.2f}"
                " on both)"
            )
    if pairs:
        lines.append("int8 against Keras, warm products/s end to end: " + "; ".join(pairs) + ".")
    return lines


def recommended_commands(best: Point, stages: Mapping[str, Any]) -> list[str]:
    """How to build and serve the recommended default (``$S``: the shared data)."""
    if best.backbone == SCRATCH[0]:
        return ["enrich serve   # today's default model, as docs/results/scratch/ trains it"]
    stage = stages.get(best.key.rsplit("-", 1)[0], {})
    lines = ["S=../shared/data", str(stage.get("made_by", ""))]
    if best.variant != "keras":
        lines.append(str(stage.get("exported_by", "")))
    directory = str(stage.get("directory", "MODEL_DIR"))
    return [*lines, *serve_command(best, stage.get("export_default"), directory).splitlines()]


def not_measured(points: Sequence[Point]) -> list[str]:
    """What this run could not measure."""
    lines = [
        "MobileNetV3-Small's accuracy (documented, not retrained: 25 minutes a model) and its "
        "LiteRT runtimes (no trained model of it to calibrate int8 on or to score).",
        "A GPU: none is lent to this machine; every figure is CPU only.",
        "Fine-tuned backbones (`--fine-tune-blocks`) and Lite2: docs/results/quality.md has "
        "their accuracy (Lite2 is below Lite1 and slower; fine-tuning the top 2 blocks adds "
        "0.5-1.6 points on `product-images`, best 0.9262 with Lite1, still under 0.93) but they "
        "were not run through the service here.",
    ]
    lines += [f"{p.model} {p.size} px {p.runtime}: {p.error}" for p in points if p.error]
    return lines
