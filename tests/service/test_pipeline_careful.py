"""Careful partitions (the crash-loop guard cornering a killer record): one record in work in
the whole process, the others held in order while their partitions are paused (no broker)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import Message, TopicPartition

from service.errors import KafkaError
from service.kafka.producer import DeliveryReport
from service.pipeline import EnrichmentService
from service.progress import Progress
from tests.support.pipeline import TOPIC, loop_only_service


class Consumer:
    """Records pauses, resumes and commits (with the metadata committed)."""

    def __init__(self) -> None:
        self.paused: set[int] = set()
        self.commits: list[tuple[int, int, str]] = []
        self._stored: list[TopicPartition] = []

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update(p.partition for p in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update(p.partition for p in partitions)

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self._stored = list(offsets)

    def commit(self, offsets: list[TopicPartition] | None = None) -> None:
        for tp in offsets if offsets is not None else self._stored:
            self.commits.append((tp.partition, tp.offset, tp.metadata))

    def commit_async(self, offsets: list[TopicPartition] | None = None) -> None:
        self.commit(offsets)

    def seek(self, partition: TopicPartition) -> None:
        raise AssertionError("careful partitions hold messages, they never seek")


class Producer:
    """Acknowledges everything at the next poll or flush."""

    def __init__(self) -> None:
        self.waiting: list[Any] = []
        self.keys: list[bytes | None] = []

    def produce(self, topic: str, *, key: bytes | None, on_delivery: Any, **_: Any) -> None:
        self.keys.append(key)
        self.waiting.append((topic, key, on_delivery))

    def poll(self, timeout: float = 0.0) -> int:
        waiting, self.waiting = self.waiting, []
        for topic, key, callback in waiting:
            callback(DeliveryReport(topic, 0, 0, key, None))
        return len(waiting)

    def flush(self, timeout: float = 30.0) -> int:
        self.poll()
        return 0


def _message(partition: int, offset: int) -> Message:
    # Not Avro: answered through a dead-letter output at once, with no image work.
    key = f"{partition}-{offset}".encode()
    return Message(topic=TOPIC, partition=partition, offset=offset, key=key, value=b"not avro")


def _careful_service() -> tuple[EnrichmentService, Consumer, Producer]:
    consumer, producer = Consumer(), Producer()
    service = loop_only_service(consumer=consumer, producer=producer)
    for partition in (0, 1):
        key = (TOPIC, partition)
        service.assigned.add(key)
        # Three deaths with offsets 0-10 in work: records up to 10 + the slack go one by one.
        service.guard.assigned(key, 0, Progress(starts=3, high=10))
        service.publisher.started(key, 0)
    return service, consumer, producer


def test_one_careful_record_is_in_work_in_the_whole_process() -> None:
    """A batch with records of two careful partitions: one is taken, the rest are held in
    order and both partitions paused; the others follow one at a time, taking turns."""
    service, consumer, producer = _careful_service()
    for partition, offset in ((0, 0), (1, 0), (0, 1), (1, 1)):
        service._handle(_message(partition, offset))
    assert 1 == service.summary.consumed
    assert {0, 1} == consumer.paused
    order = []
    for _ in range(4):
        service._release_held()
        service._pump()  # produces, acknowledges, pops: the record is done
        order.append(producer.keys[-1])
    assert [b"0-0", b"1-0", b"0-1", b"1-1"] == order
    service._release_held()
    assert set() == consumer.paused
    assert 4 == service.summary.consumed


def test_each_careful_record_is_committed_as_the_position_before_it_starts() -> None:
    """A death while a careful record is in work is counted at that record's offset."""
    service, consumer, _ = _careful_service()
    service._handle(_message(0, 0))
    service._pump()
    service._release_held()
    service._handle(_message(0, 1))
    positions = [(p, o, Progress.decode(m, o)) for p, o, m in consumer.commits if p == 0]
    assert (0, 0) == positions[0][:2]
    assert (0, 1) == positions[-1][:2]
    assert positions[-1][2].careful
    assert 1 == positions[-1][2].starts


class FailingConsumer(Consumer):
    """A consumer whose consume raises, as a bug in the loop would."""

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        """Nothing to join: the partition is assigned by the test."""

    def consume(self, count: int, timeout: float) -> list[Message]:
        raise RuntimeError("a bug in the loop")

    def close(self) -> None:
        """Nothing to close."""


def _counting_service(consumer: Consumer) -> EnrichmentService:
    service = loop_only_service(consumer=consumer, producer=Producer())
    key = (TOPIC, 0)
    service.assigned.add(key)
    service.guard.assigned(key, 40, Progress(starts=1, high=60))  # one death counted here
    service.publisher.started(key, 40)
    return service


def test_a_run_ended_by_an_exception_keeps_counting_the_death() -> None:
    """Only a stop that was asked for is clean: after an exception the start count stays in
    the committed metadata, so the crash-loop guard still sees a loop of such failures."""
    consumer = FailingConsumer()
    service = _counting_service(consumer)
    with pytest.raises(RuntimeError, match="a bug in the loop"):
        service.run(threading.Event())
    (partition, offset, metadata) = consumer.commits[-1]
    assert (0, 40, 2) == (partition, offset, Progress.decode(metadata, offset).starts)


def test_a_stop_that_was_asked_for_is_clean() -> None:
    """SIGTERM (stop set) commits the start count back to 0."""
    consumer = FailingConsumer()
    service = _counting_service(consumer)
    stop = threading.Event()
    stop.set()
    service.run(stop)
    (partition, offset, metadata) = consumer.commits[-1]
    assert (0, 40, 0) == (partition, offset, Progress.decode(metadata, offset).starts)


class RefusingProducer(Producer):
    """Refuses every record at once, as the client does with one over message.max.bytes."""

    def produce(self, topic: str, *, key: bytes | None, on_delivery: Any, **_: Any) -> None:
        raise KafkaError("too large", code="MSG_SIZE_TOO_LARGE")


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_record_whose_every_copy_is_refused_is_counted_and_skipped(delivery: str) -> None:
    """Output refused, refused alone, its dead-letter copy refused alone: counted, logged,
    and its offset moves on (nothing waits for it forever)."""
    consumer = Consumer()
    service = loop_only_service(consumer=consumer, producer=RefusingProducer(),
                                delivery=delivery)  # fmt: skip
    service.consumer.client = _GroupMetadata()  # type: ignore[attr-defined]
    service.producer.begin_transaction = lambda: None  # type: ignore[method-assign]
    service.producer.commit_transaction = lambda timeout=0: None  # type: ignore[method-assign]
    service.producer.send_offsets_to_transaction = (  # type: ignore[method-assign]
        lambda offsets, meta, timeout=0: None
    )
    service.assigned.add((TOPIC, 0))
    service._handle(_message(0, 7))
    for _ in range(4):
        service._pump()
    assert 0 == len(service.queues)
    assert 1.0 == service.metrics.dead_letter_lost._value.get()


class _GroupMetadata:
    def consumer_group_metadata(self) -> None:
        return None
