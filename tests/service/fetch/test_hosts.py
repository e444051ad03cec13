"""HostLimiter: slots per host and in total, stalled requests outside them. HostBreaker:
timeouts in a row open a host's circuit for a cool-down; an answer closes it."""

import asyncio
from collections.abc import Awaitable, Callable

from structlog.testing import capture_logs

from service.fetch.hosts import MIN_ANSWERS, HostBreaker, HostLimiter, Lease


class Request:
    """A request holding its slots in a task: it waits until told to get its answer or end."""

    def __init__(self, limiter: HostLimiter, host: str) -> None:
        self.limiter = limiter
        self.lease: Lease | None = None
        self._end = asyncio.Event()
        self.task = asyncio.create_task(self._run(host))

    async def _run(self, host: str) -> None:
        async with self.limiter.hold(host) as lease:
            self.lease = lease
            await self._end.wait()

    @property
    def holding(self) -> bool:
        """It got through the caps (stalled or not) and has not ended."""
        return self.lease is not None and not self.task.done()

    @property
    def stalled(self) -> bool:
        return self.lease is not None and self.lease.stalled

    def answer(self) -> None:
        assert self.lease is not None, "answered before it got its slots"
        self.limiter.answered(self.lease)

    async def end(self) -> None:
        self._end.set()
        await self.task


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(10):
        await asyncio.sleep(0)


async def served(limiter: HostLimiter, host: str, count: int) -> None:
    """``count`` requests to ``host``, one after another, each answered at once."""
    for _ in range(count):
        request = Request(limiter, host)
        await settle()
        request.answer()
        await request.end()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_a_request_overtaken_by_the_hosts_answers_gives_its_slot_back() -> None:
    """Once the host answered per_host requests asked after it, a waiting request frees its
    slot."""

    async def test() -> None:
        limiter = HostLimiter(2, 10, stalled_per_host=4, max_stalled=4)
        hanging = Request(limiter, "a.example")
        await settle()
        await served(limiter, "a.example", 1)
        assert not hanging.stalled
        await served(limiter, "a.example", 1)
        assert (True, 1, 1) == (hanging.stalled, limiter.stalled, limiter.stats["stalled"])
        more = [Request(limiter, "a.example") for _ in range(3)]
        await settle()
        assert [True, True, False] == [r.holding for r in more], "per_host still holds"
        hanging.answer()  # a stalled request may still be answered; nothing changes
        await hanging.end()
        await more[0].end()
        await settle()
        assert more[2].holding
        for request in more[1:]:
            await request.end()
        assert (0, 1) == (limiter.stalled, limiter.stats["stalled_peak"])

    run(test)


def test_slots_given_back_early_are_not_given_back_twice() -> None:
    """After a stalled request ends, the host again lets exactly per_host requests through."""

    async def test() -> None:
        limiter = HostLimiter(2, 10, stalled_per_host=4, max_stalled=4)
        hanging = Request(limiter, "a.example")
        await settle()
        await served(limiter, "a.example", 4)
        await hanging.end()
        after = [Request(limiter, "a.example") for _ in range(3)]
        await settle()
        assert [True, True, False] == [r.holding for r in after]
        for request in after:
            await request.end()

    run(test)


def test_answers_to_requests_asked_earlier_do_not_overtake() -> None:
    """Only answers to requests asked after a waiting one count towards stalling it."""

    async def test() -> None:
        limiter = HostLimiter(3, 10, stalled_per_host=4, max_stalled=4)
        earlier = [Request(limiter, "a.example") for _ in range(2)]
        await settle()
        hanging = Request(limiter, "a.example")
        await settle()
        for request in earlier:
            request.answer()
            await request.end()
        await served(limiter, "a.example", 2)
        assert not hanging.stalled, "2 earlier and 2 later answers: not yet 3 later ones"
        await served(limiter, "a.example", 1)
        assert hanging.stalled
        await hanging.end()

    run(test)


def test_a_request_cancelled_while_waiting_for_the_total_gives_back_its_host_slot() -> None:
    """Cancelling a request queued for the total leaves every slot as it was."""

    async def test() -> None:
        limiter = HostLimiter(1, 1, stalled_per_host=4, max_stalled=4)
        holder = Request(limiter, "a.example")
        queued = Request(limiter, "b.example")
        await settle()
        assert (True, False) == (holder.holding, queued.holding)
        queued.task.cancel()
        await settle()
        await holder.end()
        again = [Request(limiter, "b.example"), Request(limiter, "b.example")]
        await settle()
        assert [True, False] == [r.holding for r in again], "b's one slot, not two"
        for request in again:
            await request.end()

    run(test)


def test_a_host_that_answers_nothing_keeps_its_cap() -> None:
    """With no answers from the host nothing stalls: the next request waits for a slot."""

    async def test() -> None:
        limiter = HostLimiter(2, 10, stalled_per_host=4, max_stalled=4)
        requests = [Request(limiter, "a.example") for _ in range(3)]
        await settle()
        assert ([True, True, False], 0) == ([r.holding for r in requests], limiter.stalled)
        for request in requests:
            await request.end()

    run(test)


