"""What the service benchmarks share: the shared photos, a local image server, Kafka topics
and the service's outputs. The service as a subprocess (readiness, CPU, resident memory) is in
bench/processes.py, py-spy profiles and percentiles in bench/profiling.py.

Everything talks to real services: the Kafka broker at ``KAFKA_BOOTSTRAP_SERVERS`` and Redis
at ``REDIS_URL`` (defaults 127.0.0.1:9092 and redis://127.0.0.1:6379/0). Topics are created
with a per-run suffix and deleted at the end; cache entries written by the service under test
expire on their own (the benchmark sets a short TTL).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import json
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
from aiohttp import web
from confluent_kafka import TopicPartition

from service.contract import SingleObjectCodec
from service.kafka import KafkaAdmin

REPO_ROOT = Path(__file__).resolve().parent.parent
PRODUCT = SingleObjectCodec.for_schema("product")
ENRICHMENT = SingleObjectCodec.for_schema("category_enrichment")
# The service's Redis key prefix and its pixel entries (service/app.py, service/cache.py).
CACHE_PREFIX = "enrich:"


def bootstrap_servers() -> str:
    """The Kafka broker to use."""
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def redis_url() -> str:
    """The Redis server to use."""
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def shared_data() -> Path:
    """$SHARED_DATA, default ../shared/data beside the repository."""
    path = Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
    if not (path / "product-images" / "labels.csv").is_file():
        raise SystemExit(f"shared data not found at {path}: set SHARED_DATA")
    return path


@dataclass(frozen=True)
class Photo:
    """One shared product photo, in memory."""

    path: str
    data: bytes
    sha256: str


def load_photos(root: Path, count: int, seed: int = 0) -> list[Photo]:
    """``count`` shared photos (all splits), a fixed shuffle, read into memory."""
    with (root / "product-images" / "labels.csv").open() as stream:
        paths = sorted(row["image_path"] for row in csv.DictReader(stream))
    random.Random(seed).shuffle(paths)
    photos = []
    for relative in paths[:count]:
        data = (root / "product-images" / relative).read_bytes()
        photos.append(Photo(relative, data, hashlib.sha256(data).hexdigest()))
    return photos


def service_env(
    model_dir: Path, dead_letter_topic: str, *, redis: str | None, **settings: str
) -> dict[str, str]:
    """An ``enrich serve`` child's environment: this run's broker, Redis (None: no cache),
    model and dead-letter topic, JSON logs at WARNING, and ``ENRICH_<NAME>`` for each of
    ``settings``."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers(),
        ENRICH_MODEL_DIR=str(model_dir),
        ENRICH_DEAD_LETTER_TOPIC=dead_letter_topic,
        ENRICH_ALLOWED_NETWORKS="127.0.0.0/8",
        ENRICH_METRICS_HOST="127.0.0.1",
        ENRICH_LOG_LEVEL="WARNING",
        ENRICH_LOG_FORMAT="json",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    if redis is not None:
        env["REDIS_URL"] = redis
    env.update({f"ENRICH_{k.upper()}": v for k, v in settings.items()})
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ImageHosts:
    """A local image server on ``hosts`` loopback addresses (127.0.0.1, .2, ...), one port.

    ``/images/<i>`` answers photo ``i`` from memory after ``latency_s``; ``/missing/<i>``
    answers 404 at once. Several addresses stand for several image hosts, as a catalog's
    images come from many shops and CDNs: the service caps requests in flight per host.
    """

    def __init__(self, photos: Sequence[Photo], *, hosts: int = 1, latency_s: float = 0.0):
        self.photos = photos
        self.hosts = hosts
        self.latency_s = latency_s
        self.requests: Counter[str] = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def host(self, index: int) -> str:
        """The address serving item ``index`` (round robin over the hosts)."""
        return f"127.0.0.{1 + index % self.hosts}"

    def url(self, index: int, *, tag: str = "", host: int | None = None) -> str:
        """The URL of photo ``index`` (modulo the photos); ``tag`` makes a distinct URL."""
        where = self.host(index if host is None else host)
        query = f"?r={tag}" if tag else ""
        return f"http://{where}:{self.port}/images/{index % len(self.photos)}{query}"

    def missing_url(self, index: int) -> str:
        """A URL that answers 404 (cached negatively by the service)."""
        return f"http://{self.host(index)}:{self.port}/missing/{index}"

    def start(self) -> ImageHosts:
        """Serve from a background thread."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Close the sockets and end the thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/images/{index}", self._image)
        app.router.add_get("/missing/{index}", self._missing)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        for k in range(self.hosts):
            await web.TCPSite(self._runner, f"127.0.0.{k + 1}", self.port, backlog=1024).start()

    async def _image(self, request: web.Request) -> web.StreamResponse:
        self.requests["image"] += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        photo = self.photos[int(request.match_info["index"]) % len(self.photos)]
        return web.Response(body=photo.data, content_type="image/jpeg")

    async def _missing(self, _: web.Request) -> web.StreamResponse:
        self.requests["missing"] += 1
        raise web.HTTPNotFound()


def product_record(product_id: str, url: str, updated_at: dt.datetime) -> dict[str, Any]:
    """A ``Product`` record as the contract has it."""
    return {
        "product_id": product_id,
        "partner_id": "bench",
        "title": None,
        "description": None,
        "image_url": url,
        "additional_image_urls": [],
        "partner_category": None,
        "updated_at": updated_at,
    }


@dataclass(frozen=True)
class Output:
    """One output record: key, Kafka timestamp (ms) and, when read with values, its status."""

    key: str
    timestamp_ms: int
    status: str | None


class Kafka:
    """Topics of this run (``bench-<name>-<run>``), producing products, reading outputs."""

    def __init__(self, bootstrap: str, run_id: str) -> None:
        self.bootstrap = bootstrap
        self.run_id = run_id
        self.admin = KafkaAdmin({"bootstrap.servers": bootstrap})
        self.created: list[str] = []
        self._meta = confluent_kafka.Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"bench-meta-{run_id}"}
        )

    def topic(self, name: str, partitions: int = 4) -> str:
        """Create a topic of this run."""
        topic = f"bench-{name}-{self.run_id}"
        self.admin.create_topics([topic], partitions=partitions)
        self.created.append(topic)
        return topic

    def cleanup(self) -> None:
        """Delete every topic this run created."""
        self._meta.close()
        if self.created:
            self.admin.delete_topics(self.created)

    def wait_stable(self, group: str, members: int, timeout_s: float = 60.0) -> None:
        """Wait until ``group`` is stable with ``members`` members that each hold partitions."""
        from confluent_kafka import ConsumerGroupState

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            futures = self.admin.client.describe_consumer_groups([group], request_timeout=10)
            description = futures[group].result(10)
            holding = [m for m in description.members if m.assignment.topic_partitions]
            if description.state == ConsumerGroupState.STABLE and len(holding) == members:
                return
            time.sleep(0.5)
        raise RuntimeError(f"consumer group {group} did not settle with {members} members")

    def produce(self, topic: str, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Produce key/value pairs as fast as the client goes; wait for every acknowledgement."""
        producer = confluent_kafka.Producer(
            {"bootstrap.servers": self.bootstrap, "linger.ms": 20, "batch.size": 1_000_000}
        )
        count = 0
        for key, value in items:
            while True:
                try:
                    producer.produce(topic, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
            count += 1
            if count % 1000 == 0:
                producer.poll(0)
        if producer.flush(120) != 0:
            raise RuntimeError(f"could not produce every product to {topic}")
        return count

    def total(self, topic: str) -> int:
        """The number of records in ``topic`` (sum of its high watermarks)."""
        metadata = self._meta.list_topics(topic, timeout=10)
        total = 0
        for partition in metadata.topics[topic].partitions:
            _, high = self._meta.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10, cached=False
            )
            total += int(high)
        return total

    def wait_for(
        self,
        topic: str,
        count: int,
        *,
        timeout_s: float,
        alive: Callable[[], bool] = lambda: True,
        on_tick: Callable[[int], None] | None = None,
        interval_s: float = 0.25,
    ) -> int:
        """Wait until ``topic`` holds ``count`` records; returns how many it holds."""
        deadline = time.monotonic() + timeout_s
        seen = self.total(topic)
        while seen < count and time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"the process under test exited before {topic} held {count}")
            time.sleep(interval_s)
            seen = self.total(topic)
            if on_tick is not None:
                on_tick(seen)
        return seen

    def read(self, topic: str, *, values: bool = False) -> list[Output]:
        """Every record of ``topic`` now, ordered by timestamp (statuses when ``values``)."""
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            partitions = sorted(metadata.topics[topic].partitions)
            ends = {}
            for p in partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                ends[p] = int(high)
            consumer.assign(
                [TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in partitions]
            )
            outputs: list[Output] = []
            remaining = {p for p, end in ends.items() if end > 0}
            while remaining:
                for message in consumer.consume(10_000, 1.0):
                    if message.error() is not None:
                        continue
                    partition = message.partition()
                    status = None
                    if values and message.value() is not None:
                        status = str(ENRICHMENT.decode(message.value())["status"])
                    key = (message.key() or b"").decode()
                    outputs.append(Output(key, int(message.timestamp()[1]), status))
                    if message.offset() >= ends[partition] - 1:
                        remaining.discard(partition)
        finally:
            consumer.close()
        outputs.sort(key=lambda o: o.timestamp_ms)
        return outputs


