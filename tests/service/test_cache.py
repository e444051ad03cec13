"""The image cache: URL normalisation, the in-process store, and ImageCache on it and on Redis."""

import hashlib
import socket
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import structlog
from numpy.typing import NDArray
from structlog.testing import capture_logs

from model.preprocess import decode_image
from service.cache import (
    CacheHit,
    ImageCache,
    KeyValueStore,
    MemoryStore,
    NegativeHit,
    NegativePut,
    Put,
    normalise_url,
)
from service.errors import CacheError
from service.redis_store import RedisStore

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


class BrokenStore(CountingStore):
    """A store whose backend is always down: every call raises CacheError."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())

    def get(self, key: str) -> bytes | None:
        self.calls["get"] += 1
        raise CacheError("down")

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        self.calls["get_many"] += 1
        raise CacheError("down")

    def set_many(self, values: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        self.calls["set_many"] += 1
        raise CacheError("down")


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
def clock() -> FakeClock:
    """A fake clock, shared by the store and the cache of a test."""
    return FakeClock()


@pytest.fixture
def memory(clock: FakeClock) -> MemoryStore:
    """An in-process store on the fake clock."""
    return MemoryStore(clock=clock)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A started redis-server of the test's own, terminated afterwards."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def pixels(seed: int, size: int = SIZE) -> NDArray[np.uint8]:
    """Random RGB pixels, different for each seed."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def sha(text: str) -> str:
    """A sha256 hex digest standing for the downloaded bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


def content_keys(store: MemoryStore) -> list[str]:
    return [k for k in store.live_keys() if k.startswith("img:content:")]


class TestNormaliseUrl:
    """normalise_url()."""

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("HTTP://Example.COM/Path/Img.JPG", "http://example.com/Path/Img.JPG"),
            ("http://example.com:80/a.jpg", "http://example.com/a.jpg"),
            ("https://example.com:443/a.jpg", "https://example.com/a.jpg"),
            ("http://example.com:443/a.jpg", "http://example.com:443/a.jpg"),
            ("https://example.com:8443/a.jpg", "https://example.com:8443/a.jpg"),
            ("http://example.com:/a.jpg", "http://example.com/a.jpg"),
            ("http://example.com/a.jpg#zoom", "http://example.com/a.jpg"),
            ("http://example.com/a.jpg?w=2&h=1", "http://example.com/a.jpg?w=2&h=1"),
            ("http://example.com/a.jpg?h=1&w=2", "http://example.com/a.jpg?h=1&w=2"),
            ("http://example.com/%7euser/a%2Db%5f.jpg", "http://example.com/~user/a-b_.jpg"),
            ("http://example.com/a%2fb%3f.jpg", "http://example.com/a%2Fb%3F.jpg"),
            ("http://example.com/a?q=%e2%82%ac+x", "http://example.com/a?q=%E2%82%AC+x"),
            ("http://Example.com", "http://example.com/"),
            ("http://User:PW@Example.com:80/a", "http://User:PW@example.com/a"),
            ("http://[2001:DB8::1]:80/a", "http://[2001:db8::1]/a"),
            ("http://[2001:DB8::1]:8080/a", "http://[2001:db8::1]:8080/a"),
            ("http://[::1/a#f", "http://[::1/a"),
        ],
    )
    def test_table(self, url: str, expected: str) -> None:
        """Scheme, host, default port, fragment and escapes are normalised; the rest is kept."""
        assert expected == normalise_url(url)

    def test_equivalent_urls_share_a_key(self, memory: MemoryStore) -> None:
        """Two spellings of one URL name the same cache entry."""
        cache = ImageCache(memory, image_size=SIZE)
        assert cache.url_key("HTTP://Img.Example.com:80/%7Ea.jpg#x") == cache.url_key(
            "http://img.example.com/~a.jpg"
        )

    def test_query_order_matters(self, memory: MemoryStore) -> None:
        """Reordered query parameters are a different URL."""
        cache = ImageCache(memory, image_size=SIZE)
        assert cache.url_key("http://e.com/a?x=1&y=2") != cache.url_key("http://e.com/a?y=2&x=1")


class TestMemoryStore:
    """MemoryStore: a dict with expiry and an LRU bound."""

    def test_set_then_get(self, memory: MemoryStore) -> None:
        """A value written is read back; a key never written reads as None."""
        memory.set("k", b"v")
        assert (b"v", None) == (memory.get("k"), memory.get("other"))

    def test_get_many_in_key_order(self, memory: MemoryStore) -> None:
        """get_many answers in key order, None for absent keys."""
        memory.set_many({"a": b"1", "b": b"2"})
        assert [b"1", None, b"2"] == memory.get_many(["a", "zz", "b"])

    @pytest.mark.parametrize(
        ("elapsed", "expected"), [(0.0, b"v"), (9.99, b"v"), (10.0, None), (500.0, None)]
    )
    def test_ttl(
        self, memory: MemoryStore, clock: FakeClock, elapsed: float, expected: bytes
    ) -> None:
        """A value written with a TTL of 10 s is there until 10 s have passed on the clock."""
        memory.set("k", b"v", ttl_s=10)
        clock.advance(elapsed)
        assert expected == memory.get("k")

    def test_no_ttl_never_expires(self, memory: MemoryStore, clock: FakeClock) -> None:
        """A value written without a TTL outlives any wait."""
        memory.set("k", b"v")
        clock.advance(1e9)
        assert b"v" == memory.get("k")

    def test_expired_entries_are_not_counted(self, memory: MemoryStore, clock: FakeClock) -> None:
        """len() and live_keys() see only live entries."""
        memory.set("short", b"v", ttl_s=1)
        memory.set("long", b"v", ttl_s=100)
        clock.advance(2)
        assert (1, ["long"]) == (len(memory), memory.live_keys())

    def test_delete(self, memory: MemoryStore) -> None:
        """A deleted key reads as None; deleting an absent key is fine."""
        memory.set("k", b"v")
        memory.delete("k")
        memory.delete("never")
        assert None is memory.get("k")

    def test_lru_bound_evicts_least_recently_used(self, clock: FakeClock) -> None:
        """Past max_entries the entry read or written longest ago goes first."""
        store = MemoryStore(max_entries=2, clock=clock)
        store.set("a", b"1")
        store.set("b", b"2")
        store.get("a")
        store.set("c", b"3")
        assert ["a", "c"] == store.live_keys()

    def test_lru_bound_holds_for_set_many(self) -> None:
        """A batch larger than the bound keeps only its last entries."""
        store = MemoryStore(max_entries=3)
        store.set_many({str(i): b"x" for i in range(10)})
        assert ["7", "8", "9"] == store.live_keys()

    @pytest.mark.parametrize("max_entries", [0, -1])
    def test_bad_bound(self, max_entries: int) -> None:
        """A bound below one is refused."""
        with pytest.raises(ValueError, match="max_entries"):
            MemoryStore(max_entries=max_entries)

    def test_ping_and_close(self, memory: MemoryStore) -> None:
        """ping is True; close drops every entry."""
        memory.set("k", b"v")
        memory.close()
        assert (True, 0) == (memory.ping(), len(memory))


class TestImageCache:
    """ImageCache over a MemoryStore."""

    def test_round_trip(self, memory: MemoryStore) -> None:
        """put then get gives back the pixels, content hash and HTTP validators."""
        cache = ImageCache(memory, image_size=SIZE)
        image = pixels(1)
        cache.put(URL, image, sha("a"), etag='"e1"', last_modified="Tue, 01 Jul 2025 10:00:00 GMT")
        hit = cache.get(URL)
        assert isinstance(hit, CacheHit)
        assert (sha("a"), '"e1"', "Tue, 01 Jul 2025 10:00:00 GMT") == (
            hit.sha256,
            hit.etag,
            hit.last_modified,
        )
        np.testing.assert_array_equal(image, hit.pixels)
        assert ((SIZE, SIZE, 3), np.dtype(np.uint8), False) == (
            hit.pixels.shape,
            hit.pixels.dtype,
            hit.pixels.flags.writeable,
        )

    def test_miss(self, memory: MemoryStore) -> None:
        """A URL never put is a miss, counted."""
        cache = ImageCache(memory, image_size=SIZE)
        assert None is cache.get(URL)
        assert 1 == cache.stats["misses"]

    def test_equivalent_url_hits(self, memory: MemoryStore) -> None:
        """An entry put under one spelling of a URL is found under another."""
        cache = ImageCache(memory, image_size=SIZE)
        cache.put("HTTPS://IMG.example.com:443/p/1.jpg#top", pixels(1), sha("a"))
        assert isinstance(cache.get(URL), CacheHit)

    def test_sizes_are_separate(self, memory: MemoryStore) -> None:
        """An entry for one image size is not an entry for another."""
        ImageCache(memory, image_size=SIZE).put(URL, pixels(1), sha("a"))
        assert None is ImageCache(memory, image_size=SIZE * 2).get(URL)

    def test_get_many_takes_two_round_trips(self, memory: MemoryStore) -> None:
        """get_many reads all headers in one call and all distinct contents in a second."""
        counting = CountingStore(memory)
        cache = ImageCache(counting, image_size=SIZE)
        cache.put("http://e.com/1", pixels(1), sha("a"))
        cache.put("http://e.com/2", pixels(1), sha("a"))
        cache.put("http://e.com/3", pixels(3), sha("c"))
        cache.put_negative("http://e.com/4", "IMAGE_INVALID", "not an image")
        counting.calls.clear()
        urls = [f"http://e.com/{i}" for i in (1, 2, 3, 4, 5)]
        results = cache.get_many(urls)
        assert Counter({"get_many": 2}) == counting.calls
        assert [CacheHit, CacheHit, CacheHit, NegativeHit, type(None)] == [type(r) for r in results]
        assert Counter({"hits": 3, "negative_hits": 1, "misses": 1}) == +cache.stats

    def test_get_many_of_nothing(self, memory: MemoryStore) -> None:
        """An empty list is answered without asking the store."""
        counting = CountingStore(memory)
        assert [] == ImageCache(counting, image_size=SIZE).get_many([])
        assert Counter() == counting.calls

    def test_same_content_is_stored_once(self, memory: MemoryStore) -> None:
        """Two URLs whose bytes have the same sha256 share one content entry."""
        cache = ImageCache(memory, image_size=SIZE)
        cache.put("http://a.com/x.jpg", pixels(1), sha("same"))
        cache.put("http://b.com/y.jpg", pixels(1), sha("same"))
        hits = cache.get_many(["http://a.com/x.jpg", "http://b.com/y.jpg"])
        assert 1 == len(content_keys(memory))
        assert [sha("same")] * 2 == [h.sha256 for h in hits if isinstance(h, CacheHit)]

    def test_get_by_content(self, memory: MemoryStore) -> None:
        """Pixels are found by the content hash alone; an unknown hash is a content miss."""
        cache = ImageCache(memory, image_size=SIZE)
        cache.put(URL, pixels(1), sha("a"))
        found = cache.get_by_content(sha("a"))
        assert found is not None
        np.testing.assert_array_equal(pixels(1), found)
        assert None is cache.get_by_content(sha("b"))
        assert (1, 1) == (cache.stats["content_hits"], cache.stats["content_misses"])

    @pytest.mark.parametrize("status", ["IMAGE_UNAVAILABLE", "IMAGE_INVALID"])
    def test_negative_entry(self, memory: MemoryStore, status: str) -> None:
        """A negative entry reads back with its status and reason, counted as a negative hit."""
        cache = ImageCache(memory, image_size=SIZE)
        cache.put_negative(URL, status, "HTTP 404")  # type: ignore[arg-type]
        assert NegativeHit(status, "HTTP 404") == cache.get(URL)  # type: ignore[arg-type]
        assert 1 == cache.stats["negative_hits"]

    @pytest.mark.parametrize(
        ("elapsed", "expected_type"), [(59.0, NegativeHit), (60.0, type(None))]
    )
    def test_negative_entry_expires(
        self, memory: MemoryStore, clock: FakeClock, elapsed: float, expected_type: type
    ) -> None:
        """A negative entry is gone once negative_ttl_s has passed."""
        cache = ImageCache(memory, image_size=SIZE, negative_ttl_s=60, clock=clock)
        cache.put_negative(URL, "IMAGE_UNAVAILABLE", "timeout")
        clock.advance(elapsed)
        assert expected_type is type(cache.get(URL))

    def test_positive_entry_outlives_negative_ttl(
        self, memory: MemoryStore, clock: FakeClock
    ) -> None:
        """Pixels are kept for ttl_s, far beyond negative_ttl_s."""
        cache = ImageCache(memory, image_size=SIZE, ttl_s=3600, negative_ttl_s=60, clock=clock)
        cache.put(URL, pixels(1), sha("a"))
        clock.advance(3599)
        assert isinstance(cache.get(URL), CacheHit)
        clock.advance(1)
        assert None is cache.get(URL)

    def test_put_replaces_negative(self, memory: MemoryStore) -> None:
        """A successful fetch after a failed one replaces the negative entry."""
        cache = ImageCache(memory, image_size=SIZE)
        cache.put_negative(URL, "IMAGE_UNAVAILABLE", "timeout")
        cache.put(URL, pixels(1), sha("a"))
        assert isinstance(cache.get(URL), CacheHit)

    def test_put_many_writes_a_batch_in_one_round_trip_per_ttl(self, memory: MemoryStore) -> None:
        """Positive and negative writes of a batch take one set_many each, then all read back."""
        counting = CountingStore(memory)
        cache = ImageCache(counting, image_size=SIZE)
        cache.put_many(
            [
                Put("http://e.com/1", pixels(1), sha("a")),
                Put("http://e.com/2", pixels(2), sha("b"), etag='"e"'),
                NegativePut("http://e.com/3", "IMAGE_UNAVAILABLE", "HTTP 404"),
            ]
        )
        assert Counter({"set_many": 2}) == counting.calls
        hits = cache.get_many([f"http://e.com/{i}" for i in (1, 2, 3)])
        assert [CacheHit, CacheHit, NegativeHit] == [type(h) for h in hits]

    def test_a_header_only_put_points_at_cached_content(self, memory: MemoryStore) -> None:
        """A Put without pixels writes only the URL's header, which reads back the known pixels."""
        cache = ImageCache(memory, image_size=SIZE)
        cache.put("http://e.com/1", pixels(7), sha("a"))
        before = set(content_keys(memory))
        cache.put_many([Put("http://e.com/2", None, sha("a"))])
        hit = cache.get("http://e.com/2")
        assert isinstance(hit, CacheHit)
        np.testing.assert_array_equal(pixels(7), hit.pixels)
        assert before == set(content_keys(memory))

    def test_the_later_write_of_a_url_in_a_batch_wins(self, memory: MemoryStore) -> None:
        """A URL written negatively then positively in one batch ends up positive, and back."""
        cache = ImageCache(memory, image_size=SIZE)
        cache.put_many(
            [NegativePut("http://e.com/1", "IMAGE_UNAVAILABLE", "x"),
             Put("http://e.com/1", pixels(1), sha("a")),
             Put("http://e.com/2", pixels(1), sha("a")),
             NegativePut("http://e.com/2", "IMAGE_INVALID", "y")]
        )  # fmt: skip
        assert [CacheHit, NegativeHit] == [
            type(h) for h in cache.get_many(["http://e.com/1", "http://e.com/2"])
        ]

    def test_a_bad_write_in_a_batch_writes_nothing(self, memory: MemoryStore) -> None:
        """One write with wrong pixels or an unknown status refuses the whole batch."""
        cache = ImageCache(memory, image_size=SIZE)
        wrong = np.zeros((2, 2, 3), np.uint8)
        with pytest.raises(ValueError, match="pixels"):
            cache.put_many([Put("http://e.com/1", pixels(1), sha("a")),
                            Put("http://e.com/2", wrong, sha("b"))])  # fmt: skip
        with pytest.raises(ValueError, match="status"):
            cache.put_many([NegativePut("http://e.com/3", "CLASSIFIED", "no")])  # type: ignore[arg-type]
        assert 0 == len(memory)

    @pytest.mark.parametrize(("writer", "reader"), [(False, True), (True, False)])
    def test_raw_and_compressed_entries_read_back_either_way(
        self, memory: MemoryStore, writer: bool, reader: bool
    ) -> None:
        """Pixels stored raw or zlib-compressed read back the same, whatever the reader's mode."""
        image = np.arange(SIZE * SIZE * 3, dtype=np.uint8).reshape(SIZE, SIZE, 3)
        ImageCache(memory, image_size=SIZE, compress=writer).put(URL, image, sha("a"))
        (blob,) = [memory.get(k) for k in content_keys(memory)]
        assert blob is not None
        assert (len(blob) == SIZE * SIZE * 3) is not writer
        hit = ImageCache(memory, image_size=SIZE, compress=reader).get(URL)
        assert isinstance(hit, CacheHit)
        np.testing.assert_array_equal(image, hit.pixels)

    def test_long_reason_is_truncated(self, memory: MemoryStore) -> None:
        """A reason is kept to its first 500 characters."""
        cache = ImageCache(memory, image_size=SIZE)
        cache.put_negative(URL, "IMAGE_INVALID", "x" * 10_000)
        hit = cache.get(URL)
        assert isinstance(hit, NegativeHit)
        assert 500 == len(hit.reason)

    @pytest.mark.parametrize(
        "header",
        [
            b"not json",
            b"\xff\xfe",
            b"[1, 2]",
            b'{"v": 2, "sha256": "' + sha("a").encode() + b'"}',
            b'{"v": 1, "sha256": "xyz"}',
            b'{"v": 1, "sha256": "' + sha("a").encode() + b'", "etag": 5}',
            b'{"v": 1, "negative": {"status": "NOPE", "reason": "x"}}',
            b'{"v": 1, "negative": "IMAGE_INVALID"}',
        ],
    )
    def test_corrupt_header_is_a_miss_and_deleted(self, memory: MemoryStore, header: bytes) -> None:
        """A header the cache did not write counts as a miss (and as corrupt) and is removed."""
        cache = ImageCache(memory, image_size=SIZE)
        cache.put(URL, pixels(1), sha("a"))
        memory.set(cache.url_key(URL), header)
        assert None is cache.get(URL)
        assert (None, 1, 1) == (
            memory.get(cache.url_key(URL)),
            cache.stats["misses"],
            cache.stats["corrupt"],
        )

    @pytest.mark.parametrize(
        "content",
        [
            b"not zlib",
            zlib.compress(bytes(SIZE * SIZE * 3 - 1)),
            zlib.compress(bytes(SIZE * SIZE * 3 + 1)),
            zlib.compress(bytes(SIZE * SIZE * 3)) + b"trailing",
            zlib.compress(bytes(SIZE * SIZE * 3))[:-5],
        ],
    )
    def test_corrupt_content_is_a_miss_and_deleted(
        self, memory: MemoryStore, content: bytes
    ) -> None:
        """Content of the wrong length or not zlib counts as a miss everywhere and is removed."""
        cache = ImageCache(memory, image_size=SIZE)
        cache.put(URL, pixels(1), sha("a"))
        memory.set(cache.content_key(sha("a")), content)
        assert None is cache.get(URL)
        memory.set(cache.content_key(sha("a")), content)
        assert None is cache.get_by_content(sha("a"))
        assert (None, 1, 1, 2) == (
            memory.get(cache.content_key(sha("a"))),
            cache.stats["misses"],
            cache.stats["content_misses"],
            cache.stats["corrupt"],
        )

    @pytest.mark.parametrize(
        ("image", "digest", "match"),
        [
            (pixels(1, SIZE + 1), sha("a"), "pixels must be uint8"),
            (pixels(1)[:, :, :2], sha("a"), "pixels must be uint8"),
            (pixels(1).astype(np.float32), sha("a"), "pixels must be uint8"),
            (pixels(1), "ABC", "sha256 must be"),
            (pixels(1), sha("a").upper(), "sha256 must be"),
        ],
    )
    def test_put_refuses_bad_arguments(
        self, memory: MemoryStore, image: NDArray[np.uint8], digest: str, match: str
    ) -> None:
        """Pixels of the wrong shape or type, or a malformed hash, are caller bugs: ValueError."""
        with pytest.raises(ValueError, match=match):
            ImageCache(memory, image_size=SIZE).put(URL, image, digest)

    def test_put_negative_refuses_unknown_status(self, memory: MemoryStore) -> None:
        """Only the contract's two image failure statuses can be cached."""
        with pytest.raises(ValueError, match="status must be one of"):
            ImageCache(memory, image_size=SIZE).put_negative(URL, "CLASSIFIED", "x")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"image_size": 0}, "image_size"),
            ({"image_size": SIZE, "ttl_s": 0}, "TTLs"),
            ({"image_size": SIZE, "negative_ttl_s": -1}, "TTLs"),
            ({"image_size": SIZE, "retry_after_s": -1}, "retry_after_s"),
        ],
    )
    def test_bad_settings(self, memory: MemoryStore, kwargs: dict[str, float], match: str) -> None:
        """Settings that cannot work are refused when the cache is built."""
        with pytest.raises(ValueError, match=match):
            ImageCache(memory, **kwargs)  # type: ignore[arg-type]


