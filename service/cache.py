"""The image cache: decoded, resized pixels by image URL, so a product seen again skips the fetch.

Two kinds of entry live in a `KeyValueStore` (Redis in production, `MemoryStore` in the embedded
demo and unit tests):

- `img:url:<sha256 of the normalised URL>:<size>` holds a small JSON header: either the sha256
  of the downloaded bytes with the response's ETag and Last-Modified, or a negative answer
  (`IMAGE_UNAVAILABLE` / `IMAGE_INVALID` with its reason), kept for a shorter time.
- `img:content:<content sha256>:<size>` holds the pixels: exactly size*size*3 uint8 RGB bytes,
  stored raw, or zlib-compressed at level 1 with `compress=True` (kept raw when zlib would not
  be shorter, so an entry of exactly the raw length is raw; either mode reads both). Identical
  images under many URLs share one content entry, and the pipeline, having downloaded bytes
  whose sha256 it knows, asks `get_by_content` to skip decode.

Why zlib level 1 and not PNG: measured on 40 real product photos decoded to 224x224 (this
repository's shared data; two runs on two busy cores, so absolute times are high), zlib-1
encodes in 2.4-2.9 ms and decodes in 0.6 ms, 107 KiB (73 % of the raw 147 KiB); PNG at
compress_level 1 takes 3.4-3.7 ms and 1.5-1.8 ms, 76 KiB (52 %); PNG at level 6 takes 13 ms and
1.3 ms, 70 KiB. zlib-1 is the faster both ways (decode, on every hit, 2.5-3x); PNG would save
about 30 KiB per image.

Why raw by default: in the service benchmark (`bench/service_bench.py --quick --only warm`,
two runs each, alternated, 128 px) raw entries gave 625 and 715 products/s warm and 303 and
314 cold, against 453 and 452 warm and 224 and 224 cold with zlib-1: decompressing on every
hit was 31 % of the warm profile, compressing 23 % of the cold one. Raw costs about a third
more Redis memory per image (48 KiB against about 36 KiB at 128 px); `compress=True`
(`ENRICH_CACHE_COMPRESS`) trades the CPU back for it.

The cache is an optimisation, so `ImageCache` never raises a store failure to its caller: a
`CacheError` (Redis down or slower than its socket timeout) is counted, logged once per outage,
and the cache stays out of the way for `retry_after_s` before the next call tries the store
again. Bad arguments (wrong pixel shape, a status the contract does not know) are bugs in the
caller and raise `ValueError`.
"""

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import numpy as np
import structlog
from numpy.typing import NDArray

from service.cache_entries import (
    CacheHit,
    CacheResult,
    CorruptEntryError,
    NegativeHit,
    NegativePut,
    NegativeStatus,
    Put,
    check_sha256,
    check_status,
    decode_pixels,
    encode_header,
    encode_pixels,
    parse_header,
)
from service.cache_urls import normalise_url
from service.errors import CacheError
from service.stores import KeyValueStore

# ImageCache and its settings, with the types its methods take and answer (defined in
# service/cache_entries.py). The stores are in service/stores.py, normalise_url in
# service/cache_urls.py.
__all__ = [
    "DEFAULT_NEGATIVE_TTL_S",
    "DEFAULT_RETRY_AFTER_S",
    "DEFAULT_TTL_S",
    "CacheHit",
    "CacheResult",
    "ImageCache",
    "NegativeHit",
    "NegativePut",
    "NegativeStatus",
    "Put",
]

# Product images change rarely; a week keeps a catalogue's daily updates cheap while letting a
# changed image (same URL, new bytes) show through within a week even without revalidation.
DEFAULT_TTL_S: Final = 7 * 24 * 3600.0
# A failed fetch may be a passing outage of the image host: retry it within the hour.
DEFAULT_NEGATIVE_TTL_S: Final = 3600.0
# Long enough that an outage costs one failed call per few seconds, not one per product;
# short enough that the cache is back soon after Redis is.
DEFAULT_RETRY_AFTER_S: Final = 5.0

# Counters `ImageCache.stats` always carries, zero until something happens.
_STAT_KEYS: Final = (
    "hits",
    "misses",
    "negative_hits",
    "content_hits",
    "content_misses",
    "corrupt",
    "errors",
    "skipped",
)


