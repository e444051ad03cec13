"""Exactly-once bookkeeping in the main loop, with a recording producer (no broker needed)."""

from typing import Any

from confluent_kafka import TopicPartition

from service.ordering import Output, Pending
from service.pipeline import EnrichmentService
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

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], _meta: Any) -> None:
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
    service._commit_transaction()
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
