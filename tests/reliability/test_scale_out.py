"""Scale-out on the real broker: processes die and join one group mid-stream, nothing is lost."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.scale_out import ScaleOutRun, scale_out_scenario
from tests.service.test_pipeline import NOW, PRODUCT, _product, model_dir, photos, server
from tests.support.image_server import ImageServer

__all__ = ["model_dir", "photos", "server"]  # fixtures shared with test_pipeline

pytestmark = pytest.mark.integration

PARTITIONS = 6
PRODUCTS = 100
UPDATES = 6
"""Each product comes UPDATES times, spread over the whole stream (600 inputs)."""
MAX_IN_FLIGHT = 100


def _items(server: ImageServer, photos: list[str]) -> list[tuple[str, bytes]]:
    """Round after round, one update of every product: a later round is a later version."""
    items = []
    for update in range(UPDATES):
        for n in range(PRODUCTS):
            i = update * PRODUCTS + n
            url = f"{server.url_for(photos[i % len(photos)])}?i={i}"
            record = _product(f"s{n}", url, NOW + dt.timedelta(minutes=update))
            items.append((f"s{n}", PRODUCT.encode(record)))
    return items


def _check(run: ScaleOutRun, delivery: str) -> None:
    inputs = {(partition, offset): key for key, partition, offset in run.inputs}
    answered = Counter((partition, offset) for _, partition, offset in run.outputs)
    assert 0 == run.dead_letters
    assert set(inputs) == set(answered), f"unanswered: {sorted(set(inputs) - set(answered))[:10]}"
    assert all(inputs[(p, o)] == key for key, p, o in run.outputs), "an output names another key"
    duplicates = len(run.outputs) - len(answered)
    if delivery == "exactly-once":
        assert len(inputs) == len(run.outputs), answered.most_common(5)
    else:
        assert duplicates <= MAX_IN_FLIGHT, duplicates
    # Order per product: its outputs, each counted at its first appearance (an at-least-once
    # redo after the kill repeats a run of earlier ones), are its inputs in their order, and
    # its last output answers its last input (what a compacted topic keeps).
    expected: dict[str, list[int]] = defaultdict(list)
    for key, partition, offset in run.inputs:
        expected[key].append(offset)
        assert {partition} == {p for k, p, _ in run.inputs if k == key}
    written: dict[str, list[int]] = defaultdict(list)
    for key, _partition, offset in run.outputs:
        written[key].append(offset)
    for key, offsets in expected.items():
        assert offsets == sorted(offsets)
        assert offsets == list(dict.fromkeys(written[key])), (key, written[key])
        assert offsets[-1] == written[key][-1], (key, written[key])
        if delivery == "exactly-once":
            assert offsets == written[key], (key, written[key])
    assert {p: 0 for p in range(PARTITIONS)} == run.lag, run
    assert all(run.produced_by[name] > 0 for name in "abcd"), run.produced_by
    assert {"a": 0, "c": 0, "d": 0} == {name: run.exits[name] for name in "acd"}, run.exits


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_three_processes_one_killed_one_added(
    delivery: str, kafka_bootstrap: str, topic_factory: Any, model_dir: Path,
    server: ImageServer, photos: list[str],
) -> None:  # fmt: skip
    """Three processes in one group on 6 partitions, one killed -9 and one added mid-stream:
    every product is answered (once in exactly-once mode), in order, and the lag drains to 0."""
    topics = {
        "input": topic_factory("scale", partitions=PARTITIONS),
        "output": topic_factory("scale-out", partitions=PARTITIONS),
        "dlq": topic_factory("scale-dlq"),
    }
    items = _items(server, photos)
    run = scale_out_scenario(
        bootstrap=kafka_bootstrap, topics=topics, model_dir=model_dir, items=items,
        delivery=delivery, max_in_flight=MAX_IN_FLIGHT,
    )  # fmt: skip
    print(
        f"{delivery}: {len(run.inputs)} inputs, {len(run.outputs)} outputs, answered "
        f"{run.answered_at_kill} at the kill and {run.answered_at_join} when d joined, "
        f"produced by {run.produced_by}, lag drained {run.drain_s} s after the last input, "
        f"exits {run.exits}, {run.seconds} s"
    )
    _check(run, delivery)
