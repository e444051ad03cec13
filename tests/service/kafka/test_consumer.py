"""The consumer wrapper's high-watermark reading, on the real broker."""

import threading
import uuid

import pytest

from service.errors import KafkaError
from service.kafka import KafkaConsumer, KafkaProducer
from tests.conftest import TopicFactory

pytestmark = pytest.mark.integration


def _consumer(bootstrap: str) -> KafkaConsumer:
    return KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}"})


def test_the_high_watermark_counts_what_was_produced_while_the_consumer_consumes(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """Read from another thread while the consumer consumes in its own, the high watermark of
    each partition is the number of records produced to it."""
    topic = topic_factory("watermarks", partitions=2)
    producer = KafkaProducer({"bootstrap.servers": kafka_bootstrap})
    for index in range(5):
        producer.produce(topic, key=None, value=b"x", partition=index % 2)
    assert producer.flush(30) == 0
    consumer = _consumer(kafka_bootstrap)
    consumer.subscribe([topic])
    consumed: list[int] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            consumed.extend(1 for m in consumer.consume(10, 0.1) if m.error() is None)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        highs = []
        for partition in (0, 1):
            highs.append(consumer.high_watermark(topic, partition, timeout=10))
            stop.wait(1.0)  # let the consumer consume between the readings
    finally:
        stop.set()
        thread.join(30)
        consumer.close()
    assert highs == [3, 2]
    assert len(consumed) == 5  # it consumed all along, beside the readings


def test_an_unknown_partition_is_a_kafka_error(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """A partition the topic does not have gives a KafkaError naming it and the broker's
    reason, not a number."""
    topic = topic_factory("watermarks")
    consumer = _consumer(kafka_bootstrap)
    try:
        with pytest.raises(KafkaError, match=rf"{topic}\[7\].*UNKNOWN_PARTITION"):
            consumer.high_watermark(topic, 7, timeout=2)
    finally:
        consumer.close()


def test_no_reading_after_close(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    """After close, a reading is a KafkaError, not a second client left open."""
    topic = topic_factory("watermarks")
    consumer = _consumer(kafka_bootstrap)
    assert consumer.high_watermark(topic, 0, timeout=10) == 0
    consumer.close()
    with pytest.raises(KafkaError, match="closed"):
        consumer.high_watermark(topic, 0)
