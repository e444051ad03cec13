"""A thin typed wrapper over redis-py: bytes under a key prefix, with every error wrapped.

The cache is an optimisation: callers catch `CacheError` and carry on without it.
"""

from collections.abc import Mapping

import redis

from service.errors import CacheError

# A cache that answers slower than this is worse than no cache: the image fetch it would save
# takes about as long.
DEFAULT_SOCKET_TIMEOUT_S = 0.5


class RedisStore:
    """Bytes values under `prefix`; the connection pool is created on first use."""

    def __init__(
        self, url: str, *, prefix: str = "enrich:", socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_S
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._socket_timeout = socket_timeout
        self._client: redis.Redis | None = None

    @property
    def prefix(self) -> str:
        """The prefix put before every key."""
        return self._prefix

    @property
    def client(self) -> redis.Redis:
        """The underlying redis-py client, created now if needed."""
        if self._client is None:
            try:
                self._client = redis.Redis.from_url(
                    self._url,
                    socket_timeout=self._socket_timeout,
                    socket_connect_timeout=self._socket_timeout,
                )
            except ValueError as exc:
                raise CacheError(f"bad Redis URL {self._url!r}: {exc}") from exc
        return self._client

    def get(self, key: str) -> bytes | None:
        """The value under `key`, or None when there is none."""
        try:
            value = self.client.get(self._prefix + key)
        except redis.RedisError as exc:
            raise CacheError(f"redis GET failed: {exc}") from exc
        return _as_bytes(value)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The values under `keys`, in order, None where there is none (one round trip)."""
        if not keys:
            return []
        try:
            values = self.client.mget([self._prefix + k for k in keys])
        except redis.RedisError as exc:
            raise CacheError(f"redis MGET failed: {exc}") from exc
        return [_as_bytes(v) for v in values]

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        """Store `value` under `key`, expiring after `ttl_s` seconds when given."""
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))
        try:
            self.client.set(self._prefix + key, value, px=px)
        except redis.RedisError as exc:
            raise CacheError(f"redis SET failed: {exc}") from exc

    def set_many(self, values: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        """Store several values in one round trip."""
        px = None if ttl_s is None else max(1, int(ttl_s * 1000))
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key, value in values.items():
                    pipe.set(self._prefix + key, value, px=px)
                pipe.execute()
        except redis.RedisError as exc:
            raise CacheError(f"redis pipeline SET failed: {exc}") from exc

    def delete(self, key: str) -> None:
        """Forget `key`."""
        try:
            self.client.delete(self._prefix + key)
        except redis.RedisError as exc:
            raise CacheError(f"redis DEL failed: {exc}") from exc

    def ping(self) -> bool:
        """True when Redis answers now; never raises."""
        try:
            return bool(self.client.ping())
        except (redis.RedisError, CacheError):
            return False

    def close(self) -> None:
        """Release the connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None


def _as_bytes(value: bytes | str | None) -> bytes | None:
    """redis-py answers bytes (no decode_responses); its types also allow str."""
    if value is None or isinstance(value, bytes):
        return value
    return value.encode()
