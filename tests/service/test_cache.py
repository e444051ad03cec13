"""ImageCache over the in-process store: hits, misses, negative entries, corrupt entries, and a
store that is down."""

import zlib
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pytest
import structlog
from numpy.typing import NDArray
from structlog.testing import capture_logs

from service.cache import CacheHit, ImageCache, NegativeHit, NegativePut, Put
from service.errors import CacheError
from service.stores import MemoryStore
from tests.support.cache import SIZE, URL, CountingStore, FakeClock, pixels, sha


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


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    """Each test logs through structlog's defaults, whatever an earlier test configured."""
    structlog.reset_defaults()


def content_keys(store: MemoryStore) -> list[str]:
    return [k for k in store.live_keys() if k.startswith("img:content:")]


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
