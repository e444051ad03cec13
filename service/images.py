"""The image stage: URL → the model's input pixels, through the cache, the fetcher and Pillow.

For one URL: look it up in the cache (a hit gives the resized pixels; a negative hit gives
the remembered failure). Lookups are coalesced (:class:`CacheReader`): every URL asked for
while one lookup is in flight goes into the next, a single :meth:`ImageCache.get_many` (one
MGET for the headers, one for the pixels) in a worker thread, so under load a product costs
a share of two round trips and one thread hop, and under light load a lookup waits for
nobody. On a miss, fetch it; if the content's hash is known, take its pixels from the cache
(identical content under many URLs is decoded once); otherwise decode and resize off the
event loop with :func:`model.preprocess.decode_image` (the code training used), then cache
the pixels (and permanent failures, negatively). Decodes are admitted by the pixels their
headers declare against a :class:`DecodeBudget`, so what decoding holds in memory is bounded
whatever the images and the core count; an image larger than the whole budget, or with a
side under the minimum, is IMAGE_INVALID. Cache writes are write-behind
(:class:`CacheWriter`): batched, and no product waits for them. The outcome is data: pixels,
or a status and a reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import structlog
from numpy.typing import NDArray

from model.errors import InvalidImageError
from model.preprocess import decode_image, decoded_pixels
from service.cache import (
    CacheHit,
    CacheResult,
    ImageCache,
    NegativeHit,
    NegativePut,
    NegativeStatus,
    Put,
)
from service.decode_budget import DecodeBudget
from service.fetch.fetcher import ImageFetcher
from service.metrics import Metrics
from service.records import ImageInfo, Status

__all__ = ["CacheReader", "CacheWriter", "ImageOutcome", "ImageStage"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ImageOutcome:
    """Pixels ready for the model, or the status and reason why there are none."""

    info: ImageInfo
    pixels: NDArray[np.uint8] | None = None
    status: Status | None = None
    reason: str | None = None


def _weigh(content: bytes, size: int, max_pixels: int, min_side: int) -> int | str:
    """Read the header in a worker: the pixels decoding will allocate, or why it will not."""
    try:
        return decoded_pixels(content, size, max_pixels=max_pixels, min_side=min_side)
    except InvalidImageError as exc:
        return str(exc)


def _decode(content: bytes, size: int, max_pixels: int, min_side: int) -> NDArray[np.uint8] | str:
    """Decode in a worker: pixels, or the reason the bytes are not a usable image."""
    try:
        return decode_image(content, size, max_pixels=max_pixels, min_side=min_side)
    except InvalidImageError as exc:
        return str(exc)


class CacheReader:
    """Coalesces cache lookups from one event loop into batched :meth:`ImageCache.get_many` calls.

    :meth:`get` queues the URL; if no lookup is running, one starts at once with what is
    queued; URLs queued while it runs go together into the next, up to ``max_batch`` each.
    Use from one event loop only.
    """

    def __init__(self, cache: ImageCache, *, max_batch: int = 256) -> None:
        """Read through ``cache``; ``max_batch`` bounds the URLs in one ``get_many``."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.cache = cache
        self.max_batch = max_batch
        self.lookups = 0
        """How many ``get_many`` calls were made (for tests and metrics)."""
        self._queued: list[tuple[str, asyncio.Future[CacheResult]]] = []
        self._draining = False
        self._task: asyncio.Task[None] | None = None  # held so it is not collected mid-run

    async def get(self, url: str) -> CacheResult:
        """What the cache knows about ``url`` (as :meth:`ImageCache.get`)."""
        future: asyncio.Future[CacheResult] = asyncio.get_running_loop().create_future()
        self._queued.append((url, future))
        if not self._draining:
            self._draining = True
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Look up what is queued, batch by batch, until the queue is empty."""
        try:
            while self._queued:
                batch = self._queued[: self.max_batch]
                del self._queued[: self.max_batch]
                urls = [url for url, _ in batch]
                try:
                    results: list[CacheResult] = await asyncio.to_thread(self.cache.get_many, urls)
                except Exception as exc:  # a bug, not a store failure: its waiters hear of it
                    results = []
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                self.lookups += 1
                for (_, future), result in zip(batch, results, strict=False):
                    if not future.done():  # its waiter may have been cancelled
                        future.set_result(result)
        finally:
            self._draining = False


class CacheWriter:
    """Write-behind: cache writes queued from one event loop land in batched ``put_many`` calls.

    Nobody waits for a write: :meth:`put` queues it and returns, and a drain task writes what
    is queued in a worker thread, up to ``max_batch`` writes per call. A cache is an
    optimisation, so when ``max_queued`` writes are already waiting (the store is slow), a new
    one is dropped and counted. :meth:`flush` waits until everything queued is written.
    """

    def __init__(self, cache: ImageCache, *, max_batch: int = 64, max_queued: int = 1000) -> None:
        """Write through ``cache``; see the class docstring for the two bounds."""
        if max_batch < 1 or max_queued < 1:
            raise ValueError(f"bounds must be at least 1, got {max_batch} and {max_queued}")
        self.cache = cache
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.batches = 0
        self.dropped = 0
        self._queued: list[Put | NegativePut] = []
        self._task: asyncio.Task[None] | None = None

    def put(self, write: Put | NegativePut) -> None:
        """Queue one write (from the event loop's thread); it lands soon, or is dropped."""
        if len(self._queued) >= self.max_queued:
            self.dropped += 1
            return
        self._queued.append(write)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        """Return once every write queued so far has been written (or has failed)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch = self._queued[: self.max_batch]
                del self._queued[: self.max_batch]
                try:
                    await asyncio.to_thread(self.cache.put_many, batch)
                except Exception:  # a bug (store failures never raise): log, lose the batch
                    log.exception("cache_write_failed", writes=len(batch))
                self.batches += 1
        finally:
            self._task = None


class ImageStage:
    """Loads product images as model input; one instance per service, used from its loop."""

    def __init__(
        self,
        fetcher: ImageFetcher,
        cache: ImageCache | None,
        *,
        image_size: int,
        decode_pool: Executor,
        max_pixels: int,
        metrics: Metrics,
        decode_budget_pixels: int = 64_000_000,
        min_side: int = 1,
    ) -> None:
        """Use ``fetcher`` (entered), ``cache`` (optional) and ``decode_pool`` for Pillow.

        At most ``decode_budget_pixels`` pixels are decoded at once (see :class:`DecodeBudget`);
        images with a side under ``min_side`` pixels are IMAGE_INVALID.
        """
        self.fetcher = fetcher
        self.cache = cache
        self.image_size = image_size
        self.decode_pool = decode_pool
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.budget = DecodeBudget(decode_budget_pixels)
        self.metrics = metrics
        metrics.decode_pixels.set_function(lambda: self.budget.in_use)
        metrics.decode_waiting.set_function(lambda: self.budget.waiting)
        self.reader = CacheReader(cache) if cache is not None else None
        self.writer = CacheWriter(cache) if cache is not None else None

    def _remember(self, write: Put | NegativePut) -> None:
        if self.writer is not None:
            self.writer.put(write)

    async def flush(self) -> None:
        """Wait for the cache writes queued so far (at shutdown, and in tests)."""
        if self.writer is not None:
            await self.writer.flush()

    async def load(self, url: str) -> ImageOutcome:
        """The pixels of ``url``'s image, or why there are none."""
        if self.cache is not None and self.reader is not None:
            cached = await self.reader.get(url)
            if isinstance(cached, CacheHit):
                self.metrics.cache.labels("hit").inc()
                return ImageOutcome(ImageInfo(url, cached.sha256, True), cached.pixels)
            if isinstance(cached, NegativeHit):
                self.metrics.cache.labels("negative_hit").inc()
                return ImageOutcome(
                    ImageInfo(url, None, True),
                    None,
                    cached.status,
                    cached.reason,
                )
            self.metrics.cache.labels("miss" if self.cache.available else "error").inc()

        began = time.perf_counter()
        result = await self.fetcher.fetch(url)
        self.metrics.fetch_latency.observe(time.perf_counter() - began)
        self.metrics.fetch_outcomes.labels(result.outcome).inc()
        if result.outcome != "ok" or result.content is None:
            status: NegativeStatus = (
                "IMAGE_INVALID" if result.outcome == "invalid" else "IMAGE_UNAVAILABLE"
            )
            reason = result.reason or result.outcome
            if result.permanent:
                self._remember(NegativePut(url, status, reason))
            return ImageOutcome(ImageInfo(url), None, status, reason)

        digest = hashlib.sha256(result.content).hexdigest()
        info = ImageInfo(url, digest, False)
        if self.cache is not None:
            known = await asyncio.to_thread(self.cache.get_by_content, digest)
            if known is not None:
                self._remember(Put(url, None, digest, result.etag, result.last_modified))
                return ImageOutcome(info, known)
        decoded = await self._decode(result.content)
        if isinstance(decoded, str):
            self._remember(NegativePut(url, "IMAGE_INVALID", decoded))
            return ImageOutcome(info, None, "IMAGE_INVALID", decoded)
        self._remember(Put(url, decoded, digest, result.etag, result.last_modified))
        return ImageOutcome(info, decoded)

    async def _decode(self, content: bytes) -> NDArray[np.uint8] | str:
        """Pixels, or the reason there are none: the header first, then the decode within budget."""
        args = (content, self.image_size, self.max_pixels, self.min_side)
        loop = asyncio.get_running_loop()
        weight = await loop.run_in_executor(self.decode_pool, _weigh, *args)
        if isinstance(weight, str):
            return weight
        if weight > self.budget.capacity:
            return (
                f"image needs {weight:,} pixels decoded, more than the whole decode budget "
                f"of {self.budget.capacity:,} pixels"
            )
        if self.budget.would_wait(weight):
            self.metrics.decode_waits.inc()
        return await self.budget.run(weight, self.decode_pool, _decode, *args)
