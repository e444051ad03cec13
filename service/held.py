"""Careful partitions' messages held for their turn (:mod:`service.crashloop`).

A careful record (one the crash-loop guard suspects of killing the process) begins only when
no record of a careful or counting partition is in work anywhere in the process, so that a
death names it; a counting partition's records wait while a careful record is in work.
:class:`HeldMessages` keeps the messages that must wait, pauses their partition meanwhile
(it resumes from after the held messages, which the consumer already handed out), and gives
them their turn, partitions taking turns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection

from confluent_kafka import Message, TopicPartition

from service.crashloop import CrashLoopGuard
from service.kafka.consumer import KafkaConsumer
from service.ordering import PartitionQueues

__all__ = ["HeldMessages"]

Partition = tuple[str, int]


class HeldMessages:
    """The messages of careful partitions waiting their turn, per partition."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        guard: CrashLoopGuard,
        queues: PartitionQueues,
        assigned: Collection[Partition],
    ) -> None:
        """``assigned``: the service's live set of assigned partitions."""
        self.consumer = consumer
        self.guard = guard
        self.queues = queues
        self.assigned = assigned
        self._held: dict[Partition, deque[Message]] = {}

    def __bool__(self) -> bool:
        """Whether any message is held."""
        return bool(self._held)

    def __contains__(self, key: object) -> bool:
        """Whether this partition has held messages (and is paused for them)."""
        return key in self._held

    def drop(self, key: Partition) -> None:
        """Forget a revoked partition's held messages (not committed: the next owner reads
        them again)."""
        self._held.pop(key, None)

    def must_wait(self, key: Partition, offset: int) -> bool:
        """Whether this record must wait its turn (see the module doc)."""
        if self.guard.careful(key, offset):
            return self._busy(self.guard.suspect)
        if self.guard.suspect(key):
            return self._busy(lambda k: (s := self.guard.state(k)) is not None and s.careful)
        return False

    def _busy(self, which: Callable[[Partition], bool]) -> bool:
        """Whether a partition chosen by ``which`` has a record in work."""
        return any(which(key) and self.queues.pending_in([key]) for key in self.assigned)

    def holds_back(self, key: Partition, offset: int, *, released: bool) -> bool:
        """Whether a message must be held: its partition already holds earlier ones (unless
        this is one of them, ``released``), or it must wait its turn."""
        return (key in self._held and not released) or self.must_wait(key, offset)

    def hold(self, key: Partition, message: Message) -> None:
        """Keep a message for its turn; its partition stops fetching meanwhile."""
        if key not in self._held:
            self._held[key] = deque()
            self.consumer.pause([TopicPartition(*key)])
        self._held[key].append(message)

    def release(self, handle: Callable[[Message], None]) -> list[Partition]:
        """Give held messages their turn through ``handle``: a careful one when no careful
        record is in work, the rest (past the careful range) at once. Returns the partitions
        with none left, which may fetch again (the caller resumes them)."""
        emptied: list[Partition] = []
        for key in list(self._held):
            queue, released = self._held[key], False
            while queue:
                message = queue[0]
                if self.must_wait(key, message.offset() or 0):
                    break
                queue.popleft()
                released = True
                handle(message)
            if not queue:
                del self._held[key]
                emptied.append(key)
            elif released:
                self._held[key] = self._held.pop(key)  # to the end: partitions take turns
        return emptied
