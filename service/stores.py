"""Where the image cache keeps its bytes: the `KeyValueStore` protocol and `MemoryStore`.

`MemoryStore` is the store in this process (the embedded demo and unit tests);
`service/redis_store.py` holds `RedisStore`, the production one.
"""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Protocol

__all__ = ["KeyValueStore", "MemoryStore"]


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
