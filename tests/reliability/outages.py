"""Outages of what the service depends on: a private Kafka broker, then a private Redis,
stopped mid-stream and started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka

from tests.reliability.scenarios import (
    OutputWatcher,
    Row,
    _await_outputs,
    _ready,
    _stop,
    free_port,
    process_log,
    product_value,
    read_outputs,
    serve_process,
    service_env,
)

# -- the broker ------------------------------------------------------------------------------


class PrivateBroker:
    """A Kafka broker of the scenario's own (deploy/local/kafka.sh on private ports), so it can
    be stopped and started again on the same data without disturbing anyone else's."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"},
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "ENRICH_RUN_DIR": str(run_dir),
            "KAFKA_KEEP_DATA": "1",
        }
        self.script = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka.sh"
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _run(self, action: str, keep: bool = True) -> None:
        env = {**self.env, "KAFKA_KEEP_DATA": "1" if keep else "0"}
        subprocess.run([str(self.script), action], env=env, check=True, capture_output=True)

    def start(self) -> None:
        self._run("start")

    def stop(self, keep: bool = True) -> None:
        self._run("stop", keep)


def broker_outage_scenario(
    *,
    broker: PrivateBroker,
    topics: dict[str, str],
    model_dir: Path,
    inputs: int,
    outage_s: float,
    timeout_s: float = 300.0,
) -> tuple[Row, list[bool]]:
    """Stop the broker for ``outage_s`` mid-stream, start it again; the service must recover.

    Returns the row and the sequence of distinct /readyz answers seen (expected: True, False,
    True). The inputs must already be in ``topics["input"]`` on ``broker``.
    """
    http_port = free_port()
    env = service_env(broker.bootstrap, topics, model_dir, f"outage-{uuid.uuid4().hex[:6]}",
                      ENRICH_METRICS_PORT=str(http_port), ENRICH_MAX_IN_FLIGHT="100",
                      ENRICH_STALL_TIMEOUT_S="15")  # fmt: skip
    watcher = OutputWatcher(broker.bootstrap, [topics["output"], topics["dlq"]])
    process = serve_process(env)
    readiness: list[bool] = []
    recovery = 0.0
    audited: set[tuple[int, int]] = set()
    deadline = time.monotonic() + timeout_s

    def note_ready() -> None:
        state = _ready(http_port)
        if state is not None and (not readiness or readiness[-1] != state):
            readiness.append(state)

    try:
        while watcher.unique() < inputs // 4 and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(process_log(process))
            note_ready()
            time.sleep(0.1)
        broker.stop(keep=True)
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < outage_s:
            note_ready()
            time.sleep(0.5)
        broker.start()
        restarted = time.monotonic()
        next_audit = restarted + 30
        while watcher.unique() < inputs and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(process_log(process))
            note_ready()
            time.sleep(0.2)
            if time.monotonic() > next_audit:  # the watcher's own fetch may be what is stuck
                audited = read_outputs(broker.bootstrap, [topics["output"], topics["dlq"]])
                if len(audited) >= inputs:
                    break
                next_audit = time.monotonic() + 15
        first = watcher.first_after(restarted)
        recovery = (first - restarted) if first is not None else float("inf")
        settle = time.monotonic() + 10
        while (not readiness or not readiness[-1]) and time.monotonic() < settle:
            note_ready()
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        if watcher.unique() < inputs:  # say whose view is short: the watcher's or the topic's
            audited = read_outputs(broker.bootstrap, [topics["output"], topics["dlq"]])
            print(
                f"watcher saw {watcher.unique()} of {inputs}; a fresh reader sees "
                f"{len(audited)}; service log tail:\n{process_log(process)}",
                file=sys.stderr,
            )
    finally:
        if process.poll() is None:
            process.kill()
        watcher.close()
    # What the topics hold decides what was lost; the watcher is there for the timings.
    unique = max(watcher.unique(), len(audited))
    row = Row(
        scenario=f"broker outage ({outage_s:.0f} s)",
        runs=1,
        inputs=inputs,
        outputs=watcher.count(),
        lost=inputs - unique,
        duplicates=watcher.count() - watcher.unique(),
        guarded_hits=0,
        max_recovery_s=round(recovery, 2),
    )
    return row, readiness


# -- Redis -------------------------------------------------------------------------------------


class PrivateRedis:
    """A Redis of the scenario's own (deploy/local/redis.sh on a free port, no persistence), so
    it can be stopped and started again without disturbing anyone else's."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "REDIS_URL"},
            "REDIS_PORT": str(self.port),
            "ENRICH_RUN_DIR": str(run_dir),
        }
        self.script = Path(__file__).resolve().parents[2] / "deploy" / "local" / "redis.sh"
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _run(self, action: str) -> None:
        subprocess.run([str(self.script), action], env=self.env, check=True, capture_output=True)

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def keys(self) -> int:
        """How many keys it holds now."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            return int(client.dbsize())
        finally:
            client.close()