def test_a_host_answering_in_the_order_asked_never_stalls_a_request() -> None:
    """A slow host that answers requests in turn keeps every one inside its cap."""

    async def test() -> None:
        limiter = HostLimiter(2, 10, stalled_per_host=4, max_stalled=4)
        previous = Request(limiter, "a.example")
        for _ in range(20):
            current = Request(limiter, "a.example")
            await settle()
            previous.answer()
            await previous.end()
            previous = current
        await settle()
        previous.answer()
        await previous.end()
        assert 0 == limiter.stats["stalled"]

    run(test)


def test_a_request_waiting_well_past_the_hosts_typical_time_stalls() -> None:
    """With nothing else to answer, a request that waits stall_factor x the host's typical
    answer time (at least the floor) frees its slot."""

    async def test() -> None:
        limiter = HostLimiter(1, 10, stalled_per_host=4, max_stalled=4, stall_floor_s=0.05)
        await served(limiter, "a.example", 8)
        hanging = Request(limiter, "a.example")
        after = Request(limiter, "a.example")
        await settle()
        assert (False, False) == (hanging.stalled, after.holding)
        await asyncio.sleep(0.15)
        assert (True, True) == (hanging.stalled, after.holding)
        for request in (hanging, after):
            await request.end()

    run(test)


def test_a_host_answered_fewer_than_min_answers_times_stalls_nothing_by_time() -> None:
    """Until the host has answered MIN_ANSWERS times its typical time is not trusted."""

    async def test() -> None:
        limiter = HostLimiter(1, 10, stalled_per_host=4, max_stalled=4, stall_floor_s=0.05)
        await served(limiter, "a.example", MIN_ANSWERS - 1)
        hanging = Request(limiter, "a.example")
        await asyncio.sleep(0.15)
        assert (False, None) == (hanging.stalled, limiter.stall_after_s("a.example"))
        await hanging.end()

    run(test)


def test_a_host_slow_across_the_board_keeps_its_cap() -> None:
    """The stall time follows the host's typical answer time, so slow answers stay inside."""

    async def test() -> None:
        limiter = HostLimiter(2, 10, stalled_per_host=4, max_stalled=4, stall_floor_s=0.01)
        for _ in range(MIN_ANSWERS):
            request = Request(limiter, "a.example")
            await asyncio.sleep(0.05)
            request.answer()
            await request.end()
        keep = Request(limiter, "a.example")
        await settle()
        stall_after = limiter.stall_after_s("a.example")
        assert stall_after is not None
        assert stall_after >= 0.2, "4 x the 0.05 s the host takes"
        await asyncio.sleep(0.1)
        assert not keep.stalled
        await keep.end()

    run(test)


def test_a_request_due_to_stall_while_the_caps_are_full_stalls_once_there_is_room() -> None:
    """The stall time passing while stalled_per_host is reached is tried again later."""

    async def test() -> None:
        limiter = HostLimiter(1, 10, stalled_per_host=1, max_stalled=4, stall_floor_s=0.05)
        await served(limiter, "a.example", 8)
        first = Request(limiter, "a.example")
        await asyncio.sleep(0.1)
        second = Request(limiter, "a.example")
        await asyncio.sleep(0.1)
        assert (True, True, False) == (first.stalled, second.holding, second.stalled)
        await first.end()
        await asyncio.sleep(0.1)
        assert second.stalled
        await second.end()

    run(test)


class Retry(Request):
    """A retry of a request that timed out stalled."""

    async def _run(self, host: str) -> None:
        async with self.limiter.hold(host, stalled=True) as lease:
            self.lease = lease
            await self._end.wait()


def test_a_retry_of_a_stalled_request_starts_outside_the_slots() -> None:
    """A retry of a request that timed out stalled takes no slot of a host that answers, unless
    the stalled caps are full or the host has answered fewer than MIN_ANSWERS times."""

    async def test() -> None:
        limiter = HostLimiter(1, 10, stalled_per_host=1, max_stalled=4)
        early = Retry(limiter, "a.example")
        await settle()
        assert (True, False) == (early.holding, early.stalled), "too few answers: a slot"
        await early.end()
        await served(limiter, "a.example", MIN_ANSWERS)
        first, second = Retry(limiter, "a.example"), Retry(limiter, "a.example")
        await settle()
        assert (True, True, False) == (first.stalled, second.holding, second.stalled)
        third = Request(limiter, "a.example")
        await settle()
        assert not third.holding, "the slot is the second retry's: the stalled cap was full"
        for request in (first, second, third):
            await request.end()
        assert 0 == limiter.stalled

    run(test)


