"""The lag watch reads high watermarks in its own thread: the main loop never waits for them.

A fake consumer stands in for Kafka here (what it answers and when is the point of these
tests); tests/service/test_lag.py runs the watch inside the service on a real broker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from service.errors import KafkaError
from service.lag import LagWatch
from service.metrics import Metrics


class _Consumer:
    """Answers ``high_watermark`` from ``highs`` once ``release`` is set; records seeks and
    resumes."""

    def __init__(self, highs: dict[tuple[str, int], int | Exception]) -> None:
        self.highs = highs
        self.release = threading.Event()
        self.asked = threading.Event()
        self.reads: list[tuple[str, int]] = []
        self.timeouts: list[float] = []
        self.seeks: list[TopicPartition] = []
        self.resumed: list[TopicPartition] = []

    def high_watermark(self, topic: str, partition: int, timeout: float = 1.0) -> int:
        self.asked.set()
        assert self.release.wait(10), "the test never released the reading"
        self.reads.append((topic, partition))
        self.timeouts.append(timeout)
        answer = self.highs[(topic, partition)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append(partition)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed.extend(partitions)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(
    consumer: _Consumer, clock: Callable[[], float], stall_timeout_s: float = 60.0
) -> tuple[LagWatch, Metrics]:
    metrics = Metrics()
    return LagWatch(consumer, metrics, stall_timeout_s=stall_timeout_s, clock=clock), metrics  # type: ignore[arg-type]


def _lag(metrics: Metrics, topic: str, partition: int) -> Any:
    return metrics.registry.get_sample_value(
        "enrich_consumer_lag", {"topic": topic, "partition": str(partition)}
    )


def _settle(watch: LagWatch) -> None:
    """Wait for the reading under way to finish (the reader thread)."""
    reading = watch._reading
    assert reading is not None
    reading.result(timeout=10)


def test_a_check_returns_while_the_broker_has_not_answered() -> None:
    """check() starts a reading and returns at once, even while the broker keeps the reading
    waiting: the main loop goes on consuming and producing meanwhile."""
    consumer = _Consumer({("in", 0): 50})
    watch, metrics = _watch(consumer, _Clock())
    watch.assigned(("in", 0), 10)
    assert watch.check(fetching=lambda key: True) is True
    assert consumer.asked.wait(10), "no reading was started"
    reading = watch._reading
    assert reading is not None
    assert not reading.done()  # check returned before the broker answered
    assert watch.check(fetching=lambda key: True) is True  # and returns again meanwhile
    assert _lag(metrics, "in", 0) is None
    consumer.release.set()
    watch.close()


def test_the_next_check_applies_what_the_reading_found() -> None:
    """The watermarks a reading found set the lag gauges at the next check (the next offset
    to take counts as it is then), and that check starts the next reading."""
    consumer = _Consumer({("in", 0): 50, ("in", 1): 7})
    consumer.release.set()
    watch, metrics = _watch(consumer, _Clock())
    watch.assigned(("in", 0), 10)
    watch.assigned(("in", 1), 7)
    watch.check(fetching=lambda key: True)
    _settle(watch)
    watch.taken(("in", 0), 19)  # taken since the reading: the lag counts from offset 20
    watch.check(fetching=lambda key: True)
    assert _lag(metrics, "in", 0) == 30
    assert _lag(metrics, "in", 1) == 0
    _settle(watch)  # the next one was started, and reads both partitions again
    watch.close()
    assert sorted(consumer.reads) == [("in", 0), ("in", 0), ("in", 1), ("in", 1)]


def test_a_silent_partition_with_lag_is_restarted_by_the_check_after_its_reading() -> None:
    """A partition with lag that gave nothing for longer than the stall timeout is sought to
    its next offset and resumed; one that moved, or one the service paused, is left alone."""
    consumer = _Consumer({("in", 0): 50, ("in", 1): 50, ("in", 2): 50})
    consumer.release.set()
    clock = _Clock()
    watch, metrics = _watch(consumer, clock, stall_timeout_s=5.0)
    for partition in range(3):
        watch.assigned(("in", partition), 10)
    watch.check(fetching=lambda key: key != ("in", 2))
    _settle(watch)
    clock.now += 6.0
    watch.taken(("in", 1), 12)
    watch.check(fetching=lambda key: key != ("in", 2))
    watch.close()
    assert [(p.topic, p.partition, p.offset) for p in consumer.seeks] == [("in", 0, 10)]
    assert [(p.topic, p.partition) for p in consumer.resumed] == [("in", 0)]
    assert metrics.registry.get_sample_value("enrich_partition_stalls_total") == 1


_GONE = KafkaError("timed out")


@pytest.mark.parametrize(
    ("answers", "revoked", "reachable"),
    [
        ({("in", 0): _GONE, ("in", 1): _GONE}, None, False),
        ({("in", 0): _GONE, ("in", 1): 9}, None, True),
        ({("in", 0): 9, ("in", 1): 9}, None, True),
        ({("in", 0): 9, ("in", 1): _GONE}, ("in", 0), False),
    ],
    ids=["no partition answered", "one answered", "all answered", "the answered one revoked"],
)
def test_the_broker_counts_as_reachable_unless_no_partition_answered(
    answers: dict[tuple[str, int], int | Exception],
    revoked: tuple[str, int] | None,
    reachable: bool,
) -> None:
    """check() says the broker is gone only when every partition of the last reading still
    assigned went unanswered (a partition revoked since its reading is skipped)."""
    consumer = _Consumer(answers)
    consumer.release.set()
    watch, _ = _watch(consumer, _Clock())
    watch.assigned(("in", 0), 0)
    watch.assigned(("in", 1), 0)
    assert watch.check(fetching=lambda key: True) is True  # nothing read yet
    _settle(watch)
    if revoked is not None:
        watch.forget([revoked])
    assert watch.check(fetching=lambda key: True) is reachable
    watch.close()


def test_a_reading_past_its_timeouts_says_the_broker_is_gone() -> None:
    """While a reading runs longer than its partitions' timeouts allow (and a second), the
    check says the broker is unreachable instead of repeating the last finished reading."""
    consumer = _Consumer({("in", 0): 5, ("in", 1): 5})
    clock = _Clock()
    watch, _ = _watch(consumer, clock)
    watch.assigned(("in", 0), 0)
    watch.assigned(("in", 1), 0)
    assert watch.check(fetching=lambda key: True) is True
    clock.now += 10.0  # within the first reading's 2 x 5 s and a second
    assert watch.check(fetching=lambda key: True) is True
    clock.now += 1.5
    assert watch.check(fetching=lambda key: True) is False
    consumer.release.set()
    _settle(watch)
    assert watch.check(fetching=lambda key: True) is True  # it answered after all
    _settle(watch)
    watch.close()
    assert consumer.timeouts == [5.0, 5.0, 1.0, 1.0]  # the first reading connects first


def test_a_reading_started_before_an_assignment_is_dropped() -> None:
    """What a reading started before the last assignment found is not applied: no gauge
    from it, and the broker's reachability stays as the assignment left it."""
    consumer = _Consumer({("in", 0): _GONE, ("in", 1): 40})
    watch, metrics = _watch(consumer, _Clock())
    watch.assigned(("in", 0), 0)
    watch.check(fetching=lambda key: True)
    watch.assigned(("in", 1), 0)  # while the reading of partition 0 waits
    consumer.release.set()
    _settle(watch)
    assert watch.check(fetching=lambda key: True) is True  # the failed reading was dropped
    _settle(watch)  # the next one reads both partitions
    assert watch.check(fetching=lambda key: True) is True
    watch.close()
    assert _lag(metrics, "in", 1) == 40


def test_close_waits_for_the_reading_and_starts_no_other() -> None:
    """close() waits while the reading is on a partition, the reading gives up the
    partitions after it, and a check after close reads nothing more."""
    consumer = _Consumer({("in", 0): 5, ("in", 1): 5})
    watch, _ = _watch(consumer, _Clock())
    watch.assigned(("in", 0), 0)
    watch.assigned(("in", 1), 0)
    watch.check(fetching=lambda key: True)
    assert consumer.asked.wait(10)
    closer = threading.Thread(target=watch.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # waiting for partition 0's answer
    consumer.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert consumer.reads == [("in", 0)]
    watch.check(fetching=lambda key: True)
    assert consumer.reads == [("in", 0)]
