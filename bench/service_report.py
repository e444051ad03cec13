"""The service benchmark's Markdown: the figures table, the py-spy profiles, the results file
and docs/performance.md, and the machine the figures were measured on."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import dumps
from bench.processes import cpu_description, memory_gib
from bench.service_limits import IMAGE_HOSTS, LATENCY_MS

if TYPE_CHECKING:
    from bench.service_bench import Bench


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import keras
    import tensorflow as tf

    return {
        "host": platform.node(),
        "cpu": cpu_description(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "gpu": None,
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _runtime_words(runtime: dict[str, Any] | None) -> str:
    """The runtime of (1) in a few words: ``Keras`` or ``LiteRT int8, 2 threads``."""
    if not runtime or runtime.get("runtime") != "litert":
        return "Keras"
    return f"LiteRT {runtime.get('quantization', '?')}, {runtime.get('threads', '?')} threads"


def _floor_cpu(floor: dict[str, Any] | None) -> str:
    """The floor consumer's CPU per product, by process."""
    if not floor:
        return "n/a"
    return ", ".join(f"{k} {v}" for k, v in floor["cpu_ms_per_product"].items())


def _pipeline_bound(details: dict[str, Any]) -> str:
    """The cold bound with the floor consumer's own CPU per product added, when it ran."""
    if details.get("cold_machine_pipeline_bound_ips") is None:
        return ""
    return (f", {_fmt(details['cold_target_over_machine_pipeline'], 2)}x the "
            f"{_fmt(details['cold_machine_pipeline_bound_ips'])} left once the floor "
            f"consumer's {_fmt(details['cold_pipeline_ms'], 2)} ms of CPU per product beyond "
            "inference is paid")  # fmt: skip


