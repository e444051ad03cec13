"""Soak: the service for a long while at half of its measured capacity; no leak allowed.

    .venv/bin/python -m bench.soak [--seconds 600] [--share 0.5] [--model DIR] [--work DIR]

Against the Kafka broker at KAFKA_BOOTSTRAP_SERVERS and Redis at REDIS_URL (``make soak``
runs it under deploy/local/with-services.sh). One ``enrich serve`` child process, a local
image server over the shared photos, and three phases on one input topic:

1. warm: a pool of catalog image URLs, once each, so that they are in the cache;
2. capacity: a backlog of products with the soak's mix; products/s from producing it to
   its last output is the capacity;
3. soak: an open-loop producer at ``share`` of the capacity for ``seconds``, the mix being
   mostly pool URLs (cached), some fresh URLs (fetched from the image server) and some that
   answer 404.

Every few seconds the child's resident memory (VmRSS), open file descriptors, TCP sockets
(not listening ones), threads and the topic lag (inputs not yet answered) are sampled. The
warm-up is the first 20 % of the soak (at least 60 s). It passes when the resident memory at
the end is less than 10 % above the one after warm-up, descriptors, connections and threads
at the end are no more than the most seen in the first half after warm-up plus a small
slack, the lag at the end of the load is under 10 s worth of products, every input has an
output or a dead letter (read back from both topics), and the child exits 0 on SIGTERM.

Writes soak.json (the row, the verdict and the series) and soak.png under the work folder
(default .run/soak/<run>/), with the service's log.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    PRODUCT,
    REPO_ROOT,
    Kafka,
    bootstrap_servers,
    free_port,
    load_photos,
    product_record,
    rate_since,
    redis_url,
    shared_data,
)
from bench.processes import Process, rss_mb
from tests.reliability.scenarios import Row, service_env

WARMUP_SHARE = 0.2
MIN_WARMUP_S = 60.0
RSS_GROWTH_LIMIT = 0.10
FD_SLACK = 4
CONNECTION_SLACK = 2
THREAD_SLACK = 2
LAG_BOUND_S = 10.0
"""The lag at the end of the load may be at most this many seconds' worth of products."""
_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp
SERIES = ("t", "rss_mb", "fds", "connections", "threads", "lag")


# -- measuring a process ------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed in between
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_connections(pid: int) -> int:
    """TCP sockets of process ``pid`` that are not listening (IPv4 and IPv6)."""
    inodes = _socket_inodes(pid)
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes and fields[3] != _LISTEN:
                count += 1
    return count


def threads(pid: int) -> int:
    """The number of threads of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class Sample:
    """One reading of the service process and the topics, ``t`` seconds into the soak."""

    t: float
    rss_mb: float
    fds: int
    connections: int
    threads: int
    lag: int


class Sampler:
    """Samples process ``pid`` and ``lag()`` every ``interval_s`` in a thread."""

    def __init__(self, pid: int, lag: Callable[[], int], interval_s: float) -> None:
        self.pid = pid
        self.lag = lag
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        """Why samples were skipped."""
        self.began = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        """Start sampling; ``t`` counts from now."""
        self.began = time.monotonic()
        self._thread.start()
        return self

    def take(self) -> Sample:
        """One sample now (also from other threads)."""
        with self._lock:
            sample = Sample(
                t=round(time.monotonic() - self.began, 2),
                rss_mb=round(rss_mb(self.pid)[0], 1),
                fds=len(os.listdir(f"/proc/{self.pid}/fd")),
                connections=tcp_connections(self.pid),
                threads=threads(self.pid),
                lag=self.lag(),
            )
            self.samples.append(sample)
            return sample

    def stop(self) -> list[Sample]:
        """Stop; the samples in time order."""
        self._stop.set()
        self._thread.join(30)
        return sorted(self.samples, key=lambda s: s.t)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.take()
            except FileNotFoundError:
                return  # the process is gone
            except Exception as exc:  # a broker hiccup reading the lag: skip this sample
                self.errors.append(f"{type(exc).__name__}: {exc}")


# -- the verdict ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the series say about leaks and keeping up; ``reasons`` lists every failure."""

    rss_after_warmup_mb: float
    rss_end_mb: float
    rss_growth: float
    rss_slope_mb_per_min: float
    fds_first_half_max: int
    fds_end: int
    connections_first_half_max: int
    connections_end: int
    threads_first_half_max: int
    threads_end: int
    lag_end: int
    lag_bound: int
    samples_after_warmup: int
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """True when nothing failed."""
        return not self.reasons


