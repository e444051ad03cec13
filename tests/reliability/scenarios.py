"""Fault scenarios shared by the quick CI tests and `make chaos` (bench/chaos.py): their core.

Each scenario returns a :class:`Row`: inputs, outputs, lost (input offsets with neither an
output nor a dead-letter record, counted by reading both topics back), duplicates and the
longest recovery time. This module holds what they all use: the row, serve child processes
and their environment, fresh topics, producing products and reading the outputs back. The
scenarios live beside it: `crash` (kill -9), `network` (SSRF and a private network),
`outages` (the broker, Redis), `flow` (image URLs that hang), `poison` (poison records and
the killer) and `scale_out` (processes joining and dying in one consumer group).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import confluent_kafka

from service.contract import SingleObjectCodec

ENRICHMENT = SingleObjectCodec.for_schema("category_enrichment")


@dataclass
class Row:
    """One line of the reliability table."""

    scenario: str
    runs: int
    inputs: int
    outputs: int
    lost: int
    duplicates: int
    guarded_hits: int
    max_recovery_s: float

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        return asdict(self)


class OutputWatcher:
    """Reads the output and dead-letter topics in the background, noting when each arrived."""

    def __init__(self, bootstrap: str, topics: list[str], committed_only: bool = False) -> None:
        config = {
            "bootstrap.servers": bootstrap,
            "group.id": f"watch-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
        if committed_only:
            config["isolation.level"] = "read_committed"
        self._consumer = confluent_kafka.Consumer(config)
        self._consumer.subscribe(topics)
        self.sources: list[tuple[int, int]] = []
        self.arrivals: list[float] = []
        self.records: list[dict[str, Any] | None] = []
        """The decoded enrichment of each output (None for a dead-letter record)."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.2)
            if message is None or message.error() or message.value() is None:
                continue
            headers = dict(message.headers() or [])
            record: dict[str, Any] | None = None
            if "dlq.source.partition" in headers:
                source = (
                    int(headers["dlq.source.partition"]),
                    int(headers["dlq.source.offset"]),
                )
            else:
                record = ENRICHMENT.decode(message.value())
                source = (record["source"]["partition"], record["source"]["offset"])
            with self._lock:
                self.sources.append(source)
                self.arrivals.append(time.monotonic())
                self.records.append(record)

    def count(self) -> int:
        with self._lock:
            return len(self.sources)

    def unique(self) -> int:
        with self._lock:
            return len(set(self.sources))

    def outputs(self) -> list[tuple[float, dict[str, Any] | None]]:
        """(arrival, decoded enrichment or None for dead letters) of every output so far."""
        with self._lock:
            return list(zip(self.arrivals, self.records, strict=True))

    def first_after(self, moment: float) -> float | None:
        with self._lock:
            later = [t for t in self.arrivals if t > moment]
        return min(later) if later else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def read_outputs(
    bootstrap: str, topics: list[str], timeout_s: float = 30.0
) -> set[tuple[int, int]]:
    """The (partition, offset) sources answered in ``topics``, read start to end by a fresh
    group-less consumer: a second opinion that does not depend on a watcher's fetch state."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap,
                                         "group.id": f"audit-{uuid.uuid4().hex[:8]}",
                                         "enable.auto.commit": False})  # fmt: skip
    try:
        ends: dict[tuple[str, int], int] = {}
        assignment = []
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            for partition in metadata.partitions:
                _low, high = consumer.get_watermark_offsets(
                    confluent_kafka.TopicPartition(topic, partition), timeout=timeout_s
                )
                if high > 0:
                    ends[(topic, partition)] = high
                    assignment.append(
                        confluent_kafka.TopicPartition(
                            topic, partition, confluent_kafka.OFFSET_BEGINNING
                        )
                    )
        consumer.assign(assignment)
        sources: set[tuple[int, int]] = set()
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            key = (message.topic() or "", message.partition() or 0)
            if (message.offset() or 0) + 1 >= ends.get(key, 0):
                ends.pop(key, None)
            if message.value() is None:
                continue
            headers = dict(message.headers() or [])
            if "dlq.source.partition" in headers:
                sources.add((int(headers["dlq.source.partition"]),
                             int(headers["dlq.source.offset"])))  # fmt: skip
            else:
                record = ENRICHMENT.decode(message.value())
                sources.add((record["source"]["partition"], record["source"]["offset"]))
        return sources
    finally:
        consumer.close()


def read_enrichments(
    bootstrap: str, topic: str, timeout_s: float = 60.0
) -> list[tuple[str, int, int]]:
    """(product id, source partition, source offset) of every enrichment in ``topic``, read
    from the start to the end with read_committed: each output partition in log order, so the
    outputs of one product (keyed by it, all in one partition) are in the order written."""
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"audit-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.partition.eof": True,
        "isolation.level": "read_committed",
    })  # fmt: skip
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for p in partitions])  # fmt: skip
        left = set(partitions)
        found: list[tuple[str, int, int]] = []
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    left.discard(message.partition())
                continue
            if message.value() is None:
                continue
            record = ENRICHMENT.decode(message.value())
            found.append((str(record["product_id"]), int(record["source"]["partition"]),
                          int(record["source"]["offset"])))  # fmt: skip
        if left:
            raise RuntimeError(f"{topic}: partitions {sorted(left)} not read to their end")
        return found
    finally:
        consumer.close()


def serve_process(env: dict[str, str], hosts: Path | None = None) -> subprocess.Popen[bytes]:
    """`enrich serve` as a child process; its stderr goes to a temporary file (a pipe nobody
    reads would fill up with librdkafka's connection errors during an outage and block it).

    With ``hosts``, the child runs in a mount namespace of its own where that file is
    /etc/hosts (`unshare -m`, root only): names resolve as the file says for it alone.
    """
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the process object)
    command = [sys.executable, "-m", "service.cli", "serve"]
    if hosts is not None:
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                   str(hosts), *command]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    process.log = log  # type: ignore[attr-defined]
    return process


def process_log(process: subprocess.Popen[bytes]) -> str:
    """The last lines a serve child wrote."""
    log = process.log  # type: ignore[attr-defined]
    log.seek(0)
    return str(log.read().decode(errors="replace")[-3000:])


def service_env(
    bootstrap: str, topics: dict[str, str], model_dir: Path, group: str, **extra: str
) -> dict[str, str]:
    """Environment for a serve child: topics, group, model, loopback allowed, no Redis."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ENRICH_INPUT_TOPIC": topics["input"],
        "ENRICH_OUTPUT_TOPIC": topics["output"],
        "ENRICH_DEAD_LETTER_TOPIC": topics["dlq"],
        "ENRICH_GROUP_ID": group,
        "ENRICH_MODEL_DIR": str(model_dir),
        "ENRICH_ALLOWED_NETWORKS": "127.0.0.1/32",
        "ENRICH_METRICS_PORT": "0",
        "ENRICH_LOG_LEVEL": "WARNING",
        "ENRICH_LOG_FORMAT": "json",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **extra,
    }
    env.pop("REDIS_URL", None)
    return env


