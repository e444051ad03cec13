"""Lag per assigned partition, and the partitions that stopped fetching while they had lag.

Every ``lag_interval_s`` the main loop asks :class:`LagWatch` to read the high watermark of
each assigned partition and set ``enrich_lag`` (high watermark minus the next offset to
take: after the last one taken, or the offset the partition was assigned at when none was
taken yet, so a partition that never gave a message shows its whole backlog).

A partition that has lag, is not paused by the service, and has given no message for
``stall_timeout_s`` is **stalled**: librdkafka stopped fetching it without saying so (seen
here after a broker restart, with one partition of two never fetched again, and reported for
pause/resume around an assignment: librdkafka issue 5591). The watch logs
``partition_stalled``, counts ``enrich_partition_stalls_total`` and restarts the partition's
fetcher: a seek to its next offset, then a resume. A record handed out again by that is
dropped by :class:`~service.redelivery.TakenOffsets`, so the restart cannot duplicate an
output. 0 turns the watch off (the lag is still measured).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

import structlog
from confluent_kafka import TopicPartition

from service.errors import KafkaError
from service.kafka.consumer import KafkaConsumer
from service.metrics import Metrics

__all__ = ["LagWatch"]

log = structlog.get_logger(__name__)

Partition = tuple[str, int]


class LagWatch:
    """Lag of the assigned partitions and the restart of stalled ones (see the module doc)."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        metrics: Metrics,
        *,
        stall_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``stall_timeout_s``: how long a partition with lag may give nothing (0: never
        restarted)."""
        self.consumer = consumer
        self.metrics = metrics
        self.stall_timeout_s = stall_timeout_s
        self.clock = clock
        self._next: dict[Partition, int] = {}
        """The next offset to take per assigned partition."""
        self._moved: dict[Partition, float] = {}
        """When each assigned partition last gave a message (or was assigned)."""

    def assigned(self, key: Partition, offset: int) -> None:
        """A partition was assigned and starts at ``offset``."""
        self._next[key] = offset
        self._moved[key] = self.clock()

    def forget(self, keys: Collection[Partition]) -> None:
        """Partitions revoked or lost."""
        for key in keys:
            self._next.pop(key, None)
            self._moved.pop(key, None)

    def taken(self, key: Partition, offset: int) -> None:
        """A message at ``offset`` of this partition was taken."""
        self._next[key] = offset + 1
        self._moved[key] = self.clock()

    def paused(self, keys: Collection[Partition]) -> None:
        """These partitions give nothing on purpose now: their silence starts counting when
        they are resumed (call this again then)."""
        now = self.clock()
        for key in keys:
            if key in self._moved:
                self._moved[key] = now

    def check(self, *, fetching: Callable[[Partition], bool]) -> bool:
        """Read every assigned partition's high watermark, set the lag gauges and restart the
        stalled partitions that ``fetching`` says should be fetching; whether the broker
        answered (every reading failed: False)."""
        answered = None
        now = self.clock()
        for key, position in list(self._next.items()):
            topic, partition = key
            try:
                _, high = self.consumer.client.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=1.0, cached=False
                )
            except Exception:  # a lag reading is best effort
                answered = answered or False
                continue
            answered = True
            lag = max(0, int(high) - position)
            self.metrics.lag.labels(topic, str(partition)).set(lag)
            silent = now - self._moved.get(key, now)
            if (
                self.stall_timeout_s > 0
                and lag > 0
                and silent > self.stall_timeout_s
                and fetching(key)
            ):
                self._restart(key, position, lag, silent)
        return answered is not False

    def _restart(self, key: Partition, position: int, lag: int, silent: float) -> None:
        """Seek a stalled partition to its next offset and resume it."""
        topic, partition = key
        log.warning("partition_stalled", topic=topic, partition=partition, offset=position,
                    lag=lag, silent_s=round(silent, 1))  # fmt: skip
        self.metrics.partition_stalls.inc()
        self._moved[key] = self.clock()  # give the restart its own full timeout
        target = TopicPartition(topic, partition, position)
        try:
            self.consumer.seek(target)
            self.consumer.resume([TopicPartition(topic, partition)])
        except KafkaError as exc:  # the next check tries again
            log.warning("partition_restart_failed", topic=topic, partition=partition,
                        error=str(exc))  # fmt: skip