def test_stalled_requests_are_capped_per_host() -> None:
    """Past stalled_per_host an overtaken request keeps its slot until a stalled one ends."""

    async def test() -> None:
        limiter = HostLimiter(3, 10, stalled_per_host=1, max_stalled=4)
        first, second = Request(limiter, "a.example"), Request(limiter, "a.example")
        await settle()
        await served(limiter, "a.example", 6)
        assert (True, False) == (first.stalled, second.stalled)
        await first.end()
        await served(limiter, "a.example", 1)
        assert second.stalled
        await second.end()

    run(test)


def test_stalled_requests_are_capped_over_all_hosts() -> None:
    """Past max_stalled no host's overtaken request is stalled."""

    async def test() -> None:
        limiter = HostLimiter(2, 10, stalled_per_host=4, max_stalled=1)
        a, b = Request(limiter, "a.example"), Request(limiter, "b.example")
        await settle()
        await served(limiter, "a.example", 4)
        await served(limiter, "b.example", 4)
        assert (True, False, 1) == (a.stalled, b.stalled, limiter.stalled)
        await a.end()
        await b.end()

    run(test)


def test_no_request_stalls_when_stalling_is_off() -> None:
    """stalled_per_host=0 keeps every request inside the caps."""

    async def test() -> None:
        limiter = HostLimiter(2, 10)
        hanging = Request(limiter, "a.example")
        await settle()
        await served(limiter, "a.example", 8)
        assert (False, 0) == (hanging.stalled, limiter.stats["stalled"])
        await hanging.end()

    run(test)


def test_requests_to_all_hosts_share_the_total() -> None:
    """At most total requests are in flight, whatever their hosts."""

    async def test() -> None:
        limiter = HostLimiter(2, 2, stalled_per_host=4, max_stalled=4, max_hosts=2)
        requests = [Request(limiter, host) for host in ("a.example", "b.example", "c.example")]
        await settle()
        assert [True, True, False] == [r.holding for r in requests]
        await requests[0].end()
        await settle()
        assert requests[2].holding
        for request in requests[1:]:
            await request.end()
        await served(limiter, "d.example", 1)
        assert ["c.example", "d.example"] == list(limiter._hosts), "the oldest idle hosts go"

    run(test)


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_host_is_refused_only_after_threshold_timeouts_in_a_row() -> None:
    """Below the threshold requests go; at it they are refused with the count and cool-down."""
    breaker = HostBreaker(3, 10.0, clock=Clock())
    breaker.timed_out("a.example")
    breaker.timed_out("a.example")
    assert breaker.refusal("a.example") is None
    with capture_logs() as logs:
        breaker.timed_out("a.example")
    assert breaker.refusal("a.example") == (
        "host not answering: 3 timeouts in a row, circuit open for 10 s"
    )
    assert [e["event"] for e in logs] == ["host_circuit_open"]
    assert breaker.refusal("b.example") is None
    assert breaker.opened == 1


def test_an_answer_in_between_starts_the_count_again() -> None:
    """Timeouts separated by an answer never open the circuit."""
    breaker = HostBreaker(2, 10.0, clock=Clock())
    for _ in range(5):
        breaker.timed_out("a.example")
        breaker.answered("a.example")
    assert breaker.refusal("a.example") is None


def test_after_the_cooldown_requests_go_and_one_more_timeout_reopens() -> None:
    """The cool-down lets requests probe the host; a further timeout opens it again at once."""
    clock = Clock()
    breaker = HostBreaker(2, 5.0, clock=clock)
    breaker.timed_out("a.example")
    breaker.timed_out("a.example")
    clock.now += 4.9
    assert breaker.refusal("a.example") is not None
    clock.now += 0.1
    assert breaker.refusal("a.example") is None
    breaker.timed_out("a.example")
    assert breaker.refusal("a.example") is not None
    breaker.answered("a.example")
    assert breaker.refusal("a.example") is None


def test_it_remembers_at_most_max_hosts() -> None:
    """The least recently troubled hosts are forgotten beyond max_hosts."""
    breaker = HostBreaker(1, 10.0, max_hosts=2, clock=Clock())
    for host in ("a", "b", "c"):
        breaker.timed_out(host)
    assert [breaker.refusal(h) is None for h in ("a", "b", "c")] == [True, False, False]


def test_a_host_that_answered_recently_is_not_cut_off() -> None:
    """Timeouts in a row open the circuit only once the host has been silent for quiet_s."""
    clock = Clock()
    breaker = HostBreaker(2, 10.0, quiet_s=4.0, clock=clock)
    breaker.answered("a.example")
    clock.now += 1.0
    breaker.timed_out("a.example")
    breaker.timed_out("a.example")
    assert breaker.refusal("a.example") is None
    clock.now += 3.0
    breaker.timed_out("a.example")
    assert breaker.refusal("a.example") is not None


def test_a_host_never_heard_from_opens_at_the_threshold() -> None:
    """A host that has never answered needs no silence beyond its timeouts."""
    breaker = HostBreaker(2, 10.0, quiet_s=60.0, clock=Clock())
    breaker.timed_out("a.example")
    breaker.timed_out("a.example")
    assert breaker.refusal("a.example") is not None
