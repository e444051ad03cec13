"""The publishing stage: outputs to the producer in key order, delivery reports, refused
records, and the positions (offsets with their metadata) committed after them.

In ``at-least-once`` mode an output is acknowledged by its delivery report, positions are
stored as they move and committed asynchronously every ``commit_interval_s``. In
``exactly-once`` mode outputs and positions are committed together in one producer
transaction every ``transaction_interval_s``. Either way a position carries, in its
metadata (:mod:`service.progress`), the outputs already out above it and the crash-loop
state (:mod:`service.crashloop`).

A record the broker (or the client) refuses is that record's problem (:mod:`service.failures`):
it is retried alone, since the broker fails the whole batch a bad record travelled in; refused
alone, its output becomes its dead-letter copy; that copy refused alone as well, the record is
counted (``enrich_dead_letter_lost_total``), logged at ERROR with its position and skipped.
Any other produce failure is the infrastructure's and stops the service (``fatal``).

At assignment (:meth:`Publisher.start_partitions`) it reads each partition's committed
offset and metadata, hands them to the crash-loop guard and commits the counted start at once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

import structlog
from confluent_kafka import TopicPartition

from service.crashloop import CrashLoopGuard
from service.errors import EnrichError, KafkaError
from service.failures import is_record_level
from service.kafka.consumer import KafkaConsumer
from service.kafka.producer import DeliveryReport, KafkaProducer
from service.metrics import Metrics
from service.ordering import Output, PartitionQueues, Pending
from service.outputs import OutputBuilder
from service.progress import Progress
from service.redelivery import TakenOffsets

if TYPE_CHECKING:
    from service.pipeline import RunSummary, ServiceOptions

__all__ = ["MAX_ABORTS", "Publisher"]

log = structlog.get_logger(__name__)

Partition = tuple[str, int]
MAX_ABORTS = 5
"""Aborted transactions in a row, none of them for a refused record, before the service
gives up (an infrastructure failure: restarting from the last commit loses nothing)."""


class Publisher:
    """Produces what is ready, serves delivery reports, commits positions; see the module."""

    def __init__(
        self,
        options: ServiceOptions,
        *,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        queues: PartitionQueues,
        outputs: OutputBuilder,
        guard: CrashLoopGuard,
        taken: TakenOffsets,
        metrics: Metrics,
        summary: RunSummary,
        assigned: set[Partition],
    ) -> None:
        """Share the service's queues, offsets taken, summary and assigned partitions."""
        self.options = options
        self.consumer = consumer
        self.producer = producer
        self.queues = queues
        self.outputs = outputs
        self.guard = guard
        self.taken = taken
        self.metrics = metrics
        self.summary = summary
        self.assigned = assigned
        self.fatal: BaseException | None = None
        self.deadline: float | None = None
        """Set on shutdown: every wait after it ends by then."""
        self.in_transaction = False
        self._last_transaction = 0.0
        self._aborts = 0
        self._last_commit = 0.0
        self._to_commit: dict[Partition, TopicPartition] = {}
        """At-least-once: positions stored since the last commit. They are committed by name,
        not as "the stored offsets": the client skips a stored offset equal to the committed
        one, and with it a change of its metadata."""
        self._base: dict[Partition, int] = {}
        """Per partition, the offset to commit while nothing of it is in flight."""
        self._dirty: set[Partition] = set()
        """Partitions whose position or metadata changed since their offsets were stored."""
        self._refused: list[tuple[Pending, DeliveryReport]] = []
        self._reading: dict[Partition, int] = {}
        """Suspect partitions: the highest offset of the batch about to be taken."""

    @property
    def exactly_once(self) -> bool:
        """Whether outputs and positions go in transactions."""
        return self.options.delivery == "exactly-once"

    def wait(self, seconds: float) -> float:
        """``seconds``, or what is left of the shutdown deadline if that is less."""
        if self.deadline is None:
            return seconds
        return max(0.0, min(seconds, self.deadline - time.monotonic()))

    def dead_letter(self, pending: Pending, reason: str) -> Output:
        """The dead-letter copy of the message behind ``pending``."""
        value, headers = pending.context.get("raw", (None, None))
        return self.outputs.dead_letter(pending, value, headers, reason)

    # -- producing and acknowledging ------------------------------------------------------

    def on_delivery(self, pending: Pending, attempt: int, report: DeliveryReport) -> None:
        """A delivery report (called from the producer's poll or flush)."""
        if attempt != pending.context.get("attempt"):
            return  # an aborted transaction's copy
        if not report.ok:
            if is_record_level(report.code):
                self._refused.append((pending, report))
            elif not self.exactly_once:
                self.fatal = KafkaError(
                    f"output of {pending.topic}[{pending.partition}]@{pending.offset} was not "
                    f"delivered: {report.error}", code=report.code,
                )  # fmt: skip
            return  # exactly-once: the transaction's commit fails and says what to do
        if not self.exactly_once:
            self.acknowledged(pending)
        # exactly-once: acknowledged when its transaction commits

    def acknowledged(self, pending: Pending) -> None:
        """The output of ``pending`` is out for good."""
        self.queues.acknowledge(pending)
        self._dirty.add((pending.topic, pending.partition))
        output = pending.output
        assert output is not None
        pending.context.pop("raw", None)
        self.summary.produced += 1
        self.summary.by_status[output.status] = self.summary.by_status.get(output.status, 0) + 1
        if output.status == "DEAD_LETTER":
            self.summary.dead_lettered += 1
            self.metrics.dead_lettered.inc()
        elif output.status not in ("NOT_DELIVERED", "SUPERSEDED"):
            self.metrics.produced.labels(output.status).inc()
        event_time = pending.context.get("event_time")
        if event_time is not None:
            self.metrics.end_to_end.observe(max(0.0, time.time() - event_time))

    def produce(self, pending: Pending) -> None:
        """Hand one output to the producer; a record the client refuses at once is handled
        like one the broker refused."""
        output = pending.output
        assert output is not None
        attempt = pending.context["attempt"] = pending.context.get("attempt", 0) + 1
        pending.produced = True
        try:
            self.producer.produce(
                output.topic, key=output.key, value=output.value, headers=output.headers,
                on_delivery=functools.partial(self.on_delivery, pending, attempt),
            )  # fmt: skip
        except KafkaError as exc:
            if not is_record_level(exc.code):
                raise
            pending.produced = False  # never handed over: no transaction may count it
            report = DeliveryReport(output.topic, -1, -1, output.key, str(exc), exc.code)
            self._refused.append((pending, report))

    def serve_refusals(self) -> None:
        """Retry refused records alone, then as dead-letter copies, then skip them."""
        refused, self._refused = self._refused, []
        for pending, report in refused:
            output = pending.output
            assert output is not None
            kind = "dead-letter" if output.status == "DEAD_LETTER" else "output"
            self.metrics.refused.labels(kind, report.code or "").inc()
            context = {"topic": pending.topic, "partition": pending.partition,
                       "offset": pending.offset, "error": report.error}  # fmt: skip
            if kind == "output" and self.queues.superseded(pending):
                # A later update of the same product is out already: producing this one now
                # would put the older answer last (the output topic is compacted).
                log.warning("record_refused", retry="none: superseded", **context)
                pending.output = Output("", None, None, [], "SUPERSEDED")
                pending.produced = True
                self.acknowledged(pending)
                continue
            if not pending.context.get("alone"):
                pending.context["alone"] = True
                log.warning("record_refused", retry="alone", kind=kind, **context)
            elif output.status != "DEAD_LETTER":
                log.warning("record_refused", retry="dead-letter", **context)
                pending.output = self.dead_letter(
                    pending, f"the broker refused its enrichment: {report.error}"
                )
            else:
                log.error("dead_letter_refused", **context)
                self.metrics.dead_letter_lost.inc()
                pending.output = Output("", None, None, [], "NOT_DELIVERED")
                pending.produced = True
                self.acknowledged(pending)  # nothing to commit with it: the offset moves on
                continue
            self.queues.unproduce([pending])

    def _produce_alone(self, pending: Pending) -> None:
        """At-least-once: produce one record in a batch of its own and wait for its answer."""
        self.producer.flush(self.wait(30.0))
        self.produce(pending)
        self.producer.flush(self.wait(30.0))

    def pump(self) -> None:
        """Produce what is ready, serve delivery reports, store or commit positions."""
        if self.fatal is not None:
            raise EnrichError(f"the service cannot go on: {self.fatal}") from self.fatal
        self.serve_refusals()
        if self.exactly_once:
            self._pump_transactional()
            self.positions(set())  # pops what is settled, so careful partitions move on
            return
        for pending in self.queues.ready():
            if pending.context.get("alone"):
                self._produce_alone(pending)
            else:
                self.produce(pending)
        self.producer.poll(0)
        self.serve_refusals()
        now = time.monotonic()
        if now - self._last_commit < self.options.commit_interval_s:
            # Positions (and their metadata, a walk over each queue) are only needed when a
            # commit is due; settled entries are popped every time for the in-flight bounds.
            self.positions(set())
            return
        self.store_positions()
        if self._to_commit:
            offsets, self._to_commit = list(self._to_commit.values()), {}
            self.consumer.commit_async(offsets)
            self._last_commit = now

    # -- positions ------------------------------------------------------------------------

    def positions(
        self, keys: Collection[Partition], *, clean: Collection[Partition] = ()
    ) -> list[TopicPartition]:
        """The offsets to commit for these partitions, each with its metadata: outputs
        produced above it (this owner's, and an earlier owner's not reached yet) and the
        crash-loop state (``clean``: the partitions this owner leaves cleanly)."""
        for key, offset in self.queues.watermarks().items():
            self._base[key] = offset
            self._dirty.add(key)
        offsets = []
        for key in sorted(keys):
            at = self.queues.progress(key, produced=self.exactly_once)
            if at is None:
                if key not in self._base:
                    continue  # nothing taken or committed yet
                at = (self._base[key], [])
            offset, done = at
            state = self.guard.state(key)
            if state is not None and state.skip:
                done = sorted({*done, *(o for o in state.skip if o > offset)})
            high = max(self.taken.positions.get(key, offset - 1), self._reading.get(key, -1))
            progress = self.guard.progress(key, offset, done, high)
            if key in clean:
                progress = Progress(done=progress.done, high=high, owner=self.guard.owner)
            offsets.append(TopicPartition(key[0], key[1], offset, metadata=progress.encode(offset)))
        return offsets

    def start_partitions(self, partitions: list[TopicPartition]) -> None:
        """Read where each partition stands (committed offset and its metadata), count this
        start for the crash-loop guard and commit that count at once."""
        try:
            committed = self.consumer.committed(partitions)
        except KafkaError as exc:  # the guard then starts counting from this run on
            log.warning("committed_unreadable", error=str(exc))
            return
        counted = []
        for tp in committed:
            key = (tp.topic, tp.partition)
            offset: int | None = tp.offset
            if tp.offset < 0:  # nothing committed yet: where the consumer starts
                try:
                    offset = self.consumer.start_offset(tp)
                except KafkaError as exc:
                    log.warning("start_offset_unreadable", error=str(exc))
                    offset = None
            if offset is None or offset < 0:
                continue
            progress = Progress.decode(tp.metadata, offset)
            state = self.guard.assigned(key, offset, progress)
            self.started(key, offset)
            counted.append(key)
            if progress.starts:
                log.warning(
                    "unclean_start", topic=key[0], partition=key[1], offset=offset,
                    deaths=progress.starts, careful=state.careful, until=state.until,
                    quarantine=state.quarantine,
                )  # fmt: skip
        if not counted:
            return
        try:
            self.commit_now(counted, assigning=True)
        except KafkaError as exc:
            log.warning("start_not_counted", error=str(exc))

    def reading(self, highs: dict[Partition, int]) -> None:
        """Suspect partitions are about to take records up to these offsets: commit that
        first, so a death while they are in work is counted over exactly them."""
        moved = [k for k, high in highs.items() if high > self._reading.get(k, -1)]
        if not moved:
            return
        self._reading.update(highs)
        if self.exactly_once:
            self.commit_transaction(force=True)
        else:  # what is acknowledged so far, without waiting for what is in flight
            self._dirty.update(moved)
            self.store_positions()
            offsets, self._to_commit = list(self._to_commit.values()), {}
            self.consumer.commit(offsets)

    def touch(self, key: Partition) -> None:
        """A message of this partition was taken: its metadata's ``high`` moved."""
        self._dirty.add(key)

    def started(self, key: Partition, committed: int) -> None:
        """A partition was assigned at this committed offset."""
        self._base[key] = committed

    def start_offset(self, key: Partition) -> int | None:
        """The offset a partition was assigned at (None when it could not be read)."""
        return self._base.get(key)

    def store_positions(self, *, clean: Collection[Partition] = ()) -> None:
        """At-least-once: store the positions of partitions that moved (and of those left
        cleanly), for the next commit."""
        self.positions(set())  # pops acknowledged prefixes into the bases
        keys = self._dirty | set(clean)
        self._dirty = set()
        offsets = self.positions(keys, clean=clean)
        if offsets:
            self.consumer.store_offsets(offsets)
            self._to_commit.update({(tp.topic, tp.partition): tp for tp in offsets})

    def commit_now(
        self, keys: list[Partition], *, clean: bool = False, assigning: bool = False
    ) -> None:
        """Commit these partitions' positions now, synchronously (``clean``: this owner
        leaves them cleanly; ``assigning``: from the assignment callback, where the consumer
        cannot store offsets for them yet)."""
        left = keys if clean else []
        if self.exactly_once:
            self.commit_transaction(force=True, clean=left)
        elif assigning:
            self.consumer.commit(self.positions(keys, clean=left))
        else:
            self.producer.flush(self.wait(30.0))
            self.pump()
            self._dirty.update(keys)
            self.store_positions(clean=left)
            offsets, self._to_commit = list(self._to_commit.values()), {}
            if offsets:
                self.consumer.commit(offsets)

    def forget(self, keys: list[Partition]) -> None:
        """These partitions left this instance."""
        for key in keys:
            self._base.pop(key, None)
            self._dirty.discard(key)
            self._reading.pop(key, None)

    # -- transactions (exactly-once) ------------------------------------------------------

    def _pump_transactional(self) -> None:
        """Outputs and positions in one transaction, every interval; a record retried alone
        gets a transaction of its own."""
        ready = self.queues.ready()
        alone = [p for p in ready if p.context.get("alone")]
        if alone:
            self.queues.unproduce([p for p in ready if not p.context.get("alone")])
            self.commit_transaction()
            for pending in alone:
                self.producer.begin_transaction()
                self.in_transaction = True
                self.produce(pending)
                self.commit_transaction()
            return
        if ready and not self.in_transaction:
            self.producer.begin_transaction()
            self.in_transaction = True
            self._last_transaction = time.monotonic()
        for pending in ready:
            self.produce(pending)
        self.producer.poll(0)
        due = time.monotonic() - self._last_transaction >= self.options.transaction_interval_s
        if self.in_transaction and due:
            self.commit_transaction()

    def commit_transaction(self, *, force: bool = False, clean: Collection[Partition] = ()) -> None:
        """Commit the open transaction with the positions of every partition in flight or
        assigned (``force``: open one for the positions alone). A transaction the broker
        made abortable (a refused record in it) is aborted and its outputs go again."""
        if not self.in_transaction:
            if not force:
                return
            self.producer.begin_transaction()
            self.in_transaction = True
        produced = [p for p in self.queues.produced() if not p.acknowledged]
        try:
            offsets = self.positions(self.assigned | set(self.queues.partitions()), clean=clean)
            if offsets:
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.client.consumer_group_metadata(),
                    max(1.0, self.wait(30.0)),
                )  # fmt: skip
            self.producer.commit_transaction(max(1.0, self.wait(30.0)))
        except KafkaError as exc:
            if not exc.abortable:
                raise
            self._abort(produced, exc)
            return
        self.in_transaction = False
        self._aborts = 0
        for pending in produced:
            if not pending.acknowledged:
                self.acknowledged(pending)
        self.positions(set())

    def _abort(self, produced: list[Pending], exc: KafkaError) -> None:
        """Abort the open transaction; its outputs are produced again (refused ones alone)."""
        self.producer.abort_transaction(max(1.0, self.wait(30.0)))
        self.in_transaction = False
        self.queues.unproduce([p for p in produced if not p.acknowledged])
        had_refusals = bool(self._refused)
        self.serve_refusals()
        self._aborts = 0 if had_refusals else self._aborts + 1
        log.warning("transaction_aborted", reason=str(exc), refused=had_refusals)
        if self._aborts >= MAX_ABORTS:
            raise EnrichError(f"{MAX_ABORTS} transactions in a row aborted: {exc}") from exc

    def abort_for_lost(self) -> None:
        """Partitions were lost: the open transaction holds outputs of partitions this
        instance no longer owns and whose offsets it may not commit; committing it would
        publish outputs that the partitions' next owner produces again. Abort it; the other
        partitions' outputs go again."""
        if self.exactly_once and self.in_transaction:
            self.producer.abort_transaction(max(1.0, self.wait(30.0)))
            self.in_transaction = False
            self.queues.unproduce([p for p in self.queues.produced() if not p.acknowledged])
            log.warning("transaction_aborted", reason="partitions lost")
