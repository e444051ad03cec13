"""The image stage: its cache reader and writer (calls from one event loop coalesced into
batches), and ImageStage.load against the local image server (decode budget, minimum size)."""

import asyncio
import io
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from structlog.testing import capture_logs

from service.cache import CacheHit, CacheResult, ImageCache, NegativeHit, NegativePut, Put
from service.fetch.fetcher import FetchConfig, ImageFetcher
from service.images import CacheReader, CacheWriter, ImageOutcome, ImageStage
from service.metrics import Metrics
from service.stores import MemoryStore
from tests.support.image_server import Behaviour, ImageServer

SIZE = 8


class GatedCache(ImageCache):
    """An ImageCache whose ``get_many`` records each call and can be held until released."""

    def __init__(self) -> None:
        super().__init__(MemoryStore(), image_size=SIZE)
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def get_many(self, urls: list[str]) -> list[CacheResult]:
        self.calls.append(list(urls))
        self.entered.set()
        self.gate.wait(10)
        return super().get_many(urls)


def _pixels(value: int) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), value, dtype=np.uint8)


def _sha(value: int) -> str:
    return f"{value:064x}"


def test_a_single_lookup_returns_what_the_cache_holds() -> None:
    """One URL alone is looked up at once and gets its pixels, its negative answer or None."""
    cache = GatedCache()
    cache.put("http://h/a.jpg", _pixels(3), _sha(3))
    cache.put_negative("http://h/b.jpg", "IMAGE_UNAVAILABLE", "HTTP 404")
    reader = CacheReader(cache)

    async def run() -> list[CacheResult]:
        return [await reader.get(u) for u in ("http://h/a.jpg", "http://h/b.jpg", "http://h/c")]

    hit, negative, miss = asyncio.run(run())
    assert isinstance(hit, CacheHit)
    assert int(hit.pixels[0, 0, 0]) == 3
    assert isinstance(negative, NegativeHit)
    assert negative.reason == "HTTP 404"
    assert miss is None
    assert reader.lookups == 3


def test_lookups_queued_while_one_runs_go_together_into_the_next() -> None:
    """While a read is in flight, new URLs wait and are then read in one batch, in order."""
    cache = GatedCache()
    for i in range(10):
        cache.put(f"http://h/{i}.jpg", _pixels(i), _sha(i + 1))
    reader = CacheReader(cache)

    async def run() -> list[CacheResult]:
        cache.gate.clear()
        first = asyncio.ensure_future(reader.get("http://h/0.jpg"))
        await asyncio.to_thread(cache.entered.wait, 10)
        rest = [asyncio.ensure_future(reader.get(f"http://h/{i}.jpg")) for i in range(1, 10)]
        await asyncio.sleep(0.05)
        cache.gate.set()
        return [await first, *[await f for f in rest]]

    results = asyncio.run(run())
    assert cache.calls == [["http://h/0.jpg"], [f"http://h/{i}.jpg" for i in range(1, 10)]]
    assert [int(r.pixels[0, 0, 0]) for r in results if isinstance(r, CacheHit)] == list(range(10))
    assert reader.lookups == 2


def test_a_batch_never_exceeds_max_batch() -> None:
    """A backlog larger than max_batch is read in slices of at most max_batch URLs."""
    cache = GatedCache()
    reader = CacheReader(cache, max_batch=4)

    async def run() -> list[CacheResult]:
        cache.gate.clear()
        futures = [asyncio.ensure_future(reader.get(f"http://h/{i}")) for i in range(11)]
        await asyncio.sleep(0)
        await asyncio.to_thread(cache.entered.wait, 10)
        cache.gate.set()
        return list(await asyncio.gather(*futures))

    results = asyncio.run(run())
    assert results == [None] * 11
    assert [len(c) for c in cache.calls] == [4, 4, 3]