def _slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if not spread:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def judge(
    samples: Sequence[Sample],
    *,
    warmup_s: float,
    load_end_s: float,
    lag_bound: int,
    rss_growth_limit: float = RSS_GROWTH_LIMIT,
    fd_slack: int = FD_SLACK,
    connection_slack: int = CONNECTION_SLACK,
    thread_slack: int = THREAD_SLACK,
) -> Verdict:
    """Decide from the samples between the warm-up and the end of the load.

    The resident memory after warm-up is the median of the first tenth of that window, at
    the end the median of its last tenth (one sample at least each): one busy moment does not
    decide. Descriptors, connections and threads at the end are the most seen in the last
    tenth, against the most seen in the first half of the window plus the slack. The lag at
    the end is the last sample's at or before ``load_end_s``.
    """
    steady = [s for s in samples if warmup_s <= s.t <= load_end_s]
    reasons: list[str] = []
    if len(steady) < 4:
        reasons.append(f"only {len(steady)} samples after the warm-up (4 needed)")
    if not steady:
        steady = list(samples[-1:])
    if not steady:
        return Verdict(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, lag_bound, 0, tuple(reasons))
    tenth = max(1, len(steady) // 10)
    first, last = steady[:tenth], steady[-tenth:]
    middle = warmup_s + (load_end_s - warmup_s) / 2
    half = [s for s in steady if s.t <= middle] or first
    rss_start = statistics.median(s.rss_mb for s in first)
    rss_end = statistics.median(s.rss_mb for s in last)
    growth = rss_end / rss_start - 1 if rss_start else 0.0
    if growth >= rss_growth_limit:
        reasons.append(
            f"resident memory grew {100 * growth:.1f} % after warm-up ({rss_start:.0f} → "
            f"{rss_end:.0f} MiB; limit {100 * rss_growth_limit:.0f} %)"
        )

    def trend(name: str, value: Callable[[Sample], int], slack: int) -> tuple[int, int]:
        early, end = max(value(s) for s in half), max(value(s) for s in last)
        if end > early + slack:
            reasons.append(
                f"{name} went up: {end} at the end against at most {early} in the first half "
                f"after warm-up (slack {slack})"
            )
        return early, end

    fds = trend("open file descriptors", lambda s: s.fds, fd_slack)
    connections = trend("TCP connections", lambda s: s.connections, connection_slack)
    thread_counts = trend("threads", lambda s: s.threads, thread_slack)
    lag_end = steady[-1].lag
    if lag_end > lag_bound:
        reasons.append(f"{lag_end} inputs unanswered at the end of the load (bound {lag_bound})")
    return Verdict(
        rss_after_warmup_mb=round(rss_start, 1),
        rss_end_mb=round(rss_end, 1),
        rss_growth=round(growth, 4),
        rss_slope_mb_per_min=round(_slope_per_min([(s.t, s.rss_mb) for s in steady]), 2),
        fds_first_half_max=fds[0],
        fds_end=fds[1],
        connections_first_half_max=connections[0],
        connections_end=connections[1],
        threads_first_half_max=thread_counts[0],
        threads_end=thread_counts[1],
        lag_end=lag_end,
        lag_bound=lag_bound,
        samples_after_warmup=len(steady),
        reasons=tuple(reasons),
    )


def plot(samples: Sequence[Sample], warmup_s: float, load_end_s: float, path: Path,
         title: str) -> None:  # fmt: skip
    """Resident memory, descriptors / connections / threads and lag over time, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in samples]
    figure, (memory, counts, lag) = plt.subplots(
        3, 1, figsize=(9, 8), sharex=True, layout="constrained"
    )
    try:
        memory.plot(t, [s.rss_mb for s in samples], color="tab:blue")
        memory.set_ylabel("resident memory (MiB)")
        counts.plot(t, [s.fds for s in samples], label="open fds")
        counts.plot(t, [s.connections for s in samples], label="TCP connections")
        counts.plot(t, [s.threads for s in samples], label="threads")
        counts.set_ylabel("count")
        counts.legend(loc="upper left")
        lag.plot(t, [s.lag for s in samples], color="tab:red")
        lag.set_ylabel("inputs unanswered")
        lag.set_xlabel("seconds into the soak")
        for axes in (memory, counts, lag):
            axes.axvspan(0, warmup_s, color="0.9", label="warm-up")
            axes.axvline(load_end_s, color="0.5", linestyle="--")
            axes.grid(alpha=0.3)
        memory.set_title(title)
        figure.savefig(path, format="png", dpi=110)
    finally:
        plt.close(figure)


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """Which URL each product gets: mostly the cached pool, some fresh, some 404."""

    base_url: str
    photos: Sequence[str]
    pool: int
    fresh_share: float
    missing_share: float
    tag: str

    def pool_url(self, index: int) -> str:
        """Catalog image ``index`` of the pool (cached after the warm phase)."""
        return f"{self.base_url}/images/{self.photos[index % self.pool]}?pool={self.tag}"

    def urls(self, count: int, prefix: str, seed: int) -> list[str]:
        """``count`` URLs drawn with the shares (fresh and missing ones are unique)."""
        rng = random.Random(seed)
        urls = []
        for i in range(count):
            draw = rng.random()
            if draw < self.missing_share:
                urls.append(f"{self.base_url}/images/missing/{self.tag}/{prefix}-{i}.jpg")
            elif draw < self.missing_share + self.fresh_share:
                photo = self.photos[rng.randrange(len(self.photos))]
                urls.append(f"{self.base_url}/images/{photo}?fresh={self.tag}-{prefix}-{i}")
            else:
                urls.append(self.pool_url(rng.randrange(self.pool)))
        return urls


@dataclass(frozen=True)
class Load:
    """What the open-loop phase produced and saw."""

    events: dict[str, int]
    """Event time (ms) of each product by key."""
    samples: list[Sample]
    load_end_s: float
    drain_s: float
    skipped: list[str]
    """Why samples were skipped (reading the lag failed)."""


class SoakRun:
    """Topics, the image server and the service child of one soak; ``close()`` ends them."""

    def __init__(
        self, work: Path, model_dir: Path, photos: Sequence[str], shares: tuple[int, float, float]
    ) -> None:
        """The image server and new topics (``start()`` starts the service); ``shares`` is
        the mix's (pool size, fresh share, missing share)."""
        from tests.support.image_server import ImageServer

        self.run_id = uuid.uuid4().hex[:8]
        self.work = work
        self.kafka = Kafka(bootstrap_servers(), self.run_id)
        self.meta = Kafka(bootstrap_servers(), self.run_id)  # the sampler's own client
        self.server = ImageServer(shared_data() / "product-images").start()
        self.mix = Mix(self.server.base_url, photos, *shares, tag=self.run_id)
        self.model_dir = model_dir
        self.topics = {
            "input": self.kafka.topic("soak-in"),
            "output": self.kafka.topic("soak-out"),
            "dlq": self.kafka.topic("soak-dlq", partitions=1),
        }
        self.service: Process | None = None
        self.answered = 0
        """Inputs produced so far (each must get an output or a dead letter)."""
        self.exit_code: int | None = None

    def start(self) -> Process:
        """Start ``enrich serve`` on this run's topics, with Redis; return once it is ready."""
        port = free_port()
        env = service_env(
            bootstrap_servers(), self.topics, self.model_dir, f"soak-{self.run_id}",
            ENRICH_METRICS_PORT=str(port), ENRICH_METRICS_HOST="127.0.0.1",
            ENRICH_CACHE_TTL_S="7200", ENRICH_CACHE_NEGATIVE_TTL_S="7200",
            PYTHONUNBUFFERED="1",
        )  # fmt: skip
        env["REDIS_URL"] = redis_url()  # service_env leaves Redis out; the soak caches
        self.service = Process(["service.cli", "serve"], env, self.work / "service.log")
        self.service.start().wait_ready(port)
        return self.service

    def answers(self) -> int:
        """Records in the output and dead-letter topics now."""
        return self.kafka.total(self.topics["output"]) + self.kafka.total(self.topics["dlq"])

    def wait_answered(self, timeout_s: float) -> None:
        """Wait until every input produced so far has its answer."""
        assert self.service is not None
        deadline = time.monotonic() + timeout_s
        while self.answers() < self.answered:
            if not self.service.alive():
                raise RuntimeError(f"the service exited; see {self.service.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {self.answered} answers after {timeout_s:.0f} s")
            time.sleep(0.25)

    def backlog(self, urls: Sequence[str], prefix: str) -> int:
        """Products for ``urls`` as fast as they go, then wait for every answer; returns when
        producing began (ms)."""
        now = dt.datetime.now(tz=dt.UTC)
        began_ms = int(time.time() * 1000)
        items = (
            (f"{prefix}-{i}".encode(), PRODUCT.encode(product_record(f"{prefix}-{i}", url, now)))
            for i, url in enumerate(urls)
        )
        self.answered += self.kafka.produce(self.topics["input"], items)
        self.wait_answered(120 + len(urls) / 20)
        return began_ms

    def capacity(self, products: int) -> float:
        """Products/s through a backlog of the soak's mix."""
        began_ms = self.backlog(self.mix.urls(products, "cap", seed=1), "cap")
        outputs = [o for o in self.kafka.read(self.topics["output"]) if o.key.startswith("cap-")]
        return rate_since(outputs, began_ms)

    def lag(self) -> int:
        """Inputs without an answer yet (the sampler's thread)."""
        answers = self.meta.total(self.topics["output"]) + self.meta.total(self.topics["dlq"])
        return self.meta.total(self.topics["input"]) - answers

    def load(self, rate: float, seconds: float) -> Load:
        """The open-loop producer at ``rate`` for ``seconds``, sampled; then the drain."""
        from bench.service_bench import open_loop

        assert self.service is not None
        sampler = Sampler(self.service.pid, self.lag, min(5.0, max(1.0, seconds / 100)))
        urls = self.mix.urls(max(1, int(rate * seconds)), "soak", seed=2)
        sampler.start()
        events = open_loop(self.kafka.bootstrap, self.topics["input"], urls, rate, seconds,
                           "soak")  # fmt: skip
        load_end = sampler.take().t
        drain_began = time.monotonic()
        self.answered += len(events)
        self.wait_answered(120)
        drain_s = time.monotonic() - drain_began
        samples = sampler.stop()
        return Load(events, samples, load_end, round(drain_s, 1), sampler.errors)

    def stop(self) -> int:
        """SIGTERM the service (it drains and commits); its exit status."""
        assert self.service is not None
        self.exit_code = self.service.stop()
        return self.exit_code

    def close(self) -> None:
        """Stop whatever still runs; delete the topics."""
        if self.service is not None and self.exit_code is None:
            self.service.stop()
        self.server.stop()
        self.meta.cleanup()
        self.kafka.cleanup()


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] soak: {message}", file=sys.stderr, flush=True)


