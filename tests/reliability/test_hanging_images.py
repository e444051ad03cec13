"""Image URLs that hang: healthy products keep flowing, the hanging ones are answered in time.

One scenario run (a backlog all healthy, then the same backlog with 1 in 10 image URLs on a
second image server, at 127.0.0.2, that accepts and never answers; same settings) feeds every
test here. The hanging host's circuit opens after its first timeouts, so its other products
fail at once instead of queueing for its per-host slots. (Hanging paths on the *same* host as
healthy ones share that host's per-host cap; `make chaos` reports that case too.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.kafka.admin import KafkaAdmin
from tests.reliability.scenarios import FlowRun, Row, hanging_scenario, service_topics
from tests.service.test_pipeline import model_dir, photos
from tests.support.image_server import ImageServer

__all__ = ["model_dir", "photos"]  # fixtures shared with test_pipeline

pytestmark = pytest.mark.integration

INPUTS = 1200
HANGING_EVERY = 10
# Short fetch timeouts keep the test quick; the defaults (10 s per read, 3 retries) only
# stretch the same picture out.
TIMEOUTS = {
    "ENRICH_CONNECT_TIMEOUT_S": "1",
    "ENRICH_READ_TIMEOUT_S": "1",
    "ENRICH_TOTAL_TIMEOUT_S": "2",
    "ENRICH_FETCH_RETRIES": "1",
    "ENRICH_ALLOWED_NETWORKS": "127.0.0.1/32,127.0.0.2/32",
}
ATTEMPTS = 2
# Two attempts of at most the total timeout each, the first backoff (at most 0.2 s), slack.
ANSWER_BOUND_S = ATTEMPTS * 2.0 + 0.2 + 3.0


@pytest.fixture(scope="module")
def outcome(
    kafka_bootstrap: str, model_dir: Path, photos: list[str], shared_data: Path
) -> Iterator[tuple[Row, FlowRun, FlowRun]]:
    """The scenario's row, its all-healthy run and its run with hanging URLs."""
    admin = KafkaAdmin({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make_topics(name: str) -> dict[str, str]:
        topics = service_topics(admin, name)
        created.extend(topics.values())
        return topics

    server = ImageServer(shared_data / "product-images").start()
    hang_server = ImageServer(shared_data / "product-images", host="127.0.0.2").start()
    try:
        result = hanging_scenario(
            bootstrap=kafka_bootstrap, make_topics=make_topics, model_dir=model_dir,
            server=server, photos=photos, inputs=INPUTS, hanging_every=HANGING_EVERY,
            env_extra=TIMEOUTS, hang_server=hang_server, timeout_s=240,
        )  # fmt: skip
        row, baseline, hanging = result
        print(row)
        print(f"healthy products/s: {baseline.healthy_per_s:.1f} all healthy, "
              f"{hanging.healthy_per_s:.1f} with hanging URLs; slowest hanging answer "
              f"{max(hanging.answer_s.values(), default=0):.2f} s")  # fmt: skip
        yield result
    finally:
        server.stop()
        hang_server.stop()
        admin.delete_topics(created)


def test_every_input_is_answered_once(outcome: tuple[Row, FlowRun, FlowRun]) -> None:
    """Both runs answer every input exactly once, healthy products with a classification."""
    row, baseline, hanging = outcome
    assert (0, 0) == (row.lost, row.duplicates), row
    assert INPUTS == baseline.healthy
    assert INPUTS - INPUTS // HANGING_EVERY == hanging.healthy
    for run in (baseline, hanging):
        assert set(run.healthy_statuses) <= {"CLASSIFIED", "LOW_CONFIDENCE"}, run.healthy_statuses


def test_hanging_products_get_image_unavailable_within_the_timeouts(
    outcome: tuple[Row, FlowRun, FlowRun],
) -> None:
    """Each hanging product is IMAGE_UNAVAILABLE, its URL tried at most twice, answered in time."""
    _, _, hanging = outcome
    assert INPUTS // HANGING_EVERY == len(hanging.statuses)
    assert {"IMAGE_UNAVAILABLE"} == set(hanging.statuses.values())
    assert max(hanging.requests.values()) <= ATTEMPTS
    asked = [p for p, n in hanging.requests.items() if n]
    assert asked, "the hanging host was never asked: the scenario did not hang anything"
    late = {p: round(s, 2) for p, s in hanging.answer_s.items() if s > ANSWER_BOUND_S}
    assert {} == late, f"{len(late)} answered later than {ANSWER_BOUND_S} s after their request"


def test_healthy_rate_stays_at_least_half_of_normal(outcome: tuple[Row, FlowRun, FlowRun]) -> None:
    """With 1 in 10 image URLs hanging, healthy products flow at least half as fast as without."""
    _, baseline, hanging = outcome
    ratio = hanging.healthy_per_s / baseline.healthy_per_s
    assert ratio >= 0.5, (
        f"{hanging.healthy_per_s:.1f} healthy products/s with hanging URLs against "
        f"{baseline.healthy_per_s:.1f} without: {ratio:.2f}"
    )
