"""HostBreaker: timeouts in a row open a host's circuit for a cool-down; an answer closes it."""

from structlog.testing import capture_logs

from service.fetch.fetcher import HostBreaker


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