def table(figures: dict[str, Any], details: dict[str, Any]) -> list[str]:
    """The figures as a Markdown table."""
    f, d = figures, details
    inf, dec = d["inference"], d["decode"]
    lat = f.get("latency_ms") or {}
    rows = [
        ("1", "inference limit (`predict_raw`, batch "
              f"{inf['batch']}, {inf['backbone']} {inf['image_size']} px, "
              f"{_runtime_words(inf.get('runtime'))})",
         f"{_fmt(f['inference_limit_ips'])} images/s",
         f"`classify` (adds decoding the heads): {_fmt(inf['classify_images_per_s'])} images/s"),
        ("2", "decode limit (`decode_image`, shared photos)",
         f"{_fmt(dec['one_core_images_per_s'])} images/s on 1 core, "
         f"{_fmt(f['decode_limit_ips'])} on {dec['cores']}",
         f"median file {dec['median_file_kib']} KiB"),
        ("3", "end to end, warm (every image in Redis)",
         f"{_fmt(f.get('e2e_warm_pps'))} products/s",
         f"ratio to (1): **{_fmt(f.get('ratio_warm'), 2)}** (target 0.9)"),
        ("3c", "floor consumer, warm: the least work per product (`bench.floor_consumer`)",
         f"{_fmt(f.get('floor_pps'))} products/s",
         f"ratio to (1): **{_fmt(f.get('ratio_floor'), 2)}**, what the least work reaches here; "
         f"CPU ms per product: {_floor_cpu(d.get('floor'))}"),
        ("4", f"end to end, cold ({LATENCY_MS} ms per image, {IMAGE_HOSTS} image hosts)",
         f"{_fmt(f.get('e2e_cold_pps'))} products/s",
         f"ratio to min((1), (2)) = {_fmt(d.get('cold_bound_ips'))}: "
         f"**{_fmt(f.get('ratio_cold'), 2)}** (target 0.8); to the shared-core bound "
         f"{_fmt(d.get('cold_shared_bound_ips'))}: {_fmt(d.get('ratio_cold_shared'), 2)}; the "
         f"target {_fmt(d.get('cold_target_pps'))} is "
         f"{_fmt(d.get('cold_target_over_machine'), 2)}x "
         f"the most {d.get('cores', 'the')} cores can decode and classify with every other "
         f"cost at zero "
         f"({_fmt(d.get('cold_machine_bound_ips'))}){_pipeline_bound(d)}"),
        ("4b", "end to end, cold, all images on one host",
         f"{_fmt(d.get('e2e_cold_one_host_pps'))} products/s",
         f"per-host cap {d.get('per_host')} / {LATENCY_MS} ms = "
         f"{_fmt(d.get('one_host_bound_pps'))} products/s"),
        ("5", "naive sequential consumer, warm (0 ms server, no cache) / cold",
         f"{_fmt(f.get('naive_warm_pps'), 2)} / {_fmt(f.get('naive_cold_pps'), 2)} products/s",
         f"speed-up of (3): **{_fmt(d.get('speedup_warm'))}x**, of (4): "
         f"**{_fmt(d.get('speedup_cold'))}x**"),
    ]  # fmt: skip
    for share in ("50%", "90%"):
        if share in lat:
            row = lat[share]
            rows.append(
                ("6", f"latency at {share} of (3) ({_fmt(row['offered_pps'])} products/s offered)",
                 f"p50 {_fmt(row['p50'])} / p95 {_fmt(row['p95'])} / p99 {_fmt(row['p99'])} ms",
                 f"{row['products']} products, event time to output timestamp")
            )  # fmt: skip
    rss = d.get("rss") or {}
    rows += [
        ("7", f"peak resident memory over a backlog of {_fmt(rss.get('products'))} products",
         f"{_fmt(f.get('peak_rss_mb'))} MiB",
         "RSS by share done: " + ", ".join(
             f"{s['done_pct']} %: {s['rss_mb']:.0f}" for s in rss.get("by_progress", [])
         ) + f" MiB; {_fmt(rss.get('products_per_s'))} products/s (cached 404s)"),
        ("8", "`enrich replay`, warm cache", f"{_fmt(f.get('replay_pps'))} products/s",
         f"{(d.get('replay') or {}).get('products')} products"),
        ("9", "two instances in one group / one",
         f"{_fmt(d.get('two_instances_pps'))} products/s",
         f"ratio **{_fmt(f.get('two_instances_ratio'), 2)}** on {os.cpu_count()} cores"),
        ("10", "GPU", "none", "no GPU was lent to this run"),
    ]  # fmt: skip
    lines = ["| # | figure | value | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
    return lines


def profile_lines(profiles: dict[str, Any]) -> list[str]:
    """The top of each py-spy profile."""
    lines: list[str] = []
    for name, summary in profiles.items():
        lines += [
            "",
            f"### {name} ({summary['samples']} samples at 50 Hz, every thread, idle excluded)",
            "",
            "Threads: "
            + ", ".join(f"{thread} {share} %" for thread, share in summary["threads"][:6]),
            "",
            "| self % | function | inclusive % | function |",
            "| --- | --- | --- | --- |",
        ]
        pairs = zip(summary["self"], summary["inclusive"], strict=False)
        for (own, own_share), (inc, inc_share) in pairs:
            lines.append(f"| {own_share} | `{own}` | {inc_share} | `{inc}` |")
    return lines


def report(bench: Bench, command: str, started: dt.datetime, elapsed_s: float) -> str:
    """The results file's Markdown."""
    m = bench.details["machine"]
    profiled_half = (bench.details.get("warm_inference") or {}).get("second_half") or {}
    lines = [
        f"# Service benchmark, {started:%Y-%m-%d %H:%M} UTC, {m['host']}"
        + (" (quick)" if bench.args.quick else ""),
        "",
        f"Command: `{command}` ({elapsed_s / 60:.1f} min). Model: `{bench.model_dir}`.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python "
        f"{m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']} "
        f"({m['keras_backend']}); GPU: none. Kafka and Redis run on the same machine.",
        "",
        *table(bench.figures, bench.details),
        "",
        "Throughputs of backlogs run from the moment the service is ready (the backlog is "
        "waiting; the model is loaded and warmed) to the last output's Kafka timestamp; (9) "
        "from the start of producing; (5) and (8) first to last output. (3) counts the half of "
        "the run before py-spy attached (the profiled half classified "
        f"{_fmt(profiled_half.get('images_per_s'))} images/s by the service's counters); (4) "
        "counts the whole run, "
        "py-spy attached once half the images were classified (outputs leave in partition "
        "order, in bursts, so there is no clean unprofiled half).",
        "The naive consumer has no cache: its 'warm' run fetches every image from a 0 ms "
        "server; it is the same consumer at 100 ms for 'cold'.",
    ]
    inference = {k: v for k, v in bench.details.items() if k.endswith("_inference")}
    if inference:
        lines += [
            "",
            "## The inference thread during the runs (the service's own counters)",
            "",
            "| run | half | images/s | mean batch | inference busy | images per busy second "
            "| service CPU (cores) | service CPU ms per image | other processes (cores) "
            "| busiest processes (cores) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, halves in inference.items():
            for half, row in halves.items():
                lines.append(
                    f"| {key.removesuffix('_inference')} | {half.replace('_', ' ')} | "
                    f"{_fmt(row['images_per_s'])} | {_fmt(row['mean_batch'])} | "
                    f"{_fmt(row['inference_busy_share'], 2)} | "
                    f"{_fmt(row['inference_images_per_busy_s'])} | "
                    f"{_fmt(row['service_cores'], 2)} | "
                    f"{_fmt(row['service_cpu_ms_per_image'], 2)} | "
                    f"{_fmt(row['other_processes_cores'], 2)} | "
                    + ", ".join(f"{n} {c}" for n, c in row["busiest_processes_cores"])
                    + " |"
                )
    stalls = {k: v for k, v in bench.details.items() if k.endswith("_stalls")}
    if stalls:
        lines += ["", "Stalls (the service's counters every 0.5 s, ready to last output):", ""]
        for key, row in stalls.items():
            lines.append(
                f"- {key.removesuffix('_stalls')}: {row['seconds']} s, of which "
                f"{row['seconds_without_an_image_classified']} s without one image classified "
                f"and {row['seconds_consumer_paused']} s with the consumer paused (in flight "
                "at its bound)"
            )
    timelines = {k: v for k, v in bench.details.items() if k.endswith("_timeline")}
    if timelines:
        lines += ["", "Outputs over time (Kafka timestamps, 0.5 s steps from the first):", ""]
        for key, row in timelines.items():
            lines.append(f"- {key.removesuffix('_timeline')}: {timeline_line(row)}")
    if bench.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in bench.notes]]
    if bench.profiles:
        lines += ["", "## Profiles (py-spy)", *profile_lines(bench.profiles)]
    lines += ["", "## Statuses and details", "", "```json", dumps(bench.details).rstrip(), "```"]
    return "\n".join(lines) + "\n"


