"""The image stage: URL → the model's input pixels, through the cache, the fetcher and Pillow.

For one URL: look it up in the cache (a hit gives the resized pixels; a negative hit gives
the remembered failure); on a miss, fetch it; if the content's hash is known, take its
pixels from the cache (identical content under many URLs is decoded once); otherwise decode
and resize off the event loop with :func:`model.preprocess.decode_image` (the code training
used), then cache the pixels (and permanent failures, negatively). The outcome is data:
pixels, or a status and a reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

from model.errors import InvalidImageError
from model.preprocess import decode_image
from service.cache import CacheHit, ImageCache, NegativeHit
from service.fetch.fetcher import ImageFetcher
from service.metrics import Metrics
from service.records import ImageInfo, Status

__all__ = ["ImageOutcome", "ImageStage"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ImageOutcome:
    """Pixels ready for the model, or the status and reason why there are none."""

    info: ImageInfo
    pixels: NDArray[np.uint8] | None = None
    status: Status | None = None
    reason: str | None = None


def _decode(content: bytes, size: int, max_pixels: int) -> NDArray[np.uint8] | str:
    """Decode in a worker: pixels, or the reason the bytes are not a usable image."""
    try:
        return decode_image(content, size, max_pixels=max_pixels)
    except InvalidImageError as exc:
        return str(exc)


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
    ) -> None:
        """Use ``fetcher`` (entered), ``cache`` (optional) and ``decode_pool`` for Pillow."""
        self.fetcher = fetcher
        self.cache = cache
        self.image_size = image_size
        self.decode_pool = decode_pool
        self.max_pixels = max_pixels
        self.metrics = metrics

    async def _cache_call(self, method: str, *args: Any) -> Any:
        """Run a (blocking, never-raising) cache method in a thread."""
        assert self.cache is not None
        return await asyncio.to_thread(getattr(self.cache, method), *args)

    async def load(self, url: str) -> ImageOutcome:
        """The pixels of ``url``'s image, or why there are none."""
        if self.cache is not None:
            cached = await self._cache_call("get", url)
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
            status: Status = "IMAGE_INVALID" if result.outcome == "invalid" else "IMAGE_UNAVAILABLE"
            reason = result.reason or result.outcome
            if self.cache is not None and result.permanent:
                await self._cache_call("put_negative", url, status, reason)
            return ImageOutcome(ImageInfo(url), None, status, reason)

        digest = hashlib.sha256(result.content).hexdigest()
        info = ImageInfo(url, digest, False)
        if self.cache is not None:
            known = await self._cache_call("get_by_content", digest)
            if known is not None:
                await self._cache_call("put", url, known, digest, result.etag, result.last_modified)
                return ImageOutcome(info, known)
        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(
            self.decode_pool, _decode, result.content, self.image_size, self.max_pixels
        )
        if isinstance(decoded, str):
            if self.cache is not None:
                await self._cache_call("put_negative", url, "IMAGE_INVALID", decoded)
            return ImageOutcome(info, None, "IMAGE_INVALID", decoded)
        if self.cache is not None:
            await self._cache_call("put", url, decoded, digest, result.etag, result.last_modified)
        return ImageOutcome(info, decoded)
