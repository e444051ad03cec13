"""The enrichment service: the one place where the stages are wired together.

Threads, and what each does:

- the **main thread** (:meth:`EnrichmentService.run`) owns the Kafka consumer and producer:
  it consumes, decodes each message, hands each consumed batch's products to the event loop
  (one wake-up per batch), has the publishing stage (:mod:`service.publisher`) produce
  finished outputs in order per product key (:mod:`service.ordering`), serve delivery
  reports and commit positions, pauses and resumes partitions for backpressure, holds the
  messages of careful partitions (:mod:`service.crashloop`) and runs the rebalance callbacks;
- the **event loop thread** (:class:`LoopThread`) runs the image stage (aiohttp fetches,
  Redis lookups coalesced into one worker-thread call per batch, Pillow decoding in a pool
  within the decode budget) and the HTTP endpoints;
- the **inference thread** (:class:`~service.batcher.InferenceBatcher`) classifies batches.

The commit order: consume → process (concurrently) → produce in key order → broker
acknowledges → store offset (watermark, with the outputs above it and the crash-loop state
in its metadata) → commit (asynchronously every ``commit_interval_s`` while it moves, and
synchronously on revoke and shutdown). In ``exactly-once`` mode the outputs and the consumed
offsets are committed together in one producer transaction.

One bad record costs one record (docs/architecture.md): a failure of one record becomes its
status or dead-letter entry; only infrastructure failures stop the loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from service.batcher import InferenceBatcher
from service.contract import Codec
from service.crashloop import CrashLoopGuard
from service.enrich import ProductEnricher, TextSignal, ZeroShotSignal
from service.errors import EnrichError, KafkaError, SerializationError
from service.held import HeldMessages
from service.images import ImageStage
from service.kafka.consumer import KafkaConsumer
from service.kafka.producer import KafkaProducer
from service.lag import LagWatch
from service.loop import LoopThread
from service.metrics import Metrics
from service.open_set import OpenSetCheck
from service.ordering import Output, PartitionQueues, Pending
from service.outputs import OutputBuilder, TopicLimits, message_size
from service.publisher import Publisher
from service.records import Product, enrichment, parse_product
from service.redelivery import TakenOffsets

__all__ = ["DeliveryMode", "EnrichmentService", "LoopThread", "RunSummary", "ServiceOptions"]

log = structlog.get_logger(__name__)

DeliveryMode = Literal["at-least-once", "exactly-once"]
Partition = tuple[str, int]


@dataclass(frozen=True)
class ServiceOptions:
    """How the main loop behaves (the rest of the configuration lives in its parts)."""

    input_topic: str
    output_topic: str
    dead_letter_topic: str
    delivery: DeliveryMode = "at-least-once"
    max_in_flight: int = 10_000
    """Above this many unacknowledged messages the consumer pauses; it resumes once both this
    count and the work in progress are at half their bounds. Most are outputs waiting for
    their turn behind a slow product of their partition (a few KB each); a crash redoes them
    (and what was acknowledged since the last commit)."""
    max_in_work: int = 2000
    """Above this many messages whose output is not known yet (images being fetched, decoded
    and classified: the part that holds image bytes) the consumer pauses too."""
    consume_batch: int = 500
    poll_timeout_s: float = 0.05
    shutdown_deadline_s: float = 30.0
    revoke_deadline_s: float = 10.0
    transaction_interval_s: float = 0.1
    lag_interval_s: float = 5.0
    stall_timeout_s: float = 60.0
    """A partition with lag that gives nothing this long (while not paused) is restarted
    (:mod:`service.lag`); 0: never."""
    commit_interval_s: float = 0.2
    """How often stored offsets are committed (asynchronously) while the watermark moves: a
    crash redoes at most the in-flight messages plus this long's worth of work."""


@dataclass
class RunSummary:
    """What one run did."""

    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    dropped_on_exit: int = 0