def cache_counts(port: int) -> dict[str, float] | None:
    """The service's ``enrich_cache_total`` by result label, from /metrics; None if it does not
    answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('enrich_cache_total{result="'):
            label, _, value = line[len('enrich_cache_total{result="') :].partition('"} ')
            counts[label] = float(value)
    return counts


@dataclass
class RedisOutage:
    """What the Redis outage scenario saw, besides its row."""

    produced_during: int
    """Products produced while Redis was down."""
    answered_during: int
    """Outputs that arrived while Redis was down."""
    counts_at_stop: dict[str, float]
    counts_at_start: dict[str, float]
    counts_at_end: dict[str, float]
    """``enrich_cache_total`` by result when Redis stopped, when it started, at the end."""
    from_cache_after: int
    """Outputs after the restart whose image came from the cache."""
    keys_after: int
    """Keys in Redis at the end (it restarts empty)."""
    first_hit_after_s: float | None
    """From the restart to the first cache hit counted at /metrics."""
    statuses: dict[str, int]


def redis_outage_scenario(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    server: Any,
    photos: list[str],
    redis: PrivateRedis,
    rate: float,
    before_s: float,
    outage_s: float,
    after_s: float,
    distinct: int = 50,
    timeout_s: float = 300.0,
) -> tuple[Row, RedisOutage]:
    """Products flow at ``rate`` per second, their images from ``distinct`` URLs (so most are
    cache hits); ``before_s`` after the first output Redis stops for ``outage_s`` and starts
    again (empty); products keep coming for ``after_s`` more. ``redis`` must be running.

    The row's max recovery is from Redis's restart to the first cache hit seen at /metrics.
    """
    http_port = free_port()
    env = service_env(bootstrap, topics, model_dir, f"redis-{uuid.uuid4().hex[:6]}",
                      ENRICH_METRICS_PORT=str(http_port), ENRICH_REDIS_URL=redis.url)  # fmt: skip
    urls = [server.url_for(photos[i % len(photos)]) for i in range(distinct)]
    produced: list[float] = []
    stop_producing = threading.Event()

    def feed() -> None:
        producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        began = time.monotonic()
        while not stop_producing.is_set():
            i = len(produced)
            due = began + i / rate
            if time.monotonic() < due:
                time.sleep(min(0.05, due - time.monotonic()))
                continue
            producer.produce(topics["input"], key=f"r{i}".encode(),
                             value=product_value(f"r{i}", urls[i % distinct]))  # fmt: skip
            producer.poll(0)
            produced.append(time.monotonic())
        producer.flush(30)

    watcher = OutputWatcher(bootstrap, [topics["output"], topics["dlq"]])
    process = serve_process(env)
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    samples: list[tuple[float, dict[str, float]]] = []
    deadline = time.monotonic() + timeout_s

    def wait(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited: {process_log(process)}")
            counts = cache_counts(http_port)
            if counts is not None:
                samples.append((time.monotonic(), counts))
            time.sleep(0.25)

    def latest() -> dict[str, float]:
        return dict(samples[-1][1]) if samples else {}

    try:
        while watcher.count() == 0 and time.monotonic() < deadline:
            wait(0.1)
        wait(before_s)
        counts_at_stop = latest()
        redis.stop()
        stopped_at = time.monotonic()
        wait(outage_s)
        redis.start()
        started_at = time.monotonic()
        counts_at_start = latest()
        wait(after_s)
        stop_producing.set()
        feeder.join(60)
        _await_outputs(watcher, len(produced), process, deadline)
        wait(0.5)
        keys_after = redis.keys()
    finally:
        stop_producing.set()
        _stop(process)
        watcher.close()
    counts_at_end = latest()
    hit_at_start = counts_at_start.get("hit", 0.0)
    first_hit = next((t for t, c in samples if t > started_at and c.get("hit", 0.0) > hit_at_start),
                     None)  # fmt: skip
    outputs = watcher.outputs()
    statuses: dict[str, int] = {}
    for _, record in outputs:
        if record is not None:
            statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    details = RedisOutage(
        produced_during=sum(1 for t in produced if stopped_at <= t < started_at),
        answered_during=sum(1 for t, _ in outputs if stopped_at <= t < started_at),
        counts_at_stop=counts_at_stop,
        counts_at_start=counts_at_start,
        counts_at_end=counts_at_end,
        from_cache_after=sum(
            1 for t, r in outputs if t > started_at and r and (r["image"] or {}).get("from_cache")
        ),
        keys_after=keys_after,
        first_hit_after_s=None if first_hit is None else round(first_hit - started_at, 2),
        statuses=statuses,
    )
    inputs = len(produced)
    row = Row(
        scenario=f"Redis outage ({outage_s:.0f} s)",
        runs=1,
        inputs=inputs,
        outputs=watcher.count(),
        lost=inputs - watcher.unique(),
        duplicates=watcher.count() - watcher.unique(),
        guarded_hits=0,
        max_recovery_s=(
            float("inf") if details.first_hit_after_s is None else details.first_hit_after_s
        ),
    )
    return row, details
