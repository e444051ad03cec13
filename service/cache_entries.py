"""The image cache's entries: what `ImageCache` answers and is given (`CacheHit`, `NegativeHit`,
`Put`, `NegativePut`), and the stored form of its header and pixel entries, written and read.

The layout of the entries, and why pixels are raw or zlib level 1, is in `service.cache`'s
docstring.
"""

import json
import re
import zlib
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, get_args

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CacheHit",
    "CacheResult",
    "CorruptEntryError",
    "NegativeHit",
    "NegativePut",
    "NegativeStatus",
    "Put",
    "check_sha256",
    "check_status",
    "decode_pixels",
    "encode_header",
    "encode_pixels",
    "parse_header",
]

NegativeStatus: TypeAlias = Literal["IMAGE_UNAVAILABLE", "IMAGE_INVALID"]
_NEGATIVE_STATUSES: Final[frozenset[str]] = frozenset(get_args(NegativeStatus))

# Level 1: see `service.cache`'s docstring for the measurement against PNG.
_ZLIB_LEVEL: Final = 1
# Bumped when the header layout changes; an entry of another version reads as corrupt (a miss).
_HEADER_VERSION: Final = 1
# Reasons are exception messages; a few hundred characters say what happened.
_MAX_REASON_CHARS: Final = 500
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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


class CorruptEntryError(Exception):
    """An entry that cannot be what `ImageCache` wrote; internal, it never leaves the cache."""


def check_sha256(sha256: str) -> str:
    """`sha256` if it is 64 lower-case hex digits, else `ValueError`."""
    if not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lower-case hex digits, got {sha256!r}")
    return sha256


def check_status(status: str) -> str:
    """`status` if it is a `NegativeStatus`, else `ValueError`."""
    if status not in _NEGATIVE_STATUSES:
        raise ValueError(f"status must be one of {sorted(_NEGATIVE_STATUSES)}, got {status!r}")
    return status


def encode_header(write: Put | NegativePut) -> bytes:
    """The URL entry of a write: its content's sha256 and validators, or the failure."""
    header: dict[str, object]
    if isinstance(write, NegativePut):
        header = {
            "v": _HEADER_VERSION,
            "negative": {"status": write.status, "reason": write.reason[:_MAX_REASON_CHARS]},
        }
    else:
        header = {
            "v": _HEADER_VERSION,
            "sha256": write.sha256,
            "etag": write.etag,
            "last_modified": write.last_modified,
        }
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode()


def parse_header(raw: bytes) -> NegativeHit | tuple[str, str | None, str | None]:
    """A header as written by `encode_header`: a NegativeHit or (sha256, etag, last_modified)."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptEntryError("header is not JSON") from exc
    if not isinstance(header, dict) or header.get("v") != _HEADER_VERSION:
        raise CorruptEntryError("header of another version")
    negative = header.get("negative")
    if negative is not None:
        status, reason = (
            (negative.get("status"), negative.get("reason"))
            if isinstance(negative, dict)
            else (None, None)
        )
        if status not in _NEGATIVE_STATUSES or not isinstance(reason, str):
            raise CorruptEntryError("bad negative entry")
        return NegativeHit(status, reason)
    sha256, etag, last_modified = (header.get(k) for k in ("sha256", "etag", "last_modified"))
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise CorruptEntryError("bad content hash")
    if not (etag is None or isinstance(etag, str)) or not (
        last_modified is None or isinstance(last_modified, str)
    ):
        raise CorruptEntryError("bad validators")
    return sha256, etag, last_modified


def encode_pixels(pixels: NDArray[np.uint8], *, compress: bool) -> bytes:
    """The content entry of `pixels`: raw, or zlib level 1 with `compress` when that is shorter."""
    raw = np.ascontiguousarray(pixels).tobytes()
    packed = zlib.compress(raw, _ZLIB_LEVEL) if compress else raw
    # Raw when zlib is no shorter: an entry of exactly the raw length is always raw.
    return packed if len(packed) < len(raw) else raw


def decode_pixels(blob: bytes, size: int) -> NDArray[np.uint8]:
    """Read-only `(size, size, 3)` pixels from a content entry, or `CorruptEntryError`."""
    expected = size * size * 3
    if len(blob) == expected:  # stored raw (see encode_pixels)
        return np.frombuffer(blob, dtype=np.uint8).reshape(size, size, 3)
    decompressor = zlib.decompressobj()
    try:
        # Bounded: a corrupt or foreign entry must not inflate into a huge buffer.
        raw = decompressor.decompress(blob, expected + 1)
    except zlib.error as exc:
        raise CorruptEntryError("content is not zlib") from exc
    if len(raw) != expected or not decompressor.eof or decompressor.unused_data:
        raise CorruptEntryError(f"content is not {expected} bytes")
    return np.frombuffer(raw, dtype=np.uint8).reshape(size, size, 3)