def test_a_bug_in_the_cache_reaches_every_waiter_and_the_reader_goes_on() -> None:
    """An unexpected exception fails that batch's lookups, and later lookups still work."""

    class Broken(GatedCache):
        def __init__(self) -> None:
            super().__init__()
            self.broken = True

        def get_many(self, urls: list[str]) -> list[CacheResult]:
            if self.broken:
                self.broken = False
                raise RuntimeError("bug")
            return super().get_many(urls)

    cache = Broken()
    reader = CacheReader(cache)

    async def run() -> CacheResult:
        with pytest.raises(RuntimeError, match="bug"):
            await reader.get("http://h/x")
        return await reader.get("http://h/x")

    assert asyncio.run(run()) is None


def test_max_batch_must_be_positive() -> None:
    """A reader that could never read anything is refused."""
    with pytest.raises(ValueError, match="max_batch"):
        CacheReader(GatedCache(), max_batch=0)


class CountingCache(ImageCache):
    """An ImageCache over memory recording each ``put_many`` batch; can be held until released."""

    def __init__(self) -> None:
        super().__init__(MemoryStore(), image_size=SIZE)
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def put_many(self, writes: Sequence[Put | NegativePut]) -> None:
        self.batches.append(len(writes))
        self.entered.set()
        self.gate.wait(10)
        super().put_many(writes)


async def _queue_while_stuck(
    cache: CountingCache, writer: CacheWriter, later: Sequence[Put | NegativePut]
) -> None:
    """Hold the store inside a first write, queue ``later`` meanwhile, release, flush."""
    cache.gate.clear()
    writer.put(Put("http://h/0", _pixels(0), _sha(1)))
    await asyncio.to_thread(cache.entered.wait, 10)
    for write in later:
        writer.put(write)
    cache.gate.set()
    await writer.flush()


def test_writes_queued_while_one_runs_land_together_and_flush_waits_for_them() -> None:
    """put() returns at once; writes queued during a write land in one batch; flush waits."""
    cache = CountingCache()
    writer = CacheWriter(cache)

    later: list[Put | NegativePut] = [
        Put(f"http://h/{i}", _pixels(i), _sha(i + 1)) for i in (1, 2, 3, 4, 5)
    ]
    later.append(NegativePut("http://h/x", "IMAGE_UNAVAILABLE", "HTTP 404"))
    asyncio.run(_queue_while_stuck(cache, writer, later))
    assert cache.batches == [1, 6]
    results = cache.get_many([f"http://h/{i}" for i in range(6)] + ["http://h/x"])
    assert [type(r) for r in results] == [CacheHit] * 6 + [NegativeHit]


def test_writes_beyond_the_queue_bound_are_dropped_and_counted() -> None:
    """While the store is stuck, at most max_queued writes wait; the rest are dropped."""
    cache = CountingCache()
    writer = CacheWriter(cache, max_batch=2, max_queued=3)

    later = [Put(f"http://h/{i}", _pixels(i), _sha(i + 1)) for i in (1, 2, 3, 4, 5)]
    asyncio.run(_queue_while_stuck(cache, writer, later))
    assert writer.dropped == 2
    assert cache.batches == [1, 2, 1]
    hits = cache.get_many([f"http://h/{i}" for i in range(6)])
    assert [isinstance(h, CacheHit) for h in hits] == [True] * 4 + [False] * 2


def test_a_failing_write_is_logged_and_later_writes_still_land() -> None:
    """A bug raised by put_many loses that batch only; the writer keeps going."""

    class Broken(CountingCache):
        def put_many(self, writes: Sequence[Put | NegativePut]) -> None:
            if not self.batches:
                self.batches.append(-1)
                raise RuntimeError("bug")
            super().put_many(writes)

    cache = Broken()
    writer = CacheWriter(cache)

    async def run() -> None:
        writer.put(Put("http://h/0", _pixels(0), _sha(1)))
        await writer.flush()
        writer.put(Put("http://h/1", _pixels(1), _sha(2)))
        await writer.flush()

    with capture_logs() as logs:
        asyncio.run(run())
    assert [e["event"] for e in logs] == ["cache_write_failed"]
    assert [type(r) for r in cache.get_many(["http://h/0", "http://h/1"])] == [type(None), CacheHit]


