"""`enrich build-dataset`: labelled image URLs → resized images in TFRecord shards, with stats.

The labelled products are cut, in file order, into shards of `shard_size` products; a shard
is finished when its manifest exists, and a re-run skips finished shards. For each pending
shard every product's image is fetched with the service's `ImageFetcher` (the same address
guard, retries and caps), at most `concurrency` at a time over all shards; the bytes are
hashed, decoded and resized by `model.preprocess.decode_image` in a worker pool and
re-encoded as JPEG. The shard file is written and closed first, then its manifest (both
atomically). `finalize` then computes the split, the failures file and the statistics from
the manifests. `retry_failed` fetches again only the products in the failures file, into
shards of a new generation whose results replace the earlier ones.
"""

import asyncio
import contextlib
import hashlib
import math
import multiprocessing
import os
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from tqdm import tqdm

from model.data import LabelRow, read_labels
from model.errors import TaxonomyError
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary
from service.cache import CacheHit, ImageCache
from service.dataset import storage
from service.dataset.errors import DatasetError
from service.dataset.finalize import SHARDS_FOLDER, Finalized, finalize, read_failures
from service.dataset.manifest import Failure, Kept, ShardManifest, read_manifests
from service.dataset.outcomes import IMAGE_INVALID, classify, host_of
from service.dataset.records import Record, encode_record, resize_to_jpeg, to_jpeg
from service.fetch import FetchConfig, ImageFetcher

