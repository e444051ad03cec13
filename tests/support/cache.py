"""Stand-ins shared by the image cache's tests: a clock that moves when told, a store that
counts its calls, pixels and content hashes."""

import hashlib
from collections import Counter
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from service.stores import KeyValueStore

SIZE = 16
URL = "https://img.example.com/p/1.jpg"


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore:
    """A KeyValueStore wrapper that counts the calls reaching the store behind it."""

    def __init__(self, inner: KeyValueStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def get(self, key: str) -> bytes | None:
        self.calls["get"] += 1
        return self.inner.get(key)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        self.calls["get_many"] += 1
        return self.inner.get_many(keys)

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self.calls["set"] += 1
        self.inner.set(key, value, ttl_s)

    def set_many(self, values: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        self.calls["set_many"] += 1
        self.inner.set_many(values, ttl_s)

    def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        self.inner.delete(key)

    def ping(self) -> bool:
        self.calls["ping"] += 1
        return self.inner.ping()

    def close(self) -> None:
        self.inner.close()


def pixels(seed: int, size: int = SIZE) -> NDArray[np.uint8]:
    """Random RGB pixels, different for each seed."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def sha(text: str) -> str:
    """A sha256 hex digest standing for the downloaded bytes."""
    return hashlib.sha256(text.encode()).hexdigest()
