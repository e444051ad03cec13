"""Products travel through the real broker in the single-object encoding and come back equal."""

import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka import Message

from service.contract import PRODUCT, SingleObjectCodec
from service.kafka import DeliveryReport, KafkaConsumer, KafkaProducer
from tests.conftest import TopicFactory

pytestmark = pytest.mark.integration


def _consume(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list[Message]:
    consumer = KafkaConsumer(
        {"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}"}
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = datetime.now(UTC).timestamp() + timeout_s
    try:
        while len(messages) < count and datetime.now(UTC).timestamp() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            messages.append(msg)
    finally:
        consumer.close()
    return messages


class TestRoundTrip:
    """Produce with KafkaProducer, consume with KafkaConsumer, decode with the contract codec."""

    def test_product_comes_back_equal(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """A product produced in single-object encoding is consumed back equal, with its headers."""
        topic = topic_factory("products")
        codec = SingleObjectCodec.for_schema(PRODUCT)
        product = {
            "product_id": "p-1",
            "partner_id": "partner-7",
            "title": "Linen dress",
            "description": None,
            "image_url": "http://127.0.0.1:1/dress.jpg",
            "additional_image_urls": ["http://127.0.0.1:1/dress-back.jpg"],
            "partner_category": "Women > Dresses",
            "updated_at": datetime(2026, 11, 24, 12, 0, 0, 250000, tzinfo=UTC),
        }
        reports: list[DeliveryReport] = []
        producer = KafkaProducer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(
            topic,
            key=b"p-1",
            value=codec.encode(product),
            headers=[("content-type", codec.content_type.encode())],
            on_delivery=reports.append,
        )
        assert 0 == producer.flush(30)
        assert [(topic, 0, 0, b"p-1", None)] == [
            (r.topic, r.partition, r.offset, r.key, r.error) for r in reports
        ]

        [message] = _consume(kafka_bootstrap, topic, 1)
        assert b"p-1" == message.key()
        assert [("content-type", codec.content_type.encode())] == message.headers()
        assert product == codec.decode(message.value())

    def test_tombstone_keeps_its_key(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """A deleted product travels as a tombstone: the key and a null value."""
        topic = topic_factory("tombstones")
        producer = KafkaProducer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(topic, key=b"p-gone", value=None)
        assert 0 == producer.flush(30)
        [message] = _consume(kafka_bootstrap, topic, 1)
        assert (b"p-gone", None) == (message.key(), message.value())

    def test_many_products_keep_partition_order(
        self, kafka_bootstrap: str, topic_factory: TopicFactory
    ) -> None:
        """Records of one key come back in the order they were produced, none missing."""
        topic = topic_factory("ordered", partitions=3)
        codec = SingleObjectCodec.for_schema(PRODUCT)
        producer = KafkaProducer({"bootstrap.servers": kafka_bootstrap})
        for i in range(200):
            record = {
                "product_id": f"p-{i % 5}",
                "partner_id": "x",
                "title": str(i),
                "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
            }
            producer.produce(topic, key=record["product_id"].encode(), value=codec.encode(record))
        assert 0 == producer.flush(30)
        messages = _consume(kafka_bootstrap, topic, 200)
        titles_by_key: dict[bytes, list[int]] = {}
        for message in messages:
            titles_by_key.setdefault(message.key(), []).append(
                int(codec.decode(message.value())["title"])
            )
        assert 200 == len(messages)
        assert {f"p-{k}".encode(): list(range(k, 200, 5)) for k in range(5)} == titles_by_key
