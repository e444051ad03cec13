"""Offsets the consumer hands out twice within one assignment are taken once (no broker needed).

librdkafka can rewind a partition after a pause/resume (docs/architecture.md); these tests
feed the main loop such a rewind directly and check what it takes, drops and asks of the
consumer.
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

    def commit(self, offsets: object = None) -> None:
        """What a revoke asks in at-least-once mode."""

    def store_offsets(self, offsets: object) -> None:
        """What a revoke asks in at-least-once mode."""

    def committed(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Nothing committed yet: every partition starts where the consumer says."""
        return [TopicPartition(p.topic, p.partition, -1001) for p in partitions]

    def start_offset(self, partition: TopicPartition) -> None:
        """No reset policy known: the guard leaves the partition alone."""


class IdleProducer:
    """What a revoke asks of the producer when nothing is waiting to go out."""

    def flush(self, timeout: float) -> int:
        return 0

    def poll(self, timeout: float = 0.0) -> int:
        return 0


def _service(consumer: SeekingConsumer) -> EnrichmentService:
    return loop_only_service(consumer=consumer, producer=IdleProducer())


def _batch(
    service: EnrichmentService, partition: int, offsets: range, leader_epoch: int = 0
) -> None:
    """One consumed batch: each message into `_handle`, then the end-of-batch seeks."""
    for offset in offsets:
        # Not Avro: answered through the dead-letter output at once, with no image work.
        service._handle(Message(topic=TOPIC, partition=partition, offset=offset, key=b"k",
                                value=b"not avro", leader_epoch=leader_epoch))  # fmt: skip
    service._seek_past_rewinds()


def _acknowledge_all(service: EnrichmentService) -> None:
    """The broker acknowledged every output so far: the queues' prefixes are popped."""
    for pending in list(service.queues.ready()):
        pending.produced = True
        service.queues.acknowledge(pending)
    service.queues.watermarks()


def _taken(service: EnrichmentService) -> int:
    return service.summary.consumed


def test_offsets_handed_out_again_after_their_outputs_were_acknowledged_are_dropped() -> None:
    """The CI case: 0-4 done and popped, 0-4 again, then 5-6: taken 7, one seek to 5."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    _batch(service, 0, range(5))
    _acknowledge_all(service)
    with capture_logs() as logs:
        _batch(service, 0, range(5))
    _batch(service, 0, range(5, 7))
    assert _taken(service) == 7
    assert [(p.partition, p.offset) for p in service.queues.ready()] == [(0, 5), (0, 6)]
    assert consumer.seeks == [(TOPIC, 0, 5)]
    assert service.metrics.redelivered._value.get() == 5
    assert [(e["event"], e["offset"], e["expected"]) for e in logs] == [("consumer_rewound", 0, 5)]


def test_offsets_handed_out_again_while_still_in_flight_are_dropped() -> None:
    """A rewind over outputs not yet acknowledged drops the copies instead of failing."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    _batch(service, 0, range(3))
    _batch(service, 0, range(3))
    assert (_taken(service), len(service.queues), consumer.seeks) == (3, 3, [(TOPIC, 0, 3)])


def test_a_batch_that_goes_on_past_the_last_offset_taken_needs_no_seek() -> None:
    """Copies 0-2 then new 3-4 in one batch: the fetch is already past, so no seek."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    _batch(service, 0, range(3))
    _batch(service, 0, range(5))
    assert (_taken(service), consumer.seeks) == (5, [])


def test_each_rewind_gets_its_own_warning_and_seek() -> None:
    """A second rewind, after new offsets were taken, is reported and moved back again."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    with capture_logs() as logs:
        _batch(service, 0, range(3))
        _batch(service, 0, range(2))
        _batch(service, 0, range(2, 3))
        _batch(service, 0, range(3, 6))
        _batch(service, 0, range(4, 6))
    assert consumer.seeks == [(TOPIC, 0, 3), (TOPIC, 0, 3), (TOPIC, 0, 6)]
    assert [e["event"] for e in logs if e["event"] == "consumer_rewound"] == [
        "consumer_rewound", "consumer_rewound",
    ]  # fmt: skip
    assert _taken(service) == 6


def test_a_rewind_of_one_partition_leaves_the_others_alone() -> None:
    """Offsets are tracked per partition: partition 1 may start at an offset 0 already taken."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    _batch(service, 0, range(3))
    _batch(service, 1, range(3))
    assert (_taken(service), consumer.seeks) == (6, [])


def test_a_failed_seek_is_logged_and_the_rewound_messages_are_still_dropped() -> None:
    """Without the seek the consumer reads the rewound span again, and every copy is dropped."""
    consumer = SeekingConsumer(fail=True)
    service = _service(consumer)
    _batch(service, 0, range(4))
    with capture_logs() as logs:
        _batch(service, 0, range(4))
    assert [e["event"] for e in logs] == ["consumer_rewound", "seek_failed"]
    assert (_taken(service), service.metrics.redelivered._value.get()) == (4, 4)


def test_a_record_written_under_a_later_leader_epoch_is_taken() -> None:
    """After the log was cut back, an old offset under a new leader epoch is a new record."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    _batch(service, 0, range(5), leader_epoch=3)
    _acknowledge_all(service)
    with capture_logs() as logs:
        _batch(service, 0, range(3, 5), leader_epoch=4)
    assert (_taken(service), consumer.seeks) == (7, [])
    assert [e["event"] for e in logs if e["event"] != "dead_letter"] == ["partition_log_rewritten"]


def test_a_partition_revoked_lost_or_assigned_again_starts_afresh() -> None:
    """After a revoke, loss or new assignment the same offsets are new work, not a rewind."""
    consumer = SeekingConsumer()
    service = _service(consumer)
    tp = TopicPartition(TOPIC, 0)
    for forget in (service._on_revoke, service._on_lost, service._on_assign):
        _batch(service, 0, range(3))
        service.queues.drop([(TOPIC, 0)])
        forget([tp])
    _batch(service, 0, range(3))
    assert (_taken(service), consumer.seeks) == (12, [])