def timeline_line(row: dict[str, Any]) -> str:
    """One run's timeline in words: the first output's delay, the longest stretch without an
    output and the steps themselves."""
    counts: list[int] = row["counts"]
    if not counts:
        return "no output"
    longest = run = 0
    for count in counts:
        run = run + 1 if count == 0 else 0
        longest = max(longest, run)
    step_s = row["step_ms"] / 1000
    return (
        f"first {row['first_output_ms']} ms after ready; longest stretch without an output "
        f"{longest * step_s:.1f} s; per step: {' '.join(str(c) for c in counts)}"
    )


_ANALYSIS = re.compile(r"<!-- analysis -->.*?<!-- /analysis -->", re.S)


def performance_doc(bench: Bench, command: str, results_file: Path, previous: str) -> str:
    """docs/performance.md: the latest figures; the hand-written analysis block is kept."""
    kept = _ANALYSIS.search(previous)
    analysis = kept.group(0) if kept else "<!-- analysis -->\n<!-- /analysis -->"
    m = bench.details["machine"]
    lines = [
        "# Performance",
        "",
        "How fast the service goes against what this machine allows, and against the obvious "
        "sequential consumer, all measured in one run by `make bench` (`make bench-quick` for a "
        "smaller run under 5 minutes). Figures by name: [`performance.json`](performance.json); "
        f"the full run, with profiles: [`{results_file.name}`](../bench/results/"
        f"{results_file.name}).",
        "",
        f"Measured {bench.details['date']} on {m['host']}: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, TensorFlow {m['tensorflow']} on CPU; Kafka and Redis on the same "
        f"machine. Command: `{command}`.",
        "",
        *table(bench.figures, bench.details),
        "",
        analysis,
    ]
    return "\n".join(lines) + "\n"
