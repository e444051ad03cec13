"""What the service benchmarks share: the shared photos, a local image server, Kafka topics,
the service as a subprocess (readiness, resident memory, a py-spy profile) and its outputs.

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
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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


_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def processes() -> dict[int, tuple[str, float]]:
    """Every process now: a short description of its command and its CPU seconds."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
            cpu = process_cpu_s(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry.name)] = (_describe([w.decode(errors="replace") for w in words if w]), cpu)
    return found


def _describe(argv: list[str]) -> str:
    """``java ... kafka.Kafka ...`` → ``java kafka``; ``python -m x.y serve`` → ``x.y serve``."""
    if not argv:
        return "?"
    head = Path(argv[0]).name
    if head.startswith("java"):
        return "java (kafka)" if any("kafka" in a for a in argv) else "java"
    if "-m" in argv[:-1]:
        index = argv.index("-m")
        return " ".join(argv[index + 1 : index + 3])
    return " ".join([head, *[Path(a).name for a in argv[1:2]]])[:60]


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (not idle, not waiting for I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _TICK


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory now and at its peak (VmRSS, VmHWM) of process ``pid``, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


@dataclass(frozen=True)
class Metrics:
    """The service's Prometheus counters at one moment."""

    at: float
    values: dict[str, float]
    cpu_s: float = 0.0
    """CPU seconds the service process has used."""
    machine_busy_s: float = 0.0
    """CPU seconds every core of the machine has been busy (all processes)."""
    processes: dict[int, tuple[str, float]] = field(default_factory=dict)
    """CPU seconds of every process on the machine, with its command."""

    def since(self, earlier: Metrics) -> dict[str, Any]:
        """What the inference thread did between ``earlier`` and this reading."""
        seconds = self.at - earlier.at

        def delta(name: str) -> float:
            return self.values.get(name, 0.0) - earlier.values.get(name, 0.0)

        batches, images = delta("enrich_batch_size_count"), delta("enrich_batch_size_sum")
        busy = delta("enrich_inference_seconds_sum")
        service_cores = (self.cpu_s - earlier.cpu_s) / seconds if seconds else 0.0
        machine_cores = (self.machine_busy_s - earlier.machine_busy_s) / seconds if seconds else 0.0
        others: Counter[str] = Counter()
        for pid, (name, cpu) in self.processes.items():
            before = earlier.processes.get(pid)
            used = cpu - (before[1] if before is not None and before[0] == name else 0.0)
            if used > 0 and seconds:
                others[name] += used / seconds
        top = [(name, round(cores, 2)) for name, cores in others.most_common(6) if cores >= 0.02]
        return {
            "seconds": round(seconds, 2),
            "busiest_processes_cores": top,
            "service_cores": round(service_cores, 2),
            "other_processes_cores": round(machine_cores - service_cores, 2),
            "images_per_s": round(images / seconds, 1) if seconds else None,
            "mean_batch": round(images / batches, 1) if batches else None,
            "inference_busy_share": round(busy / seconds, 3) if seconds else None,
            "inference_images_per_busy_s": round(images / busy, 1) if busy else None,
            "service_cpu_ms_per_image": (
                round(1000 * service_cores * seconds / images, 2) if images else None
            ),
        }


class Process:
    """A Python subprocess of the benchmark: the service (``-m service.cli ...``) or the naive
    consumer; its output goes to a log file."""

    def __init__(self, module_args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.args = [sys.executable, "-m", *module_args]
        self.env = env
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ready_ms = 0
        """When ``/readyz`` first answered 200 (wall clock, ms)."""

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> Process:
        """Start the process from the repository root."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as stream:
            self.popen = subprocess.Popen(
                self.args, env=self.env, cwd=REPO_ROOT, stdout=stream, stderr=subprocess.STDOUT
            )
        return self

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(self, port: int, timeout_s: float = 180.0) -> None:
        """Wait for the service's ``/readyz`` to answer 200."""
        self.port = port
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{port}/readyz"
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{' '.join(self.args)} exited; see {self.log}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        self.ready_ms = int(time.time() * 1000)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"not ready within {timeout_s}s; see {self.log}")

    def counters(self) -> dict[str, float]:
        """The service's ``enrich_*`` Prometheus values now."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("enrich_") and " " in line:
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def metrics(self) -> Metrics:
        """The service's counters and the machine's CPU use now."""
        values = self.counters()
        return Metrics(
            time.monotonic(), values, process_cpu_s(self.pid), machine_busy_s(), processes()
        )

    def wait_classified(self, images: int, timeout_s: float) -> None:
        """Wait until the service has classified ``images`` images."""
        deadline = time.monotonic() + timeout_s
        while self.counters().get("enrich_batch_size_sum", 0.0) < images:
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not classify {images} images; see {self.log}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout_s``); returns the exit status."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit by itself."""
        assert self.popen is not None
        return self.popen.wait(timeout_s)


class RssSampler:
    """Samples a process's resident memory every ``interval_s`` in a thread, with a label
    (e.g. outputs so far) from ``progress``."""

    def __init__(self, pid: int, progress: Callable[[], int], interval_s: float = 0.5) -> None:
        self.pid = pid
        self.progress = progress
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, float]] = []
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._began = time.monotonic()

    def start(self) -> RssSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (takes one last sample)."""
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            try:
                now, peak = rss_mb(self.pid)
            except OSError:
                return
            self.peak_mb = max(self.peak_mb, peak)
            self.samples.append((time.monotonic() - self._began, self.progress(), now))
            if self._stop.wait(self.interval_s):
                return


class CounterSampler:
    """Samples the service's counters every ``interval_s`` in a thread: images classified, in
    flight and whether the consumer is paused (backpressure), to find stalls."""

    def __init__(self, process: Process, interval_s: float = 0.5) -> None:
        self.process = process
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CounterSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop; returns the stalls seen (intervals without one image classified)."""
        self._stop.set()
        self._thread.join(10)
        idle = paused = 0.0
        for before, after in zip(self.samples, self.samples[1:], strict=False):
            span = after[0] - before[0]
            if after[1] == before[1]:
                idle += span
            if after[3] >= 1:
                paused += span
        total = self.samples[-1][0] - self.samples[0][0] if len(self.samples) > 1 else 0.0
        return {
            "seconds": round(total, 1),
            "seconds_without_an_image_classified": round(idle, 1),
            "seconds_consumer_paused": round(paused, 1),
            "series": [(round(t, 1), int(n), int(f), int(q)) for t, n, f, q in self.samples],
        }

    def _run(self) -> None:
        began = time.monotonic()
        while True:
            try:
                values = self.process.counters()
            except (urllib.error.URLError, OSError):
                return
            self.samples.append(
                (
                    time.monotonic() - began,
                    values.get("enrich_batch_size_sum", 0.0),
                    values.get("enrich_in_flight", 0.0),
                    values.get("enrich_paused", 0.0),
                )
            )
            if self._stop.wait(self.interval_s):
                return


