"""The broker goes away mid-stream and comes back: nothing lost, readiness follows it."""

from __future__ import annotations

from pathlib import Path

import confluent_kafka
import pytest

from service.kafka.admin import KafkaAdmin
from tests.reliability.outages import PrivateBroker, broker_outage_scenario
from tests.service.test_pipeline import PRODUCT, _product, model_dir, photos, server
from tests.support.image_server import Behaviour, ImageServer

__all__ = ["model_dir", "photos", "server"]  # fixtures shared with test_pipeline

pytestmark = pytest.mark.integration


def test_broker_outage_loses_nothing_and_readiness_follows(
    model_dir: Path, server: ImageServer, photos: list[str], tmp_path: Path
) -> None:
    """Stop the broker for 10 s mid-stream: /readyz goes false then true, every input answered."""
    broker = PrivateBroker(tmp_path / "run")
    broker.start()
    try:
        topics = {"input": "outage-in", "output": "outage-out", "dlq": "outage-dlq"}
        admin = KafkaAdmin({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([topics["input"], topics["output"]], partitions=2)
        admin.create_topics([topics["dlq"]], partitions=1)
        body = (server.root / photos[4]).read_bytes()
        slow = server.script("outage.jpg", Behaviour(body=body, content_type="image/jpeg",
                                                     delay_s=0.03))  # fmt: skip
        inputs = 400
        producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
        for i in range(inputs):
            producer.produce(topics["input"], key=f"o{i}".encode(),
                             value=PRODUCT.encode(_product(f"o{i}", f"{slow}?i={i}")))  # fmt: skip
        assert 0 == producer.flush(30)
        row, readiness = broker_outage_scenario(
            broker=broker,
            topics=topics,
            model_dir=model_dir,
            inputs=inputs,
            outage_s=10,
            timeout_s=150,
        )
    finally:
        broker.stop(keep=False)
    print(row, readiness)
    assert 0 == row.lost, row
    # Ready once partitions are assigned, not ready during the outage, ready again after.
    first_ready = readiness.index(True)
    assert False in readiness[first_ready:], readiness
    assert readiness[-1] is True, readiness
