"""The enrichment service end to end: real Kafka, real Redis, real HTTP, real shared photos."""

from __future__ import annotations

import csv
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka import TopicPartition

import service.app
from model.classifier import Classifier
from service.app import Service
from service.config import Settings, load_settings
from service.contract import SingleObjectCodec
from service.kafka.consumer import KafkaConsumer
from service.pipeline import RunSummary
from tests.reliability.scenarios import service_env
from tests.support.image_server import Behaviour, ImageServer
from tests.support.models import tiny_model

pytestmark = pytest.mark.integration

PRODUCT = SingleObjectCodec.for_schema("product")
ENRICHMENT = SingleObjectCodec.for_schema("category_enrichment")
NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def model_dir(shared_data: Path, tmp_path_factory: Any) -> Path:
    """A small (untrained) model over the shared labels' categories, exported."""
    return tiny_model(shared_data, tmp_path_factory.mktemp("model"), "pipeline-test")


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> list[str]:
    """Paths (below product-images) of the shared validation photos."""
    with (shared_data / "product-images" / "labels.csv").open() as stream:
        return [r["image_path"] for r in csv.DictReader(stream) if r["split"] != "train"]


@pytest.fixture
def topics(topic_factory: Any) -> dict[str, str]:
    return {
        "input": topic_factory("products", partitions=4),
        "output": topic_factory("categories", partitions=4),
        "dlq": topic_factory("dead-letter"),
    }


def _settings(
    kafka_bootstrap: str, topics: dict[str, str], model_dir: Path, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "input_topic": topics["input"],
        "output_topic": topics["output"],
        "dead_letter_topic": topics["dlq"],
        "group_id": f"test-{uuid.uuid4().hex[:8]}",
        "model_dir": model_dir,
        "allowed_networks": "127.0.0.1/32",
        "metrics_port": 0,
        "redis_url": None,
        "fetch_retries": 1,
        "shutdown_deadline_s": 20,
    }
    values.update(extra)
    return load_settings(**values)


def _product(product_id: str, url: str | None, updated: dt.datetime = NOW) -> dict[str, Any]:
    return {
        "product_id": product_id,
        "partner_id": "partner-1",
        "title": None,
        "description": None,
        "image_url": url,
        "additional_image_urls": [],
        "partner_category": None,
        "updated_at": updated,
    }


def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes | None]]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    for key, value in items:
        producer.produce(topic, key=key, value=value)
    assert 0 == producer.flush(30)


def _encode(record: dict[str, Any]) -> tuple[bytes, bytes]:
    return record["product_id"].encode(), PRODUCT.encode(record)