def test_writer_bounds_must_be_positive() -> None:
    """A writer that could never write is refused."""
    with pytest.raises(ValueError, match="bounds"):
        CacheWriter(CountingCache(), max_queued=0)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _load(
    server: ImageServer, bodies: dict[str, bytes], *, budget: int = 10_000, min_side: int = 1
) -> tuple[list[ImageOutcome], list[ImageOutcome], Metrics, ImageStage]:
    """Serve ``bodies``, load them all at once through an ImageStage with an in-memory cache,
    then once more (from the cache); both rounds' outcomes, the metrics and the stage."""
    urls = [server.script(name, Behaviour(body=body, content_type="image/png"))
            for name, body in bodies.items()]  # fmt: skip
    metrics = Metrics()
    config = FetchConfig(allowed_networks=("127.0.0.0/8",), retries=0)

    async def run() -> tuple[list[ImageOutcome], list[ImageOutcome], ImageStage]:
        with ThreadPoolExecutor(4) as pool:
            async with ImageFetcher(config) as fetcher:
                stage = ImageStage(
                    fetcher, ImageCache(MemoryStore(), image_size=SIZE), image_size=SIZE,
                    decode_pool=pool, max_pixels=1_000_000, metrics=metrics,
                    decode_budget_pixels=budget, min_side=min_side,
                )  # fmt: skip
                first = await asyncio.gather(*(stage.load(url) for url in urls))
                await stage.flush()
                again = await asyncio.gather(*(stage.load(url) for url in urls))
                return list(first), list(again), stage

    first, again, stage = asyncio.run(run())
    return first, again, metrics, stage


def _status(outcome: ImageOutcome) -> tuple[str, str | None]:
    return ("OK" if outcome.pixels is not None else str(outcome.status)), outcome.reason


@pytest.mark.integration
class TestImageStageDecode:
    """ImageStage.load(): what the decode budget and the minimum side let through."""

    def test_images_beyond_the_budget_together_are_decoded_in_turn(
        self, image_server: ImageServer
    ) -> None:
        """Eight 80x80 images against room for one decode each at a time all decode; the
        others waited, and no pixel stays held."""
        bodies = {f"p{i}": _png(80, 80 + i) for i in range(8)}
        first, _, metrics, stage = _load(image_server, bodies, budget=7_000)
        assert [("OK", None)] * 8 == [_status(o) for o in first]
        assert (0, 0) == (stage.budget.in_use, stage.budget.waiting)
        assert stage.budget.waits >= 1
        summary = metrics.summary()
        assert stage.budget.waits == summary["enrich_decode_waits_total"]
        assert b"enrich_decode_pixels 0.0" in metrics.render()

    def test_an_image_over_the_whole_budget_is_invalid_and_remembered(
        self, image_server: ImageServer
    ) -> None:
        """An image needing more pixels than the whole budget is IMAGE_INVALID, and the cache
        answers the next load with the same reason; a smaller one still decodes."""
        first, again, _, stage = _load(
            image_server, {"big": _png(101, 100), "fits": _png(100, 100)}, budget=10_000
        )
        reason = (
            "image needs 10,100 pixels decoded, more than the whole decode budget of 10,000 pixels"
        )
        assert [("IMAGE_INVALID", reason), ("OK", None)] == [_status(o) for o in first]
        assert [("IMAGE_INVALID", reason), ("OK", None)] == [_status(o) for o in again]
        assert [True, True] == [o.info.from_cache for o in again]
        assert (1, 0) == (image_server.hits["/scripted/big"], stage.budget.in_use)

    @pytest.mark.parametrize(
        ("width", "height", "too_small"), [(1, 1, True), (31, 500, True), (32, 32, False)]
    )
    def test_an_image_with_a_short_side_under_the_minimum_is_invalid(
        self, image_server: ImageServer, width: int, height: int, too_small: bool
    ) -> None:
        """A tracking pixel or a thin strip is IMAGE_INVALID with its size in the reason, and
        remembered as such."""
        reason = f"image of {width}x{height} pixels is too small (short side under 32 pixels)"
        expected = ("IMAGE_INVALID", reason) if too_small else ("OK", None)
        first, again, _, _ = _load(image_server, {"img": _png(width, height)}, min_side=32)
        assert [expected, expected] == [_status(first[0]), _status(again[0])]
