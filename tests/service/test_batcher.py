"""Micro-batching in the inference thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

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
