"""Lag per assigned partition, and the partitions that stopped fetching while they had lag.

Every ``lag_interval_s`` the main loop asks :class:`LagWatch` to check: the watch applies the
high watermarks its last reading found and starts the next reading in a thread of its own,
so the main loop never waits for the broker. (Read in the main loop, one broker round trip
per partition with a 1 s timeout, the watermarks stopped consuming and producing for 1.5-2
s at a time under load: docs/performance.md.) ``enrich_lag`` is the high watermark minus
the next offset to take: after the last one taken, or the offset the partition was assigned
at when none was taken yet, so a partition that never gave a message shows its whole
backlog.

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

import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor

import structlog
from confluent_kafka import TopicPartition

from service.errors import KafkaError
from service.kafka.consumer import KafkaConsumer
from service.metrics import Metrics

__all__ = ["LagWatch"]

log = structlog.get_logger(__name__)

Partition = tuple[str, int]
Reading = dict[Partition, int | None]
"""The high watermark of each partition read (None: the broker did not answer for it)."""

READ_TIMEOUT_S = 1.0
"""How long one partition's watermark may take to come."""
FIRST_READ_TIMEOUT_S = 5.0
"""The same for the first reading, whose client connects and reads metadata first."""


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
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lag")
        self._reading: Future[Reading] | None = None
        self._reading_due = 0.0
        """When the reading under way should be over (its partitions' timeouts, and 1 s)."""
        self._reading_assignment = 0
        self._assignment = 0
        """Counts assignments: a reading started before the last one is dropped unread."""
        self._read_timeout_s = FIRST_READ_TIMEOUT_S
        self._closing = threading.Event()
        self._reachable = True

    def assigned(self, key: Partition, offset: int) -> None:
        """A partition was assigned and starts at ``offset``."""
        self._assignment += 1
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
        """Set the lag gauges from the last finished reading of the high watermarks, restart
        the stalled partitions that ``fetching`` says should be fetching, and start the next
        reading; never waits for the broker. Returns whether the broker answered the last
        finished reading (every partition unanswered: False), or False while a reading runs
        past the time its partitions' timeouts allow. A reading started before the last
        assignment is dropped: what it says of the broker is older than the assignment."""
        if self._reading is not None and self._reading.done():
            future, self._reading = self._reading, None
            if self._reading_assignment == self._assignment:
                self._apply(future.result(), fetching)
        if not self._next:
            self._reachable = True  # nothing to read: nothing says the broker is gone
        elif self._reading is None and not self._closing.is_set():
            keys = list(self._next)
            timeout = self._read_timeout_s
            self._read_timeout_s = READ_TIMEOUT_S
            self._reading = self._reader.submit(self._read, keys, timeout)
            self._reading_due = self.clock() + timeout * len(keys) + 1.0
            self._reading_assignment = self._assignment
        elif self._reading is not None and self.clock() > self._reading_due:
            self._reachable = False  # the broker keeps even the timeouts waiting
        return self._reachable

    def close(self) -> None:
        """Stop reading: wait for the reading under way (it gives up after the partition it is
        on: at most one partition's timeout, which may run past a shutdown deadline), so the
        consumer may be closed."""
        self._closing.set()
        self._reader.shutdown(wait=True)

    def _read(self, keys: list[Partition], timeout: float) -> Reading:
        """The high watermarks of ``keys``, one broker round trip each (the reader thread)."""
        reading: Reading = {}
        for topic, partition in keys:
            if self._closing.is_set():
                break
            try:
                reading[(topic, partition)] = self.consumer.high_watermark(
                    topic, partition, timeout=timeout
                )
            except Exception:  # a lag reading is best effort
                reading[(topic, partition)] = None
        return reading

    def _apply(self, reading: Reading, fetching: Callable[[Partition], bool]) -> None:
        """Gauges and stall restarts from one reading (the main thread)."""
        answered = None
        now = self.clock()
        for key, high in reading.items():
            position = self._next.get(key)
            if position is None:  # revoked since
                continue
            if high is None:
                answered = answered or False
                continue
            answered = True
            topic, partition = key
            lag = max(0, high - position)
            self.metrics.lag.labels(topic, str(partition)).set(lag)
            silent = now - self._moved.get(key, now)
            if (
                self.stall_timeout_s > 0
                and lag > 0
                and silent > self.stall_timeout_s
                and fetching(key)
            ):
                self._restart(key, position, lag, silent)
        self._reachable = answered is not False

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