class TestImageCacheDegrades:
    """ImageCache over a store that always fails: never raises, backs off, counts."""

    def test_every_call_degrades(self, clock: FakeClock) -> None:
        """Each public method answers None or does nothing instead of raising."""
        cache = ImageCache(BrokenStore(), image_size=SIZE, clock=clock, retry_after_s=0)
        results = (
            cache.get(URL),
            cache.get_many([URL, URL]),
            cache.get_by_content(sha("a")),
            cache.put(URL, pixels(1), sha("a")),  # type: ignore[func-returns-value]
            cache.put_negative(URL, "IMAGE_INVALID", "x"),  # type: ignore[func-returns-value]
        )
        assert (None, [None, None], None, None, None) == results
        assert (False, 5) == (cache.available, cache.stats["errors"])

    def test_backs_off_for_retry_after(self, clock: FakeClock) -> None:
        """After a failure the store is left alone for retry_after_s, then tried again."""
        store = BrokenStore()
        cache = ImageCache(store, image_size=SIZE, retry_after_s=5, clock=clock)
        with capture_logs() as logs:
            cache.get(URL)
            clock.advance(4.9)
            cache.get_many([URL, URL])
            cache.put(URL, pixels(1), sha("a"))
            assert 1 == store.calls.total()
            clock.advance(0.1)
            cache.get(URL)
        assert (2, 2, 3) == (store.calls.total(), cache.stats["errors"], cache.stats["skipped"])
        assert ["cache_unavailable"] == [e["event"] for e in logs]


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