def timeline(outputs: Sequence[Output], start_ms: int, step_ms: int = 500) -> dict[str, Any]:
    """When the outputs came, from ``start_ms``: the first one's delay and the count in each
    ``step_ms`` after it (to tell a slow start or a slow end from a slow middle)."""
    if not outputs:
        return {"first_output_ms": None, "step_ms": step_ms, "counts": []}
    first = outputs[0].timestamp_ms
    counts = [0] * ((outputs[-1].timestamp_ms - first) // step_ms + 1)
    for output in outputs:
        counts[(output.timestamp_ms - first) // step_ms] += 1
    return {"first_output_ms": first - start_ms, "step_ms": step_ms, "counts": counts}


def rate(outputs: Sequence[Output]) -> float:
    """Records/s between the first and the last output timestamp."""
    if len(outputs) < 2:
        return 0.0
    span = (outputs[-1].timestamp_ms - outputs[0].timestamp_ms) / 1000
    return (len(outputs) - 1) / span if span > 0 else 0.0


def rate_since(outputs: Sequence[Output], start_ms: int) -> float:
    """Records/s from ``start_ms`` (when the work was there to do) to the last output."""
    if not outputs:
        return 0.0
    span = (outputs[-1].timestamp_ms - start_ms) / 1000
    return len(outputs) / span if span > 0 else 0.0


def delete_content_keys(url: str, photos: Iterable[Photo], size: int) -> int:
    """Forget the cached pixels of ``photos`` (so a cold run decodes them); returns the count."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = [f"{CACHE_PREFIX}img:content:{p.sha256}:{size}" for p in photos]
        deleted = 0
        for start in range(0, len(keys), 500):
            deleted += int(client.delete(*keys[start : start + 500]))
        return deleted
    finally:
        client.close()


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in slices of ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dumps(value: Any) -> str:
    """JSON for the results files (stable order, two-space indent)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
