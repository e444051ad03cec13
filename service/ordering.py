"""Per-key order and the offset watermark: what may be produced, and what committed.

Products are processed concurrently. The contract promises order per *product* (the record
key), so an output leaves as soon as it is ready unless an earlier message of the same key in
the same partition has not left yet: one slow image holds back only the later updates of its
own product, not the rest of its partition. Each consumed message becomes a :class:`Pending`
entry in its partition's queue, in offset order; the service fills in its output when the
work is done. :meth:`PartitionQueues.ready` hands out the finished, unproduced entries whose
key has nothing earlier waiting. When the broker acknowledges an output,
:meth:`PartitionQueues.acknowledge` marks it; :meth:`PartitionQueues.watermarks` then pops
the acknowledged prefix of every queue and returns the offset to store: one past the last
message whose output, and every earlier one's, is acknowledged. Offsets never run ahead of
an unacknowledged output, so a crash redoes it.

What was produced *above* the watermark is not lost either: :meth:`PartitionQueues.progress`
lists those offsets (:mod:`service.progress` writes them into the committed offset's
metadata, so a restart skips them instead of producing them twice). To keep that metadata
small, a partition never produces past more than ``max_holes`` unproduced entries.

The commit order, written down: consume → process (concurrently) → produce in key order →
broker acknowledges → store offset (watermark) with the produced offsets above it in its
metadata → commit (periodic, on revoke, on shutdown).
"""

from __future__ import annotations

from collections import deque
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


MAX_HOLES = 200
"""Default bound on unproduced entries a partition produces past (each hole costs a range in
the committed offset's metadata, which the broker caps at 4,096 bytes by default)."""


class PartitionQueues:
    """The in-flight messages of every assigned partition, each queue in offset order."""

    def __init__(self, max_holes: int = MAX_HOLES) -> None:
        """``max_holes``: how many unproduced entries a partition may produce past."""
        self._queues: dict[Partition, deque[Pending]] = {}
        self._waiting: dict[Partition, list[Pending]] = {}
        """Per partition, the entries not produced yet, in offset order."""
        self._in_flight = 0
        self.max_holes = max_holes

    def __len__(self) -> int:
        """The number of messages consumed whose output is not acknowledged yet."""
        return self._in_flight

    def partitions(self) -> list[Partition]:
        """The partitions that hold in-flight messages."""
        return [p for p, q in self._queues.items() if q]

    def add(self, pending: Pending) -> Pending:
        """Append a consumed message; offsets of one partition must increase."""
        key = (pending.topic, pending.partition)
        queue = self._queues.setdefault(key, deque())
        if queue and queue[-1].offset >= pending.offset:
            raise ValueError(
                f"offset {pending.offset} of {pending.topic}[{pending.partition}] arrived after "
                f"offset {queue[-1].offset}"
            )
        queue.append(pending)
        if not pending.produced:
            self._waiting.setdefault(key, []).append(pending)
        self._in_flight += 1
        return pending

    def ready(self) -> list[Pending]:
        """Finished, unproduced entries with nothing earlier of their key waiting, in offset
        order per partition; the caller produces each (and sets ``produced``)."""
        out: list[Pending] = []
        for key, waiting in self._waiting.items():
            if not waiting:
                continue
            blocked: set[bytes | None] = set()
            keep: list[Pending] = []
            for pending in waiting:
                if pending.produced:
                    continue
                if pending.done and pending.key not in blocked and len(keep) <= self.max_holes:
                    out.append(pending)
                    continue
                blocked.add(pending.key)
                keep.append(pending)
            self._waiting[key] = keep
        return out

    def unproduce(self, pendings: list[Pending]) -> None:
        """Hand produced entries out again (their transaction was aborted)."""
        for pending in pendings:
            pending.produced = False
            key = (pending.topic, pending.partition)
            waiting = self._waiting.setdefault(key, [])
            if pending not in waiting:
                waiting.append(pending)
        for waiting in self._waiting.values():
            waiting.sort(key=lambda p: p.offset)

    def superseded(self, pending: Pending) -> bool:
        """Whether a later message of the same key in the same partition was produced."""
        queue = self._queues.get((pending.topic, pending.partition), ())
        return any(
            p.offset > pending.offset and p.key == pending.key and p.produced
            and p.output is not None and p.output.value is not None
            and p.output.status != "DEAD_LETTER"
            for p in queue
        )  # fmt: skip

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

    def progress(self, partition: Partition, *, produced: bool) -> tuple[int, list[int]] | None:
        """Where the partition stands: the offset to commit and the offsets above it whose
        output is already out, or None when nothing of it is in flight.

        ``produced=False`` (at-least-once) counts acknowledged outputs; ``produced=True``
        (exactly-once, at a transaction's commit) counts produced ones, since the transaction
        makes them and the offsets visible together.
        """
        queue = self._queues.get(partition)
        if not queue:
            return None
        done = [p.acknowledged or (produced and p.produced) for p in queue]
        first = next((i for i, d in enumerate(done) if not d), len(queue))
        if first == len(queue):
            return queue[-1].offset + 1, []
        above = [
            p.offset for p, d in zip(list(queue)[first + 1 :], done[first + 1 :], strict=True) if d
        ]
        return queue[first].offset, above

    def drop(self, partitions: list[Partition]) -> int:
        """Forget the in-flight work of these partitions (revoked or lost); return how much."""
        dropped = 0
        for key in partitions:
            queue = self._queues.pop(key, None)
            self._waiting.pop(key, None)
            if queue:
                dropped += len(queue)
        self._in_flight -= dropped
        return dropped

    def pending_in(self, partitions: list[Partition]) -> int:
        """How many messages of these partitions are still unacknowledged."""
        return sum(len(self._queues.get(key, ())) for key in partitions)
