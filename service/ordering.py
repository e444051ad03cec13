"""Per-partition order and the offset watermark: what may be produced, and what committed.

Products are processed concurrently, but their outputs leave in source order per partition,
so the last enrichment of a product is always its latest update's. Each consumed message
becomes a :class:`Pending` entry in its partition's queue, in offset order; the service
fills in its output when the work is done. :meth:`PartitionQueues.ready` hands out, per
partition, the finished entries at the head of the queue that were not produced yet, and
stops at the first unfinished one. When the broker acknowledges an output,
:meth:`PartitionQueues.acknowledge` marks it; :meth:`PartitionQueues.watermarks` then pops
the acknowledged prefix of every queue and returns the offset to store: one past the last
message whose output, and every earlier one's, is acknowledged.

The commit order, written down: consume → process (concurrently) → produce in source order →
broker acknowledges → store offset (watermark) → commit (periodic, on revoke, on shutdown).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Output", "PartitionQueues", "Pending"]

Partition = tuple[str, int]


@dataclass
class Output:
    """One record to produce: where to, key, value (None for a tombstone) and headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    status: str = ""


@dataclass
class Pending:
    """One consumed message on its way through the service."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    output: Output | None = None
    produced: bool = False
    acknowledged: bool = False
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Whether the output is known (it may not be produced yet)."""
        return self.output is not None


class PartitionQueues:
    """The in-flight messages of every assigned partition, each queue in offset order."""

    def __init__(self) -> None:
        self._queues: dict[Partition, deque[Pending]] = {}
        self._in_flight = 0

    def __len__(self) -> int:
        """The number of messages consumed whose output is not acknowledged yet."""
        return self._in_flight

    def partitions(self) -> list[Partition]:
        """The partitions that hold in-flight messages."""
        return [p for p, q in self._queues.items() if q]

    def add(self, pending: Pending) -> Pending:
        """Append a consumed message; offsets of one partition must increase."""
        queue = self._queues.setdefault((pending.topic, pending.partition), deque())
        if queue and queue[-1].offset >= pending.offset:
            raise ValueError(
                f"offset {pending.offset} of {pending.topic}[{pending.partition}] arrived after "
                f"offset {queue[-1].offset}"
            )
        queue.append(pending)
        self._in_flight += 1
        return pending

    def ready(self) -> Iterator[Pending]:
        """Finished, unproduced entries at the head of each queue, in source order."""
        for queue in self._queues.values():
            for pending in queue:
                if not pending.done:
                    break
                if not pending.produced:
                    yield pending

    def produced(self) -> list[Pending]:
        """Every in-flight entry already handed to the producer, in source order."""
        return [p for queue in self._queues.values() for p in queue if p.produced]

    def acknowledge(self, pending: Pending) -> None:
        """Mark a produced entry's output as acknowledged by the broker."""
        pending.acknowledged = True

    def watermarks(self) -> dict[Partition, int]:
        """Pop acknowledged prefixes; return, per partition that moved, the offset to store."""
        moved: dict[Partition, int] = {}
        for key, queue in self._queues.items():
            while queue and queue[0].acknowledged:
                moved[key] = queue.popleft().offset + 1
                self._in_flight -= 1
        return moved

    def drop(self, partitions: list[Partition]) -> int:
        """Forget the in-flight work of these partitions (revoked or lost); return how much."""
        dropped = 0
        for key in partitions:
            queue = self._queues.pop(key, None)
            if queue:
                dropped += len(queue)
        self._in_flight -= dropped
        return dropped

    def pending_in(self, partitions: list[Partition]) -> int:
        """How many messages of these partitions are still unacknowledged."""
        return sum(len(self._queues.get(key, ())) for key in partitions)
