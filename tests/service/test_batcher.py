"""Micro-batching in the inference thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from model.decode import Prediction
from service.batcher import InferenceBatcher


class _Recorder:
    """A stand-in classifier recording batch sizes; answers each image with its pixel value."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, images: Sequence[NDArray[np.uint8]]) -> list[Prediction]:
        if self.fail:
            raise RuntimeError("model exploded")
        time.sleep(self.delay_s)
        with self.lock:
            self.sizes.append(len(images))
        return [int(image[0, 0, 0]) for image in images]  # type: ignore[misc]


def _image(value: int) -> NDArray[np.uint8]:
    return np.full((2, 2, 3), value, dtype=np.uint8)


class TestInferenceBatcher:
    def test_full_batches_go_at_once(self) -> None:
        """Queued images are classified max_size at a time, each future gets its own answer."""
        recorder = _Recorder(delay_s=0.05)
        batcher = InferenceBatcher(recorder, max_size=4, max_wait_s=1.0).start()
        futures = [batcher.submit(_image(i)) for i in range(9)]
        assert list(range(9)) == [f.result(5) for f in futures]
        batcher.close()
        assert 9 == sum(recorder.sizes)
        assert max(recorder.sizes) == 4

    def test_a_lone_image_waits_at_most_max_wait(self) -> None:
        """A single image is classified after max_wait, not held for a full batch."""
        batcher = InferenceBatcher(_Recorder(), max_size=64, max_wait_s=0.05).start()
        began = time.monotonic()
        assert 7 == batcher.submit(_image(7)).result(5)
        assert time.monotonic() - began < 1.0
        batcher.close()

    def test_a_failing_model_fails_every_waiting_future(self) -> None:
        """When inference raises, every image of the batch hears about it."""
        batcher = InferenceBatcher(_Recorder(fail=True), max_size=8, max_wait_s=0.01).start()
        futures = [batcher.submit(_image(i)) for i in range(3)]
        for future in futures:
            with pytest.raises(RuntimeError, match="exploded"):
                future.result(5)
        batcher.close()

    def test_stats_and_observer_see_every_batch(self) -> None:
        """on_batch is called once per batch with its size."""
        seen: list[int] = []
        batcher = InferenceBatcher(_Recorder(), max_size=2, max_wait_s=0.01,
                                   on_batch=lambda size, _s: seen.append(size)).start()  # fmt: skip
        for future in [batcher.submit(_image(i)) for i in range(5)]:
            future.result(5)
        batcher.close()
        assert 5 == sum(seen)
        assert batcher.stats.images == 5
        assert batcher.stats.batches == len(seen)


class TestClassifyFromAnEventLoop:
    def test_each_awaiting_coroutine_gets_its_own_prediction(self) -> None:
        """classify() from many coroutines answers each with its own image's prediction."""
        batcher = InferenceBatcher(_Recorder(), max_size=4, max_wait_s=0.05).start()

        async def run() -> list[Prediction]:
            return list(await asyncio.gather(*(batcher.classify(_image(i)) for i in range(10))))

        assert list(range(10)) == asyncio.run(run())
        batcher.close()

    def test_a_batch_wakes_its_event_loop_once(self) -> None:
        """The predictions of one batch reach the loop in one thread-safe call, not one each."""
        batcher = InferenceBatcher(_Recorder(), max_size=8, max_wait_s=0.2).start()
        wakeups: list[int] = []

        async def run() -> list[Prediction]:
            loop = asyncio.get_running_loop()
            original = loop.call_soon_threadsafe

            def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
                wakeups.append(len(args[0]) if args else 0)
                return original(callback, *args, **kwargs)

            loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
            return list(await asyncio.gather(*(batcher.classify(_image(i)) for i in range(8))))

        assert list(range(8)) == asyncio.run(run())
        batcher.close()
        assert wakeups == [8]

    def test_a_failing_model_fails_every_awaiting_coroutine(self) -> None:
        """When inference raises, each awaiting coroutine gets the error."""
        batcher = InferenceBatcher(_Recorder(fail=True), max_size=8, max_wait_s=0.01).start()

        async def run() -> list[BaseException | Prediction]:
            tasks = [batcher.classify(_image(i)) for i in range(3)]
            return list(await asyncio.gather(*tasks, return_exceptions=True))

        outcomes = asyncio.run(run())
        batcher.close()
        assert [str(o) for o in outcomes] == ["model exploded"] * 3

    def test_a_cancelled_waiter_does_not_disturb_the_others(self) -> None:
        """A coroutine cancelled while its image waits is skipped; the rest get answers."""
        batcher = InferenceBatcher(_Recorder(delay_s=0.05), max_size=4, max_wait_s=0.1).start()

        async def run() -> list[Prediction]:
            tasks = [asyncio.ensure_future(batcher.classify(_image(i))) for i in range(4)]
            await asyncio.sleep(0.01)
            tasks[1].cancel()
            return [await t for i, t in enumerate(tasks) if i != 1]

        assert [0, 2, 3] == asyncio.run(run())
        batcher.close()
