"""Micro-batching: images wait briefly to be classified together, in a dedicated thread.

:class:`InferenceBatcher` owns one thread that takes images from a queue and calls the
classifier with a batch as soon as it holds ``max_size`` images or its oldest image has
waited ``max_wait_s``. Fetching and decoding go on in other threads meanwhile; the answer
for each image is delivered to a ``concurrent.futures.Future`` (:meth:`InferenceBatcher.submit`)
or to an asyncio future (:meth:`InferenceBatcher.classify`). The asyncio futures of one batch
are settled with one wake-up of their event loop, not one per image.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog

__all__ = ["BatchStats", "InferenceBatcher"]

log = structlog.get_logger(__name__)

R = TypeVar("R")
"""What the classify function answers per input: a prediction, or a scored answer."""
ClassifyFn = Callable[[Sequence[Any]], Sequence[R]]
BatchObserver = Callable[[int, float], None]
Waiter = Future[Any] | asyncio.Future[Any]
Item = tuple[Any, Waiter, float]
Outcome = Any


@dataclass
class BatchStats:
    """Counts kept by the batcher: batches run, images classified, seconds of inference."""

    batches: int = 0
    images: int = 0
    seconds: float = 0.0


class InferenceBatcher(Generic[R]):
    """Collects inputs (images, or texts) into batches for ``classify`` in one inference
    thread; each input's answer is whatever ``classify`` returns for it (usually a
    :class:`~model.decode.Prediction`)."""

    def __init__(
        self,
        classify: ClassifyFn[R],
        *,
        max_size: int = 32,
        max_wait_s: float = 0.02,
        on_batch: BatchObserver | None = None,
    ) -> None:
        """``on_batch(size, seconds)`` is called after every batch (for metrics)."""
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self._classify = classify
        self.max_size = max_size
        self.max_wait_s = max(0.0, max_wait_s)
        self._on_batch = on_batch
        self._queue: queue.Queue[Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.stats = BatchStats()
        self._started = False

    def start(self) -> InferenceBatcher[R]:
        """Start the inference thread (once)."""
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def submit(self, image: Any) -> Future[R]:
        """Queue one prepared input; the future gets its answer or the batch's error."""
        future: Future[R] = Future()
        self._queue.put((image, future, time.monotonic()))
        return future

    async def classify(self, image: Any) -> R:
        """Queue one input and await its answer from an event loop."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put((image, future, time.monotonic()))
        return await future

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued images, then stop the thread."""
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        """Take a first image, fill the batch until full or the first image is too old."""
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = item[2] + self.max_wait_s
            while len(batch) < self.max_size:
                remaining = deadline - time.monotonic()
                try:
                    extra = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if extra is None:
                    stopping = True
                    break
                batch.append(extra)
            self._run_batch(batch)

    def _run_batch(self, batch: list[Item]) -> None:
        """Classify one batch and settle its futures."""
        began = time.perf_counter()
        outcomes: list[Outcome]
        try:
            outcomes = list(self._classify([image for image, _, _ in batch]))
        except Exception as exc:  # every waiting product must hear about it
            log.exception("inference_failed", batch_size=len(batch))
            outcomes = [exc] * len(batch)
        else:
            seconds = time.perf_counter() - began
            self.stats.batches += 1
            self.stats.images += len(batch)
            self.stats.seconds += seconds
            if self._on_batch is not None:
                self._on_batch(len(batch), seconds)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]]
        by_loop = {}
        for (_, waiter, _), outcome in zip(batch, outcomes, strict=True):
            if isinstance(waiter, asyncio.Future):
                by_loop.setdefault(waiter.get_loop(), []).append((waiter, outcome))
            elif isinstance(outcome, Exception):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                log.warning("inference_result_dropped", images=len(settled))


def _settle(settled: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    """Give each asyncio future its prediction or error (in its loop's thread)."""
    for future, outcome in settled:
        if future.done():  # cancelled while it waited
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
