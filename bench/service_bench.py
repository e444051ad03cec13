"""The service against its limits and a naive baseline, all figures measured in one run.

    .venv/bin/python -m bench.service_bench [--quick] [--model DIR] [--docs/--no-docs]

Figures (issue 6): (1) the inference limit, `Classifier.predict_raw` on decoded batches of
the service's batch size; (2) the decode limit, `decode_image` on the shared photos, one core
and every core; (3) end to end through real Kafka with every image in Redis, and its ratio to
(1); (4) end to end with a 100 ms image server, and its ratio to min((1), (2)); (5) a naive
sequential consumer on the same inputs; (6) latency from event time to output under an
open-loop producer at 50 % and 90 % of (3); (7) peak resident memory over a backlog; (8)
`enrich replay` over a warm cache; (9) two instances in one group against one; (10) GPU.

The service runs as `python -m service.cli serve` subprocesses with their settings in the
environment, against the Kafka broker at KAFKA_BOOTSTRAP_SERVERS and Redis at REDIS_URL.
Throughputs run from the moment the service is ready (model loaded and warmed, partitions
assigned, the backlog waiting) to the last output record's Kafka timestamp, so model loading
is not counted. py-spy (when installed) profiles the second half of (3) and
(4); (3) is taken over the first, unprofiled half, (4) over the whole run.

Writes bench/results/<date>-<host>[-quick].md and .json, and, for a full run (or with
--docs), docs/performance.md and docs/performance.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import confluent_kafka

from bench.harness import (
    PRODUCT,
    REPO_ROOT,
    ImageHosts,
    Kafka,
    Output,
    bootstrap_servers,
    delete_content_keys,
    dumps,
    free_port,
    load_photos,
    product_record,
    rate,
    rate_since,
    redis_url,
    service_env,
    shared_data,
    timeline,
)
from bench.processes import CounterSampler, Process, RssSampler
from bench.profiling import Profiler, percentiles, summarize_profile
from bench.service_limits import (
    FULL,
    IMAGE_HOSTS,
    LATENCY_MS,
    MISSING_URLS,
    PERCENTILES,
    QUICK,
    Sizes,
    cold_bounds,
    decode_limit,
    default_model,
    inference_limit,
    say,
)
from bench.service_report import machine, performance_doc, report, table

# -- the runs through Kafka -----------------------------------------------------------------


class Bench:
    """One benchmark run: topics, image servers, the service processes, the figures."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args = args
        self.sizes = sizes
        self.run_id = uuid.uuid4().hex[:8]
        self.kafka = Kafka(bootstrap_servers(), self.run_id)
        self.work = REPO_ROOT / ".run" / "bench" / self.run_id
        self.work.mkdir(parents=True, exist_ok=True)
        self.model_dir: Path = args.model
        self.image_size = 0
        self.dlq = ""
        self.figures: dict[str, Any] = {}
        self.details: dict[str, Any] = {}
        self.profiles: dict[str, Any] = {}
        self.notes: list[str] = []
        self.profiler_exe = Profiler.available() if args.profile else None

    # -- helpers ----------------------------------------------------------------------------

    def env(self, **settings: str) -> dict[str, str]:
        """The service's environment: this run's services, model and settings (the
        benchmark's cache entries go away by themselves)."""
        settings = {"cache_ttl_s": "7200", "cache_negative_ttl_s": "7200", **settings}
        return service_env(self.model_dir, self.dlq, redis=redis_url(), **settings)

    def serve(self, name: str, source: str, target: str, group: str | None = None) -> Process:
        """Start ``enrich serve`` on ``source`` → ``target``; returns once it is ready."""
        port = free_port()
        env = self.env(input_topic=source, output_topic=target, metrics_port=str(port),
                       group_id=group or f"bench-{name}-{self.run_id}")  # fmt: skip
        process = Process(["service.cli", "serve"], env, self.work / f"{name}.log").start()
        process.wait_ready(port)
        return process

    def produce(self, topic: str, urls: Sequence[str], prefix: str) -> None:
        """One product per URL, produced as a backlog."""
        now = dt.datetime.now(tz=dt.UTC)
        self.kafka.produce(
            topic,
            (
                (f"{prefix}-{i}".encode(), PRODUCT.encode(product_record(f"{prefix}-{i}", u, now)))
                for i, u in enumerate(urls)
            ),
        )

    def timeout(self, count: int, per_s: float = 20.0) -> float:
        """A generous limit for ``count`` products."""
        return 120 + count / per_s

    def measured_run(
        self, name: str, urls: Sequence[str], *, profile: bool, rate_floor: float
    ) -> tuple[list[Output], int, int]:
        """Products for ``urls`` as a backlog, one service through them; at half way the
        profiler (when asked for) attaches. Returns the outputs, when the service was ready
        and when the profiler started (ms)."""
        source, target = self.kafka.topic(f"{name}-in"), self.kafka.topic(f"{name}-out")
        self.produce(source, urls, name)
        service = self.serve(name, source, target)
        try:
            profiler = self.through(name, service, target, len(urls), profile, rate_floor)
        finally:
            self.details[f"{name}_exit"] = service.stop()
        outputs = self.kafka.read(target, values=True)
        return outputs, service.ready_ms, profiler.started_ms if profiler is not None else 0

    def through(
        self, name: str, service: Process, target: str, count: int, profile: bool,
        rate_floor: float,
    ) -> Profiler | None:  # fmt: skip
        """Wait for ``count`` outputs; profile from half of them classified to the end; read
        the service's counters at the start, half way and at the end."""
        timeout = self.timeout(count, rate_floor)
        sampler = CounterSampler(service).start()
        start = service.metrics()
        service.wait_classified(count // 2, timeout)
        half = service.metrics()
        profiler: Profiler | None = None
        if profile and self.profiler_exe:
            profiler = Profiler(service.pid, self.work / f"{name}.pyspy.txt").start()
        try:
            self.kafka.wait_for(target, count, timeout_s=timeout, alive=service.alive)
            end = service.metrics()
        finally:
            if profiler is not None:
                problem = profiler.stop()
                if problem:
                    self.notes.append(f"py-spy failed on {name}: {problem.strip()}")
        if profiler is not None and profiler.output.exists():
            self.profiles[name] = summarize_profile(profiler.output)
        self.details[f"{name}_inference"] = {
            "first_half": half.since(start),
            "second_half": end.since(half),
        }
        self.details[f"{name}_stalls"] = sampler.stop()
        return profiler

    def split_rate(
        self, name: str, outputs: list[Output], ready_ms: int, profiled_from_ms: int
    ) -> float:
        """Products/s from readiness (the backlog waiting) to the last output before the
        profiler attached (to the last output without one)."""
        statuses = Counter(o.status for o in outputs)
        self.details[f"{name}_statuses"] = dict(statuses)
        self.details[f"{name}_timeline"] = timeline(outputs, ready_ms)
        if profiled_from_ms:
            before = [o for o in outputs if o.timestamp_ms < profiled_from_ms]
            after = [o for o in outputs if o.timestamp_ms >= profiled_from_ms + 500]
            self.details[f"{name}_profiled_pps"] = round(rate(after), 1)
            self.details[f"{name}_unprofiled_outputs"] = len(before)
            return rate_since(before, ready_ms)
        return rate_since(outputs, ready_ms)

    # -- the figures -------------------------------------------------------------------------

    def cold(self, slow: ImageHosts, count: int) -> None:
        """(4): every image fetched (100 ms) and decoded; fills the cache for (3)."""
        photos = slow.photos[:count]
        delete_content_keys(redis_url(), photos, self.image_size)
        urls = [slow.url(i, tag=self.run_id) for i in range(count)]
        say(f"(4) cold: {count} products, {LATENCY_MS} ms per image, {IMAGE_HOSTS} hosts")
        outputs, ready, profiled = self.measured_run("cold", urls, profile=True, rate_floor=10)
        # Outputs leave in partition order, in bursts, so no clean unprofiled half exists:
        # the whole run counts, py-spy attached for its second half (a conservative figure).
        value = self.split_rate("cold", outputs, ready, 0)
        self.details["cold_profiled_from_ms_after_ready"] = profiled - ready if profiled else None
        self.figures["e2e_cold_pps"] = round(value, 1)
        say(f"    e2e_cold_pps = {value:.1f} {self.details['cold_statuses']}")

    def warm_and_latency(self, slow: ImageHosts, cold_count: int, count: int) -> None:
        """(3) over the cache filled by (4), then (6) on the same running service."""
        urls = [slow.url(i % cold_count, tag=self.run_id) for i in range(count)]
        name = "warm"
        source, target = self.kafka.topic(f"{name}-in"), self.kafka.topic(f"{name}-out")
        self.warm_topic = source
        self.produce(source, urls, name)
        say(f"(3) warm: {count} products, every image in Redis")
        service = self.serve(name, source, target)
        try:
            profiler = self.through(name, service, target, count, True, 20)
            outputs = self.kafka.read(target, values=True)
            profiled = profiler.started_ms if profiler else 0
            warm = self.split_rate(name, outputs, service.ready_ms, profiled)
            self.figures["e2e_warm_pps"] = round(warm, 1)
            say(f"    e2e_warm_pps = {warm:.1f} {self.details['warm_statuses']}")
            self.latency(service, source, target, urls, warm, count)
        finally:
            self.details["warm_exit"] = service.stop()

    def latency(
        self, service: Process, source: str, target: str, urls: Sequence[str], warm: float,
        already: int,
    ) -> None:  # fmt: skip
        """(6): open-loop products at 50 % and 90 % of (3); event time → output timestamp."""
        results: dict[str, Any] = {}
        expected = already
        for share in (50, 90):
            per_s = warm * share / 100
            say(f"(6) latency at {share} % of (3): {per_s:.0f} products/s "
                f"for {self.sizes.latency_s:g} s")  # fmt: skip
            events = open_loop(self.kafka.bootstrap, source, urls, per_s,
                               self.sizes.latency_s, f"lat{share}")  # fmt: skip
            expected += len(events)
            self.kafka.wait_for(target, expected, timeout_s=self.timeout(len(events)),
                                alive=service.alive)  # fmt: skip
            outputs = [o for o in self.kafka.read(target) if o.key.startswith(f"lat{share}-")]
            latencies = [o.timestamp_ms - events[o.key] for o in outputs if o.key in events]
            results[f"{share}%"] = {
                **percentiles(latencies, PERCENTILES),
                "offered_pps": round(per_s, 1),
                "products": len(latencies),
            }
            say(f"    latency {share} %: {results[f'{share}%']}")
        self.figures["latency_ms"] = results

    def memory(self, fast: ImageHosts, count: int) -> None:
        """(7): a backlog of products whose images fail fast (404, cached negatively)."""
        name = "rss"
        source, target = self.kafka.topic(f"{name}-in"), self.kafka.topic(f"{name}-out")
        say(f"(7) memory: producing a backlog of {count:,} products")
        self.produce(source, [fast.missing_url(i % MISSING_URLS) for i in range(count)], name)
        service = self.serve(name, source, target)
        done = [0]
        sampler = RssSampler(service.pid, lambda: done[0]).start()
        began = time.monotonic()

        def tick(seen: int) -> None:
            done[0] = seen

        try:
            self.kafka.wait_for(target, count, timeout_s=self.timeout(count, 200),
                                alive=service.alive, on_tick=tick, interval_s=0.5)  # fmt: skip
        finally:
            seconds = time.monotonic() - began
            sampler.stop()
            self.details["rss_exit"] = service.stop()
        samples = sampler.samples
        by_progress = []
        for share in (0, 10, 25, 50, 75, 90, 100):
            mark = count * share / 100
            candidates = [s for s in samples if s[1] >= mark] or samples[-1:]
            by_progress.append({"done_pct": share, "rss_mb": round(candidates[0][2], 1)})
        self.figures["peak_rss_mb"] = round(sampler.peak_mb, 1)
        self.details["rss"] = {
            "products": count,
            "seconds": round(seconds, 1),
            "products_per_s": round(count / seconds, 1),
            "by_progress": by_progress,
            "max_sampled_mb": round(max(s[2] for s in samples), 1) if samples else None,
        }
        say(f"    peak_rss_mb = {sampler.peak_mb:.1f}; {self.details['rss']}")

    def replay(self) -> None:
        """(8): `enrich replay` of the warm input topic (every image cached)."""
        target = self.kafka.topic("replay-out")
        total = self.kafka.total(self.warm_topic)
        say(f"(8) replay: {total} products of the warm topic")
        env = self.env()
        process = Process(
            ["service.cli", "replay", "--input-topic", self.warm_topic, "--output-topic", target,
             "--group-id", f"bench-replay-{self.run_id}", "--no-progress"],
            env, self.work / "replay.log",
        ).start()  # fmt: skip
        began = time.monotonic()
        code = process.wait(self.timeout(total))
        wall = time.monotonic() - began
        outputs = self.kafka.read(target)
        self.figures["replay_pps"] = round(rate(outputs), 1)
        self.details["replay"] = {"products": total, "outputs": len(outputs), "exit": code,
                                  "wall_s_with_start": round(wall, 1)}  # fmt: skip
        say(f"    replay_pps = {self.figures['replay_pps']}; {self.details['replay']}")

    def floor(self) -> None:
        """(3c): the floor consumer (`bench.floor_consumer`) over the warm topic: what a consumer
        of this architecture doing only the unavoidable work per product reaches, beside (3)."""
        target = self.kafka.topic("floor-out")
        total = self.kafka.total(self.warm_topic)
        say(f"(3c) floor consumer: {total} products of the warm topic")
        args = ["bench.floor_consumer", "--model", str(self.model_dir), "--source",
                self.warm_topic, "--target", target, "--count", str(total),
                "--bootstrap", self.kafka.bootstrap, "--redis", redis_url()]  # fmt: skip
        log = self.work / "floor.log"
        process = Process(args, self.env(), log).start()
        code = process.wait(self.timeout(total))
        self.details["floor_exit"] = code
        lines = [x for x in log.read_text().splitlines() if x.startswith("{")]
        if code != 0 or not lines:
            self.notes.append(f"the floor consumer failed (exit {code}); see {log}")
            return
        self.details["floor"] = json.loads(lines[-1])
        self.figures["floor_pps"] = self.details["floor"]["products_per_s"]
        say(f"    floor_pps = {self.figures['floor_pps']}; {self.details['floor']}")

    def two_instances(self, slow: ImageHosts, cold_count: int, count: int) -> None:
        """(9): two `serve` processes in one group on warm products, against (3)."""
        source, target = self.kafka.topic("two-in"), self.kafka.topic("two-out")
        group = f"bench-two-{self.run_id}"
        say(f"(9) two instances: {count} warm products")
        first = self.serve("two-a", source, target, group)
        second = self.serve("two-b", source, target, group)
        try:
            self.kafka.wait_stable(group, 2)
            urls = [slow.url(i % cold_count, tag=self.run_id) for i in range(count)]
            began_ms = int(time.time() * 1000)
            self.produce(source, urls, "two")
            self.kafka.wait_for(
                target, count, timeout_s=self.timeout(count),
                alive=lambda: first.alive() and second.alive(),
            )  # fmt: skip
        finally:
            self.details["two_exit"] = [first.stop(), second.stop()]
        outputs = self.kafka.read(target)
        two = rate_since(outputs, began_ms)
        one = self.figures.get("e2e_warm_pps") or 0.0
        self.details["two_instances_pps"] = round(two, 1)
        self.figures["two_instances_ratio"] = round(two / one, 2) if one else None
        say(f"    two instances {two:.1f}/s against one {one}/s")

    def single_host_cold(self, slow: ImageHosts, count: int) -> None:
        """(4) again with every image on one host: the per-host cap is the bound."""
        photos = slow.photos[:count]
        delete_content_keys(redis_url(), photos, self.image_size)
        urls = [slow.url(i, tag=self.run_id + "s", host=0) for i in range(count)]
        say(f"(4b) cold, one image host: {count} products")
        outputs, ready, _ = self.measured_run("cold1", urls, profile=False, rate_floor=5)
        value = self.split_rate("cold1", outputs, ready, 0)
        self.details["e2e_cold_one_host_pps"] = round(value, 1)
        say(f"    one host: {value:.1f} products/s {self.details['cold1_statuses']}")

    def naive(self, fast: ImageHosts, slow: ImageHosts) -> None:
        """(5): the sequential consumer, warm (0 ms server; it has no cache) and cold."""
        sizes = self.sizes
        phases = []
        for label, server, count in (("naive-warm", fast, sizes.naive_warm),
                                     ("naive-cold", slow, sizes.naive_cold)):  # fmt: skip
            source, target = self.kafka.topic(f"{label}-in"), self.kafka.topic(f"{label}-out")
            self.produce(source, [server.url(i, tag=label) for i in range(count)], label)
            phases.append((label, source, target, count))
        say(f"(5) naive: {sizes.naive_warm} products at 0 ms, {sizes.naive_cold} at 100 ms")
        args = ["bench.naive_consumer", "--model", str(self.model_dir),
                "--bootstrap", self.kafka.bootstrap]  # fmt: skip
        for _, source, target, count in phases:
            args += ["--phase", f"{source}:{target}:{count}"]
        process = Process(args, self.env(), self.work / "naive.log").start()
        code = process.wait(self.timeout(sizes.naive_warm + sizes.naive_cold, 2))
        self.details["naive_exit"] = code
        for label, _, target, _ in phases:
            outputs = self.kafka.read(target, values=True)
            key = label.replace("-", "_") + "_pps"
            self.figures[key] = round(rate(outputs), 2)
            self.details[f"{label}_statuses"] = dict(Counter(o.status for o in outputs))
            say(f"    {key} = {self.figures[key]}")


def open_loop(
    bootstrap: str, topic: str, urls: Sequence[str], per_s: float, seconds: float, prefix: str
) -> dict[str, int]:
    """Produce at a fixed rate regardless of the service (open loop); event times by key."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    total = max(1, int(per_s * seconds))
    events: dict[str, int] = {}
    began = time.perf_counter()
    for i in range(total):
        delay = began + i / per_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = dt.datetime.now(tz=dt.UTC)
        key = f"{prefix}-{i}"
        record = product_record(key, urls[i % len(urls)], now)
        producer.produce(topic, key=key.encode(), value=PRODUCT.encode(record))
        producer.poll(0)
        events[key] = int(now.timestamp() * 1000)
    producer.flush(30)
    return events


def derive(bench: Bench) -> None:
    """Ratios, bounds and speed-ups from the measured figures."""
    f, d = bench.figures, bench.details
    inference, decode = f["inference_limit_ips"], f["decode_limit_ips"]
    warm, cold = f.get("e2e_warm_pps"), f.get("e2e_cold_pps")
    f["ratio_warm"] = round(warm / inference, 3) if warm else None
    floor = f.get("floor_pps")
    f["ratio_floor"] = round(floor / inference, 3) if floor else None
    cores = int(d.get("cores") or os.cpu_count() or 1)
    floor_cpu = (d.get("floor") or {}).get("cpu_ms_per_product", {}).get("machine")
    # The floor consumer's machine CPU per product beyond inference's own (every core busy).
    pipeline_ms = floor_cpu - 1000 * cores / inference if floor_cpu else None
    one_core = f.get("decode_limit_ips_per_core") or decode / cores
    bounds = cold_bounds(inference, decode, one_core, pipeline_ms, cores)
    d["cores"] = cores
    bound, shared = bounds["bound"], bounds["shared"]
    d["cold_bound_ips"] = round(bound, 1)
    # On shared cores an image costs its decode and its inference, one after the other.
    d["cold_shared_bound_ips"] = round(shared, 1)
    d["cold_machine_bound_ips"] = round(bounds["machine"], 1)
    d["cold_target_pps"] = round(bounds["target"], 1)
    d["cold_target_over_machine"] = round(bounds["target_over_machine"], 3)
    if "machine_with_pipeline" in bounds:
        d["cold_pipeline_ms"] = round(pipeline_ms or 0.0, 3)
        d["cold_machine_pipeline_bound_ips"] = round(bounds["machine_with_pipeline"], 1)
        d["cold_target_over_machine_pipeline"] = round(
            bounds["target_over_machine_with_pipeline"], 3
        )
    f["ratio_cold"] = round(cold / bound, 3) if cold else None
    d["ratio_cold_shared"] = round(cold / shared, 3) if cold else None
    d["per_host"] = int(bench.env().get("ENRICH_FETCH_PER_HOST", "8"))
    d["one_host_bound_pps"] = round(d["per_host"] / (LATENCY_MS / 1000), 1)
    naive_warm, naive_cold = f.get("naive_warm_pps"), f.get("naive_cold_pps")
    d["speedup_warm"] = round(warm / naive_warm, 1) if warm and naive_warm else None
    d["speedup_cold"] = round(cold / naive_cold, 1) if cold and naive_cold else None


FIGURE_ORDER = ("cold", "warm", "floor", "memory", "replay", "two", "single", "naive")


def run(args: argparse.Namespace) -> Bench:
    """Measure every figure (or those in ``--only``) in order."""
    from service.config import load_settings

    sizes = QUICK if args.quick else FULL
    if args.set:
        changes = dict(item.split("=", 1) for item in args.set.split(","))
        types = {k: type(v) for k, v in asdict(sizes).items()}
        sizes = Sizes(**{**asdict(sizes), **{k: types[k](v) for k, v in changes.items()}})
    bench = Bench(args, sizes)
    only = set(args.only.split(",")) if args.only else set(FIGURE_ORDER)
    shared = shared_data()
    bench.model_dir = args.model or default_model(shared, REPO_ROOT / ".run" / "bench" / "model")
    settings = load_settings()
    count = max(sizes.decode_images, sizes.cold_products, sizes.single_host_products, 64)
    photos = load_photos(shared, count)
    bench.details["date"] = dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    bench.details["machine"] = machine()
    bench.details["sizes"] = asdict(sizes)
    bench.details["model"] = str(bench.model_dir)
    bench.details["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]

    say(f"(1) inference limit, batch {settings.batch_max_size}")
    inference = inference_limit(bench.model_dir, photos, settings.batch_max_size,
                                sizes.inference_batches)  # fmt: skip
    bench.image_size = inference["image_size"]
    bench.details["inference"] = inference
    bench.figures["inference_limit_ips"] = inference["images_per_s"]
    say(f"    inference_limit_ips = {inference['images_per_s']} {inference}")
    say(f"(2) decode limit, {sizes.decode_images} images")
    decode = decode_limit(photos[: sizes.decode_images], bench.image_size)
    bench.details["decode"] = decode
    bench.figures["decode_limit_ips"] = decode["all_cores_images_per_s"]
    bench.figures["decode_limit_ips_per_core"] = decode["one_core_images_per_s"]
    say(f"    decode_limit_ips = {decode}")

    bench.dlq = bench.kafka.topic("dead-letter", partitions=1)
    fast = ImageHosts(photos, hosts=IMAGE_HOSTS).start()
    slow = ImageHosts(photos, hosts=IMAGE_HOSTS, latency_s=LATENCY_MS / 1000).start()
    try:
        if only & {"cold", "warm", "floor", "replay", "two"}:
            bench.cold(slow, sizes.cold_products)
        if only & {"warm", "floor", "replay"}:
            bench.warm_and_latency(slow, sizes.cold_products, sizes.warm_products)
        if "floor" in only:
            bench.floor()
        if "memory" in only:
            bench.memory(fast, sizes.rss_products)
        if "replay" in only:
            bench.replay()
        if "two" in only:
            bench.two_instances(slow, sizes.cold_products, sizes.two_products)
        if "single" in only:
            bench.single_host_cold(slow, sizes.single_host_products)
        if "naive" in only:
            bench.naive(fast, slow)
    finally:
        fast.stop()
        slow.stop()
        bench.kafka.cleanup()
    if not bench.profiler_exe and args.profile:
        bench.notes.append("py-spy is not installed (pip install py-spy): no profiles")
    bench.details["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    bench.notes.append(f"Kafka topics had 4 partitions; service logs in {bench.work}")
    derive(bench)
    return bench


def main(argv: Sequence[str] | None = None) -> None:
    """Run, print every figure, write the results (and the docs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under 5 minutes")
    parser.add_argument(
        "--model", type=Path, default=None,
        help="model directory (default: an untrained default-backbone model)",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                        help="update docs/performance.* (default: on for a full run)")  # fmt: skip
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--only", default="", help=f"some of {','.join(FIGURE_ORDER)}")
    parser.add_argument("--set", default="", help="size overrides, e.g. rss_products=50000")
    args = parser.parse_args(argv)
    started = dt.datetime.now(tz=dt.UTC)
    began = time.monotonic()
    command = shlex.join(["python", "-m", "bench.service_bench", *(argv or sys.argv[1:])])
    bench = run(args)
    elapsed = time.monotonic() - began
    figures = {
        **bench.figures,
        "gpu": None,
        "gpu_note": "no GPU was lent to this run",
        "machine": bench.details["machine"],
        "date": bench.details["date"],
        "quick": bool(args.quick),
        "command": command,
    }
    print(json.dumps(figures, indent=2, default=str))
    print("\n".join(table(bench.figures, bench.details)))
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"{started:%Y-%m-%d}-{platform.node()}" + ("-quick" if args.quick else "")
    results_file = args.results / f"{stem}.md"
    results_file.write_text(report(bench, command, started, elapsed))
    (args.results / f"{stem}.json").write_text(dumps({**figures, "details": bench.details}))
    say(f"wrote {results_file}")
    if args.docs if args.docs is not None else not args.quick:
        docs = REPO_ROOT / "docs"
        markdown = docs / "performance.md"
        previous = markdown.read_text() if markdown.exists() else ""
        markdown.write_text(performance_doc(bench, command, results_file, previous))
        (docs / "performance.json").write_text(dumps(figures))
        say(f"wrote {markdown} and {docs / 'performance.json'}")


if __name__ == "__main__":
    main()