def soak_row(
    *,
    seconds: float = 600.0,
    share: float = 0.5,
    model_dir: Path | None = None,
    work: Path | None = None,
    capacity_products: int = 6000,
    pool: int = 200,
    fresh_share: float = 0.15,
    missing_share: float = 0.05,
) -> tuple[Row, dict[str, Any]]:
    """Run the soak; the reliability-table row and the details (verdict, series, rate).

    Inputs and outputs count the soak phase's products and their answers (outputs and dead
    letters); lost are inputs with neither. The row does not say whether it passed: the
    details' ``passed`` and ``reasons`` do. Needs Kafka, Redis and the shared photos.
    """
    from bench.service_limits import default_model

    shared = shared_data()
    work = work or REPO_ROOT / ".run" / "soak" / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    model_dir = model_dir or default_model(shared, REPO_ROOT / ".run" / "bench" / "model")
    photos = [p.path for p in load_photos(shared, max(pool, 300))]
    run = SoakRun(work, model_dir, photos, (pool, fresh_share, missing_share))
    try:
        service = run.start()
        _say(f"service ready (pid {service.pid}); warming the cache with {pool} images")
        run.backlog([run.mix.pool_url(i) for i in range(pool)], "warm")
        capacity = run.capacity(capacity_products)
        rate = share * capacity
        _say(f"capacity {capacity:.1f} products/s; soaking at {rate:.1f}/s for {seconds:g} s")
        load = run.load(rate, seconds)
        exit_code = run.stop()
        answers = [o for o in run.kafka.read(run.topics["output"], values=True)
                   if o.key in load.events]  # fmt: skip
        dead = [o for o in run.kafka.read(run.topics["dlq"]) if o.key in load.events]
    finally:
        run.close()
    unique = {o.key for o in answers} | {o.key for o in dead}
    warmup_s = max(MIN_WARMUP_S, WARMUP_SHARE * seconds)
    verdict = judge(load.samples, warmup_s=warmup_s, load_end_s=load.load_end_s,
                    lag_bound=max(1, round(rate * LAG_BOUND_S)))  # fmt: skip
    lost = len(set(load.events) - unique)
    reasons = list(verdict.reasons)
    if lost:
        reasons.append(f"{lost} inputs have neither an output nor a dead letter")
    if exit_code != 0:
        reasons.append(f"the service exited {exit_code} on SIGTERM")
    chart = work / "soak.png"
    title = f"soak: {seconds:g} s at {rate:.0f} products/s ({100 * share:.0f} % of capacity)"
    plot(load.samples, warmup_s, load.load_end_s, chart, title)
    row = Row(
        scenario=f"soak ({seconds:g} s at {100 * share:.0f} % of {capacity:.0f}/s)",
        runs=1,
        inputs=len(load.events),
        outputs=len(answers) + len(dead),
        lost=lost,
        duplicates=len(answers) + len(dead) - len(unique),
        guarded_hits=0,
        max_recovery_s=0.0,
    )
    details = {
        "passed": not reasons,
        "reasons": reasons,
        "capacity_pps": round(capacity, 1),
        "rate_pps": round(rate, 1),
        "seconds": seconds,
        "warmup_s": warmup_s,
        "load_end_s": load.load_end_s,
        "drain_s": load.drain_s,
        "exit_code": exit_code,
        "statuses": dict(Counter(o.status for o in answers)),
        "dead_letters": len(dead),
        "skipped_samples": load.skipped,
        "mix": {"pool": pool, "fresh": fresh_share, "missing": missing_share},
        "verdict": {k: v for k, v in asdict(verdict).items() if k != "reasons"},
        "series": {name: [getattr(s, name) for s in load.samples] for name in SERIES},
        "chart": str(chart),
        "service_log": str(work / "service.log"),
    }
    (work / "soak.json").write_text(
        json.dumps({"row": row.as_dict(), **details}, indent=2, default=str) + "\n"
    )
    return row, details


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; print the row, the verdict and where the chart is; 1 if it failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--share", type=float, default=0.5, help="of the measured capacity")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory (default: an untrained default-backbone model)",
    )
    parser.add_argument("--work", type=Path, default=None, help="default .run/soak/<run>")
    parser.add_argument("--capacity-products", type=int, default=6000)
    parser.add_argument("--fresh-share", type=float, default=0.15)
    parser.add_argument("--missing-share", type=float, default=0.05)
    args = parser.parse_args(argv)
    row, details = soak_row(
        seconds=args.seconds, share=args.share, model_dir=args.model, work=args.work,
        capacity_products=args.capacity_products, fresh_share=args.fresh_share,
        missing_share=args.missing_share,
    )  # fmt: skip
    print(json.dumps(row.as_dict()))
    summary = {k: v for k, v in details.items() if k != "series"}
    print(json.dumps(summary, indent=2, default=str))
    return 0 if details["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
