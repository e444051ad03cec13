"""Image URLs that hang: one serve run over a backlog (:class:`FlowRun`) and the scenario that
compares an all-healthy backlog with one where every n-th image URL never answers."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability.scenarios import (
    OutputWatcher,
    Row,
    _await_outputs,
    _stop,
    produce,
    product_value,
    serve_process,
    service_env,
)


@dataclass
class FlowRun:
    """One run of the hanging-images scenario."""

    inputs: int
    outputs: int
    lost: int
    duplicates: int
    healthy: int
    """Outputs of products whose image URL answers."""
    healthy_per_s: float
    """Healthy products enriched per second in the run's steady part: between the 10th and the
    90th percentile of their records' ``processed_at``. (Outputs leave in source order, so a
    partition's outputs wait behind its hanging product and arrive in bursts: that is
    latency, counted in ``answer_s`` and ``delivered_per_s``, not throughput.)"""
    delivered_per_s: float
    """Healthy outputs per second from the run's first output to its last healthy one."""
    seconds: float
    """From the run's first output to its last."""
    statuses: dict[str, str]
    """product id → status, for the hanging products."""
    healthy_statuses: dict[str, int]
    """status → count, for the healthy products."""
    answer_s: dict[str, float]
    """hanging product id → seconds from its image's first request to its record's
    ``processed_at``."""
    requests: dict[str, int]
    """hanging product id → requests its image URL got."""
    healthy_reasons: dict[str, int] = field(default_factory=dict)
    """error → count, for the healthy products that were not classified."""


def flow_run(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    server: Any,
    photos: list[str],
    inputs: int,
    hanging_every: int,
    env_extra: dict[str, str],
    hang_server: Any = None,
    timeout_s: float = 300.0,
) -> FlowRun:
    """A backlog of ``inputs`` products, every ``hanging_every``-th (0: none) with an image URL
    that accepts and never answers, on ``hang_server`` (default ``server``, both
    `tests.support.image_server.ImageServer`), the rest real photos on ``server``, served by
    one serve child under ``env_extra``."""
    from tests.support.image_server import Behaviour

    hang_server = hang_server or server

    tag = uuid.uuid4().hex[:6]
    items: list[tuple[str, bytes]] = []
    hanging: dict[str, str] = {}  # product id → path on the server
    for i in range(inputs):
        product_id = f"h{tag}-{i}"
        if hanging_every and i % hanging_every == hanging_every // 2:
            url = hang_server.script(f"hang-{tag}-{i}", Behaviour(hang=True))
            hanging[product_id] = f"/scripted/hang-{tag}-{i}"
        else:
            url = f"{server.url_for(photos[i % len(photos)])}?h={tag}-{i}"
        items.append((product_id, product_value(product_id, url)))
    produce(bootstrap, topics["input"], items)
    env = service_env(bootstrap, topics, model_dir, f"hang-{tag}", **env_extra)
    watcher = OutputWatcher(bootstrap, [topics["output"], topics["dlq"]])
    process = serve_process(env)
    try:
        _await_outputs(watcher, inputs, process, time.monotonic() + timeout_s)
        time.sleep(1.0)  # late duplicates would arrive now
    finally:
        _stop(process)
        watcher.close()
    outputs = watcher.outputs()
    first = min((t for t, _ in outputs), default=0.0)
    healthy_records = [r for _, r in outputs if r is not None and r["product_id"] not in hanging]
    healthy_times = sorted(
        t for t, r in outputs if r is not None and r["product_id"] not in hanging
    )
    statuses: dict[str, str] = {}
    healthy_statuses: dict[str, int] = {}
    answer_s: dict[str, float] = {}
    healthy_reasons: dict[str, int] = {}
    for _, record in outputs:
        if record is None:
            continue
        product_id = record["product_id"]
        if product_id in hanging:
            statuses[product_id] = record["status"]
            asked = hang_server.first_hit_at.get(hanging[product_id])
            if asked is not None:
                answer_s[product_id] = record["processed_at"].timestamp() - asked
        else:
            healthy_statuses[record["status"]] = healthy_statuses.get(record["status"], 0) + 1
            if record.get("error"):
                reason = str(record["error"])[:80]
                healthy_reasons[reason] = healthy_reasons.get(reason, 0) + 1
    return FlowRun(
        inputs=inputs,
        outputs=watcher.count(),
        lost=inputs - watcher.unique(),
        duplicates=watcher.count() - watcher.unique(),
        healthy=len(healthy_times),
        healthy_per_s=_steady_rate(sorted(r["processed_at"].timestamp() for r in healthy_records)),
        delivered_per_s=len(healthy_times) / (healthy_times[-1] - first)
        if len(healthy_times) > 1 and healthy_times[-1] > first
        else 0.0,
        seconds=max((t for t, _ in outputs), default=first) - first,
        statuses=statuses,
        healthy_statuses=healthy_statuses,
        answer_s=answer_s,
        requests={p: hang_server.hits[path] for p, path in hanging.items()},
        healthy_reasons=healthy_reasons,
    )


def _steady_rate(times: list[float]) -> float:
    """Events per second between the 10th and the 90th percentile of sorted ``times``."""
    if len(times) < 10:
        return 0.0
    low, high = len(times) // 10, len(times) * 9 // 10
    span = times[high] - times[low]
    return (high - low) / span if span > 0 else float("inf")


def hanging_scenario(
    *,
    bootstrap: str,
    make_topics: Any,
    model_dir: Path,
    server: Any,
    photos: list[str],
    inputs: int,
    hanging_every: int = 10,
    env_extra: dict[str, str] | None = None,
    hang_server: Any = None,
    timeout_s: float = 600.0,
    baseline: FlowRun | None = None,
) -> tuple[Row, FlowRun, FlowRun]:
    """The same backlog twice under the same settings: all healthy (or ``baseline``, a run
    of that already done), then every ``hanging_every``-th image URL hanging, on
    ``hang_server`` (default: the photos' own ``server``). ``make_topics(name)`` gives fresh
    topics.

    The row counts the runs made here. Its max recovery is the longest a hanging product
    waited for its answer (from its image's first request); the scenario's name carries the
    healthy throughput ratios (enriched, and delivered in order).
    """
    extra = env_extra or {}

    def run(every: int) -> FlowRun:
        return flow_run(
            bootstrap=bootstrap,
            topics=make_topics("hang" if every else "flow"),
            model_dir=model_dir,
            server=server,
            photos=photos,
            inputs=inputs,
            hanging_every=every,
            env_extra=extra,
            hang_server=hang_server,
            timeout_s=timeout_s,
        )

    runs = [] if baseline is not None else [run(0)]
    baseline = baseline if baseline is not None else runs[0]
    hanging = run(hanging_every)
    runs.append(hanging)
    ratio = hanging.healthy_per_s / baseline.healthy_per_s if baseline.healthy_per_s else 0.0
    delivered = (
        hanging.delivered_per_s / baseline.delivered_per_s if baseline.delivered_per_s else 0.0
    )
    row = Row(
        scenario=f"image URLs hanging (1 in {hanging_every}): healthy rate {ratio:.2f}x normal "
        f"(delivered {delivered:.2f}x)",
        runs=len(runs),
        inputs=sum(r.inputs for r in runs),
        outputs=sum(r.outputs for r in runs),
        lost=sum(r.lost for r in runs),
        duplicates=sum(r.duplicates for r in runs),
        guarded_hits=0,
        max_recovery_s=round(max(hanging.answer_s.values(), default=0.0), 2),
    )
    return row, baseline, hanging