class Profiler:
    """py-spy sampling every thread of a running process (not pausing it), raw stacks out."""

    def __init__(self, pid: int, output: Path, rate_hz: int = 50) -> None:
        self.pid = pid
        self.output = output
        self.rate_hz = rate_hz
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_ms = 0

    @staticmethod
    def available() -> str | None:
        """The py-spy executable, if installed."""
        beside = Path(sys.executable).parent / "py-spy"
        return str(beside) if beside.exists() else shutil.which("py-spy")

    def start(self) -> Profiler:
        """Attach to the process."""
        exe = self.available()
        assert exe is not None
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.popen = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate_hz), "--nonblocking",
             "--threads", "--format", "raw", "--output", str(self.output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.started_ms = int(time.time() * 1000)
        return self

    def stop(self) -> str:
        """Detach (SIGINT makes py-spy write its file); returns py-spy's complaints, if any."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            _, err = self.popen.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, err = self.popen.communicate()
        return "" if self.output.exists() else err.decode(errors="replace")[-2000:]


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` → ``func (file.py)``, shortened below site-packages."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif str(REPO_ROOT) in path:
        path = path.split(str(REPO_ROOT) + "/", 1)[1]
    return f"{name} ({path})"


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Per-thread share of the samples and the top functions, self and inclusive."""
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # With --threads the first frame names the process, the second the thread.
        thread = next((f for f in frames[:2] if f.startswith("thread ")), "thread ?")
        code = [f for f in frames if " (" in f and not f.startswith(("thread ", "process "))]
        total += count
        threads[_thread_label(thread)] += count
        if code:
            self_time[_frame_name(code[-1])] += count
            for name in {_frame_name(f) for f in code}:
                inclusive[name] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        if not total:
            return []
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "threads": share(threads),
        "self": share(self_time),
        "inclusive": share(inclusive),
    }


def _thread_label(frame: str) -> str:
    """``thread (1021): inference`` → ``inference``."""
    return frame.split("): ", 1)[1] if "): " in frame else frame


def cpu_description() -> str:
    """The CPU model name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def memory_gib() -> float:
    """Physical memory in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def percentiles(values: Sequence[float], points: Sequence[float]) -> dict[str, float]:
    """``{"p50": ...}`` for each point (nearest-rank on the sorted values)."""
    ordered = sorted(values)
    result = {}
    for point in points:
        if not ordered:
            result[f"p{point:g}"] = float("nan")
            continue
        rank = max(0, min(len(ordered) - 1, math.ceil(point / 100 * len(ordered)) - 1))
        result[f"p{point:g}"] = round(ordered[rank], 1)
    return result


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in slices of ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dumps(value: Any) -> str:
    """JSON for the results files (stable order, two-space indent)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
