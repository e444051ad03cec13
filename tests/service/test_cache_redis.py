"""ImageCache over the real Redis server, and over a Redis of its own that stops, comes back
or stalls."""

import hashlib
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from model.preprocess import decode_image
from service.cache import CacheHit, ImageCache, NegativeHit
from service.redis_store import RedisStore
from tests.support.cache import SIZE, URL, CountingStore, FakeClock, pixels, sha


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop, pause and restart at will."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.run_dir / "redis.log").open("ab") as log:
            self._process = subprocess.Popen(
                [
                    *("redis-server", "--bind", "127.0.0.1", "--port", str(self.port)),
                    *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                    *("--dir", str(self.run_dir)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while self.cli("PING") != "PONG":
            if time.monotonic() > deadline:
                pytest.fail(f"private redis-server on port {self.port} did not answer PING")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    """Each test logs through structlog's defaults, whatever an earlier test configured."""
    structlog.reset_defaults()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A started redis-server of the test's own, terminated afterwards."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.integration
class TestImageCacheOnRedis:
    """ImageCache over the real Redis server."""

    def test_round_trip_of_a_real_photo(self, redis_store: RedisStore, shared_data: Path) -> None:
        """A real product photo at 224 x 224 comes back byte for byte, with its hash."""
        photo = next(iter(sorted((shared_data / "product-images").rglob("*.jpg"))))
        data = photo.read_bytes()
        image = decode_image(data, 224)
        digest = hashlib.sha256(data).hexdigest()
        cache = ImageCache(redis_store, image_size=224)
        cache.put(URL, image, digest, etag='W/"1"')
        hit = cache.get(URL)
        assert isinstance(hit, CacheHit)
        assert (digest, 'W/"1"', None) == (hit.sha256, hit.etag, hit.last_modified)
        np.testing.assert_array_equal(image, hit.pixels)
        found = cache.get_by_content(digest)
        assert found is not None
        np.testing.assert_array_equal(image, found)

    def test_entries_carry_the_ttl(self, redis_store: RedisStore) -> None:
        """Both keys of a put expire after ttl_s in Redis."""
        cache = ImageCache(redis_store, image_size=SIZE, ttl_s=300)
        cache.put(URL, pixels(1), sha("a"))
        keys = [cache.url_key(URL), cache.content_key(sha("a"))]
        ttls = [redis_store.client.pttl(redis_store.prefix + k) for k in keys]
        assert all(290_000 < t <= 300_000 for t in ttls), ttls

    def test_get_many_takes_two_round_trips(self, redis_store: RedisStore) -> None:
        """Against Redis, get_many of many URLs is two MGETs."""
        counting = CountingStore(redis_store)
        cache = ImageCache(counting, image_size=SIZE)
        for i in range(10):
            cache.put(f"http://e.com/{i}", pixels(i % 3), sha(str(i % 3)))
        counting.calls.clear()
        results = cache.get_many([f"http://e.com/{i}" for i in range(12)])
        assert Counter({"get_many": 2}) == counting.calls
        assert [CacheHit] * 10 + [type(None)] * 2 == [type(r) for r in results]

    def test_same_content_is_stored_once(self, redis_store: RedisStore) -> None:
        """Two URLs with the same content hash leave one content key in Redis."""
        cache = ImageCache(redis_store, image_size=SIZE)
        cache.put("http://a.com/x.jpg", pixels(1), sha("same"))
        cache.put("http://b.com/y.jpg", pixels(1), sha("same"))
        keys = list(redis_store.client.scan_iter(match=redis_store.prefix + "img:*"))
        content = [k for k in keys if b":img:content:" in k]
        assert (3, 1) == (len(keys), len(content))

    def test_negative_entry_expires(self, redis_store: RedisStore) -> None:
        """A negative entry written with a 1 s TTL is gone after it."""
        cache = ImageCache(redis_store, image_size=SIZE, negative_ttl_s=1)
        cache.put_negative(URL, "IMAGE_UNAVAILABLE", "HTTP 503")
        assert NegativeHit("IMAGE_UNAVAILABLE", "HTTP 503") == cache.get(URL)
        time.sleep(1.2)
        assert None is cache.get(URL)

    def test_corrupt_entry_is_deleted(self, redis_store: RedisStore) -> None:
        """A truncated content entry in Redis is a miss and is removed."""
        cache = ImageCache(redis_store, image_size=SIZE)
        cache.put(URL, pixels(1), sha("a"))
        key = cache.content_key(sha("a"))
        redis_store.set(key, (redis_store.get(key) or b"")[:-10])
        assert None is cache.get(URL)
        assert (None, 1) == (redis_store.get(key), cache.stats["corrupt"])


@pytest.mark.integration
class TestImageCacheRedisOutage:
    """ImageCache when its own Redis server stops, comes back, or stalls."""

    def test_stop_and_restart(self, private_redis: PrivateRedis, clock: FakeClock) -> None:
        """A stopped Redis degrades quietly (one warning, no calls while backing off); a
        restarted one is used again."""
        store = CountingStore(RedisStore(private_redis.url, socket_timeout=0.5))
        cache = ImageCache(store, image_size=SIZE, retry_after_s=5, clock=clock)
        cache.put(URL, pixels(1), sha("a"))
        assert isinstance(cache.get(URL), CacheHit)

        private_redis.stop()
        store.calls.clear()
        with capture_logs() as logs:
            started = time.monotonic()
            assert None is cache.get(URL)
            assert [None, None] == cache.get_many([URL, "http://e.com/2"])
            cache.put(URL, pixels(1), sha("a"))
            cache.put_negative(URL, "IMAGE_INVALID", "x")
            assert None is cache.get_by_content(sha("a"))
            assert time.monotonic() - started < 5
            assert (1, False) == (store.calls.total(), cache.available)
            clock.advance(5)
            assert None is cache.get(URL)
        assert (2, 2, 5) == (store.calls.total(), cache.stats["errors"], cache.stats["skipped"])
        assert [("cache_unavailable", "warning")] == [(e["event"], e["log_level"]) for e in logs]

        private_redis.start()
        clock.advance(5)
        with capture_logs() as logs:
            assert None is cache.get(URL)  # the restarted server is empty
            cache.put(URL, pixels(1), sha("a"))
            assert isinstance(cache.get(URL), CacheHit)
        assert True is cache.available
        assert ["cache_back"] == [e["event"] for e in logs]
        store.close()

    def test_slow_redis_degrades_within_the_timeout(
        self, private_redis: PrivateRedis, clock: FakeClock
    ) -> None:
        """A Redis that stops answering (CLIENT PAUSE) costs one socket timeout, not a hang."""
        store = RedisStore(private_redis.url, socket_timeout=0.2)
        cache = ImageCache(store, image_size=SIZE, retry_after_s=5, clock=clock)
        cache.put(URL, pixels(1), sha("a"))
        assert "OK" == private_redis.cli("CLIENT", "PAUSE", "1500")
        started = time.monotonic()
        with capture_logs() as logs:
            assert None is cache.get(URL)
            assert None is cache.get(URL)
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, elapsed
        assert (False, 1, 1) == (cache.available, cache.stats["errors"], cache.stats["skipped"])
        assert ["cache_unavailable"] == [e["event"] for e in logs]

        time.sleep(max(0.0, 1.6 - elapsed))
        clock.advance(5)
        assert isinstance(cache.get(URL), CacheHit)
        store.close()
