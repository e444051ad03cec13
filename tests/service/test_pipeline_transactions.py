"""Exactly-once bookkeeping in the main loop, with a recording producer (no broker needed)."""

from typing import Any

from confluent_kafka import TopicPartition

from service.errors import KafkaError
from service.ordering import Output, Pending
from service.pipeline import EnrichmentService
from service.progress import Progress
from tests.support.pipeline import TOPIC, loop_only_service


class RecordingProducer:
    """Records the transactional calls and the keys produced, in order."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.calls.append(("produce", kwargs["key"]))

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], _meta: Any, timeout: float = 30.0
    ) -> None:
        self.calls.append(("offsets", sorted((o.partition, o.offset) for o in offsets)))

    def commit_transaction(self, timeout: float = 30.0) -> None:
        self.calls.append("commit")

    def abort_transaction(self, timeout: float = 30.0) -> None:
        self.calls.append("abort")


class StubConsumer:
    """Only what committing a transaction asks of the consumer."""

    class Client:
        def consumer_group_metadata(self) -> None:
            return None

    client = Client()


def _service(producer: RecordingProducer) -> EnrichmentService:
    return loop_only_service(
        consumer=StubConsumer(), producer=producer, delivery="exactly-once",
        transaction_interval_s=3600.0,
    )  # fmt: skip


def _finished(service: EnrichmentService, partition: int, offset: int) -> None:
    key = f"p{partition}-{offset}".encode()
    pending = service.queues.add(Pending(TOPIC, partition, offset, key))
    pending.output = Output("out", key, b"v", [], "CLASSIFIED")


def test_losing_partitions_aborts_the_open_transaction_and_reproduces_the_rest() -> None:
    """Outputs of lost partitions never commit; the kept partitions' outputs go again."""
    producer = RecordingProducer()
    service = _service(producer)
    _finished(service, 0, 10)
    _finished(service, 1, 20)
    service._pump()
    service._on_lost([TopicPartition(TOPIC, 0)])
    service._pump()
    service.publisher.commit_transaction()
    assert producer.calls == [
        "begin", ("produce", b"p0-10"), ("produce", b"p1-20"),
        "abort",
        "begin", ("produce", b"p1-20"),
        ("offsets", [(1, 21)]), "commit",
    ]  # fmt: skip


def test_losing_partitions_outside_a_transaction_aborts_nothing() -> None:
    """With no transaction open, losing partitions only forgets their work."""
    producer = RecordingProducer()
    service = _service(producer)
    _finished(service, 0, 10)
    service._on_lost([TopicPartition(TOPIC, 0)])
    assert (producer.calls, len(service.queues)) == ([], 0)


class RefusingProducer(RecordingProducer):
    """Refuses one key at once, as the client does with a record over message.max.bytes."""

    def __init__(self, refused: bytes) -> None:
        super().__init__()
        self.refused = refused
        self.offsets: list[TopicPartition] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        if kwargs["key"] == self.refused:
            raise KafkaError("cannot produce: too large", code="MSG_SIZE_TOO_LARGE")
        super().produce(topic, **kwargs)

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], _meta: Any, timeout: float = 30.0
    ) -> None:
        self.offsets = offsets
        super().send_offsets_to_transaction(offsets, _meta, timeout)


def test_a_record_the_client_refuses_is_never_committed_as_done() -> None:
    """The transaction commits the offset of the refused record, not past it, and its
    metadata does not list it among the outputs already out."""
    producer = RefusingProducer(b"p0-11")
    service = _service(producer)
    for offset in (10, 11, 12):
        _finished(service, 0, offset)
    service._pump()
    service.publisher.commit_transaction()
    (offset,) = producer.offsets
    assert 11 == offset.offset
    assert (12,) == Progress.decode(offset.metadata, 11).done


def test_an_earlier_owners_published_offsets_stay_in_the_metadata() -> None:
    """Offsets an earlier owner published above the commit, not reached yet, are written
    again with this owner's commits, so a later owner skips them too."""
    producer = RecordingProducer()
    service = _service(producer)
    key = (TOPIC, 0)
    service.guard.assigned(key, 100, Progress(done=(105, 107)))
    service.publisher.started(key, 100)
    service.assigned.add(key)
    (offset,) = service.publisher.positions([key])
    assert (100, (105, 107)) == (offset.offset, Progress.decode(offset.metadata, 100).done)
