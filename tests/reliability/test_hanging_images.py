"""Image URLs that hang: healthy products keep flowing, the hanging ones are answered in time.

Three runs of one backlog under the same settings feed every test here: all healthy; 1 in 10
image URLs accepting and never answering on the photos' own server (a shop that hangs on
some paths); and the same on a second server, at 127.0.0.2, that serves nothing else (a shop
that hangs on everything). On the shared host the hanging requests are stalled out of the
host's per-host slots once it has answered the ones asked after them; the host that only
hangs has its circuit opened after its first timeouts, so its other products fail at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.kafka.admin import KafkaAdmin
from tests.reliability.flow import FlowRun, hanging_scenario
from tests.reliability.scenarios import Row, service_topics
from tests.service.test_pipeline import model_dir, photos
from tests.support.image_server import ImageServer

__all__ = ["model_dir", "photos"]  # fixtures shared with test_pipeline

pytestmark = pytest.mark.integration

INPUTS = 1500
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
HOSTS = ("the photos' own host", "a host of their own")


@pytest.fixture(scope="module")
def outcomes(
    kafka_bootstrap: str, model_dir: Path, photos: list[str], shared_data: Path
) -> Iterator[dict[str, tuple[Row, FlowRun, FlowRun]]]:
    """Per place of the hanging URLs: the row, the all-healthy run and the run with them."""
    admin = KafkaAdmin({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make_topics(name: str) -> dict[str, str]:
        topics = service_topics(admin, name)
        created.extend(topics.values())
        return topics

    server = ImageServer(shared_data / "product-images").start()
    hang_server = ImageServer(shared_data / "product-images", host="127.0.0.2").start()
    try:
        results: dict[str, tuple[Row, FlowRun, FlowRun]] = {}
        baseline: FlowRun | None = None
        for place, hang_at in zip(HOSTS, (None, hang_server), strict=True):
            results[place] = result = hanging_scenario(
                bootstrap=kafka_bootstrap, make_topics=make_topics, model_dir=model_dir,
                server=server, photos=photos, inputs=INPUTS, hanging_every=HANGING_EVERY,
                env_extra=TIMEOUTS, hang_server=hang_at, timeout_s=240, baseline=baseline,
            )  # fmt: skip
            row, baseline, hanging = result
            print(place, row)
            print(f"healthy products/s: {baseline.healthy_per_s:.1f} all healthy, "
                  f"{hanging.healthy_per_s:.1f} with hanging URLs on {place} (delivered "
                  f"{baseline.delivered_per_s:.1f} and {hanging.delivered_per_s:.1f}); slowest "
                  f"hanging answer {max(hanging.answer_s.values(), default=0):.2f} s")  # fmt: skip
        yield results
    finally:
        server.stop()
        hang_server.stop()
        admin.delete_topics(created)


@pytest.mark.parametrize("place", HOSTS)
def test_every_input_is_answered_once(
    outcomes: dict[str, tuple[Row, FlowRun, FlowRun]], place: str
) -> None:
    """Both runs answer every input exactly once, healthy products with a classification."""
    row, baseline, hanging = outcomes[place]
    assert (0, 0) == (row.lost, row.duplicates), row
    assert INPUTS == baseline.healthy
    assert INPUTS - INPUTS // HANGING_EVERY == hanging.healthy
    for run in (baseline, hanging):
        assert set(run.healthy_statuses) <= {"CLASSIFIED", "LOW_CONFIDENCE"}, (
            run.healthy_statuses,
            run.healthy_reasons,
        )


@pytest.mark.parametrize("place", HOSTS)
def test_hanging_products_get_image_unavailable_within_the_timeouts(
    outcomes: dict[str, tuple[Row, FlowRun, FlowRun]], place: str
) -> None:
    """Each hanging product is IMAGE_UNAVAILABLE, its URL tried at most twice, answered in time."""
    _, _, hanging = outcomes[place]
    assert INPUTS // HANGING_EVERY == len(hanging.statuses)
    assert {"IMAGE_UNAVAILABLE"} == set(hanging.statuses.values())
    assert max(hanging.requests.values()) <= ATTEMPTS
    asked = [p for p, n in hanging.requests.items() if n]
    assert asked, "the hanging host was never asked: the scenario did not hang anything"
    late = {p: round(s, 2) for p, s in hanging.answer_s.items() if s > ANSWER_BOUND_S}
    assert {} == late, f"{len(late)} answered later than {ANSWER_BOUND_S} s after their request"


@pytest.mark.parametrize("place", HOSTS)
def test_healthy_rate_stays_at_least_half_of_normal(
    outcomes: dict[str, tuple[Row, FlowRun, FlowRun]], place: str
) -> None:
    """With 1 in 10 image URLs hanging, healthy products flow at least half as fast as without."""
    _, baseline, hanging = outcomes[place]
    ratio = hanging.healthy_per_s / baseline.healthy_per_s
    assert ratio >= 0.5, (
        f"{hanging.healthy_per_s:.1f} healthy products/s with hanging URLs against "
        f"{baseline.healthy_per_s:.1f} without: {ratio:.2f}"
    )
