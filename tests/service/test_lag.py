"""Lag per assigned partition and the restart of a partition that stopped fetching (real Kafka)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from tests.service.test_pipeline import (
    ENRICHMENT,
    _encode,
    _produce,
    _product,
    _read,
    _Running,
    _settings,
    model_dir,
    photos,
)
from tests.support.image_server import ImageServer

__all__ = ["model_dir", "photos"]  # fixtures shared with test_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(topic_factory: Any) -> dict[str, str]:
    return {
        "input": topic_factory("products", partitions=2),
        "output": topic_factory("categories", partitions=2),
        "dlq": topic_factory("dead-letter"),
    }


def _stall_partition_one(running: _Running, topic: str) -> None:
    """Wait for the assignment, then stop partition 1 fetching behind the service's back, as
    librdkafka does when it loses a partition's fetch state without a word. The pause runs in
    the service's own thread (its next consume), as every call on its consumer does."""
    deadline = time.monotonic() + 30
    service = running.service.service
    while (service is None or len(service.assigned) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
        service = running.service.service
    assert service is not None, "the service did not start in 30 s"
    assert 2 == len(service.assigned), "the service was not assigned both partitions in 30 s"
    consumer = service.consumer
    consume = consumer.consume
    stalled = threading.Event()

    def stall_then_consume(count: int, timeout: float) -> Any:
        if not stalled.is_set():
            consumer.client.pause([TopicPartition(topic, 1)])
            stalled.set()
        return consume(count, timeout)

    consumer.consume = stall_then_consume  # type: ignore[method-assign]
    assert stalled.wait(10), "the service did not consume again in 10 s"


def _stalled_run(
    kafka_bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    server: ImageServer,
    photos: list[str],
    *,
    stall_timeout_s: float,
    read_s: float,
) -> tuple[set[int], _Running]:
    settings = _settings(kafka_bootstrap, topics, model_dir, stall_timeout_s=stall_timeout_s,
                         lag_interval_s=0.5)  # fmt: skip
    with _Running(settings) as running:
        _stall_partition_one(running, topics["input"])
        items = [_encode(_product(f"s{i}", server.url_for(photos[i]))) for i in range(40)]
        _produce(kafka_bootstrap, topics["input"], items)
        messages = _read(kafka_bootstrap, topics["output"], expected=40, timeout_s=read_s)
    partitions = {ENRICHMENT.decode(m.value())["source"]["partition"] for m in messages}
    return partitions, running


def test_a_silent_partition_with_lag_is_restarted(
    kafka_bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    image_server: ImageServer,
    photos: list[str],
) -> None:
    """A partition that stops fetching while it has lag is sought and resumed after the stall
    timeout: its products are answered, the restart is counted and its lag was visible."""
    partitions, running = _stalled_run(kafka_bootstrap, topics, model_dir, image_server,
                                       photos, stall_timeout_s=2.0, read_s=60)  # fmt: skip
    assert {0, 1} == partitions
    registry = running.service.metrics.registry
    assert (registry.get_sample_value("enrich_partition_stalls_total") or 0) >= 1
    lag = registry.get_sample_value(
        "enrich_consumer_lag", {"topic": topics["input"], "partition": "1"}
    )
    assert lag is not None  # measured for a partition that had given nothing yet


def test_without_the_watch_the_silent_partition_stays_silent(
    kafka_bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    image_server: ImageServer,
    photos: list[str],
) -> None:
    """The same stall with the watch off (0): partition 1's products are never answered, so
    the restart above is what answered them."""
    partitions, running = _stalled_run(kafka_bootstrap, topics, model_dir, image_server,
                                       photos, stall_timeout_s=0.0, read_s=8)  # fmt: skip
    assert {0} == partitions
    assert 0 == (running.service.metrics.registry.get_sample_value(
        "enrich_partition_stalls_total") or 0)  # fmt: skip
