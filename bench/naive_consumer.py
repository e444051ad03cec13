"""The naive baseline: the enrichment consumer written the obvious way, one product at a time.

Poll one record, fetch its image with a blocking client (``requests.get``), decode it with the
service's own ``decode_image``, ``classify`` that one image, produce the enrichment, wait for
the broker (``flush``), commit the offset synchronously. No cache, no concurrency, no batching.
The records it writes are the service's (``service.records.enrichment``), so the work per
product is the same apart from how it is scheduled.

    .venv/bin/python -m bench.naive_consumer --model DIR --phase IN:OUT:COUNT [--phase ...]

Each phase reads ``COUNT`` products of topic ``IN`` (new consumer group, from the beginning)
into ``OUT``; one JSON line per phase is printed with its products/s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path

import confluent_kafka
import numpy as np
import requests

from model.classifier import Classifier
from model.errors import InvalidImageError
from model.preprocess import decode_image
from service.contract import SingleObjectCodec
from service.records import ImageInfo, enrichment, parse_product


def run_phase(
    classifier: Classifier, bootstrap: str, source: str, target: str, count: int
) -> dict[str, object]:
    """Enrich ``count`` products of ``source`` into ``target``, one by one."""
    products = SingleObjectCodec.for_schema("product")
    enrichments = SingleObjectCodec.for_schema("category_enrichment")
    model = classifier.info.to_record()
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-naive-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    consumer.subscribe([source])
    done = 0
    began = 0.0
    try:
        while done < count:
            message = consumer.poll(1.0)
            if message is None or message.error() is not None:
                continue
            if done == 0:
                began = time.perf_counter()
            product, _ = parse_product(products.decode(message.value()))
            url = product.image_url or ""
            source_ref = (source, message.partition(), message.offset())
            try:
                answer = requests.get(url, timeout=10)
                answer.raise_for_status()
                pixels = decode_image(answer.content, classifier.input_size)
                prediction = classifier.classify([pixels])[0]
                record = enrichment(
                    product, status=prediction.status, model=model, source=source_ref,
                    prediction=prediction, image=ImageInfo(url),
                )  # fmt: skip
            except (requests.RequestException, InvalidImageError) as exc:
                record = enrichment(
                    product, status="IMAGE_UNAVAILABLE", model=model, source=source_ref,
                    error=str(exc), image=ImageInfo(url),
                )  # fmt: skip
            producer.produce(target, key=message.key(), value=enrichments.encode(record))
            producer.flush(30)
            consumer.commit(message, asynchronous=False)
            done += 1
    finally:
        consumer.close()
    seconds = time.perf_counter() - began
    return {"topic": source, "products": done, "seconds": round(seconds, 2),
            "products_per_s": round(done / seconds, 2) if seconds else None}  # fmt: skip


def main() -> None:
    """Load the model once, then run each phase in turn."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--phase", action="append", required=True, help="IN:OUT:COUNT")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    args = parser.parse_args()
    classifier = Classifier.load(args.model)
    # The first call traces the model (about a second); steady state is what is compared.
    size = classifier.input_size
    classifier.classify([np.zeros((size, size, 3), dtype=np.uint8)])
    for phase in args.phase:
        source, target, count = phase.split(":")
        print(json.dumps(run_phase(classifier, args.bootstrap, source, target, int(count))),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
