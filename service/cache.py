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
import json
import re
import string
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeAlias, get_args
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import structlog
from numpy.typing import NDArray

from service.errors import CacheError

__all__ = [
    "DEFAULT_NEGATIVE_TTL_S",
    "DEFAULT_RETRY_AFTER_S",
    "DEFAULT_TTL_S",
    "CacheHit",
    "CacheResult",
    "ImageCache",
    "KeyValueStore",
    "MemoryStore",
    "NegativeHit",
    "NegativePut",
    "NegativeStatus",
    "Put",
    "normalise_url",
]

# Product images change rarely; a week keeps a catalogue's daily updates cheap while letting a
# changed image (same URL, new bytes) show through within a week even without revalidation.
DEFAULT_TTL_S: Final = 7 * 24 * 3600.0
# A failed fetch may be a passing outage of the image host: retry it within the hour.
DEFAULT_NEGATIVE_TTL_S: Final = 3600.0
# Long enough that an outage costs one failed call per few seconds, not one per product;
# short enough that the cache is back soon after Redis is.
DEFAULT_RETRY_AFTER_S: Final = 5.0

NegativeStatus: TypeAlias = Literal["IMAGE_UNAVAILABLE", "IMAGE_INVALID"]
_NEGATIVE_STATUSES: Final[frozenset[str]] = frozenset(get_args(NegativeStatus))

# Level 1: see the module docstring for the measurement against PNG.
_ZLIB_LEVEL: Final = 1
# Bumped when the header layout changes; an entry of another version reads as corrupt (a miss).
_HEADER_VERSION: Final = 1
# Reasons are exception messages; a few hundred characters say what happened.
_MAX_REASON_CHARS: Final = 500
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

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


class KeyValueStore(Protocol):
    """Bytes under string keys with optional expiry; `RedisStore` and `MemoryStore` are two.

    Implementations raise `CacheError` on any failure to reach their backend.
    """

    def get(self, key: str) -> bytes | None:
        """The value under `key`, or None when there is none."""
        ...

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The values under `keys`, in order, None where there is none (one round trip)."""
        ...

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        """Store `value` under `key`, expiring after `ttl_s` seconds when given."""
        ...

    def set_many(self, values: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        """Store several values (one round trip)."""
        ...

    def delete(self, key: str) -> None:
        """Forget `key`."""
        ...

    def ping(self) -> bool:
        """True when the backend answers now; never raises."""
        ...

    def close(self) -> None:
        """Release what the store holds."""
        ...


class MemoryStore:
    """A `KeyValueStore` in this process: a dict with expiry, thread-safe, optionally LRU-bounded.

    Expiry uses `clock` (seconds, monotonic); expired entries are dropped when next touched.
    With `max_entries`, writing past the bound evicts the least recently used entries.
    """

    def __init__(
        self, *, max_entries: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be positive or None, got {max_entries}")
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (value, expiry time on `clock` or None); order is least recently used first.
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    def __len__(self) -> int:
        """The number of live (unexpired) entries."""
        return len(self.live_keys())

    def live_keys(self) -> list[str]:
        """The live keys, least recently used first."""
        with self._lock:
            now = self._clock()
            return [k for k in list(self._data) if self._live(k, now, touch=False) is not None]

    def get(self, key: str) -> bytes | None:
        """The value under `key`, or None when there is none or it has expired."""
        with self._lock:
            return self._live(key, self._clock(), touch=True)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The values under `keys`, in order, None where there is none."""
        with self._lock:
            now = self._clock()
            return [self._live(k, now, touch=True) for k in keys]

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        """Store `value` under `key`, expiring after `ttl_s` seconds when given."""
        self.set_many({key: value}, ttl_s)

    def set_many(self, values: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        """Store several values with the same expiry."""
        with self._lock:
            expires = None if ttl_s is None else self._clock() + ttl_s
            for key, value in values.items():
                self._data[key] = (bytes(value), expires)
                self._data.move_to_end(key)
            if self._max_entries is not None:
                while len(self._data) > self._max_entries:
                    self._data.popitem(last=False)

    def delete(self, key: str) -> None:
        """Forget `key`."""
        with self._lock:
            self._data.pop(key, None)

    def ping(self) -> bool:
        """Always True: the store is this process."""
        return True

    def close(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._data.clear()

    def _live(self, key: str, now: float, *, touch: bool) -> bytes | None:
        """The value under `key` if unexpired (dropping it if expired); the lock is held."""
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and now >= expires:
            del self._data[key]
            return None
        if touch:
            self._data.move_to_end(key)
        return value


_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}


def normalise_url(url: str) -> str:
    """The form of `url` used for cache keys: equal for URLs that name the same resource.

    Scheme and host are lower-cased, a default port (80 for http, 443 for https) and the
    fragment are dropped, an empty http(s) path becomes `/`, and percent-escapes of unreserved
    characters (letters, digits, `-._~`) are decoded while the rest get upper-case hex. Path and
    query are otherwise kept as given: parameter order and `+` matter to real servers. Never
    raises: a URL that cannot be split keeps its text, less any fragment.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket; the fetch will report it
        return url.partition("#")[0]
    scheme = parts.scheme.lower()
    netloc = _normalise_netloc(parts.netloc, scheme)
    path = _normalise_percent(parts.path)
    if not path and netloc and scheme in _DEFAULT_PORTS:
        path = "/"
    return urlunsplit((scheme, netloc, path, _normalise_percent(parts.query), ""))


def _normalise_netloc(netloc: str, scheme: str) -> str:
    """`[userinfo@]host[:port]` with the host lower-cased and a default or empty port dropped."""
    userinfo, at, hostport = netloc.rpartition("@")
    if hostport.startswith("["):  # an IPv6 literal: its colons are not the port's
        close = hostport.find("]")
        if close < 0:
            return netloc
        host, rest = hostport[: close + 1], hostport[close + 1 :]
        port = rest[1:] if rest.startswith(":") else None
        if port is None and rest:
            return userinfo + at + host.lower() + rest
    else:
        host, colon, port_text = hostport.partition(":")
        port = port_text if colon else None
    keep_port = port is not None and port != "" and port != _DEFAULT_PORTS.get(scheme)
    return userinfo + at + host.lower() + (f":{port}" if keep_port else "")


def _normalise_percent(text: str) -> str:
    """Decode escapes of unreserved characters; upper-case the hex of the others."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT_ESCAPE.sub(fix, text)


@dataclass(frozen=True, eq=False)
class CacheHit:
    """Cached pixels for a URL, with what identifies the bytes they were decoded from.

    `pixels` is a read-only `(size, size, 3)` uint8 RGB array; URLs with the same content may
    share one array.
    """

    pixels: NDArray[np.uint8]
    sha256: str
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True)
class NegativeHit:
    """A recent fetch of the URL failed this way; retry only once the entry has expired."""

    status: NegativeStatus
    reason: str


