"""The enrichment service: the one place where the stages are wired together.

Threads, and what each does:

- the **main thread** (:meth:`EnrichmentService.run`) owns the Kafka consumer and producer:
  it consumes, decodes each message, hands each consumed batch's products to the event loop
  (one wake-up per batch), produces finished outputs in per-partition source order
  (:mod:`service.ordering`), serves delivery reports, stores offsets up to the acknowledged
  watermark, pauses and resumes partitions for backpressure, and runs the rebalance callbacks;
- the **event loop thread** (:class:`LoopThread`) runs the image stage (aiohttp fetches,
  Redis lookups coalesced into one worker-thread call per batch, Pillow decoding in a pool)
  and the HTTP endpoints;
- the **inference thread** (:class:`~service.batcher.InferenceBatcher`) classifies batches.

The commit order: consume → process (concurrently) → produce in source order → broker
acknowledges → store offset (watermark) → commit (asynchronously every ``commit_interval_s``
while the watermark moves, and synchronously on revoke and shutdown). In ``exactly-once``
mode the outputs and the consumed offsets are committed together in one producer
transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import structlog
from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from service.batcher import InferenceBatcher
from service.contract import Codec
from service.errors import EnrichError, KafkaError, SerializationError
from service.images import ImageStage
from service.kafka.consumer import KafkaConsumer
from service.kafka.producer import DeliveryReport, KafkaProducer
from service.metrics import Metrics
from service.ordering import Output, PartitionQueues, Pending
from service.records import Product, Status, enrichment, parse_product

__all__ = ["DeliveryMode", "EnrichmentService", "LoopThread", "RunSummary", "ServiceOptions"]

log = structlog.get_logger(__name__)

DeliveryMode = Literal["at-least-once", "exactly-once"]
T = TypeVar("T")


class LoopThread:
    """An asyncio event loop in a thread of its own; coroutines are submitted from outside."""

    def __init__(self, name: str = "event-loop") -> None:
        """Create the loop; :meth:`start` runs it."""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def start(self) -> LoopThread:
        """Run the loop in its thread."""
        self._thread.start()
        return self

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coroutine`` on the loop; the future holds its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return self.submit(coroutine).result(timeout)

    def stop(self) -> None:
        """Stop the loop and join its thread."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


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
        batcher: InferenceBatcher,
        loop: LoopThread,
        model_record: Mapping[str, Any],
        metrics: Metrics,
    ) -> None:
        """Wire the parts; nothing talks to the network until :meth:`run`."""
        self.options = options
        self.consumer = consumer
        self.producer = producer
        self.product_codec = product_codec
        self.enrichment_codec = enrichment_codec
        self.images = images
        self.batcher = batcher
        self.loop = loop
        self.model_record = dict(model_record)
        self.metrics = metrics
        self.queues = PartitionQueues()
        self.summary = RunSummary()
        self.assigned: set[tuple[str, int]] = set()
        self.broker_ok = False
        self.alive = False
        self.stopped = False
        self.heartbeat = time.monotonic()
        self._paused = False
        self._fatal: BaseException | None = None
        self._in_transaction = False
        self._last_transaction = 0.0
        self._last_lag = 0.0
        self._last_commit = 0.0
        self._uncommitted = False
        self._positions: dict[tuple[str, int], int] = {}
        """The last offset taken per partition, since the partition was assigned."""
        self._epochs: dict[tuple[str, int], int | None] = {}
        """The leader epoch of the last message taken per partition."""
        self._rewound: set[tuple[str, int]] = set()
        self._to_seek: set[tuple[str, int]] = set()
        self._to_start: list[tuple[Product, Pending]] = []
        self._tasks: set[asyncio.Task[Output]] = set()  # held so none is collected mid-run
        # Products handed to the event loop (main thread) and finished there (loop thread):
        # one writer each, so their difference is the work in progress.
        self._started = 0
        self._finished_count = 0
        self._headers = [("content-type", enrichment_codec.content_type.encode())]

    # -- per message ----------------------------------------------------------------------

    def _source(self, pending: Pending) -> tuple[str, int, int]:
        return pending.topic, pending.partition, pending.offset

    def _encode(self, record: Mapping[str, Any], status: str) -> Output:
        value = self.enrichment_codec.encode(record)
        key = str(record["product_id"]).encode()
        return Output(self.options.output_topic, key, value, list(self._headers), status)

    def _dead_letter(self, message: Message, pending: Pending, error: str) -> Output:
        headers: list[tuple[str, bytes]] = []
        for item in message.headers() or []:
            name, value = item[0], item[1]
            raw = value.encode() if isinstance(value, str) else bytes(value or b"")
            headers.append((str(name), raw))
        headers += [
            ("dlq.source.topic", pending.topic.encode()),
            ("dlq.source.partition", str(pending.partition).encode()),
            ("dlq.source.offset", str(pending.offset).encode()),
            ("dlq.error", error.encode()[:4000]),
        ]
        return Output(
            self.options.dead_letter_topic, pending.key, message.value(), headers, "DEAD_LETTER"
        )

    def _handle(self, message: Message) -> None:
        """Take one consumed message into the pipeline."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            return
        key = (topic, partition)
        last = self._positions.get(key)
        if last is not None and offset <= last and not self._log_rewritten(key, message, last):
            self._redelivered(key, offset, last)
            return
        self._rewound.discard(key)
        self._to_seek.discard(key)
        self._epochs[key] = message.leader_epoch()
        self.summary.consumed += 1
        self.metrics.consumed.inc()
        self._positions[(topic, partition)] = offset
        pending = self.queues.add(Pending(topic, partition, offset, message.key()))
        value = message.value()
        if value is None:
            pending.output = Output(self.options.output_topic, pending.key, None, [], "TOMBSTONE")
            return
        try:
            record = self.product_codec.decode(value)
            product, invalid = parse_product(record)
            pending.context["event_time"] = product.updated_at.timestamp()
        except (SerializationError, KeyError, TypeError, ValueError, OverflowError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("dead_letter", topic=topic, partition=partition, offset=offset,
                        error=reason)  # fmt: skip
            pending.output = self._dead_letter(message, pending, reason)
            return
        if invalid is not None:
            pending.output = self._encode(
                enrichment(product, status="INVALID_INPUT", model=self.model_record,
                           source=self._source(pending), error=invalid),
                "INVALID_INPUT",
            )  # fmt: skip
            return
        self._to_start.append((product, pending))
        self._started += 1

    def _log_rewritten(self, key: tuple[str, int], message: Message, last: int) -> bool:
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

    def _redelivered(self, key: tuple[str, int], offset: int, last: int) -> None:
        """Drop a message this assignment already took; the consumer is moved back past it
        after the batch (:meth:`_seek_past_rewinds`).

        librdkafka 2.16 can rewind a partition it is still looking up a start offset for
        when the partition is paused and resumed meanwhile: the outdated offset reply re-arms
        the offset-query timer, which resets the partition to ``auto.offset.reset`` after
        messages were handed out (docs/architecture.md). Taking them again would publish
        their outputs twice, in exactly-once mode too.
        """
        self.metrics.redelivered.inc()
        self._to_seek.add(key)
        if key not in self._rewound:  # one warning per rewind, not per message
            self._rewound.add(key)
            log.warning("consumer_rewound", topic=key[0], partition=key[1], offset=offset,
                        expected=last + 1)  # fmt: skip

    def _seek_past_rewinds(self) -> None:
        """Move each partition whose last message in the batch was a dropped copy back to the
        offset after the last one taken (a batch that went on past it needs no seek)."""
        for topic, partition in sorted(self._to_seek):
            last = self._positions.get((topic, partition))
            if last is None:
                continue  # revoked meanwhile
            try:
                self.consumer.seek(TopicPartition(topic, partition, last + 1))
            except KafkaError as exc:  # dropping alone keeps the outputs right, only slower
                log.warning("seek_failed", topic=topic, partition=partition, error=str(exc))
        self._to_seek.clear()

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
        try:
            pending.output = task.result()
        except BaseException as exc:
            self._fatal = exc

    async def _enrich(self, product: Product, pending: Pending) -> Output:
        """Image → prediction → enrichment record, for one valid product."""
        assert product.image_url is not None
        with structlog.contextvars.bound_contextvars(
            topic=pending.topic, partition=pending.partition, offset=pending.offset,
            product_id=product.product_id,
        ):  # fmt: skip
            outcome = await self.images.load(product.image_url.strip())
            source = self._source(pending)
            if outcome.pixels is None:
                status: Status = outcome.status or "IMAGE_UNAVAILABLE"
                log.info("image_failed", status=status, reason=outcome.reason)
                record = enrichment(
                    product, status=status, model=self.model_record, source=source,
                    error=outcome.reason, image=outcome.info,
                )  # fmt: skip
                return self._encode(record, status)
            prediction = await self.batcher.classify(outcome.pixels)
            record = enrichment(
                product, status=prediction.status, model=self.model_record, source=source,
                prediction=prediction, image=outcome.info,
            )  # fmt: skip
            return self._encode(record, prediction.status)

    # -- producing, acknowledging, storing ------------------------------------------------

    def _on_delivery(self, pending: Pending, report: DeliveryReport) -> None:
        if report.ok and self.options.delivery == "exactly-once":
            return  # acknowledged when its transaction commits
        if not report.ok:
            self._fatal = KafkaError(
                f"output of {pending.topic}[{pending.partition}]@{pending.offset} was not "
                f"delivered: {report.error}"
            )
            return
        self._acknowledged(pending)

    def _acknowledged(self, pending: Pending) -> None:
        self.queues.acknowledge(pending)
        output = pending.output
        assert output is not None
        self.summary.produced += 1
        self.summary.by_status[output.status] = self.summary.by_status.get(output.status, 0) + 1
        if output.status == "DEAD_LETTER":
            self.summary.dead_lettered += 1
            self.metrics.dead_lettered.inc()
        else:
            self.metrics.produced.labels(output.status).inc()
        event_time = pending.context.get("event_time")
        if event_time is not None:
            self.metrics.end_to_end.observe(max(0.0, time.time() - event_time))

    def _produce(self, pending: Pending) -> None:
        output = pending.output
        assert output is not None
        self.producer.produce(
            output.topic, key=output.key, value=output.value, headers=output.headers,
            on_delivery=functools.partial(self._on_delivery, pending),
        )  # fmt: skip
        pending.produced = True

    def _pump(self) -> None:
        """Produce what is ready in order, serve delivery reports, store the watermark."""
        if self._fatal is not None:
            raise EnrichError(f"the service cannot go on: {self._fatal}") from self._fatal
        if self.options.delivery == "exactly-once":
            self._pump_transactional()
        else:
            for pending in self.queues.ready():
                self._produce(pending)
            self.producer.poll(0)
            moved = self.queues.watermarks()
            if moved:
                self.consumer.store_offsets(
                    [TopicPartition(t, p, offset) for (t, p), offset in moved.items()]
                )
                self._uncommitted = True
            now = time.monotonic()
            if self._uncommitted and now - self._last_commit >= self.options.commit_interval_s:
                self.consumer.commit_async()
                self._uncommitted = False
                self._last_commit = now
        self.metrics.in_flight.set(len(self.queues))
        self.metrics.in_work.set(self.in_work)

    def _pump_transactional(self) -> None:
        """Exactly-once: outputs and consumed offsets in one transaction, every interval."""
        ready = list(self.queues.ready())
        if ready and not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True
            self._last_transaction = time.monotonic()
        for pending in ready:
            self._produce(pending)
        self.producer.poll(0)
        due = time.monotonic() - self._last_transaction >= self.options.transaction_interval_s
        if self._in_transaction and due:
            self._commit_transaction()

    def _commit_transaction(self) -> None:
        produced = self.queues.produced()
        offsets: dict[tuple[str, int], int] = {}
        for pending in produced:
            offsets[(pending.topic, pending.partition)] = pending.offset + 1
        self.producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            self.consumer.client.consumer_group_metadata(),
        )
        self.producer.commit_transaction()
        self._in_transaction = False
        for pending in produced:
            if not pending.acknowledged:
                self._acknowledged(pending)
        self.queues.watermarks()

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
            self.consumer.resume(self.consumer.assignment())
            self._paused = False
            self.metrics.paused.set(0)
            log.info("resumed", in_flight=in_flight, in_work=in_work)

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < self.options.lag_interval_s:
            return
        self._last_lag = now
        for (topic, partition), position in list(self._positions.items()):
            try:
                _, high = self.consumer.client.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=1.0, cached=False
                )
                self.broker_ok = True
            except Exception:  # a lag reading is best effort
                self.broker_ok = False
                continue
            self.metrics.lag.labels(topic, str(partition)).set(max(0, high - position - 1))

    def _forget_positions(self, keys: list[tuple[str, int]]) -> None:
        """A partition assigned again starts from its committed offset, taken afresh."""
        for key in keys:
            self._positions.pop(key, None)
            self._epochs.pop(key, None)
            self._rewound.discard(key)
            self._to_seek.discard(key)

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in partitions)
        self._forget_positions([(p.topic, p.partition) for p in partitions])
        self.broker_ok = True
        log.info("assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])
        if self._paused:
            self.consumer.pause(partitions)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        deadline = time.monotonic() + self.options.revoke_deadline_s
        while self.queues.pending_in(keys) and time.monotonic() < deadline:
            self._pump()
            time.sleep(0.005)
        if self.options.delivery == "exactly-once" and self._in_transaction:
            self._commit_transaction()
        elif self.options.delivery == "at-least-once":
            self.producer.flush(max(0.0, deadline - time.monotonic()))
            self._pump()
            self.consumer.commit()
        dropped = self.queues.drop(keys)
        self.assigned.difference_update(keys)
        self._forget_positions(keys)
        log.info("revoked", partitions=[f"{t}[{p}]" for t, p in keys], dropped=dropped)

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        if self.options.delivery == "exactly-once" and self._in_transaction:
            # The open transaction holds outputs of partitions this instance no longer owns and
            # whose offsets it may not commit: committing it would publish outputs that the
            # partitions' next owner produces again. Abort it; the others' outputs go again.
            self.producer.abort_transaction()
            self._in_transaction = False
            for pending in self.queues.produced():
                pending.produced = False
            log.warning("transaction_aborted", reason="partitions lost")
        dropped = self.queues.drop(keys)
        self.assigned.difference_update(keys)
        self._forget_positions(keys)
        log.warning("lost", partitions=[f"{t}[{p}]" for t, p in keys], dropped=dropped)

    # -- the loop -------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        until: Mapping[tuple[str, int], int] | None = None,
        start: Mapping[tuple[str, int], int] | None = None,
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
        try:
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                self._backpressure()
                # Never take more than the in-flight bounds allow (paused partitions give none).
                batch = max(1, min(self.options.consume_batch, self._room()))
                for message in self.consumer.consume(batch, self.options.poll_timeout_s):
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
        finally:
            self._shutdown()
            self.summary.seconds = time.monotonic() - began
        return self.summary

    def _replay_done(self, until: Mapping[tuple[str, int], int]) -> bool:
        if len(self.queues):
            return False
        for key, end in until.items():
            if end > 0 and self._positions.get(key, -1) < end - 1:
                return False
        return True

    def _shutdown(self) -> None:
        """Finish in-flight work within the deadline, produce, commit, close."""
        deadline = time.monotonic() + self.options.shutdown_deadline_s
        try:
            while len(self.queues) and time.monotonic() < deadline and self._fatal is None:
                self._pump()
                time.sleep(0.005)
            if self._fatal is None:
                if self.options.delivery == "exactly-once":
                    if self._in_transaction:
                        self._commit_transaction()
                else:
                    self.producer.flush(max(1.0, deadline - time.monotonic()))
                    self._pump()
                    self.consumer.commit()
            self.summary.dropped_on_exit = len(self.queues)
            if len(self.queues):
                log.warning("shutdown_deadline", unfinished=len(self.queues))
        finally:
            self.alive = False
            self.stopped = True
            self.consumer.close()
            log.info(
                "stopped", consumed=self.summary.consumed, produced=self.summary.produced,
                by_status=self.summary.by_status,
            )  # fmt: skip


def now_utc() -> dt.datetime:
    """The current time, timezone-aware (UTC)."""
    return dt.datetime.now(tz=dt.UTC)
