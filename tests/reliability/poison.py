"""Poison records: the killer ``sitecustomize`` (a product that kills the serve child),
topics as a cautious operator sets them up, the poison records and the scenario."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka

from tests.reliability.scenarios import (
    PRODUCT,
    OutputWatcher,
    Row,
    _stop,
    product_value,
    serve_process,
    service_env,
)

KILLER = "killer"


KILLER_SITECUSTOMIZE = f"""
import os

import service.records

_parse = service.records.parse_product


def parse_product(record):
    if record.get("product_id") == {KILLER!r}:
        os._exit(70)  # dies as a segfaulting decoder would: no handler, no commit
    return _parse(record)


service.records.parse_product = parse_product
"""
"""A ``sitecustomize`` for a serve child (through ``PYTHONPATH``): the process dies at once,
nothing committed, whenever it reads the product ``KILLER``, as a decoder crash or an
out-of-memory kill would; the service itself is unchanged."""


def killer_path(work: Path) -> Path:
    """A folder holding :data:`KILLER_SITECUSTOMIZE`, for the child's ``PYTHONPATH``."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "sitecustomize.py").write_text(KILLER_SITECUSTOMIZE)
    return work


def poison_topics(admin: Any, name: str, dead_letter_bytes: int = 20_000) -> dict[str, str]:
    """Topics as a cautious operator sets them up: a compacted output topic, a dead-letter
    topic with a small ``max.message.bytes``; the input takes records up to 3 MB."""
    suffix = uuid.uuid4().hex[:8]
    topics = {kind: f"chaos-{name}-{kind}-{suffix}" for kind in ("input", "output", "dlq")}
    admin.create_topics([topics["input"]], partitions=4,
                        config={"max.message.bytes": "3000000"})  # fmt: skip
    admin.create_topics([topics["output"]], partitions=4, config={"cleanup.policy": "compact"})
    admin.create_topics([topics["dlq"]], config={"max.message.bytes": str(dead_letter_bytes)})
    return topics


def poison_records(url: str) -> list[tuple[bytes | None, bytes | None]]:
    """One of each poison record: a keyless tombstone, 1.05 MB of junk, a 1.1 MB partner_id,
    a 2 KB product_id (each answered by a status or a dead letter, never fatal)."""
    big_partner = PRODUCT.decode(product_value("big-partner", url))
    big_partner["partner_id"] = "x" * 1_100_000
    long_id = PRODUCT.decode(product_value("i" * 2000, url))
    return [
        (None, None),
        (b"junk", b"\x00" * 1_050_000),
        (b"big-partner", PRODUCT.encode(big_partner)),
        (b"long-id", PRODUCT.encode(long_id)),
    ]


def poison_scenario(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    urls: list[str],
    inputs: int,
    delivery: str,
    restarts: int = 2,
    work: Path,
    timeout_s: float = 600.0,
) -> Row:
    """``inputs`` products over 4 partitions with the poison records of
    :func:`poison_records` in every partition and one :data:`KILLER` in partition 0. The
    service is restarted whenever it dies; the row counts lost inputs, deaths and stopped
    partitions (committed offset short of the partition's end once all is answered)."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "message.max.bytes": 3_000_000, "linger.ms": 20}
    )
    sent = 0
    for i in range(inputs):
        key = f"x{i}"
        value = product_value(key, urls[i % len(urls)])
        producer.produce(topics["input"], key=key.encode(), value=value, partition=i % 4)
        sent += 1
        if i % 500 == 250:  # poison spread through each partition
            for key_bytes, value in poison_records(urls[0]):
                producer.produce(topics["input"], key=key_bytes, value=value, partition=i % 4)
                sent += 1
        if i == inputs // 2:
            producer.produce(topics["input"], key=KILLER.encode(),
                             value=product_value(KILLER, urls[0]), partition=0)  # fmt: skip
            sent += 1
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("poison inputs were not all delivered")
    group = f"chaos-poison-{uuid.uuid4().hex[:8]}"
    env = service_env(
        bootstrap, topics, model_dir, group, PYTHONPATH=str(killer_path(work)),
        ENRICH_DELIVERY=delivery, ENRICH_CRASH_LOOP_RESTARTS=str(restarts),
        ENRICH_TRANSACTIONAL_ID=f"{group}-tx",
    )  # fmt: skip
    watcher = OutputWatcher(bootstrap, [topics["output"], topics["dlq"]],
                            committed_only=delivery == "exactly-once")  # fmt: skip
    runs, deaths = 0, 0
    process: subprocess.Popen[bytes] | None = None
    began = time.monotonic()
    deadline = began + timeout_s
    try:
        while watcher.unique() < sent and time.monotonic() < deadline:
            if process is None or process.poll() is not None:
                deaths += process is not None
                process = serve_process(env)
                runs += 1
            time.sleep(0.1)
        seconds = time.monotonic() - began
        time.sleep(1.0)  # late duplicates would arrive now
    finally:
        if process is not None:
            _stop(process)
        watcher.close()
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = [confluent_kafka.TopicPartition(topics["input"], p) for p in range(4)]
        committed = consumer.committed(partitions, 10)
        ends = [consumer.get_watermark_offsets(tp, 10)[1] for tp in partitions]
    finally:
        consumer.close()
    stopped = sum(tp.offset < end for tp, end in zip(committed, ends, strict=True))
    unique = watcher.unique()
    return Row(
        scenario=f"poison records ({delivery}): {deaths} deaths on the killer, "
        f"{stopped} stopped partitions",
        runs=runs,
        inputs=sent,
        outputs=watcher.count(),
        lost=sent - unique,
        duplicates=watcher.count() - unique,
        guarded_hits=0,
        max_recovery_s=round(seconds, 1),
    )
