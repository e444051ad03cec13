"""What the fetcher keeps per host: how many requests it lets in flight, and whether it answers.

`HostLimiter` caps the requests in flight to one host (``per_host``) and over all hosts
(``total``). A host that answers most paths at once but never answers some would fill every
one of its slots with those, and its healthy requests would queue behind them for whole
timeouts. So a request still waiting for its answer is *stalled* (it gives its slots back and
waits on outside the caps until it is answered or times out) once either

- the host has answered ``per_host`` requests asked after it (it was overtaken), or
- it has waited ``stall_factor`` times the host's typical answer time (a moving average of
  its recent ones, known after ``MIN_ANSWERS``; each answer counts for at most twice the
  stall time then, so one late answer cannot move it far), and at least ``stall_floor_s``.
  This one also covers the hanging requests left when the host has nothing else to answer.

A retry of a request that timed out stalled starts stalled: its path, not the host, was the
problem. Stalled requests are bounded too (``stalled_per_host``, ``max_stalled``); when those
are full a request keeps its slots. So one host gets at most ``per_host`` requests that it
answers in the usual time, plus ``stalled_per_host`` it has left waiting. A host that has
never answered stalls nothing, and a host that slows down across the board stalls only until
its typical time has followed; `HostBreaker` deals with a silent host.

`HostBreaker` opens a host's circuit after timeouts in a row with no answer from it.
"""

import asyncio
import contextlib
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

__all__ = ["MIN_ANSWERS", "HostBreaker", "HostLimiter", "Lease"]

log = structlog.get_logger(__name__)

MIN_ANSWERS: Final = 8
"""Answers from a host before its typical answer time is trusted."""
_SMOOTHING: Final = 0.1
"""Weight of the newest answer time in a host's moving average."""


@dataclass(eq=False)
class Lease:
    """One request's hold on its host's slots, from before it is sent until it is done."""

    host: "_Host"
    seq: int
    """Its place in the order the host's requests were asked."""
    started: float
    """When it started (the event loop's clock)."""
    waiting: bool = True
    """Holding its slots with no answer yet (only such a request can stall)."""
    stalled: bool = False
    """It gave its slots back while waiting."""
    overtaken: int = 0
    """Requests asked after it that the host answered while it waited."""
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Host:
    semaphore: asyncio.Semaphore
    users: int = 0
    asked: int = 0
    answers: int = 0
    typical_s: float = 0.0
    """Moving average of the host's answer times (meaningful after MIN_ANSWERS answers)."""
    stalled: int = 0
    waiting: list[Lease] = field(default_factory=list)
    """The leases holding slots with no answer yet, oldest first."""


