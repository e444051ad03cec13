"""Offsets the consumer hands out twice within one assignment are taken once (no broker needed).

librdkafka can rewind a partition after a pause/resume (docs/reliability.md); these tests feed
the main loop such a rewind directly and check what it takes, skips and asks of the consumer.
"""

from __future__ import annotations

from confluent_kafka import Message, TopicPartition
from structlog.testing import capture_logs

from service.errors import KafkaError
from service.pipeline import EnrichmentService
from tests.support.pipeline import TOPIC, loop_only_service


class SeekingConsumer:
    """Records the seeks asked of it; `fail` makes every seek raise as the wrapper does."""

    def __init__(self, fail: bool = False) -> None:
        self.seeks: list[tuple[str, int, int]] = []
        self.fail = fail

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append((partition.topic, partition.partition, partition.offset))
        if self.fail:
            raise KafkaError("cannot seek: Local: Erroneous state")


def _service(consumer: SeekingConsumer) -> EnrichmentService:
    return loop_only_service(consumer=consumer, producer=None)


def _feed(service: EnrichmentService, partition: int, offsets: range) -> None:
    # Not Avro: each message is answered through the dead-letter output at once, no image work.
    for offset in offsets:
        message = Message(topic=TOPIC, partition=partition, offset=offset, key=b"k",
                          value=b"not avro")  # fmt: skip
        service._handle(message)


def _taken(service: EnrichmentService) -> list[tuple[int, int]]:
    return [(p.partition, p.offset) for p in service.queues.ready()]


def test_a_rewound_partition_is_taken_once_and_the_consumer_moved_back_once() -> None:
    """Offsets 0-4 handed out again are dropped, counted, and one seek asks for offset 5."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    _feed(service, 0, range(5))
    with capture_logs() as logs:
        _feed(service, 0, range(5))
    _feed(service, 0, range(5, 7))
    assert _taken(service) == [(0, offset) for offset in range(7)]
    assert consumer.seeks == [(TOPIC, 0, 5)]
    assert service.metrics.redelivered._value.get() == 5
    assert service.summary.consumed == 7
    assert [e["event"] for e in logs] == ["consumer_rewound"]
    assert (logs[0]["offset"], logs[0]["expected"]) == (0, 5)


def test_a_second_rewind_after_new_messages_moves_the_consumer_back_again() -> None:
    """Each rewind gets its own seek, to the offset after the last one taken."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    _feed(service, 0, range(3))
    _feed(service, 0, range(2))
    _feed(service, 0, range(3, 6))
    _feed(service, 0, range(4, 6))
    assert consumer.seeks == [(TOPIC, 0, 3), (TOPIC, 0, 6)]
    assert _taken(service) == [(0, offset) for offset in range(6)]


def test_a_rewind_of_one_partition_leaves_the_others_alone() -> None:
    """Offsets are tracked per partition: partition 1 may start at an offset 0 already taken."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    _feed(service, 0, range(3))
    _feed(service, 1, range(3))
    assert consumer.seeks == []
    assert sorted(_taken(service)) == [(p, o) for p in (0, 1) for o in range(3)]


def test_a_failed_seek_is_logged_and_the_rewound_messages_are_still_dropped() -> None:
    """Without the seek the consumer reads the rewound span again, and every copy is dropped."""
    consumer = SeekingConsumer(fail=True)
    service = _service(consumer)
    _feed(service, 0, range(4))
    with capture_logs() as logs:
        _feed(service, 0, range(4))
    assert [e["event"] for e in logs] == ["consumer_rewound", "seek_failed"]
    assert _taken(service) == [(0, offset) for offset in range(4)]
    assert service.metrics.redelivered._value.get() == 4


def test_a_partition_assigned_again_is_taken_from_its_committed_offset() -> None:
    """After a revoke, loss or new assignment the same offsets are new work, not a rewind."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    _feed(service, 0, range(3))
    service.queues.drop([(TOPIC, 0)])
    service._on_assign([TopicPartition(TOPIC, 0)])
    _feed(service, 0, range(3))
    assert consumer.seeks == []
    assert _taken(service) == [(0, offset) for offset in range(3)]
    service.queues.drop([(TOPIC, 0)])
    service._on_lost([TopicPartition(TOPIC, 0)])
    _feed(service, 0, range(2))
    assert consumer.seeks == []
    assert _taken(service) == [(0, 0), (0, 1)]
