"""The floor consumer (bench/floor_consumer.py) on the real broker and Redis: it enriches a warm
topic into valid contract records, stores offsets only for acknowledged outputs, refuses a
topic that is not warm, and reports CPU per product by process."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import confluent_kafka
import numpy as np
import pytest

from bench.floor_consumer import FloorError, _Acknowledged, _measurement, run
from bench.harness import PRODUCT, product_record
from model.classifier import Classifier
from service.cache import ImageCache, Put
from service.contract import SingleObjectCodec
from service.redis_store import RedisStore
from tests.support.models import tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def classifier(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    return Classifier.load(tiny_model(shared_data, tmp_path_factory.mktemp("m"), "tiny-floor"))


@pytest.fixture
def cache(redis_store: RedisStore, classifier: Classifier) -> ImageCache:
    return ImageCache(redis_store, image_size=classifier.input_size)


def _produce(bootstrap: str, topic: str, urls: list[str]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    now = dt.datetime.now(tz=dt.UTC)
    for i, url in enumerate(urls):
        record = product_record(f"p-{i}", url, now)
        producer.produce(topic, key=f"p-{i}".encode(), value=PRODUCT.encode(record))
    assert producer.flush(30) == 0


def _read(bootstrap: str, topic: str, count: int) -> list[confluent_kafka.Message]:
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}",
         "auto.offset.reset": "earliest"}
    )  # fmt: skip
    consumer.subscribe([topic])
    messages: list[confluent_kafka.Message] = []
    try:
        for _ in range(60):
            messages += [m for m in consumer.consume(100, 0.5) if m.error() is None]
            if len(messages) >= count:
                break
    finally:
        consumer.close()
    return messages


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """The sum over ``topic``'s partitions of ``group``'s committed offsets."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed(
            [confluent_kafka.TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
    finally:
        consumer.close()
    return sum(max(o.offset, 0) for o in offsets)


def _warm(cache: ImageCache, size: int, count: int) -> list[str]:
    tag = uuid.uuid4().hex
    urls = [f"http://127.0.0.1:9/{tag}/{i}.jpg" for i in range(count)]
    rng = np.random.default_rng(0)
    cache.put_many(
        [
            Put(u, rng.integers(0, 256, (size, size, 3), dtype=np.uint8), f"{i:064x}")
            for i, u in enumerate(urls)
        ]
    )
    return urls


def test_a_warm_topic_becomes_one_valid_enrichment_per_product_with_offsets_stored(
    kafka_bootstrap: str, topic_factory, classifier: Classifier, cache: ImageCache
) -> None:
    source, target = topic_factory("floor-in", partitions=2), topic_factory("floor-out")
    _produce(kafka_bootstrap, source, _warm(cache, classifier.input_size, 40))

    group = f"floor-{uuid.uuid4().hex[:8]}"

    result = run(classifier, cache, kafka_bootstrap, source, target, 40, batch=16, group_id=group)

    outputs = _read(kafka_bootstrap, target, 40)
    codec = SingleObjectCodec.for_schema("category_enrichment")
    records = [codec.decode(m.value()) for m in outputs]
    assert sorted(r["product_id"] for r in records) == sorted(f"p-{i}" for i in range(40))
    assert {r["status"] for r in records} <= {"CLASSIFIED", "LOW_CONFIDENCE"}
    assert all(r["image"]["from_cache"] for r in records)
    assert result["products"] == 40
    assert result["products_per_s"] > 0
    assert set(result["cpu_ms_per_product"]) == {"floor_consumer", "kafka", "redis", "machine"}
    assert _committed(kafka_bootstrap, group, source, 2) == 40


def test_a_product_whose_image_is_not_cached_is_an_error_not_a_skip(
    kafka_bootstrap: str, topic_factory, classifier: Classifier, cache: ImageCache
) -> None:
    source, target = topic_factory("floor-cold-in"), topic_factory("floor-cold-out")
    urls = [*_warm(cache, classifier.input_size, 3), f"http://127.0.0.1:9/{uuid.uuid4()}.jpg"]
    _produce(kafka_bootstrap, source, urls)

    with pytest.raises(FloorError, match="1 cache misses"):
        run(classifier, cache, kafka_bootstrap, source, target, 4, batch=8)


def test_cpu_is_reported_per_product_for_the_broker_redis_and_the_machine() -> None:
    before = {"cpu": {10: ("java (kafka)", 5.0), 11: ("redis-server 127.0.0.1:6379", 1.0),
                      12: ("gone", 3.0)},
              "busy": 100.0, "self": 2.0}  # fmt: skip
    after = {"cpu": {10: ("java (kafka)", 6.0), 11: ("redis-server 127.0.0.1:6379", 1.5),
                     13: ("new java", 0.5)},
             "busy": 104.0, "self": 4.0}  # fmt: skip

    result = _measurement(1000, 2.0, before, after)

    assert result["products_per_s"] == 500.0
    assert result["cpu_ms_per_product"] == {
        "floor_consumer": 2.0, "kafka": 1.0, "redis": 0.5, "machine": 4.0,
    }  # fmt: skip
    assert result["machine_cores"] == 2.0


class _Message:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class _Consumer:
    def __init__(self) -> None:
        self.stored: list[tuple[int, int]] = []

    def store_offsets(self, offsets: list[confluent_kafka.TopicPartition]) -> None:
        self.stored += [(o.partition, o.offset) for o in offsets]


@pytest.mark.parametrize(
    ("acks", "stored"),
    [
        ([(0, 10), (0, 11), (0, 12)], [(0, 11), (0, 12), (0, 13)]),
        ([(0, 12), (0, 11), (0, 10)], [(0, 13)]),
        ([(0, 11), (1, 5), (0, 10), (0, 12)], [(1, 6), (0, 12), (0, 13)]),
        ([(0, 10), (0, 12)], [(0, 11)]),
    ],
    ids=["in order", "reversed", "two partitions", "a gap holds the offset back"],
)
def test_an_offset_is_stored_only_once_every_earlier_output_is_acknowledged(
    acks: list[tuple[int, int]], stored: list[tuple[int, int]]
) -> None:
    consumer = _Consumer()
    acknowledged = _Acknowledged(consumer)  # type: ignore[arg-type]
    for partition, offset in [(0, 10), (0, 11), (0, 12), (1, 5)]:
        acknowledged.expect(_Message(partition, offset))  # type: ignore[arg-type]

    for partition, offset in acks:
        acknowledged.done(_Message(partition, offset))  # type: ignore[arg-type]

    assert consumer.stored == stored
