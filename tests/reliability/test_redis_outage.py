"""Redis goes away mid-stream and comes back: products keep flowing, cache hits resume.

One scenario run feeds every test here: a serve child with a Redis of its own, products at a
steady rate whose images come from a few URLs (so most are cache hits), Redis stopped for
8 s and started again, empty, while products keep coming.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.cache import DEFAULT_RETRY_AFTER_S
from service.kafka.admin import KafkaAdmin
from tests.reliability.outages import PrivateRedis, RedisOutage, redis_outage_scenario
from tests.reliability.scenarios import Row, service_topics
from tests.service.test_pipeline import model_dir, photos
from tests.support.image_server import ImageServer

__all__ = ["model_dir", "photos"]  # fixtures shared with test_pipeline

pytestmark = pytest.mark.integration

OUTAGE_S = 8.0


@pytest.fixture(scope="module")
def outcome(
    kafka_bootstrap: str, model_dir: Path, photos: list[str], shared_data: Path,
    tmp_path_factory: Any,
) -> Iterator[tuple[Row, RedisOutage]]:  # fmt: skip
    """The scenario's row and what it saw."""
    admin = KafkaAdmin({"bootstrap.servers": kafka_bootstrap})
    topics = service_topics(admin, "redis")
    redis = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server = ImageServer(shared_data / "product-images").start()
    redis.start()
    try:
        result = redis_outage_scenario(
            bootstrap=kafka_bootstrap, topics=topics, model_dir=model_dir, server=server,
            photos=photos, redis=redis, rate=25, before_s=5, outage_s=OUTAGE_S, after_s=8,
            timeout_s=150,
        )  # fmt: skip
        print(*result, sep="\n")
        yield result
    finally:
        redis.stop()
        server.stop()
        admin.delete_topics(list(topics.values()))


def test_nothing_is_lost(outcome: tuple[Row, RedisOutage]) -> None:
    """Every product is answered exactly once, with a classification, the outage notwithstanding."""
    row, details = outcome
    assert (0, 0) == (row.lost, row.duplicates), row
    assert set(details.statuses) <= {"CLASSIFIED", "LOW_CONFIDENCE"}, details.statuses


def test_products_flow_while_redis_is_down(outcome: tuple[Row, RedisOutage]) -> None:
    """While Redis is down the cache fails and products are still answered as they come."""
    _, details = outcome
    assert details.counts_at_stop.get("hit", 0) > 0, "no cache hit before the outage"
    errors = details.counts_at_start.get("error", 0) - details.counts_at_stop.get("error", 0)
    assert errors > 0, "the service never noticed the outage"
    assert details.produced_during > 0
    assert details.answered_during >= details.produced_during // 2, details


def test_cache_hits_resume_once_redis_is_back(outcome: tuple[Row, RedisOutage]) -> None:
    """After Redis returns (empty) the cache fills again and hits come within seconds."""
    row, details = outcome
    assert details.keys_after > 0
    assert details.counts_at_end.get("hit", 0) > details.counts_at_start.get("hit", 0)
    assert details.from_cache_after > 0
    assert row.max_recovery_s <= DEFAULT_RETRY_AFTER_S + 5.0, row
