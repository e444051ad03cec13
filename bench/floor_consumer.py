"""The floor under figure (3): the least a warm consumer of this architecture can do per product.

Figure (3) asks the service for 0.9 of its model's solo inference rate while Kafka, Redis and
the service share this machine's cores. This consumer measures what the machine allows a
consumer of the same architecture: it keeps only the work no design can drop, in two threads,

- main thread: ``consume`` a batch, decode its Avro records, read their pixels from the
  image cache (the service's own `ImageCache`, two MGETs a batch), hand the batch over;
- inference thread: stack the pixels, ``classify`` the batch (the runtime the service would
  pick), build and encode each enrichment, ``produce`` it; acknowledged outputs store their
  offsets in consume order (`_Acknowledged`), committed at the end;

with nothing else: no fetching, no ordering per key, no metrics, no logging per product, no
text or fallback signals, no dead letters. Every product of the topic must be a cache hit
(figure (3)'s warm topic is); a miss is an error, not a skipped product.

    .venv/bin/python -m bench.floor_consumer --model DIR --source TOPIC --target TOPIC \
        --count N [--bootstrap HOST:PORT] [--redis URL]

Prints one JSON line: products/s from the first batch consumed to the last delivery, and the
CPU each process of the machine spent per product over that time (this process, the broker,
Redis), to set beside figure (3) in the same run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import confluent_kafka
import numpy as np

from bench.processes import machine_busy_s, process_cpu_s, processes
from model.classifier import Classifier
from service.cache import CacheHit, ImageCache
from service.contract import SingleObjectCodec
from service.records import ImageInfo, enrichment, parse_product
from service.redis_store import RedisStore

_DONE = object()


class FloorError(RuntimeError):
    """The floor run could not measure what it promises (a cache miss, a failed delivery)."""


def _consumer(bootstrap: str, source: str, group_id: str) -> confluent_kafka.Consumer:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.offset.store": False,
        }
    )
    consumer.subscribe([source])
    return consumer


class _Acknowledged:
    """Stores, per input partition, the offset after the longest run of consumed messages
    whose outputs are all acknowledged, so no stored offset passes an unacknowledged one."""

    def __init__(self, consumer: confluent_kafka.Consumer) -> None:
        self._consumer = consumer
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], collections.deque[int]] = {}
        self._acked: dict[tuple[str, int], set[int]] = {}

    def expect(self, message: confluent_kafka.Message) -> None:
        """``message`` was consumed and its output produced (in consume order)."""
        key = (message.topic() or "", message.partition() or 0)
        with self._lock:
            self._pending.setdefault(key, collections.deque()).append(message.offset() or 0)

    def done(self, message: confluent_kafka.Message) -> None:
        """``message``'s output was acknowledged: store what is now contiguous."""
        key = (message.topic() or "", message.partition() or 0)
        with self._lock:
            acked = self._acked.setdefault(key, set())
            acked.add(message.offset() or 0)
            pending, last = self._pending[key], None
            while pending and pending[0] in acked:
                last = pending.popleft()
                acked.discard(last)
            if last is not None:
                self._consumer.store_offsets(
                    offsets=[confluent_kafka.TopicPartition(key[0], key[1], last + 1)]
                )


def _infer(
    classifier: Classifier,
    batches: queue.Queue[Any],
    producer: confluent_kafka.Producer,
    consumer: confluent_kafka.Consumer,
    target: str,
    failures: list[str],
) -> None:
    """The inference thread: classify, encode and produce each batch until `_DONE`."""
    codec = SingleObjectCodec.for_schema("category_enrichment")
    model = classifier.info.to_record()

    acknowledged = _Acknowledged(consumer)

    def stores(message: confluent_kafka.Message) -> Any:
        """A delivery callback for ``message``'s output."""
        acknowledged.expect(message)

        def delivered(error: Any, _output: Any) -> None:
            if error is not None:
                failures.append(str(error))
            else:
                acknowledged.done(message)

        return delivered

    def produce_batch(item: Any) -> None:
        messages, products, hits = item
        predictions = classifier.classify([hit.pixels for hit in hits])
        for message, product, hit, prediction in zip(
            messages, products, hits, predictions, strict=True
        ):
            reference = (message.topic(), message.partition(), message.offset())
            record = enrichment(
                product, status=prediction.status, model=model, source=reference,
                prediction=prediction,
                image=ImageInfo(product.image_url or "", hit.sha256, True),
            )  # fmt: skip
            producer.produce(
                target, key=message.key(), value=codec.encode(record),
                on_delivery=stores(message),
            )  # fmt: skip
        producer.poll(0)

    broken = False
    while (item := batches.get()) is not _DONE:
        if broken:
            continue  # keep taking batches so the main thread never blocks on a dead worker
        try:
            produce_batch(item)
        except Exception as exc:  # reported by `run` once the main thread is done
            failures.append(f"inference thread: {type(exc).__name__}: {exc}")
            broken = True