class ImageCache:
    """Pixels by URL and by content hash over a `KeyValueStore`, never failing its caller.

    `image_size` is the model's input size; entries for other sizes are separate. `clock`
    times the pause after a store failure (`retry_after_s`); expiry is the store's business.
    `stats` counts, per URL: hits, misses, negative_hits; per content lookup: content_hits,
    content_misses; corrupt entries (also counted as misses); errors (failed store calls); and
    skipped (URLs or writes not sent to the store while it is considered down).
    """

    def __init__(
        self,
        store: KeyValueStore,
        *,
        image_size: int,
        ttl_s: float = DEFAULT_TTL_S,
        negative_ttl_s: float = DEFAULT_NEGATIVE_TTL_S,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        compress: bool = False,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if ttl_s <= 0 or negative_ttl_s <= 0:
            raise ValueError(f"TTLs must be positive, got {ttl_s} and {negative_ttl_s}")
        if retry_after_s < 0:
            raise ValueError(f"retry_after_s must not be negative, got {retry_after_s}")
        self._store = store
        self._size = image_size
        self._nbytes = image_size * image_size * 3
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._compress = compress
        self._lock = threading.Lock()
        self._stats: Counter[str] = Counter(dict.fromkeys(_STAT_KEYS, 0))
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def available(self) -> bool:
        """False from a failed store call until the next successful one."""
        return self._down_since is None

    @property
    def stats(self) -> Counter[str]:
        """A snapshot of the counters (see the class docstring)."""
        with self._lock:
            return self._stats.copy()

    def url_key(self, url: str) -> str:
        """The store key of `url`'s header entry."""
        digest = hashlib.sha256(normalise_url(url).encode("utf-8", "surrogatepass")).hexdigest()
        return f"img:url:{digest}:{self._size}"

    def content_key(self, sha256: str) -> str:
        """The store key of the pixels decoded from bytes with this sha256."""
        return f"img:content:{check_sha256(sha256)}:{self._size}"

    def get(self, url: str) -> CacheResult:
        """What the cache knows about `url`: pixels, a recent failure, or None."""
        return self.get_many([url])[0]

    def get_many(self, urls: list[str]) -> list[CacheResult]:
        """`get` for several URLs in two store round trips: headers, then distinct contents."""
        if not urls:
            return []
        if not self._may_call(len(urls)):
            return [None] * len(urls)
        try:
            results, counts = self._lookup(urls)
        except CacheError as exc:
            self._failed(exc)
            return [None] * len(urls)
        self._succeeded(counts)
        return results

    def get_by_content(self, sha256: str) -> NDArray[np.uint8] | None:
        """The read-only pixels decoded from bytes with this sha256, if cached, else None."""
        key = self.content_key(sha256)
        if not self._may_call(1):
            return None
        counts: Counter[str] = Counter()
        try:
            blob = self._store.get(key)
            pixels = self._pixels_or_drop(key, blob, counts)
        except CacheError as exc:
            self._failed(exc)
            return None
        counts["content_hits" if pixels is not None else "content_misses"] += 1
        self._succeeded(counts)
        return pixels

    def put(
        self,
        url: str,
        pixels: NDArray[np.uint8],
        sha256: str,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> None:
        """Remember `url`'s pixels, decoded from bytes with this sha256 (one round trip)."""
        self.put_many([Put(url, pixels, sha256, etag, last_modified)])

    def put_negative(self, url: str, status: NegativeStatus, reason: str) -> None:
        """Remember that fetching `url` just failed, for `negative_ttl_s`."""
        self.put_many([NegativePut(url, status, reason)])

    def put_many(self, writes: Sequence[Put | NegativePut]) -> None:
        """Several writes in at most two round trips (one per TTL); bad arguments raise first."""
        expected = (self._size, self._size, 3)
        for write in writes:
            if isinstance(write, NegativePut):
                check_status(write.status)
                continue
            check_sha256(write.sha256)
            pixels = write.pixels
            if pixels is not None and (pixels.shape != expected or pixels.dtype != np.uint8):
                raise ValueError(
                    f"pixels must be uint8 {expected}, got {pixels.dtype} {tuple(pixels.shape)}"
                )
        if not writes or not self._may_call(len(writes)):
            return
        positive: dict[str, bytes] = {}
        negative: dict[str, bytes] = {}
        for write in writes:
            key = self.url_key(write.url)
            if isinstance(write, NegativePut):
                positive.pop(key, None)  # the later write of a URL wins
                negative[key] = encode_header(write)
                continue
            if write.pixels is not None:
                content = encode_pixels(write.pixels, compress=self._compress)
                positive[self.content_key(write.sha256)] = content
            negative.pop(key, None)  # the later write of a URL wins
            positive[key] = encode_header(write)
        if positive:
            self._write(positive, self._ttl_s)
        if negative and self._may_call(0):  # not right after the first write failed
            self._write(negative, self._negative_ttl_s)

    def _lookup(self, urls: list[str]) -> tuple[list[CacheResult], Counter[str]]:
        """Read headers, then the distinct contents they point to; raises CacheError."""
        counts: Counter[str] = Counter()
        url_keys = [self.url_key(u) for u in urls]
        headers = self._store.get_many(url_keys)
        parsed: list[NegativeHit | tuple[str, str | None, str | None] | None] = []
        for key, raw in zip(url_keys, headers, strict=True):
            if raw is None:
                parsed.append(None)
                continue
            try:
                parsed.append(parse_header(raw))
            except CorruptEntryError:
                counts["corrupt"] += 1
                self._store.delete(key)
                parsed.append(None)
        wanted = list(dict.fromkeys(p[0] for p in parsed if isinstance(p, tuple)))
        content_keys = [self.content_key(sha) for sha in wanted]
        blobs = self._store.get_many(content_keys) if content_keys else []
        pixels_by_sha = {
            sha: self._pixels_or_drop(key, blob, counts)
            for sha, key, blob in zip(wanted, content_keys, blobs, strict=True)
        }
        results: list[CacheResult] = []
        for item in parsed:
            result: CacheResult = None
            if isinstance(item, NegativeHit):
                result = item
            elif item is not None and (pixels := pixels_by_sha[item[0]]) is not None:
                result = CacheHit(pixels, item[0], item[1], item[2])
            counts[_outcome(result)] += 1
            results.append(result)
        return results, counts

    def _pixels_or_drop(
        self, key: str, blob: bytes | None, counts: Counter[str]
    ) -> NDArray[np.uint8] | None:
        """Decode a content entry; a corrupt one is counted and deleted. Raises CacheError."""
        if blob is None:
            return None
        try:
            return decode_pixels(blob, self._size)
        except CorruptEntryError:
            counts["corrupt"] += 1
            self._store.delete(key)
            return None

    def _write(self, entries: Mapping[str, bytes], ttl_s: float) -> None:
        try:
            self._store.set_many(entries, ttl_s=ttl_s)
        except CacheError as exc:
            self._failed(exc)
            return
        self._succeeded(Counter())

    def _may_call(self, items: int) -> bool:
        """True unless the store failed less than `retry_after_s` ago (then count a skip)."""
        with self._lock:
            if self._down_since is None or self._clock() >= self._retry_at:
                return True
            self._stats["skipped"] += items
            return False

    def _failed(self, exc: CacheError) -> None:
        """Count a failed store call; log and start an outage if there is none yet."""
        with self._lock:
            now = self._clock()
            self._stats["errors"] += 1
            self._retry_at = now + self._retry_after_s
            started = self._down_since is None
            if started:
                self._down_since = now
        if started:
            # Looked up per event, not bound at import: logging happens once per outage, and a
            # logger cached at first use would ignore later configuration (and capture_logs).
            structlog.get_logger(__name__).warning(
                "cache_unavailable", error=str(exc), retry_after_s=self._retry_after_s
            )

    def _succeeded(self, counts: Counter[str]) -> None:
        """Add a successful call's counts; log the end of an outage if there was one."""
        with self._lock:
            self._stats.update(counts)
            down_since, self._down_since = self._down_since, None
            errors = self._stats["errors"]
            now = self._clock()
        if down_since is not None:
            structlog.get_logger(__name__).info(
                "cache_back", outage_s=round(now - down_since, 3), errors_total=errors
            )


def _outcome(result: CacheResult) -> str:
    if result is None:
        return "misses"
    return "negative_hits" if isinstance(result, NegativeHit) else "hits"