__all__ = [
    "BuildConfig",
    "BuildReport",
    "Builder",
    "ShardPlan",
    "build_dataset",
    "plan_shards",
    "products",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """Everything `enrich build-dataset` can be told."""

    labels: Path
    taxonomy: Path
    output: str
    """A local folder or any `tf.io.gfile` URL."""
    depth: int = 4
    image_size: int = 224
    shard_size: int = 1000
    concurrency: int = 64
    """Fetches in flight at once, over all shards."""
    fetch: FetchConfig = field(default_factory=FetchConfig)
    retry_failed: bool = False
    decode_workers: int | None = None
    """Worker processes for decoding (default: one per core); 0 decodes in threads instead."""
    progress: bool = True
    worker: str = ""
    """A name written into each manifest (which machine wrote the shard)."""

    def __post_init__(self) -> None:
        """Refuse values the builder cannot work with, naming them."""
        for name in ("depth", "image_size", "shard_size", "concurrency"):
            if getattr(self, name) < 1:
                raise DatasetError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ShardPlan:
    """The products one shard is made of."""

    name: str
    generation: int
    products: tuple[LabelRow, ...]


@dataclass(frozen=True)
class BuildReport:
    """What a build did."""

    output: str
    shards_written: int
    shards_skipped: int
    finalized: Finalized
    elapsed_s: float


def products(rows: Sequence[LabelRow], truncated: TruncatedTaxonomy) -> tuple[list[LabelRow], int]:
    """The rows to build from (first row per product id, known category) and how many were not."""
    seen: set[str] = set()
    kept: list[LabelRow] = []
    unknown = repeated = 0
    for row in rows:
        if row.product_id in seen:
            repeated += 1
            continue
        try:
            truncated.truncate_id(row.category_id)
        except TaxonomyError:
            unknown += 1
            continue
        seen.add(row.product_id)
        kept.append(row)
    if unknown or repeated:
        log.warning("labelled_rows_skipped", unknown_category=unknown, repeated_product=repeated)
    return kept, unknown + repeated


def plan_shards(
    rows: Sequence[LabelRow], shard_size: int, prefix: str, generation: int
) -> list[ShardPlan]:
    """`rows` cut in order into shards named `<prefix>-00000`, `<prefix>-00001`, ..."""
    return [
        ShardPlan(f"{prefix}-{index:05d}", generation, tuple(rows[start : start + shard_size]))
        for index, start in enumerate(range(0, len(rows), shard_size))
    ]


def _executor(workers: int | None) -> Executor:
    if workers == 0:
        return ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    # Spawned, not forked: the parent may hold TensorFlow's threads.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=context)


class Builder:
    """Fetches, decodes and writes the pending shards of one build."""

    def __init__(
        self, config: BuildConfig, truncated: TruncatedTaxonomy, cache: ImageCache | None = None
    ) -> None:
        self.config = config
        self.cache = cache
        self.truncated = truncated
        self.vocabulary = Vocabulary.full(truncated)
        self.shards_dir = storage.join(config.output, SHARDS_FOLDER)

    @contextlib.asynccontextmanager
    async def open(self, total: int | None) -> AsyncIterator[None]:
        """Open the fetcher, the decode pool and the progress bar for `shard` calls."""
        config = self.config
        self._fetches = asyncio.Semaphore(config.concurrency)
        # Enough shards in flight to keep every fetch slot busy while one shard's tail finishes.
        self._shards = asyncio.Semaphore(math.ceil(config.concurrency / config.shard_size) + 1)
        self._bar = tqdm(total=total, desc="build-dataset", unit="img", disable=not config.progress)
        self._counts = {"ok": 0, "failed": 0}
        try:
            with _executor(config.decode_workers) as executor:
                async with ImageFetcher(config.fetch) as fetcher:
                    self._executor, self._fetcher = executor, fetcher
                    yield
        finally:
            self._bar.close()

    async def run(self, plans: Sequence[ShardPlan]) -> None:
        """Fetch, decode and write every shard of `plans`."""
        async with self.open(sum(len(plan.products) for plan in plans)):
            await asyncio.gather(*(self.shard(plan) for plan in plans))

    async def _one(self, row: LabelRow) -> Record | Failure:
        async with self._fetches:
            result = await self._product(self._fetcher, self._executor, row)
        self._counts["ok" if isinstance(result, Record) else "failed"] += 1
        self._bar.update()
        self._bar.set_postfix(self._counts, refresh=False)
        return result

    async def shard(self, plan: ShardPlan) -> None:
        """Fetch and decode one shard's products, then write the shard and its manifest."""
        async with self._shards:
            started = time.monotonic()
            results = await asyncio.gather(*(self._one(row) for row in plan.products))
            await asyncio.to_thread(self._write, plan, results)
            log.info(
                "shard_written",
                shard=plan.name,
                records=sum(isinstance(r, Record) for r in results),
                failures=sum(isinstance(r, Failure) for r in results),
                elapsed_s=round(time.monotonic() - started, 2),
            )

    async def _product(
        self, fetcher: ImageFetcher, executor: Executor, row: LabelRow
    ) -> Record | Failure:
        category = self.truncated.truncate_id(row.category_id)
        if self.cache is not None:
            hit = await asyncio.to_thread(self.cache.get, row.image)
            if isinstance(hit, CacheHit):
                jpeg = await asyncio.get_running_loop().run_in_executor(
                    executor, to_jpeg, hit.pixels
                )
                return self._record(row, category, hit.sha256, jpeg)
        result = await fetcher.fetch(row.image)

        def failure(outcome: str, kind: str, reason: str) -> Failure:
            return Failure(
                product_id=row.product_id,
                image_url=row.image,
                google_category_id=row.category_id,
                category_id=category,
                outcome=outcome,
                kind=kind,
                reason=reason,
                host=host_of(row.image),
                http_status=result.http_status,
            )

        if not result.ok or result.content is None:
            return failure(classify(result), result.kind, result.reason or result.kind)
        content = result.content
        sha256 = hashlib.sha256(content).hexdigest()
        loop = asyncio.get_running_loop()
        cache = self.cache
        cached = None
        if cache is not None:
            cached = await asyncio.to_thread(cache.get_by_content, sha256)
        if cache is not None and cached is not None:
            jpeg = await loop.run_in_executor(executor, to_jpeg, cached)
            await asyncio.to_thread(
                cache.put, row.image, cached, sha256, result.etag, result.last_modified
            )
        else:
            size = self.config.image_size
            done = await loop.run_in_executor(executor, resize_to_jpeg, content, size)
            if isinstance(done, str):
                return failure(IMAGE_INVALID, "decode", done)
            pixels, jpeg = done
            if cache is not None:
                await asyncio.to_thread(
                    cache.put, row.image, pixels, sha256, result.etag, result.last_modified
                )
        return self._record(row, category, sha256, jpeg)

    def _record(self, row: LabelRow, category: int, sha256: str, jpeg: bytes) -> Record:
        return Record(
            product_id=row.product_id,
            image_url=row.image,
            google_category_id=row.category_id,
            category_id=category,
            path=self.truncated.path_ids(category),
            labels=self.vocabulary.encode(category),
            sha256=sha256,
            jpeg=jpeg,
            image_size=self.config.image_size,
            title=row.title,
            description=row.description,
            partner_category=row.partner_category,
        )

    def _write(self, plan: ShardPlan, results: Sequence[Record | Failure]) -> None:
        """Write the shard file, then (only then) its manifest."""
        records = [r for r in results if isinstance(r, Record)]
        if records:
            storage.write_records(
                storage.join(self.shards_dir, plan.name + ".tfrecord"),
                (encode_record(r) for r in records),
            )
        manifest = ShardManifest(
            name=plan.name,
            generation=plan.generation,
            image_size=self.config.image_size,
            depth=self.truncated.depth,
            kept=tuple(
                Kept(
                    r.product_id,
                    r.google_category_id,
                    r.category_id,
                    r.sha256,
                    host_of(r.image_url),
                )
                for r in records
            ),
            failures=tuple(r for r in results if isinstance(r, Failure)),
            worker=self.config.worker,
        )
        manifest.write(self.shards_dir)


def _check_existing(manifests: Sequence[ShardManifest], config: BuildConfig) -> None:
    for manifest in manifests:
        if (manifest.image_size, manifest.depth) != (config.image_size, config.depth):
            raise DatasetError(
                f"{config.output} holds shards of {manifest.image_size}px at depth "
                f"{manifest.depth} ({manifest.name}); asked for {config.image_size}px at depth "
                f"{config.depth}: use another output folder"
            )


def build_dataset(config: BuildConfig, cache: ImageCache | None = None) -> BuildReport:
    """Build (or resume, or retry the failures of) the dataset in `config.output`.

    With `cache` (the service's image cache, at `config.image_size`), a URL whose pixels are
    cached is not fetched, fetched content already decoded is not decoded again, and what is
    decoded is cached. Negative entries are not used: the statistics need each failure's class.
    """
    started = time.monotonic()
    truncated = Taxonomy.load(config.taxonomy).truncate(config.depth)
    labelled, skipped = products(read_labels(config.labels), truncated)
    shards_dir = storage.join(config.output, SHARDS_FOLDER)
    existing = read_manifests(shards_dir)
    _check_existing(existing, config)
    if config.retry_failed:
        failed = {f.product_id for f in read_failures(config.output)}
        generation = max((m.generation for m in existing), default=0) + 1
        todo = [row for row in labelled if row.product_id in failed]
        plans = plan_shards(todo, config.shard_size, f"retry{generation:02d}", generation)
    else:
        plans = plan_shards(labelled, config.shard_size, "shard", 0)
    done = {m.name for m in existing}
    pending = [plan for plan in plans if plan.name not in done]
    log.info(
        "build_started",
        output=config.output,
        products=len(labelled),
        shards=len(plans),
        pending=len(pending),
        retry_failed=config.retry_failed,
    )
    if pending:
        asyncio.run(Builder(config, truncated, cache).run(pending))
    finalized = finalize(config.output, truncated, labelled, skipped=skipped)
    report = BuildReport(
        config.output,
        len(pending),
        len(plans) - len(pending),
        finalized,
        time.monotonic() - started,
    )
    log.info(
        "build_done",
        shards_written=report.shards_written,
        shards_skipped=report.shards_skipped,
        records=finalized.records,
        failed=finalized.stats["failed"],
        elapsed_s=round(report.elapsed_s, 1),
    )
    return report