class EnrichmentService:
    """Consumes products, enriches them, produces enrichments; see the module docstring."""

    def __init__(
        self,
        options: ServiceOptions,
        *,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        product_codec: Codec,
        enrichment_codec: Codec,
        images: ImageStage,
        batcher: InferenceBatcher[Any],
        loop: LoopThread,
        model_record: Mapping[str, Any],
        metrics: Metrics,
        limits: TopicLimits | None = None,
        guard: CrashLoopGuard | None = None,
        text: TextSignal | None = None,
        zero_shot: ZeroShotSignal | None = None,
        open_set: OpenSetCheck | None = None,
    ) -> None:
        """Wire the parts; nothing talks to the network until :meth:`run`.

        ``limits``: the largest record each topic takes (read from the broker by the app);
        ``guard``: the crash-loop guard (:mod:`service.crashloop`); ``text``: the text model
        and its fusion with the image model (:mod:`service.enrich`), when one is loaded;
        ``zero_shot``: the last resort for products nothing else classified; ``open_set``:
        text-only answers checked against it (:mod:`service.open_set`).
        """
        self.options = options
        self.consumer = consumer
        self.producer = producer
        self.product_codec = product_codec
        self.images = images
        self.batcher = batcher
        self.loop = loop
        self.model_record = dict(model_record)
        self.metrics = metrics
        self.enricher = ProductEnricher(
            images, batcher, model_record, metrics, text, zero_shot, open_set
        )
        self.outputs = OutputBuilder(
            output_topic=options.output_topic, dead_letter_topic=options.dead_letter_topic,
            codec=enrichment_codec, limits=limits or TopicLimits(),
        )  # fmt: skip
        self.guard = guard or CrashLoopGuard()
        self.queues = PartitionQueues()
        self.taken = TakenOffsets(metrics)
        self.lag = LagWatch(consumer, metrics, stall_timeout_s=options.stall_timeout_s)
        self.summary = RunSummary()
        self.assigned: set[Partition] = set()
        self.publisher = Publisher(
            options, consumer=consumer, producer=producer, queues=self.queues,
            outputs=self.outputs, guard=self.guard, taken=self.taken, metrics=metrics,
            summary=self.summary, assigned=self.assigned,
        )  # fmt: skip
        self.broker_ok = False
        self.alive = False
        self.stopped = False
        self.heartbeat = time.monotonic()
        self._paused = False
        self._resume_assigned = False
        self._last_lag = 0.0
        self._held = HeldMessages(consumer, self.guard, self.queues, self.assigned)
        """Messages of careful partitions waiting their turn (the partition is paused)."""
        self._to_start: list[tuple[Product, Pending]] = []
        self._tasks: set[asyncio.Task[Output]] = set()  # held so none is collected mid-run
        # Products handed to the event loop (main thread) and finished there (loop thread):
        # one writer each, so their difference is the work in progress.
        self._started = 0
        self._finished_count = 0

    # -- per message ----------------------------------------------------------------------

    def _source(self, pending: Pending) -> tuple[str, int, int]:
        return pending.topic, pending.partition, pending.offset

    def _dead_letter(self, pending: Pending, reason: str) -> Output:
        """The dead-letter copy of the message behind ``pending``."""
        return self.publisher.dead_letter(pending, reason)

    def _output(self, pending: Pending, record: Mapping[str, Any], status: str) -> Output:
        """The enrichment, or the dead-letter copy when the enrichment cannot be produced."""
        built = self.outputs.enrichment(record, status)
        if isinstance(built, str):
            log.warning("dead_letter", topic=pending.topic, partition=pending.partition,
                        offset=pending.offset, error=built)  # fmt: skip
            return self._dead_letter(pending, built)
        return built

    def _handle(self, message: Message, *, released: bool = False) -> None:
        """Take one consumed message into the pipeline (``released``: a held one's turn)."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            return
        key = (topic, partition)
        if self.taken.is_copy(message):
            return
        if self._held.holds_back(key, offset, released=released):
            self._held.hold(key, message)  # it waits its turn
            return
        self.taken.take(message)
        self.lag.taken(key, offset)
        self.publisher.touch(key)  # the next commit records how far this owner has read
        self.summary.consumed += 1
        self.metrics.consumed.inc()
        pending = Pending(topic, partition, offset, message.key())
        pending.context["raw"] = (message.value(), message.headers())
        state = self.guard.state(key)
        if state is not None and offset in state.skip:
            # An earlier owner's output of it is committed: producing it again would be a
            # duplicate (its offset was above that owner's last committed one).
            pending.produced = pending.acknowledged = True
            pending.output = Output("", None, None, [], "ALREADY_PUBLISHED")
            self.queues.add(pending)
            self.metrics.already_published.inc()
            return
        if self.guard.careful(key, offset):  # a death from here on names this record
            self.guard.begin(key, offset)
            self.publisher.started(key, offset)
            self.publisher.commit_now([key])
        self.queues.add(pending)
        if state is not None and state.quarantine == offset:
            reason = (
                f"quarantined: the process died {state.deaths} times while this record was "
                "the only one in work"
            )
            log.error("quarantined", topic=topic, partition=partition, offset=offset,
                      deaths=state.deaths)  # fmt: skip
            self.metrics.quarantined.inc()
            pending.output = self._dead_letter(pending, reason)
            return
        value = message.value()
        if value is None:
            self._tombstone(pending)
            return
        try:
            record = self.product_codec.decode(value)
            product, invalid = parse_product(record)
            pending.context["event_time"] = product.updated_at.timestamp()
        except (SerializationError, KeyError, TypeError, ValueError, OverflowError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("dead_letter", topic=topic, partition=partition, offset=offset,
                        error=reason)  # fmt: skip
            pending.output = self._dead_letter(pending, reason)
            return
        if invalid is not None and not (
            product.image_error is not None and self.enricher.uses_text(product)
        ):  # an unusable image URL alone leaves the text to classify
            pending.output = self._output(
                pending,
                enrichment(product, status="INVALID_INPUT", model=self.model_record,
                           source=self._source(pending), error=invalid),
                "INVALID_INPUT",
            )  # fmt: skip
            return
        self._to_start.append((product, pending))
        self._started += 1

    def _tombstone(self, pending: Pending) -> None:
        """A tombstone in gives a tombstone out, when the output topic can take it."""
        reason = None
        if pending.key is None:
            reason = "a tombstone without a key: it deletes nothing and compaction refuses it"
        elif message_size(pending.key, None, []) > self.outputs.limits.output_bytes:
            reason = f"a tombstone whose {len(pending.key)}-byte key is over the output's limit"
        if reason is None:
            pending.output = Output(self.options.output_topic, pending.key, None, [], "TOMBSTONE")
            return
        log.warning("dead_letter", topic=pending.topic, partition=pending.partition,
                    offset=pending.offset, error=reason)  # fmt: skip
        pending.output = self._dead_letter(pending, reason)

    def _before_taking(self, messages: list[Message]) -> None:
        """Partitions where a death is being counted commit how far this batch reads first."""
        highs: dict[Partition, int] = {}
        for message in messages:
            key = (message.topic() or "", message.partition() or 0)
            if message.error() is None and self.guard.suspect(key):
                highs[key] = max(highs.get(key, -1), message.offset() or 0)
        if highs:
            self.publisher.reading(highs)

    def _seek_past_rewinds(self) -> None:
        """After a batch: move partitions the consumer rewound back past what was taken."""
        self.taken.seek_past_rewinds(self.consumer)

    def _release_held(self) -> None:
        """Give held messages their turn (service.held); a partition with none left fetches
        again."""
        for key in self._held.release(lambda message: self._handle(message, released=True)):
            if key in self.assigned and not self._paused:
                self.consumer.resume([TopicPartition(*key)])
                self.lag.paused([key])  # its silence counts from now

    def _start_enrichment(self) -> None:
        """Hand the products taken since the last call to the event loop, in one wake-up."""
        if self._to_start:
            products, self._to_start = self._to_start, []
            self.loop.loop.call_soon_threadsafe(self._start_tasks, products)

    def _start_tasks(self, products: list[tuple[Product, Pending]]) -> None:
        """Start one task per product (called in the event loop thread)."""
        for product, pending in products:
            task = self.loop.loop.create_task(self._enrich(product, pending))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, pending=pending))

    def _finished(self, task: asyncio.Task[Output], *, pending: Pending) -> None:
        """Record the output of a finished product (called from the event loop thread)."""
        self._tasks.discard(task)
        self._finished_count += 1
        if task.cancelled():
            return  # only on shutdown, past its deadline
        try:
            pending.output = task.result()
        except Exception as exc:  # a failure of this record's processing is its own
            reason = f"processing failed: {type(exc).__name__}: {exc}"
            log.error("record_failed", topic=pending.topic, partition=pending.partition,
                      offset=pending.offset, error=reason)  # fmt: skip
            pending.output = self._dead_letter(pending, reason)

    async def _enrich(self, product: Product, pending: Pending) -> Output:
        """Signals → decision → enrichment record, for one valid product (service.enrich)."""
        with structlog.contextvars.bound_contextvars(
            topic=pending.topic, partition=pending.partition, offset=pending.offset,
            product_id=product.product_id,
        ):  # fmt: skip
            record, status = await self.enricher.enrich(product, self._source(pending))
            return self._output(pending, record, status)

    # -- publishing (service/publisher.py) ------------------------------------------------

    def _pump(self) -> None:
        """Produce what is ready, serve delivery reports, commit; resume careful partitions."""
        self.publisher.pump()
        self.metrics.in_flight.set(len(self.queues))
        self.metrics.in_work.set(self.in_work)

    # -- backpressure, lag, rebalance -----------------------------------------------------

    @property
    def in_work(self) -> int:
        """Messages taken whose product is still being enriched (image, inference)."""
        return self._started - self._finished_count

    def _room(self) -> int:
        """How many more messages the two in-flight bounds allow now."""
        options = self.options
        return min(options.max_in_flight - len(self.queues), options.max_in_work - self.in_work)

    def _backpressure(self) -> None:
        in_flight, in_work = len(self.queues), self.in_work
        options = self.options
        if self._resume_assigned:  # after a rebalance that came while paused
            self._resume_assigned = False
            self.consumer.resume([tp for tp in self.consumer.assignment()
                                  if (tp.topic, tp.partition) not in self._held])  # fmt: skip
            self.lag.paused(self.assigned)
        if not self._paused and self._room() <= 0:
            self.consumer.pause(self.consumer.assignment())
            self._paused = True
            self.metrics.paused.set(1)
            log.info("paused", in_flight=in_flight, in_work=in_work)
        elif (
            self._paused
            and in_flight <= options.max_in_flight // 2
            and in_work <= options.max_in_work // 2
        ):
            self.consumer.resume(
                [
                    tp
                    for tp in self.consumer.assignment()
                    if (tp.topic, tp.partition) not in self._held
                ]
            )
            self._paused = False
            self.metrics.paused.set(0)
            self.lag.paused(self.assigned)  # their silence counts from now
            log.info("resumed", in_flight=in_flight, in_work=in_work)

    def _update_lag(self) -> None:
        """Lag gauges, broker reachability and stalled partitions (:mod:`service.lag`)."""
        now = time.monotonic()
        if now - self._last_lag < self.options.lag_interval_s:
            return
        self._last_lag = now
        self.broker_ok = self.lag.check(
            fetching=lambda key: not self._paused and key not in self._held
        )

    def _forget(self, keys: list[Partition]) -> None:
        """A partition assigned again starts from its committed offset, taken afresh."""
        self.taken.forget(keys)
        self.lag.forget(keys)
        self.publisher.forget(keys)
        for key in keys:
            self.guard.forget(key)
            self._held.drop(key)  # not committed: the next owner reads them again
        self.metrics.crash_loop_careful.set(len(self._careful_partitions()))

    def _careful_partitions(self) -> list[Partition]:
        return [k for k in self.assigned if (s := self.guard.state(k)) is not None and s.careful]

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self.assigned.update(keys)
        self._forget(keys)
        self.broker_ok = True
        log.info("assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        self.publisher.start_partitions(partitions)
        for key in keys:
            start = self.publisher.start_offset(key)
            if start is not None:
                self.lag.assigned(key, start)
        self.metrics.crash_loop_careful.set(len(self._careful_partitions()))
        # Neither paused nor resumed here, inside the rebalance callback: pause and resume
        # around an assignment can leave a partition paused for good, and a partition paused
        # before a rebalance can come back paused even when the service resumed in between
        # (librdkafka issue 5591; seen when a second instance joined a paused one). After
        # every assignment the main loop resumes everything assigned, then pauses again if
        # still full.
        self._paused = False
        self._resume_assigned = True
        self.metrics.paused.set(0)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        if self.publisher.deadline is None:  # on shutdown, _shutdown committed already
            deadline = time.monotonic() + self.options.revoke_deadline_s
            while self.queues.pending_in(keys) and time.monotonic() < deadline:
                self._pump()
                time.sleep(0.005)
            try:
                self.publisher.commit_now(keys, clean=True)
            except KafkaError as exc:  # the next owner redoes what was not committed
                log.warning("revoke_commit_failed", error=str(exc))
        dropped = self.queues.drop(keys)
        self.assigned.difference_update(keys)
        self._forget(keys)
        log.info("revoked", partitions=[f"{t}[{p}]" for t, p in keys], dropped=dropped)

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self.publisher.abort_for_lost()
        dropped = self.queues.drop(keys)
        self.assigned.difference_update(keys)
        self._forget(keys)
        log.warning("lost", partitions=[f"{t}[{p}]" for t, p in keys], dropped=dropped)

    # -- the loop -------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        until: Mapping[Partition, int] | None = None,
        start: Mapping[Partition, int] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> RunSummary:
        """Run until ``stop`` is set (serve) or every partition reached ``until`` (replay).

        With ``until`` (end offsets per partition) the consumer is assigned those partitions
        from ``start`` (default: the beginning) instead of joining the group's subscription.
        """
        began = time.monotonic()
        self.alive = True
        if self.options.delivery == "exactly-once":
            self.producer.init_transactions()
        if until is None:
            self.consumer.subscribe(
                [self.options.input_topic], on_assign=self._on_assign,
                on_revoke=self._on_revoke, on_lost=self._on_lost,
            )  # fmt: skip
        else:
            partitions = [
                TopicPartition(t, p, (start or {}).get((t, p), OFFSET_BEGINNING))
                for (t, p) in until
            ]
            self.consumer.assign(partitions)
            self.assigned.update(until)
            self.broker_ok = True
        done_before = 0
        failed = True
        try:
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                self._backpressure()
                # Never take more than the in-flight bounds allow (paused partitions give none).
                batch = max(1, min(self.options.consume_batch, self._room()))
                # Careful records go one at a time: do not sleep on the poll between them.
                wait = 0.005 if self._held else self.options.poll_timeout_s
                messages = self.consumer.consume(batch, wait)
                self._before_taking(messages)
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() != error._PARTITION_EOF:
                            log.warning("consume_error", error=str(error))
                        continue
                    if until is not None:
                        key = (message.topic() or "", message.partition() or 0)
                        if (message.offset() or 0) >= until.get(key, 0):
                            continue
                    self._handle(message)
                self._seek_past_rewinds()
                self._release_held()
                self._start_enrichment()
                self._pump()
                self._update_lag()
                if until is not None:
                    done = self.summary.produced
                    if on_progress is not None and done != done_before:
                        on_progress(done - done_before)
                        done_before = done
                    if self._replay_done(until):
                        break
            failed = False
        finally:
            self._shutdown(clean=not failed)
            self.summary.seconds = time.monotonic() - began
        return self.summary

    def _replay_done(self, until: Mapping[Partition, int]) -> bool:
        if len(self.queues):
            return False
        for key, end in until.items():
            if end > 0 and self.taken.positions.get(key, -1) < end - 1:
                return False
        return True

    def _shutdown(self, *, clean: bool) -> None:
        """Finish in-flight work within the deadline, produce, commit, close: every step,
        the revoke that closing the consumer runs included, ends by the deadline.

        ``clean``: the loop ended as asked (a stop, a finished replay), so the crash-loop
        guard does not count this run as a death; after an exception it does, and only what
        is done is committed.
        """
        self.publisher.deadline = time.monotonic() + self.options.shutdown_deadline_s
        try:
            while (
                clean and len(self.queues) and self.publisher.wait(1.0) > 0
                and not self.publisher.fatal
            ):  # fmt: skip
                self._pump()
                time.sleep(0.005)
            if self.publisher.fatal is None:
                try:
                    self.publisher.commit_now(sorted(self.assigned), clean=clean)
                except EnrichError as exc:
                    if clean:
                        raise
                    log.warning("final_commit_failed", error=str(exc))
            self.summary.dropped_on_exit = len(self.queues)
            if len(self.queues):
                log.warning("shutdown_deadline", unfinished=len(self.queues))
        finally:
            self._cancel_tasks()
            self.alive = False
            self.stopped = True
            self.lag.close()  # its reader thread reads through the consumer
            self.consumer.close()
            log.info(
                "stopped", consumed=self.summary.consumed, produced=self.summary.produced,
                by_status=self.summary.by_status,
            )  # fmt: skip

    def _cancel_tasks(self) -> None:
        """Cancel the products still in work and wait for them to unwind (their output is
        dropped; the next owner redoes them from the last commit)."""
        if not self._tasks or self.loop is None:
            return

        async def cancel() -> None:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.loop.call(cancel(), timeout=max(1.0, self.publisher.wait(5.0)))
        except Exception as exc:  # the loop is stopping anyway
            log.warning("tasks_not_cancelled", error=str(exc))


def now_utc() -> dt.datetime:
    """The current time, timezone-aware (UTC)."""
    return dt.datetime.now(tz=dt.UTC)