def run(
    classifier: Classifier,
    cache: ImageCache,
    bootstrap: str,
    source: str,
    target: str,
    count: int,
    batch: int,
    group_id: str | None = None,
) -> dict[str, Any]:
    """Enrich ``count`` products of ``source`` into ``target`` as consumer group
    ``group_id`` (default: a new one), committing the offsets of acknowledged outputs at the
    end; returns the measurement."""
    products_codec = SingleObjectCodec.for_schema("product")
    consumer = _consumer(bootstrap, source, group_id or f"bench-floor-{uuid.uuid4().hex[:8]}")
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    batches: queue.Queue[Any] = queue.Queue(maxsize=2)
    failures: list[str] = []
    worker = threading.Thread(
        target=_infer, args=(classifier, batches, producer, consumer, target, failures),
        name="inference", daemon=True,
    )  # fmt: skip
    worker.start()
    done = 0
    began = 0.0
    before: dict[str, Any] = {}
    try:
        while done < count:
            messages = [
                m for m in consumer.consume(min(batch, count - done), 1.0) if m.error() is None
            ]
            if not messages:
                continue
            if done == 0:
                began = time.perf_counter()
                before = {"cpu": processes(), "busy": machine_busy_s(), "self": _self_cpu()}
            products = [parse_product(products_codec.decode(m.value() or b""))[0] for m in messages]
            results = cache.get_many([p.image_url or "" for p in products])
            hits = [r for r in results if isinstance(r, CacheHit)]
            if len(hits) != len(results):
                raise FloorError(f"{len(results) - len(hits)} cache misses: the topic is not warm")
            batches.put((messages, products, hits))
            done += len(messages)
            producer.poll(0)
        batches.put(_DONE)
        worker.join()
        if producer.flush(60) != 0:
            raise FloorError("the broker did not acknowledge every output in 60 s")
        seconds = time.perf_counter() - began
        after = {"cpu": processes(), "busy": machine_busy_s(), "self": _self_cpu()}
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    if failures:
        raise FloorError(f"{len(failures)} deliveries failed, first: {failures[0]}")
    return _measurement(done, seconds, before, after)


def _self_cpu() -> float:
    return process_cpu_s(os.getpid())


def _measurement(
    done: int, seconds: float, before: dict[str, Any], after: dict[str, Any]
) -> dict[str, Any]:
    """Products/s and CPU ms per product: this process, the broker, Redis, everything."""
    by_name: dict[str, float] = {}
    for pid, (name, cpu) in after["cpu"].items():
        earlier = before["cpu"].get(pid)
        used = cpu - (earlier[1] if earlier is not None and earlier[0] == name else 0.0)
        if used > 0 and pid != os.getpid():
            by_name[name] = by_name.get(name, 0.0) + used

    def per_product_ms(cpu_s: float) -> float:
        return round(1000 * cpu_s / done, 3)

    kafka = sum(v for k, v in by_name.items() if k.startswith("java"))
    redis = sum(v for k, v in by_name.items() if "redis" in k)
    return {
        "products": done,
        "seconds": round(seconds, 2),
        "products_per_s": round(done / seconds, 1),
        "cpu_ms_per_product": {
            "floor_consumer": per_product_ms(after["self"] - before["self"]),
            "kafka": per_product_ms(kafka),
            "redis": per_product_ms(redis),
            "machine": per_product_ms(after["busy"] - before["busy"]),
        },
        "machine_cores": round((after["busy"] - before["busy"]) / seconds, 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Load the model and the cache as the service would (from ENRICH_*), then run."""
    from service.config import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args(argv)
    settings = load_settings()
    classifier = Classifier.load(
        args.model, runtime=settings.runtime, num_threads=settings.inference_threads or None
    )
    size = classifier.input_size
    classifier.classify([np.zeros((size, size, 3), dtype=np.uint8)] * settings.batch_max_size)
    cache = ImageCache(
        RedisStore(args.redis, prefix="enrich:", socket_timeout=5.0),
        image_size=size, ttl_s=settings.cache_ttl_s,
        negative_ttl_s=settings.cache_negative_ttl_s, compress=settings.cache_compress,
    )  # fmt: skip
    result = run(
        classifier, cache, args.bootstrap, args.source, args.target, args.count,
        settings.batch_max_size,
    )  # fmt: skip
    print(json.dumps({"runtime": classifier.runtime.describe(), **result}), flush=True)


if __name__ == "__main__":
    main()
