"""Building and entering the service (no Kafka: nothing here consumes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.app import Service
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
