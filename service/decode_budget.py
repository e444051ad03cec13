"""The decode budget: images are decoded only while their pixels fit in a fixed allowance.

Decoding is where an image costs memory: a 7,070 x 7,070 RGBA PNG is 215 KB on the wire and
about a gigabyte while Pillow decodes, converts and resizes it. Capping decodes by count
(one per core) bounds nothing, so :class:`DecodeBudget` admits them by weight: the pixels
each will allocate, read from the header before decoding (:func:`model.preprocess.decoded_pixels`).
Whatever the images and the core count, the pixels being decoded at once stay within the
budget. Admission is first come, first served: an image that does not fit waits, and the
smaller ones behind it wait too, so a large image is never starved by a stream of small ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

__all__ = ["DecodeBudget"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class DecodeBudget:
    """A weighted semaphore over pixels with FIFO admission; use from one event loop only."""

    def __init__(self, capacity: int) -> None:
        """Allow up to ``capacity`` pixels at once."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 pixel, got {capacity}")
        self.capacity = capacity
        self.in_use = 0
        """Pixels held right now."""
        self.peak = 0
        """The most pixels ever held at once."""
        self.waits = 0
        """How many admissions had to wait (for tests and metrics)."""
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Admissions waiting right now."""
        return sum(1 for _, future in self._waiters if not future.done())

    def would_wait(self, weight: int) -> bool:
        """Whether :meth:`acquire` of ``weight`` pixels would wait now."""
        return bool(self._waiters) or self.in_use + weight > self.capacity

    async def acquire(self, weight: int) -> None:
        """Take ``weight`` pixels, waiting behind every earlier waiter until they fit.

        Raises ``ValueError`` for a weight that could never fit (over the capacity).
        A waiter that is cancelled leaves the queue and holds nothing.
        """
        if not 0 <= weight <= self.capacity:
            raise ValueError(f"weight must be between 0 and {self.capacity:,}, got {weight:,}")
        if not self.would_wait(weight):
            self._take(weight)
            return
        self.waits += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (weight, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(weight)  # granted as it was cancelled: give it back
            else:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                self._admit()  # it may have been the head that held the others back
            raise

    def release(self, weight: int) -> None:
        """Give back ``weight`` pixels taken by :meth:`acquire`; admit whoever now fits."""
        if weight > self.in_use:
            raise ValueError(f"releasing {weight:,} pixels, only {self.in_use:,} held")
        self.in_use -= weight
        self._admit()

    def _admit(self) -> None:
        """Grant waiters in order while the head of the queue fits."""
        while self._waiters:
            weight, future = self._waiters[0]
            if future.done():  # cancelled, not yet removed by its waiter
                self._waiters.popleft()
                continue
            if self.in_use + weight > self.capacity:
                return
            self._waiters.popleft()
            self._take(weight)
            future.set_result(None)

    def _take(self, weight: int) -> None:
        self.in_use += weight
        self.peak = max(self.peak, self.in_use)

    async def run(
        self,
        weight: int,
        executor: Executor,
        function: Callable[_P, _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Run ``function(*args)`` in ``executor`` holding ``weight`` pixels until it returns.

        The pixels are held until the work itself has ended, not only until this call does: a
        caller cancelled while the work runs in a thread is gone at once, but the thread's
        memory is not, so the pixels go back when the thread is done.
        """
        await self.acquire(weight)
        try:
            work = executor.submit(function, *args, **kwargs)
        except BaseException:
            self.release(weight)
            raise
        loop = asyncio.get_running_loop()

        def done(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to admit
                loop.call_soon_threadsafe(self.release, weight)

        try:
            return await asyncio.wrap_future(work)
        finally:
            if work.done():
                self.release(weight)
            else:  # cancelled while the thread runs on: release when it ends
                work.add_done_callback(done)
