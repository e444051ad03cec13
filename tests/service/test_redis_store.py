"""RedisStore against the real Redis server, and without one."""

import time

import pytest

from service.errors import CacheError
from service.redis_store import RedisStore

pytestmark = pytest.mark.integration


class TestRedisStore:
    """Bytes in, bytes out, under the store's prefix."""

    def test_set_then_get(self, redis_store: RedisStore) -> None:
        """A value written is read back byte for byte."""
        payload = bytes(range(256)) * 10
        redis_store.set("image:abc", payload)
        assert payload == redis_store.get("image:abc")

    def test_missing_key(self, redis_store: RedisStore) -> None:
        """A key never written reads as None."""
        assert None is redis_store.get("nothing-here")

    def test_keys_carry_the_prefix(self, redis_store: RedisStore) -> None:
        """The raw key in Redis is the prefix followed by the store's key."""
        redis_store.set("k", b"v")
        assert b"v" == redis_store.client.get(redis_store.prefix + "k")

    def test_ttl_expires(self, redis_store: RedisStore) -> None:
        """A value written with a TTL is gone after it."""
        redis_store.set("short", b"v", ttl_s=0.2)
        assert b"v" == redis_store.get("short")
        time.sleep(0.4)
        assert None is redis_store.get("short")

    def test_many_in_one_round_trip(self, redis_store: RedisStore) -> None:
        """set_many then get_many returns the values in key order, None for absent keys."""
        redis_store.set_many({"a": b"1", "b": b"2"}, ttl_s=60)
        assert [b"1", None, b"2"] == redis_store.get_many(["a", "zz", "b"])

    def test_pixels_are_read_with_the_hiredis_parser(self, redis_store: RedisStore) -> None:
        """A read goes through hiredis (a dependency: it reads the cached pixels with half
        the CPU of redis-py's own parser, docs/performance.md), and a pixel-sized value
        comes back whole through it."""
        from redis._parsers import _HiredisParser

        payload = bytes(range(256)) * 675  # the size of 240 x 240 x 3 pixels
        redis_store.set_many({"px": payload}, ttl_s=60)
        assert [payload, None] == redis_store.get_many(["px", "nothing-here"])
        connection = redis_store.client.connection_pool.get_connection()
        try:
            assert isinstance(connection._parser, _HiredisParser)
        finally:
            redis_store.client.connection_pool.release(connection)

    def test_delete(self, redis_store: RedisStore) -> None:
        """A deleted key reads as None."""
        redis_store.set("gone", b"v")
        redis_store.delete("gone")
        assert None is redis_store.get("gone")


class TestRedisUnavailable:
    """Without a server the store raises CacheError, which callers treat as a cache miss."""

    def test_get_raises_cache_error(self) -> None:
        """A read against a port nobody listens on raises CacheError, quickly."""
        store = RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(CacheError, match="redis GET failed"):
            store.get("x")
        assert time.monotonic() - started < 5

    def test_ping_is_false(self) -> None:
        """ping answers False instead of raising."""
        assert False is RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.2).ping()

    def test_bad_url(self) -> None:
        """A malformed URL raises CacheError naming it."""
        with pytest.raises(CacheError, match="bad Redis URL"):
            RedisStore("nonsense://x").get("k")