def _read(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 120, committed: bool = False
) -> list[confluent_kafka.Message]:
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": f"reader-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if committed:
        config["isolation.level"] = "read_committed"
    consumer = confluent_kafka.Consumer(config)
    consumer.subscribe([topic])
    messages: list[confluent_kafka.Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                messages.append(message)
        # Anything beyond the expected count would be a duplicate: look a little longer.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                messages.append(message)
    finally:
        consumer.close()
    return messages


class _Running:
    """A Service serving in a background thread until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.service = Service(settings)
        self.stop = threading.Event()
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.summary = self.service.serve(self.stop, handle_signals=False)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> _Running:
        self.service.__enter__()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        self.service.__exit__(None, None, None)
        assert self.error is None, self.error


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found}


@pytest.fixture
def server(image_server: ImageServer) -> ImageServer:
    return image_server


class TestEveryProductGetsAnAnswer:
    def test_500_products_give_500_ordered_enrichments(
        self,
        kafka_bootstrap: str,
        topics: dict[str, str],
        model_dir: Path,
        server: ImageServer,
        photos: list[str],
        redis_url: str,
    ) -> None:
        """500 products in → 500 valid enrichments, none missing, in order, offsets committed."""
        items = [
            _encode(_product(f"p{i}", server.url_for(photos[i % len(photos)]))) for i in range(450)
        ]
        # 50 products updated a second time, later and with another photo: the last word wins.
        items += [
            _encode(
                _product(
                    f"p{i}",
                    server.url_for(photos[(i + 7) % len(photos)]),
                    NOW + dt.timedelta(hours=1),
                )
            )
            for i in range(50)
        ]
        _produce(kafka_bootstrap, topics["input"], items)
        settings = _settings(kafka_bootstrap, topics, model_dir, redis_url=redis_url)
        with _Running(settings):
            messages = _read(kafka_bootstrap, topics["output"], expected=500)
        assert 500 == len(messages)
        sources: dict[int, list[int]] = defaultdict(list)
        last: dict[str, dict[str, Any]] = {}
        for message in messages:
            record = ENRICHMENT.decode(message.value())
            assert record["product_id"].encode() == message.key()
            assert "CLASSIFIED" == record["status"] or "LOW_CONFIDENCE" == record["status"]
            assert record["category"] is not None
            sources[record["source"]["partition"]].append(record["source"]["offset"])
            last[record["product_id"]] = record
        all_offsets = sorted((p, o) for p, offsets in sources.items() for o in offsets)
        assert 500 == len(set(all_offsets))
        # The outputs of one product (one key) keep their source order; products with other
        # keys may overtake each other (the contract promises order per product).
        by_key: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
        for message in messages:
            record = ENRICHMENT.decode(message.value())
            by_key[message.key()].append(
                (record["source"]["partition"], record["source"]["offset"])
            )
        assert 450 == len(by_key)
        for offsets in by_key.values():
            assert offsets == sorted(offsets)
        for i in range(50):
            assert NOW + dt.timedelta(hours=1) == last[f"p{i}"]["event_time"]
        committed = _committed(kafka_bootstrap, settings.group_id, topics["input"], 4)
        assert {p: len(o) for p, o in sources.items()} == {
            p: o for p, o in committed.items() if o >= 0
        }

    def test_service_predicts_like_the_classifier(
        self,
        kafka_bootstrap: str,
        topics: dict[str, str],
        model_dir: Path,
        server: ImageServer,
        photos: list[str],
        shared_data: Path,
    ) -> None:
        """On shared photos the service's answer equals Classifier.classify on the same files."""
        chosen = photos[:24]
        _produce(
            kafka_bootstrap,
            topics["input"],
            [_encode(_product(f"q{i}", server.url_for(p))) for i, p in enumerate(chosen)],
        )
        with _Running(_settings(kafka_bootstrap, topics, model_dir)):
            messages = _read(kafka_bootstrap, topics["output"], expected=len(chosen))
        classifier = Classifier.load(model_dir)
        root = shared_data / "product-images"
        expected = classifier.classify([(root / p).read_bytes() for p in chosen])
        got = {
            ENRICHMENT.decode(m.value())["product_id"]: ENRICHMENT.decode(m.value())
            for m in messages
        }
        assert len(chosen) == len(got)
        for i, prediction in enumerate(expected):
            record = got[f"q{i}"]
            assert prediction.category_id == record["category"]["id"]
            assert [a.leaf_id for a in prediction.alternatives] == [
                a["id"] for a in record["alternatives"]
            ]
            assert prediction.confidence == pytest.approx(
                record["category"]["path"][-1]["confidence"], abs=1e-5
            )


class TestFailuresAreData:
    def test_bad_urls_images_and_records_get_statuses(
        self,
        kafka_bootstrap: str,
        topics: dict[str, str],
        model_dir: Path,
        server: ImageServer,
        photos: list[str],
    ) -> None:
        """Each bad input gets its status and reason; bad records go to the dead-letter topic."""
        jpeg = (server.root / photos[0]).read_bytes()
        cases = {
            "gone": (server.script("gone.jpg", Behaviour(status=404)), "IMAGE_UNAVAILABLE"),
            "html": (
                server.script(
                    "page",
                    Behaviour(body=b"<html><body>shop</body></html>", content_type="text/html"),
                ),
                "IMAGE_INVALID",
            ),
            "truncated": (
                server.script(
                    "half.jpg", Behaviour(body=jpeg[: len(jpeg) // 3], content_type="image/jpeg")
                ),
                "IMAGE_INVALID",
            ),
            "metadata": ("http://169.254.169.254/latest/meta-data/", "IMAGE_UNAVAILABLE"),
            "ftp": ("ftp://example.com/a.jpg", "INVALID_INPUT"),
            "missing": (None, "INVALID_INPUT"),
            "good": (server.url_for(photos[1]), "CLASSIFIED"),
        }
        items = [_encode(_product(name, url)) for name, (url, _) in cases.items()]
        items.append((b"not-avro", b"\x00\x01garbage"))
        items.append((b"good", None))  # the good product is deleted afterwards
        _produce(kafka_bootstrap, topics["input"], items)
        with _Running(_settings(kafka_bootstrap, topics, model_dir)):
            messages = _read(kafka_bootstrap, topics["output"], expected=len(cases) + 1)
            dead = _read(kafka_bootstrap, topics["dlq"], expected=1)
        records = {}
        tombstones = []
        for message in messages:
            if message.value() is None:
                tombstones.append(message.key())
            else:
                record = ENRICHMENT.decode(message.value())
                records[record["product_id"]] = record
        statuses = {name: records[name]["status"] for name in cases}
        assert {name: s for name, (_, s) in cases.items()} == {
            n: ("CLASSIFIED" if s == "LOW_CONFIDENCE" else s) for n, s in statuses.items()
        }
        for name in ("gone", "html", "truncated", "metadata", "ftp", "missing"):
            assert records[name]["error"], name
        assert "169.254.169.254" in records["metadata"]["error"]
        assert [b"good"] == tombstones
        assert 1 == len(dead)
        headers = dict(dead[0].headers())
        assert b"\x00\x01garbage" == dead[0].value()
        assert topics["input"].encode() == headers["dlq.source.topic"]
        assert b"marker" in headers["dlq.error"]
        assert 1 == server.hits["/scripted/gone.jpg"]


class TestShutdownAndReplay:
    def test_sigterm_drains_commits_and_exits_zero(
        self,
        tmp_path: Path,
        kafka_bootstrap: str,
        topics: dict[str, str],
        model_dir: Path,
        server: ImageServer,
        photos: list[str],
    ) -> None:
        """SIGTERM mid-stream: in-flight work is finished, produced and committed; exit 0."""
        slow = server.script(
            "slow.jpg",
            Behaviour(
                body=(server.root / photos[2]).read_bytes(), content_type="image/jpeg", delay_s=0.05
            ),
        )
        items = [_encode(_product(f"s{i}", f"{slow}?n={i}")) for i in range(300)]
        _produce(kafka_bootstrap, topics["input"], items)
        group = f"test-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "ENRICH_INPUT_TOPIC": topics["input"],
            "ENRICH_OUTPUT_TOPIC": topics["output"],
            "ENRICH_DEAD_LETTER_TOPIC": topics["dlq"],
            "ENRICH_GROUP_ID": group,
            "ENRICH_MODEL_DIR": str(model_dir),
            "ENRICH_ALLOWED_NETWORKS": "127.0.0.1/32",
            "ENRICH_METRICS_PORT": "0",
            "ENRICH_FETCH_PER_HOST": "4",
            "ENRICH_MAX_IN_FLIGHT": "20",
            "ENRICH_LOG_FORMAT": "json",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        env.pop("REDIS_URL", None)
        log = tmp_path / "serve.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 90
            while server.hits["/scripted/slow.jpg"] < 40 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.hits["/scripted/slow.jpg"] >= 40, "the service never started fetching"
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert 0 == process.returncode, log.read_text(errors="replace")[-2000:]
        committed = _committed(kafka_bootstrap, group, topics["input"], 4)
        done = sum(o for o in committed.values() if o > 0)
        messages = _read(kafka_bootstrap, topics["output"], expected=done, timeout_s=30)
        produced = {
            (
                ENRICHMENT.decode(m.value())["source"]["partition"],
                ENRICHMENT.decode(m.value())["source"]["offset"],
            )
            for m in messages
        }
        # Every committed offset has its output: nothing committed was lost.
        for partition, offset in committed.items():
            for below in range(max(offset, 0)):
                assert (partition, below) in produced
        assert 0 < done < 300, "SIGTERM came after everything was done; the test proves nothing"

    def test_sigterm_with_a_hanging_image_ends_by_the_deadline(
        self,
        tmp_path: Path,
        kafka_bootstrap: str,
        topics: dict[str, str],
        model_dir: Path,
        server: ImageServer,
        photos: list[str],
    ) -> None:
        """SIGTERM while one image hangs: the process exits 0 within the shutdown deadline
        (revoke work included), the hanging product is cancelled cleanly (no pending-task
        error) and its offset is not committed; the other products' outputs are out."""
        hanging = server.script("hang.jpg", Behaviour(hang=True))
        items = [_encode(_product("h-hang", hanging))]
        items += [_encode(_product(f"h{i}", server.url_for(photos[i]))) for i in range(20)]
        _produce(kafka_bootstrap, topics["input"], items)
        group = f"test-{uuid.uuid4().hex[:8]}"
        env = service_env(kafka_bootstrap, topics, model_dir, group,
                          ENRICH_SHUTDOWN_DEADLINE_S="4", ENRICH_LOG_LEVEL="INFO")  # fmt: skip
        log = tmp_path / "serve.log"
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env,
                                   stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
        try:
            outputs = _read(kafka_bootstrap, topics["output"], expected=20, timeout_s=120)
            assert server.in_flight["/scripted/hang.jpg"] >= 1, "the image is not hanging"
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            took = time.monotonic() - began
        finally:
            if process.poll() is None:
                process.kill()
        text = log.read_text(errors="replace")
        assert 0 == process.returncode, text[-2000:]
        assert took < 4 + 3, f"SIGTERM took {took:.1f} s against a 4 s deadline"
        assert "Task was destroyed" not in text
        assert {f"h{i}".encode() for i in range(20)} == {m.key() for m in outputs}
        committed = _committed(kafka_bootstrap, group, topics["input"], 4)
        answered = {
            (ENRICHMENT.decode(m.value())["source"]["partition"],
             ENRICHMENT.decode(m.value())["source"]["offset"])
            for m in outputs
        }  # fmt: skip
        for partition, offset in committed.items():
            for below in range(max(offset, 0)):
                assert (partition, below) in answered, "an unanswered offset was committed"

    def test_replay_reclassifies_a_topic(
        self,
        kafka_bootstrap: str,
        topics: dict[str, str],
        model_dir: Path,
        server: ImageServer,
        photos: list[str],
        topic_factory: Any,
    ) -> None:
        """replay reads the topic up to its end at start, writes every product again, exits."""
        items = [_encode(_product(f"r{i}", server.url_for(photos[i]))) for i in range(40)]
        _produce(kafka_bootstrap, topics["input"], items)
        again = topic_factory("reclassified", partitions=2)
        settings = _settings(kafka_bootstrap, topics, model_dir)
        progress: list[int] = []
        with Service(settings, group_id=f"replay-{uuid.uuid4().hex[:6]}", http=False) as service:
            summary = service.replay(output_topic=again, on_progress=progress.append)
        assert 40 == summary.produced
        assert 40 == sum(progress)
        messages = _read(kafka_bootstrap, again, expected=40, timeout_s=30)
        versions = {ENRICHMENT.decode(m.value())["model"]["version"] for m in messages}
        assert {Classifier.load(model_dir).info.version} == versions
        assert 40 == len({m.key() for m in messages})

    def test_replay_since_starts_at_that_time(
        self,
        kafka_bootstrap: str,
        topics: dict[str, str],
        model_dir: Path,
        server: ImageServer,
        photos: list[str],
        topic_factory: Any,
    ) -> None:
        """replay --since skips what was written before that moment."""
        _produce(
            kafka_bootstrap,
            topics["input"],
            [_encode(_product(f"old{i}", server.url_for(photos[i]))) for i in range(20)],
        )
        time.sleep(1.5)
        since = dt.datetime.now(tz=dt.UTC)
        time.sleep(0.5)
        _produce(
            kafka_bootstrap,
            topics["input"],
            [_encode(_product(f"new{i}", server.url_for(photos[i]))) for i in range(15)],
        )
        again = topic_factory("since", partitions=1)
        settings = _settings(kafka_bootstrap, topics, model_dir)
        with Service(settings, group_id=f"since-{uuid.uuid4().hex[:6]}", http=False) as service:
            summary = service.replay(since=since, output_topic=again)
        assert 15 == summary.produced
        messages = _read(kafka_bootstrap, again, expected=15, timeout_s=30)
        assert {f"new{i}".encode() for i in range(15)} == {m.key() for m in messages}


class TestExactlyOnce:
    def test_each_input_is_read_once_by_a_read_committed_consumer(
        self,
        kafka_bootstrap: str,
        topics: dict[str, str],
        model_dir: Path,
        server: ImageServer,
        photos: list[str],
    ) -> None:
        """In exactly-once mode outputs and offsets commit together: one output per input."""
        items = [_encode(_product(f"e{i}", server.url_for(photos[i]))) for i in range(60)]
        _produce(kafka_bootstrap, topics["input"], items)
        settings = _settings(kafka_bootstrap, topics, model_dir, delivery="exactly-once")
        with _Running(settings):
            messages = _read(kafka_bootstrap, topics["output"], expected=60, committed=True)
        assert 60 == len(messages)
        assert 60 == len({m.key() for m in messages})
        committed = _committed(kafka_bootstrap, settings.group_id, topics["input"], 4)
        assert 60 == sum(o for o in committed.values() if o > 0)


class RewindingConsumer(KafkaConsumer):
    """A real consumer that once seeks a partition back to the first offset it handed out,
    as soon as the group has committed ``AFTER`` of that partition's offsets: what librdkafka's
    stale offset-query timer does to a partition paused while its start offset is looked up
    (docs/architecture.md), after the first outputs are acknowledged."""

    AFTER = 20

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.first: dict[tuple[str, int], int] = {}
        self.rewound: tuple[str, int, int] | None = None
        self._checked = 0.0

    def consume(self, max_messages: int, timeout: float) -> list[confluent_kafka.Message]:
        messages = super().consume(max_messages, timeout)
        for message in messages:
            if not message.error():
                key = (message.topic() or "", message.partition() or 0)
                self.first.setdefault(key, message.offset() or 0)
        if self.rewound is None and self.first and time.monotonic() - self._checked > 0.2:
            self._checked = time.monotonic()
            asked = [TopicPartition(t, p) for t, p in self.first]
            for tp in self.client.committed(asked, 10):
                start = self.first[(tp.topic, tp.partition)]
                if tp.offset >= start + self.AFTER:
                    self.rewound = (tp.topic, tp.partition, start)
                    self.client.seek(TopicPartition(*self.rewound))
                    break
        return messages


class TestConsumerRewind:
    @pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
    def test_a_partition_the_consumer_rewinds_is_answered_once(
        self,
        delivery: str,
        kafka_bootstrap: str,
        topics: dict[str, str],
        model_dir: Path,
        server: ImageServer,
        photos: list[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Messages a real consumer hands out again are dropped: one output per input."""
        consumers: list[RewindingConsumer] = []

        def rewinding(config: Any) -> RewindingConsumer:
            consumers.append(RewindingConsumer(config))
            return consumers[-1]

        monkeypatch.setattr(service.app, "KafkaConsumer", rewinding)
        items = [_encode(_product(f"r{i}", server.url_for(photos[i]))) for i in range(200)]
        _produce(kafka_bootstrap, topics["input"], items)
        settings = _settings(kafka_bootstrap, topics, model_dir, delivery=delivery)
        with _Running(settings) as running:
            messages = _read(kafka_bootstrap, topics["output"], expected=200,
                             committed=delivery == "exactly-once")  # fmt: skip
            redelivered = running.service.metrics.redelivered._value.get()
        assert [c.rewound is not None for c in consumers] == [True]
        assert (len(messages), len({m.key() for m in messages})) == (200, 200)
        assert redelivered > 0
