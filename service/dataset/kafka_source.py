"""Scale-out: build workers reading labelled products from one Kafka topic in one group.

Every worker joins the consumer group, so the topic's partitions are shared among however
many workers run, on however many machines. A worker takes up to `shard_size` products,
builds them into a shard of its own (`kafka-<worker>-<n>`), and commits the batch's offsets
only after the shard's manifest is written; it stops once no message came for
`idle_timeout_s`. A batch whose partitions moved to another worker before the commit is
built again there: the product then has two records, and `finalize` keeps one (the split
file names its shard). `enrich build-dataset finalize` merges every worker's manifests.

A message is a JSON object with `product_id`, `image_url` and `google_category_id`, or a
`Product` record of the input contract (Avro single-object encoding) with the category in
a `google_category_id` header. Tombstones and messages that are neither are skipped and
counted.
"""

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import Message, TopicPartition

from model.data import LabelRow
from model.errors import TaxonomyError
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from service.cache import ImageCache
from service.contract import SingleObjectCodec
from service.dataset import storage
from service.dataset.build import BuildConfig, Builder, ShardPlan
from service.dataset.finalize import SHARDS_FOLDER
from service.dataset.manifest import MANIFEST_SUFFIX
from service.errors import KafkaError, SerializationError
from service.kafka import KafkaConsumer

__all__ = ["CATEGORY_HEADER", "KafkaSource", "WorkerReport", "parse_message", "run_worker"]

log = structlog.get_logger(__name__)

CATEGORY_HEADER = "google_category_id"
# How long one consume call waits; short, so a half-full batch is built soon after the topic
# goes quiet.
_POLL_S = 1.0


@dataclass(frozen=True)
class KafkaSource:
    """Where a worker reads labelled products and under which names it writes."""

    bootstrap_servers: str
    topic: str
    group_id: str
    worker: str
    """Unique per worker: its shards are named after it."""
    idle_timeout_s: float = 30.0
    config: Mapping[str, Any] = field(default_factory=dict)
    """Further librdkafka settings."""


@dataclass(frozen=True)
class WorkerReport:
    """What one worker did."""

    shards: int
    products: int
    skipped: int


def parse_message(
    value: bytes | None,
    headers: Mapping[str, str | bytes | None] | Sequence[tuple[str, str | bytes | None]],
    codec: SingleObjectCodec,
) -> LabelRow | str:
    """The labelled product a message carries, or why it carries none."""
    if value is None:
        return "tombstone"
    try:
        if value[:1] == b"{":
            record: dict[str, Any] = json.loads(value)
            category: object = record.get("google_category_id")
        else:
            record = codec.decode(value)
            category = dict(headers.items() if isinstance(headers, Mapping) else headers).get(
                CATEGORY_HEADER
            )
            category = category.decode() if isinstance(category, bytes) else category
    except (json.JSONDecodeError, UnicodeDecodeError, SerializationError) as exc:
        return f"undecodable: {exc}"
    product_id, url = record.get("product_id"), record.get("image_url")
    if not isinstance(product_id, str) or not product_id:
        return "no product_id"
    try:
        category_id = int(str(category).strip())
    except ValueError:
        return f"google_category_id {category!r} is not an id"
    return LabelRow(str(url or ""), category_id, product_id)


def _next_number(shards_dir: str, prefix: str) -> int:
    numbers = [
        int(name[len(prefix) : -len(MANIFEST_SUFFIX)])
        for name in storage.list_names(shards_dir)
        if name.startswith(prefix)
        and name.endswith(MANIFEST_SUFFIX)
        and name[len(prefix) : -len(MANIFEST_SUFFIX)].isdigit()
    ]
    return max(numbers, default=-1) + 1


def _offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """The next offset to read of each partition in `messages`."""
    highest: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic() or "", message.partition() or 0)
        highest[key] = max(highest.get(key, -1), message.offset() or 0)
    return [TopicPartition(t, p, offset + 1) for (t, p), offset in sorted(highest.items())]


