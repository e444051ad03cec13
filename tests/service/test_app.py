"""Building and entering the service (no Kafka: nothing here consumes)."""

from __future__ import annotations

import resource
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from structlog.testing import capture_logs

from service.app import Service, ensure_open_files
from service.config import load_settings


class _RecordingClassifier:
    """Stands in for `Classifier`: remembers the batches it was asked to classify."""

    def __init__(self, input_size: int) -> None:
        self.input_size = input_size
        self.batches: list[list[tuple[int, ...]]] = []

    def classify(self, images: Sequence[NDArray[np.uint8]]) -> list[Any]:
        self.batches.append([np.asarray(image).shape for image in images])
        return []


class TestWarmUp:
    def test_the_model_sees_a_full_batch_and_a_single_image_before_any_product(self) -> None:
        """Entering the service classifies a blank batch of the largest size, then one blank
        image, of the model's input shape, so the model's tracing happens before readiness."""
        classifier = _RecordingClassifier(input_size=8)
        settings = load_settings(batch_max_size=4, metrics_port=0, redis_url="")
        service = Service(settings, classifier=classifier, http=False)  # type: ignore[arg-type]
        with service:
            assert [[(8, 8, 3)] * 4, [(8, 8, 3)]] == classifier.batches


@pytest.fixture
def hard_limit() -> Iterator[int]:
    """The hard limit on open files; the soft one is put back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.fail(f"this test needs a finite hard limit of at least 512 open files, not {hard}")
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class TestEnsureOpenFiles:
    @pytest.mark.parametrize(
        ("soft_below_hard", "needed_below_hard", "expected_below_hard", "warned"),
        [
            (200, 300, 200, False),  # enough already: left alone
            (300, 200, 200, False),  # raised to what is needed
            (300, -100, 0, True),  # needs more than the hard limit: raised to it, and logged
        ],
    )
    def test_the_soft_limit_is_raised_towards_what_the_sockets_need(
        self,
        hard_limit: int,
        soft_below_hard: int,
        needed_below_hard: int,
        expected_below_hard: int,
        warned: bool,
    ) -> None:
        """The soft limit on open files rises to what is needed, at most the hard limit, and a
        shortfall is logged."""
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard_limit - soft_below_hard, hard_limit))
        with capture_logs() as logs:
            limit = ensure_open_files(hard_limit - needed_below_hard)
        assert (hard_limit - expected_below_hard, hard_limit - expected_below_hard, warned) == (
            limit,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            [e["event"] for e in logs] == ["open_file_limit_low"],
        )
