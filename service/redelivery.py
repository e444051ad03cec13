"""Each offset is taken once per assignment, even when the consumer hands it out again.

librdkafka 2.16 can rewind a partition it is still looking up a start offset for when the
partition is paused and resumed meanwhile: the outdated offset reply re-arms the
offset-query timer, which resets the partition to ``auto.offset.reset`` after messages were
handed out (docs/architecture.md). Taking them again would publish their outputs twice, in
exactly-once mode too. :class:`TakenOffsets` remembers the last offset taken per partition,
drops copies (``enrich_redelivered_total``, one ``consumer_rewound`` warning per rewind) and,
after the batch, moves the consumer back past them. A record under a later leader epoch than
the last one taken is new (the log was cut back by an unclean election) and is taken.
"""

from __future__ import annotations

import structlog
from confluent_kafka import Message, TopicPartition

from service.errors import KafkaError
from service.kafka.consumer import KafkaConsumer
from service.metrics import Metrics

__all__ = ["TakenOffsets"]

log = structlog.get_logger(__name__)

Partition = tuple[str, int]


class TakenOffsets:
    """The last offset (and leader epoch) taken per partition since it was assigned."""

    def __init__(self, metrics: Metrics) -> None:
        """Count dropped copies in ``metrics``."""
        self.metrics = metrics
        self.positions: dict[Partition, int] = {}
        """The last offset taken per partition, since the partition was assigned."""
        self._epochs: dict[Partition, int | None] = {}
        self._rewound: set[Partition] = set()
        self._to_seek: set[Partition] = set()

    def is_copy(self, message: Message) -> bool:
        """Whether this message was taken already in this assignment (and is dropped)."""
        key = (message.topic() or "", message.partition() or 0)
        offset = message.offset() or 0
        last = self.positions.get(key)
        if last is None or offset > last or self._log_rewritten(key, message, last):
            return False
        self.metrics.redelivered.inc()
        self._to_seek.add(key)
        if key not in self._rewound:  # one warning per rewind, not per message
            self._rewound.add(key)
            log.warning("consumer_rewound", topic=key[0], partition=key[1], offset=offset,
                        expected=last + 1)  # fmt: skip
        return True

    def take(self, message: Message) -> None:
        """Note a message as taken."""
        key = (message.topic() or "", message.partition() or 0)
        self._rewound.discard(key)
        self._to_seek.discard(key)
        self._epochs[key] = message.leader_epoch()
        self.positions[key] = message.offset() or 0

    def _log_rewritten(self, key: Partition, message: Message, last: int) -> bool:
        """Whether a message at or below the last offset taken is a new record there: one
        written under a later leader epoch, after the partition's log was cut back (unclean
        leader election). It is taken; if later offsets of the partition are still in flight,
        `PartitionQueues.add` refuses it and the service stops, to restart from its commit."""
        epoch, known = message.leader_epoch(), self._epochs.get(key)
        if epoch is None or known is None or epoch <= known:
            return False
        log.warning("partition_log_rewritten", topic=key[0], partition=key[1],
                    offset=message.offset(), last_taken=last, leader_epoch=epoch)  # fmt: skip
        return True

    def seek_past_rewinds(self, consumer: KafkaConsumer) -> None:
        """Move each partition whose last message in the batch was a dropped copy back to the
        offset after the last one taken (a batch that went on past it needs no seek)."""
        for topic, partition in sorted(self._to_seek):
            last = self.positions.get((topic, partition))
            if last is None:
                continue  # revoked meanwhile
            try:
                consumer.seek(TopicPartition(topic, partition, last + 1))
            except KafkaError as exc:  # dropping alone keeps the outputs right, only slower
                log.warning("seek_failed", topic=topic, partition=partition, error=str(exc))
        self._to_seek.clear()

    def forget(self, keys: list[Partition]) -> None:
        """A partition assigned again starts from its committed offset, taken afresh."""
        for key in keys:
            self.positions.pop(key, None)
            self._epochs.pop(key, None)
            self._rewound.discard(key)
            self._to_seek.discard(key)
