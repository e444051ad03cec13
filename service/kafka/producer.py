"""A typed producer: idempotent by default, delivery reports as small dataclasses."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import confluent_kafka

from service.errors import KafkaError

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class DeliveryReport:
    """What the broker said about one produced message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    error: str | None
    code: str | None = None
    """The error's name (``MSG_SIZE_TOO_LARGE``, ``_MSG_TIMED_OUT``...), None when delivered."""

    @property
    def ok(self) -> bool:
        """True when the broker acknowledged the message."""
        return self.error is None


DeliveryCallback = Callable[[DeliveryReport], None]

# Safe defaults for a producer whose output downstream teams rely on: no reordering, no
# duplicates from internal retries, every in-sync replica acknowledges.
_DEFAULTS: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
}


class KafkaProducer:
    """Wraps `confluent_kafka.Producer`; the client is created on first use."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = {**_DEFAULTS, **config}
        self._client: confluent_kafka.Producer | None = None

    @property
    def client(self) -> confluent_kafka.Producer:
        """The underlying confluent-kafka producer, created now if needed."""
        if self._client is None:
            try:
                self._client = confluent_kafka.Producer(self._config)
            except confluent_kafka.KafkaException as exc:
                raise KafkaError(f"cannot create producer: {exc}") from exc
        return self._client

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        on_delivery: DeliveryCallback | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one message; `on_delivery` is called from `poll`/`flush` with the outcome.

        When the local queue is full, serves delivery reports and tries again once.
        """

        def report(err: confluent_kafka.KafkaError | None, msg: confluent_kafka.Message) -> None:
            if on_delivery is not None:
                got_partition, got_offset = msg.partition(), msg.offset()
                on_delivery(
                    DeliveryReport(
                        topic=msg.topic() or topic,
                        partition=-1 if got_partition is None else got_partition,
                        offset=-1 if got_offset is None else got_offset,
                        key=msg.key(),
                        error=None if err is None else str(err),
                        code=None if err is None else err.name(),
                    )
                )

        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": list(headers)}
        if partition is not None:
            kwargs["partition"] = partition
        for attempt in (1, 2):
            try:
                self.client.produce(topic, on_delivery=report, **kwargs)
                return
            except BufferError as exc:
                if attempt == 2:
                    raise KafkaError(f"producer queue full for topic {topic}") from exc
                self.client.poll(1.0)
            except confluent_kafka.KafkaException as exc:
                raise KafkaError(f"cannot produce to {topic}: {exc}", code=_name(exc)) from exc

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports; returns how many were served."""
        return int(self.client.poll(timeout))

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every queued message; returns how many are still undelivered."""
        return int(self.client.flush(timeout))

    # Transactions (exactly-once mode) ---------------------------------------------------

    def init_transactions(self, timeout: float = 30.0) -> None:
        """Register the transactional id with the broker."""
        self._call("init_transactions", timeout)

    def begin_transaction(self) -> None:
        """Start a transaction."""
        self._call("begin_transaction")

    def send_offsets_to_transaction(
        self, offsets: list[confluent_kafka.TopicPartition], metadata: Any, timeout: float = 30.0
    ) -> None:
        """Make the consumed offsets part of the current transaction."""
        self._call("send_offsets_to_transaction", offsets, metadata, timeout)

    def commit_transaction(self, timeout: float = 30.0) -> None:
        """Commit the current transaction."""
        self._call("commit_transaction", timeout)

    def abort_transaction(self, timeout: float = 30.0) -> None:
        """Abort the current transaction."""
        self._call("abort_transaction", timeout)

    def _call(self, name: str, *args: Any) -> None:
        try:
            getattr(self.client, name)(*args)
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            abortable = bool(
                isinstance(error, confluent_kafka.KafkaError) and error.txn_requires_abort()
            )
            raise KafkaError(f"{name} failed: {exc}", code=_name(exc), abortable=abortable) from exc


def _name(exc: confluent_kafka.KafkaException) -> str | None:
    """The error name inside a client exception (``MSG_SIZE_TOO_LARGE``), if it has one."""
    error = exc.args[0] if exc.args else None
    return error.name() if isinstance(error, confluent_kafka.KafkaError) else None