def service_topics(admin: Any, name: str, prefix: str = "test") -> dict[str, str]:
    """Fresh input and output topics (4 partitions) and a dead-letter topic (1) for one run."""
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "input": f"{prefix}-{name}-{suffix}",
        "output": f"{prefix}-{name}-out-{suffix}",
        "dlq": f"{prefix}-{name}-dlq-{suffix}",
    }
    admin.create_topics([topics["input"], topics["output"]], partitions=4)
    admin.create_topics([topics["dlq"]], partitions=1)
    return topics


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(port: int) -> bool | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False
    except OSError:
        return None


PRODUCT = SingleObjectCodec.for_schema("product")


def product_value(product_id: str, url: str) -> bytes:
    """A `Product` record (single-object encoding) with just an id and an image URL."""
    return PRODUCT.encode(
        {
            "product_id": product_id,
            "partner_id": "chaos",
            "title": None,
            "description": None,
            "image_url": url,
            "additional_image_urls": [],
            "partner_category": None,
            "updated_at": dt.datetime.now(tz=dt.UTC),
        }
    )


def produce(bootstrap: str, topic: str, items: list[tuple[str, bytes]]) -> None:
    """Produce (key, value) pairs to ``topic`` and wait until the broker has them all."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for n, (key, value) in enumerate(items):
        producer.produce(topic, key=key.encode(), value=value)
        if n % 5000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} products were not delivered to {topic}")


def _await_outputs(
    watcher: OutputWatcher, count: int, process: subprocess.Popen[bytes], deadline: float
) -> None:
    """Wait until ``count`` distinct inputs are answered; a child that exits early raises."""
    while watcher.unique() < count and time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}: {process_log(process)}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child and wait for it; kill it if it does not go within 60 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
