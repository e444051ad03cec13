"""A record that kills the process every time is quarantined; the partition goes on.

The killer is simulated the way a real one behaves from outside: the process dies at once
(``os._exit``, no handler runs, nothing is committed) whenever it reads one product, as a
decoder crash or an out-of-memory kill would (``poison.KILLER_SITECUSTOMIZE``, given to the
serve child through ``PYTHONPATH``); the service itself is unchanged.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from tests.reliability.poison import KILLER, killer_path
from tests.reliability.scenarios import OutputWatcher, process_log, serve_process, service_env
from tests.service.test_pipeline import (
    PRODUCT,
    _committed,
    _product,
    _read,
    model_dir,
    photos,
    server,
)
from tests.support.image_server import ImageServer

__all__ = ["model_dir", "photos", "server"]  # fixtures shared with test_pipeline

pytestmark = pytest.mark.integration

RESTARTS = 2


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_record_that_kills_the_process_is_quarantined(
    delivery: str, kafka_bootstrap: str, topic_factory: Any, model_dir: Path,
    server: ImageServer, photos: list[str], tmp_path: Path,
) -> None:  # fmt: skip
    """The process dies on one record; after RESTARTS deaths the partition goes one record at
    a time, after RESTARTS more the record is quarantined, and every other product answered."""
    topics = {
        "input": topic_factory("loop"),
        "output": topic_factory("loop-out"),
        "dlq": topic_factory("loop-dlq"),
    }
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap})
    ids = [f"q{i}" for i in range(30)]
    ids[5] = KILLER
    for i, product_id in enumerate(ids):
        url = server.url_for(photos[i % len(photos)])
        producer.produce(topics["input"], key=product_id.encode(),
                         value=PRODUCT.encode(_product(product_id, url)))  # fmt: skip
    assert 0 == producer.flush(30)
    group = f"loop-{uuid.uuid4().hex[:8]}"
    env = service_env(
        kafka_bootstrap, topics, model_dir, group, PYTHONPATH=str(killer_path(tmp_path)),
        ENRICH_DELIVERY=delivery, ENRICH_CRASH_LOOP_RESTARTS=str(RESTARTS),
        ENRICH_TRANSACTIONAL_ID=f"{group}-tx", ENRICH_LOG_LEVEL="INFO",
    )  # fmt: skip
    watcher = OutputWatcher(kafka_bootstrap, [topics["output"], topics["dlq"]],
                            committed_only=delivery == "exactly-once")  # fmt: skip
    starts, deaths, logs = 0, [], []
    process: subprocess.Popen[bytes] | None = None
    deadline = time.monotonic() + 240
    try:
        while watcher.unique() < len(ids) and time.monotonic() < deadline:
            if process is None or process.poll() is not None:
                if process is not None:
                    deaths.append(process.returncode)
                    logs.append(process_log(process))
                assert starts < 2 * RESTARTS + 2, (deaths, watcher.unique(), logs)
                process = serve_process(env)
                starts += 1
            time.sleep(0.2)
        alive = process is not None and process.poll() is None
        log = process_log(process) if process is not None else ""
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(60)
        watcher.close()
    assert len(ids) == watcher.unique(), log
    assert alive, log
    assert [70] * (2 * RESTARTS) == deaths
    dead = [s for s, record in zip(watcher.sources, watcher.records, strict=True) if record is None]
    assert [(0, 5)] == dead
    (letter,) = _read(kafka_bootstrap, topics["dlq"], 1)
    reason = dict(letter.headers() or [])["dlq.error"]
    assert f"quarantined: the process died {RESTARTS} times".encode() in reason
    if delivery == "exactly-once":
        assert 0 == watcher.count() - watcher.unique()  # nothing published twice
    assert {0: len(ids)} == _committed(kafka_bootstrap, group, topics["input"], 1)