class _Worker:
    def __init__(
        self,
        config: BuildConfig,
        source: KafkaSource,
        truncated: TruncatedTaxonomy,
        on_assign: Callable[[list[TopicPartition]], None] | None,
        cache: ImageCache | None,
    ) -> None:
        self.on_assign = on_assign
        self.cache = cache
        self.config = config
        self.source = source
        self.truncated = truncated
        self.codec = SingleObjectCodec.for_schema("product")
        self.consumer = KafkaConsumer(
            {
                **source.config,
                "bootstrap.servers": source.bootstrap_servers,
                "group.id": source.group_id,
                "client.id": f"build-dataset-{source.worker}",
                "enable.auto.commit": False,
            }
        )
        self.prefix = f"kafka-{source.worker}-"
        self.shards = self.products = self.skipped = 0

    def _row(self, message: Message) -> LabelRow | None:
        if message.error() is not None:
            raise KafkaError(f"consume failed: {message.error()}")
        row = parse_message(message.value(), message.headers() or [], self.codec)
        if isinstance(row, LabelRow):
            try:
                self.truncated.truncate_id(row.category_id)
                return row
            except TaxonomyError:
                row = f"unknown category {row.category_id}"
        self.skipped += 1
        log.warning(
            "message_skipped",
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            reason=row,
        )
        return None

    async def run(self) -> WorkerReport:
        shards_dir = storage.join(self.config.output, SHARDS_FOLDER)
        number = _next_number(shards_dir, self.prefix)
        builder = Builder(self.config, self.truncated, self.cache)
        self.consumer.subscribe([self.source.topic], on_assign=self._assigned)
        try:
            async with builder.open(None):
                last_message = time.monotonic()
                while True:
                    messages: list[Message] = []
                    rows: list[LabelRow] = []
                    while len(messages) < self.config.shard_size:
                        got = await asyncio.to_thread(
                            self.consumer.consume,
                            self.config.shard_size - len(messages),
                            _POLL_S,
                        )
                        if not got:
                            break
                        last_message = time.monotonic()
                        messages += got
                        rows += [row for row in map(self._row, got) if row is not None]
                    if messages:
                        if rows:
                            plan = ShardPlan(f"{self.prefix}{number:05d}", 0, tuple(rows))
                            await builder.shard(plan)
                            number += 1
                            self.shards += 1
                            self.products += len(rows)
                        self._commit(messages)
                    elif time.monotonic() - last_message > self.source.idle_timeout_s:
                        break
        finally:
            await asyncio.to_thread(self.consumer.close)
        return WorkerReport(self.shards, self.products, self.skipped)

    def _assigned(self, partitions: list[TopicPartition]) -> None:
        log.info(
            "partitions_assigned",
            worker=self.source.worker,
            partitions=[f"{p.topic}[{p.partition}]" for p in partitions],
        )
        if self.on_assign is not None:
            self.on_assign(partitions)

    def _commit(self, messages: Sequence[Message]) -> None:
        try:
            self.consumer.commit(_offsets(messages))
        except KafkaError as exc:
            # The partitions moved on during the build: their new owner builds them again.
            log.warning("commit_failed", error=str(exc))


def run_worker(
    config: BuildConfig,
    source: KafkaSource,
    *,
    on_assign: Callable[[list[TopicPartition]], None] | None = None,
    cache: ImageCache | None = None,
) -> WorkerReport:
    """Build shards from the topic until it stays quiet for `source.idle_timeout_s`.

    `on_assign` is told each new assignment of partitions (from the consuming thread);
    `cache` is used as `build_dataset` uses it.
    """
    truncated = Taxonomy.load(config.taxonomy).truncate(config.depth)
    started = time.monotonic()
    report = asyncio.run(_Worker(config, source, truncated, on_assign, cache).run())
    log.info(
        "worker_done",
        worker=source.worker,
        shards=report.shards,
        products=report.products,
        skipped=report.skipped,
        elapsed_s=round(time.monotonic() - started, 1),
    )
    return report