class HostLimiter:
    """Slots per host and in total; a request the host leaves waiting is stalled.

    Use :meth:`hold` around a request, in the event loop, and call :meth:`answered` with its
    lease when the answer's headers come. ``stats`` counts ``stalled`` requests (and keeps
    ``stalled_peak``). At most ``max_hosts`` hosts nobody holds or waits for are remembered
    (with their typical answer times); the least recently used are forgotten first.
    """

    def __init__(
        self,
        per_host: int,
        total: int,
        *,
        stalled_per_host: int = 0,
        max_stalled: int = 0,
        stall_factor: float = 4.0,
        stall_floor_s: float = 0.1,
        max_hosts: int = 10_000,
        stats: Counter[str] | None = None,
    ) -> None:
        self.per_host = per_host
        self.stalled_per_host = stalled_per_host
        self.max_stalled = max_stalled
        self.stall_factor = stall_factor
        self.stall_floor_s = stall_floor_s
        self.max_hosts = max_hosts
        self.overtake = per_host
        """Requests asked later and answered first that stall a waiting one."""
        self.stats: Counter[str] = Counter() if stats is None else stats
        self.stalled = 0
        """Requests stalled now, over all hosts."""
        self._total = asyncio.Semaphore(total)
        self._hosts: OrderedDict[str, _Host] = OrderedDict()

    def stall_after_s(self, host: str) -> float | None:
        """How long a new request to ``host`` may wait before it stalls; None: not by time."""
        state = self._hosts.get(host)
        return None if state is None else self._stall_after(state)

    def _stall_after(self, state: "_Host") -> float | None:
        if state.answers < MIN_ANSWERS or not self.stalled_per_host or not self.max_stalled:
            return None
        return max(self.stall_floor_s, self.stall_factor * state.typical_s)

    @contextlib.asynccontextmanager
    async def hold(self, host: str, *, stalled: bool = False) -> AsyncIterator[Lease]:
        """Wait for a slot of ``host`` and one of the total, and hold them (unless stalled).

        ``stalled``: the request is a retry of one that timed out stalled, so it starts
        stalled, if the caps on stalled requests allow and the host has answered
        ``MIN_ANSWERS`` times; else it waits for slots as usual.
        """
        state = self._host(host)
        state.users += 1
        try:
            loop = asyncio.get_running_loop()
            state.asked += 1
            if stalled and state.answers >= MIN_ANSWERS and self._may_stall(state):
                lease = Lease(state, state.asked, loop.time(), waiting=False)
                self._count_stall(lease)
            else:
                await state.semaphore.acquire()
                try:
                    await self._total.acquire()
                except BaseException:
                    state.semaphore.release()
                    raise
                lease = Lease(state, state.asked, loop.time())
                state.waiting.append(lease)
                delay = self._stall_after(state)
                if delay is not None:
                    lease.timer = loop.call_later(delay, self._waited, lease, delay)
            try:
                yield lease
            finally:
                self._done(lease)
        finally:
            state.users -= 1

    def _host(self, host: str) -> _Host:
        """The state of ``host``, made if new (then the least recently used idle are forgotten
        past ``max_hosts``)."""
        state = self._hosts.get(host)
        if state is not None:
            self._hosts.move_to_end(host)
            return state
        state = self._hosts[host] = _Host(asyncio.Semaphore(self.per_host))
        excess = len(self._hosts) - self.max_hosts
        if excess > 0:
            idle: list[str] = []
            for name, other in self._hosts.items():
                if other.users == 0 and other is not state:
                    idle.append(name)
                    if len(idle) == excess:
                        break
            for name in idle:
                del self._hosts[name]
        return state

    def answered(self, lease: Lease) -> None:
        """The request of ``lease`` got its answer; the ones asked before it and still waiting
        were overtaken once more, and may stall."""
        state = lease.host
        elapsed = asyncio.get_running_loop().time() - lease.started
        stall_after = self._stall_after(state)
        if stall_after is not None:
            elapsed = min(elapsed, 2 * stall_after)
        state.typical_s += (elapsed - state.typical_s) * (1 if not state.answers else _SMOOTHING)
        state.answers += 1
        if lease.waiting:
            self._stop_waiting(lease)
        overtaken = []
        for other in state.waiting:  # oldest first
            if other.seq < lease.seq:
                other.overtaken += 1
                if other.overtaken >= self.overtake:
                    overtaken.append(other)
        for other in overtaken:
            if not self._may_stall(state):
                return
            self._stall(other)

    def _waited(self, lease: Lease, delay: float) -> None:
        """``lease`` has waited as long as its host allows: stall it, or try again later."""
        lease.timer = None
        if not lease.waiting:
            return
        if self._may_stall(lease.host):
            self._stall(lease)
        else:
            lease.timer = asyncio.get_running_loop().call_later(delay, self._waited, lease, delay)

    def _may_stall(self, state: _Host) -> bool:
        return state.stalled < self.stalled_per_host and self.stalled < self.max_stalled

    def _stop_waiting(self, lease: Lease) -> None:
        lease.waiting = False
        lease.host.waiting.remove(lease)
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None

    def _stall(self, lease: Lease) -> None:
        """Give the slots of ``lease`` back while its request waits on."""
        self._stop_waiting(lease)
        self._count_stall(lease)
        lease.host.semaphore.release()
        self._total.release()

    def _count_stall(self, lease: Lease) -> None:
        lease.stalled = True
        lease.host.stalled += 1
        self.stalled += 1
        self.stats["stalled"] += 1
        self.stats["stalled_peak"] = max(self.stats["stalled_peak"], self.stalled)

    def _done(self, lease: Lease) -> None:
        """The request of ``lease`` ended: give back its slots, or its place among the stalled."""
        if lease.waiting:
            self._stop_waiting(lease)
        if lease.stalled:
            lease.host.stalled -= 1
            self.stalled -= 1
        else:
            lease.host.semaphore.release()
            self._total.release()


class HostBreaker:
    """Circuit breakers by host: ``threshold`` timeouts in a row open one for ``cooldown_s``,
    provided the host has not answered for ``quiet_s`` either.

    While open, :meth:`refusal` gives the reason to fail a request at once. When the cool-down
    ends, requests go through again; the next timeout (the count was never reset) opens it
    again at once, and any answer from the host closes it. At most ``max_hosts`` hosts are
    remembered (the least recently heard of are forgotten first).
    """

    def __init__(
        self,
        threshold: int,
        cooldown_s: float,
        quiet_s: float = 0.0,
        *,
        max_hosts: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.quiet_s = quiet_s
        self.max_hosts = max_hosts
        self.opened = 0
        """How many times a circuit opened (for stats)."""
        self._clock = clock
        # host → [timeouts in a row, open until, last answer (None: never)]
        self._hosts: OrderedDict[str, list[Any]] = OrderedDict()

    def refusal(self, host: str) -> str | None:
        """Why a request to ``host`` must fail now, or None when it may go."""
        state = self._hosts.get(host)
        if state is None or state[0] < self.threshold or self._clock() >= state[1]:
            return None
        return (
            f"host not answering: {state[0]} timeouts in a row, circuit open for "
            f"{self.cooldown_s:g} s"
        )

    def _state(self, host: str) -> list[Any]:
        state = self._hosts.pop(host, None) or [0, 0.0, None]
        self._hosts[host] = state
        while len(self._hosts) > self.max_hosts:
            self._hosts.popitem(last=False)
        return state

    def timed_out(self, host: str) -> None:
        """Count a request to ``host`` that got no answer in time."""
        state = self._state(host)
        state[0] += 1
        now = self._clock()
        quiet = state[2] is None or now - state[2] >= self.quiet_s
        if state[0] >= self.threshold and quiet:
            if state[1] <= now:
                self.opened += 1
                log.warning("host_circuit_open", host=host, timeouts=state[0],
                            cooldown_s=self.cooldown_s)  # fmt: skip
            state[1] = now + self.cooldown_s

    def answered(self, host: str) -> None:
        """``host`` answered: its count starts again (closing an open circuit)."""
        state = self._state(host)
        if state[0] >= self.threshold and state[1] > 0:
            log.info("host_circuit_closed", host=host)
        state[0], state[1], state[2] = 0, 0.0, self._clock()