CacheResult: TypeAlias = CacheHit | NegativeHit | None


@dataclass(frozen=True, eq=False)
class Put:
    """One positive write for `ImageCache.put_many`: `url`'s bytes had this sha256.

    `pixels` are what they decoded to; None when the content entry is already cached (found by
    `get_by_content`), so only the URL's header is written.
    """

    url: str
    pixels: NDArray[np.uint8] | None
    sha256: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class NegativePut:
    """One negative write for `ImageCache.put_many`: fetching `url` just failed this way."""

    url: str
    status: NegativeStatus
    reason: str


class _CorruptEntryError(Exception):
    """An entry that cannot be what this module wrote; internal, never leaves the module."""


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
        return f"img:content:{_check_sha256(sha256)}:{self._size}"

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
                if write.status not in _NEGATIVE_STATUSES:
                    raise ValueError(
                        f"status must be one of {sorted(_NEGATIVE_STATUSES)}, got {write.status!r}"
                    )
                continue
            _check_sha256(write.sha256)
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
            if isinstance(write, NegativePut):
                header: dict[str, object] = {
                    "v": _HEADER_VERSION,
                    "negative": {
                        "status": write.status,
                        "reason": write.reason[:_MAX_REASON_CHARS],
                    },
                }
                key = self.url_key(write.url)
                positive.pop(key, None)  # the later write of a URL wins
                negative[key] = _dump(header)
                continue
            if write.pixels is not None:
                raw = np.ascontiguousarray(write.pixels).tobytes()
                packed = zlib.compress(raw, _ZLIB_LEVEL) if self._compress else raw
                # Raw when zlib is no shorter: an entry of exactly the raw length is always raw.
                positive[self.content_key(write.sha256)] = packed if len(packed) < len(raw) else raw
            header = {
                "v": _HEADER_VERSION,
                "sha256": write.sha256,
                "etag": write.etag,
                "last_modified": write.last_modified,
            }
            key = self.url_key(write.url)
            negative.pop(key, None)  # the later write of a URL wins
            positive[key] = _dump(header)
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
                parsed.append(_parse_header(raw))
            except _CorruptEntryError:
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
            return _decode_pixels(blob, self._size)
        except _CorruptEntryError:
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


def _check_sha256(sha256: str) -> str:
    if not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lower-case hex digits, got {sha256!r}")
    return sha256


def _dump(header: Mapping[str, object]) -> bytes:
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode()


def _parse_header(raw: bytes) -> NegativeHit | tuple[str, str | None, str | None]:
    """A header as written by `ImageCache`: a NegativeHit or (sha256, etag, last_modified)."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _CorruptEntryError("header is not JSON") from exc
    if not isinstance(header, dict) or header.get("v") != _HEADER_VERSION:
        raise _CorruptEntryError("header of another version")
    negative = header.get("negative")
    if negative is not None:
        status, reason = (
            (negative.get("status"), negative.get("reason"))
            if isinstance(negative, dict)
            else (None, None)
        )
        if status not in _NEGATIVE_STATUSES or not isinstance(reason, str):
            raise _CorruptEntryError("bad negative entry")
        return NegativeHit(status, reason)
    sha256, etag, last_modified = (header.get(k) for k in ("sha256", "etag", "last_modified"))
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise _CorruptEntryError("bad content hash")
    if not (etag is None or isinstance(etag, str)) or not (
        last_modified is None or isinstance(last_modified, str)
    ):
        raise _CorruptEntryError("bad validators")
    return sha256, etag, last_modified


def _decode_pixels(blob: bytes, size: int) -> NDArray[np.uint8]:
    """Read-only `(size, size, 3)` pixels from a content entry, or `_CorruptEntryError`."""
    expected = size * size * 3
    if len(blob) == expected:  # stored raw (see put_many)
        return np.frombuffer(blob, dtype=np.uint8).reshape(size, size, 3)
    decompressor = zlib.decompressobj()
    try:
        # Bounded: a corrupt or foreign entry must not inflate into a huge buffer.
        raw = decompressor.decompress(blob, expected + 1)
    except zlib.error as exc:
        raise _CorruptEntryError("content is not zlib") from exc
    if len(raw) != expected or not decompressor.eof or decompressor.unused_data:
        raise _CorruptEntryError(f"content is not {expected} bytes")
    return np.frombuffer(raw, dtype=np.uint8).reshape(size, size, 3)
