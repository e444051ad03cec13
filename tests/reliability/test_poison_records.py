"""One bad record costs one record: poison inputs on the real broker, in both delivery modes.

The output topic is compacted and the dead-letter topic takes at most 20,000 bytes a record,
as a cautious operator would set them up. Every poison record becomes a status or a
dead-letter entry with its reason; every other product of its partition is answered; the
process stays up and goes on with what comes next.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.service.test_pipeline import (
    ENRICHMENT,
    PRODUCT,
    _committed,
    _encode,
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

DLQ_LIMIT = 20_000
MODES = ["at-least-once", "exactly-once"]


@pytest.fixture
def topics(topic_factory: Any) -> dict[str, str]:
    return {
        "input": topic_factory("products", partitions=2, config={"max.message.bytes": "3000000"}),
        "output": topic_factory("categories", partitions=2, config={"cleanup.policy": "compact"}),
        "dlq": topic_factory("dead-letter", config={"max.message.bytes": str(DLQ_LIMIT)}),
    }


def _send(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> None:
    """Produce to partition 0 in this order (keyless records too)."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "message.max.bytes": 3_000_000}
    )
    for key, value in items:
        producer.produce(topic, key=key, value=value, partition=0)
    assert 0 == producer.flush(30)


def _dead_letters(bootstrap: str, topic: str, expected: int) -> list[dict[str, bytes]]:
    """The headers of each dead-letter record."""
    return [
        {str(name): bytes(value or b"") for name, value in m.headers() or []}
        for m in _read(bootstrap, topic, expected)
    ]


def _normal(server: ImageServer, photos: list[str], first: int, count: int) -> list[Any]:
    return [
        _encode(_product(f"p{i}", server.url_for(photos[i % len(photos)])))
        for i in range(first, first + count)
    ]


@pytest.mark.parametrize("delivery", MODES)
def test_poison_inputs_cost_one_record_each(
    delivery: str,
    kafka_bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    image_server: ImageServer,
    photos: list[str],
) -> None:
    """A keyless tombstone, a 1.05 MB undecodable record, a 1.1 MB partner_id and a 2 KB
    product_id among 40 products: 40 enrichments, one INVALID_INPUT, three dead letters (one
    cut to fit), and the service answers the next products too."""
    good = _normal(image_server, photos, 0, 20)
    big_partner = _product("big-partner", image_server.url_for(photos[0]))
    big_partner["partner_id"] = "x" * 1_100_000
    long_id = _product("i" * 2000, image_server.url_for(photos[1]))
    items: list[tuple[bytes | None, bytes | None]] = [
        *good[:10],
        (None, None),  # a tombstone without a key
        (b"junk", b"\x00" * 1_050_000),  # undecodable, over the dead-letter topic's limit
        _encode(big_partner),
        (b"long-id", PRODUCT.encode(long_id)),
        (b"p3", None),  # an ordinary tombstone: deletes p3 downstream
        *good[10:],
    ]
    _send(kafka_bootstrap, topics["input"], items)
    settings = _settings(kafka_bootstrap, topics, model_dir, delivery=delivery)
    committed_only = delivery == "exactly-once"
    with _Running(settings) as running:
        outputs = _read(kafka_bootstrap, topics["output"], 22, committed=committed_only)
        dead = _dead_letters(kafka_bootstrap, topics["dlq"], 3)
        # The stream goes on: later products are answered by the same process.
        _send(kafka_bootstrap, topics["input"], _normal(image_server, photos, 20, 5))
        later = _read(kafka_bootstrap, topics["output"], 27, committed=committed_only)
        assert running.thread.is_alive()
    statuses: dict[bytes, str] = {}
    for message in outputs:
        value = message.value()
        statuses[message.key()] = (
            "TOMBSTONE" if value is None else ENRICHMENT.decode(value)["status"]
        )
    assert {f"p{i}".encode() for i in range(20)} | {b"big-partner", b"p3"} == set(statuses)
    assert "INVALID_INPUT" == statuses[b"big-partner"]
    big = next(ENRICHMENT.decode(m.value()) for m in outputs if m.key() == b"big-partner")
    assert "x" * 256 == big["partner_id"]
    assert 22 == len(outputs)
    assert 27 == len(later)
    reasons = sorted(h["dlq.error"].decode() for h in dead)
    assert 3 == len(dead)
    assert any("tombstone without a key" in r for r in reasons)
    assert any("product_id is 2000 bytes" in r for r in reasons)
    cut = [h for h in dead if h.get("dlq.truncated") == b"true"]
    assert 1 == len(cut)
    assert b"1050000" == cut[0]["dlq.original.value.size"]
    assert b"11" == cut[0]["dlq.source.offset"]
    assert {0: len(items) + 5} == {
        p: o
        for p, o in _committed(kafka_bootstrap, settings.group_id, topics["input"], 2).items()
        if p == 0
    }


def _shrink_output_limit(bootstrap: str, topic: str, limit: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(
        ConfigResource.Type.TOPIC, topic,
        incremental_configs=[ConfigEntry("max.message.bytes", str(limit),
                                         incremental_operation=AlterConfigOpType.SET)],
    )  # fmt: skip
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


@pytest.mark.parametrize("delivery", MODES)
def test_an_output_the_broker_refuses_goes_to_the_dead_letter_topic(
    delivery: str,
    kafka_bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    image_server: ImageServer,
    photos: list[str],
) -> None:
    """The output topic's limit shrinks under the running service: the one output over it is
    refused by the broker, retried alone, then dead-lettered with the broker's reason; its
    batch-mates and the products after it are answered as usual."""
    settings = _settings(kafka_bootstrap, topics, model_dir, delivery=delivery)
    committed_only = delivery == "exactly-once"
    noise = base64.b64encode(os.urandom(2900)).decode()  # 3,868 characters, ~2.9 KB entropy
    huge = _product("huge-url", image_server.url_for(photos[2]) + "?n=" + noise)
    with _Running(settings) as running:
        _send(kafka_bootstrap, topics["input"], _normal(image_server, photos, 0, 10))
        assert 10 == len(_read(kafka_bootstrap, topics["output"], 10, committed=committed_only))
        _shrink_output_limit(kafka_bootstrap, topics["output"], 2000)
        time.sleep(1.0)
        _send(kafka_bootstrap, topics["input"],
              [*_normal(image_server, photos, 10, 5), _encode(huge),
               *_normal(image_server, photos, 15, 5)])  # fmt: skip
        outputs = _read(kafka_bootstrap, topics["output"], 20, committed=committed_only)
        dead = _dead_letters(kafka_bootstrap, topics["dlq"], 1)
        assert running.thread.is_alive()
    assert {f"p{i}".encode() for i in range(20)} == {m.key() for m in outputs}
    assert 20 == len(outputs)
    assert 1 == len(dead)
    assert b"15" == dead[0]["dlq.source.offset"]
    assert b"the broker refused its enrichment" in dead[0]["dlq.error"]
    assert b"MSG_SIZE_TOO_LARGE" in dead[0]["dlq.error"] or b"too large" in dead[0]["dlq.error"]
