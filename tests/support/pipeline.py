"""The service's main loop alone: no broker, images, batcher or event loop behind it."""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import CollectorRegistry

from service.contract import SingleObjectCodec
from service.metrics import Metrics
from service.pipeline import EnrichmentService, ServiceOptions

TOPIC = "products"


def loop_only_service(*, consumer: object, producer: object, **options: Any) -> EnrichmentService:
    """An `EnrichmentService` reading ``TOPIC`` with these stand-ins for its clients; only the
    bookkeeping of the main loop (queues, offsets, transactions) can run on it."""
    return EnrichmentService(
        ServiceOptions(input_topic=TOPIC, output_topic="out", dead_letter_topic="dlq", **options),
        consumer=cast(Any, consumer),
        producer=cast(Any, producer),
        product_codec=SingleObjectCodec.for_schema("product"),
        enrichment_codec=SingleObjectCodec.for_schema("category_enrichment"),
        images=cast(Any, None),
        batcher=cast(Any, None),
        loop=cast(Any, None),
        model_record={},
        metrics=Metrics(CollectorRegistry()),
    )
