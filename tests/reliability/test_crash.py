"""kill -9 at random moments: nothing lost, duplicates bounded (none in exactly-once mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from tests.reliability.crash import crash_scenario
from tests.service.test_pipeline import PRODUCT, _product, model_dir, photos, server
from tests.support.image_server import ImageServer

__all__ = ["model_dir", "photos", "server"]  # fixtures shared with test_pipeline

pytestmark = pytest.mark.integration

MAX_IN_FLIGHT = 100


def _topics(topic_factory: Any) -> dict[str, str]:
    return {
        "input": topic_factory("crash", partitions=4),
        "output": topic_factory("crash-out", partitions=4),
        "dlq": topic_factory("crash-dlq"),
    }


def _fill(bootstrap: str, topic: str, server: ImageServer, photos: list[str], count: int) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        url = f"{server.url_for(photos[i % len(photos)])}?i={i}"
        value = PRODUCT.encode(_product(f"c{i}", url))
        if i % 97 == 0:
            value = b"not avro"  # dead-lettered: counted as answered through the DLQ topic
        producer.produce(topic, key=f"c{i}".encode(), value=value)
    assert 0 == producer.flush(60)


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_kill_9_loses_nothing(
    delivery: str, kafka_bootstrap: str, topic_factory: Any, model_dir: Path,
    server: ImageServer, photos: list[str],
) -> None:  # fmt: skip
    """Two kill -9s mid-stream and restarts: every input answered, duplicates bounded."""
    topics = _topics(topic_factory)
    inputs = 800
    _fill(kafka_bootstrap, topics["input"], server, photos, inputs)
    row = crash_scenario(
        bootstrap=kafka_bootstrap, topics=topics, model_dir=model_dir, inputs=inputs,
        kills=2, max_in_flight=MAX_IN_FLIGHT, delivery=delivery, seed=7,
    )  # fmt: skip
    print(row)
    assert 0 == row.lost, row
    if delivery == "exactly-once":
        assert 0 == row.duplicates, row
    else:
        assert row.duplicates <= MAX_IN_FLIGHT * 2, row
    assert row.outputs >= inputs
