"""Failing images with titles present: how many products still get a category, at what rate.

    python -m bench.text_fallback [--products 2000] [--failing 0.12] [--rounds 2]

The service end to end on the real Kafka broker (``KAFKA_BOOTSTRAP_SERVERS``, default
127.0.0.1:9092; `make services-up` starts one), in this process, with real fashion catalog
photos and their real titles (``$SHARED_DATA/fashion-products``) served over HTTP on
127.0.0.1, and a share of the image URLs answering 404 (the original system's sample had
about 12% of images that could not be downloaded). Two set-ups, interleaved ``--rounds``
times on fresh topics with the same products: **text off** (the demo's image model alone)
and **text on** (the same plus the demo's text model, `service/demo_assets/text/`). Each run
produces every product first, then serves them cold (no image cache) and measures
products/s from the first output to the last, and the share of products whose record has a
category. Writes ``docs/results/text_fallback.md`` and ``.json`` with ``--output``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    ENRICHMENT,
    ImageHosts,
    Kafka,
    Photo,
    bootstrap_servers,
    product_record,
    rate,
    shared_data,
)
from service.contract import SingleObjectCodec

PRODUCT = SingleObjectCodec.for_schema("product")


def fashion_rows(root: Path, count: int, seed: int) -> list[tuple[Photo, str]]:
    """``count`` fashion-products photos with their titles (all splits, a fixed shuffle)."""
    with (root / "fashion-products" / "labels.csv").open() as stream:
        rows = [r for r in csv.DictReader(stream) if r["title"].strip()]
    random.Random(seed).shuffle(rows)
    chosen = []
    for row in rows[:count]:
        data = (root / "fashion-products" / row["image_path"]).read_bytes()
        chosen.append(
            (Photo(row["image_path"], data, hashlib.sha256(data).hexdigest()), row["title"])
        )
    return chosen


def run_once(
    *,
    text_on: bool,
    products: list[tuple[str, str, str]],
    image_model: Path,
    text_model: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """Serve ``products`` (id, url, title) once; products/s and what the records say."""
    from model.classifier import Classifier
    from model.text_classifier import TextClassifier
    from service.app import Service
    from service.config import load_settings

    kafka = Kafka(bootstrap_servers(), uuid.uuid4().hex[:8])
    try:
        source, target, dead = kafka.topic("in"), kafka.topic("out"), kafka.topic("dlq", 1)
        now = dt.datetime.now(tz=dt.UTC)
        items = []
        for product_id, url, title in products:
            record = {**product_record(product_id, url, now), "title": title}
            items.append((product_id.encode(), PRODUCT.encode(record)))
        kafka.produce(source, items)
        settings = load_settings(
            kafka_bootstrap_servers=kafka.bootstrap, input_topic=source, output_topic=target,
            dead_letter_topic=dead, group_id=f"bench-text-{kafka.run_id}",
            allowed_networks="127.0.0.0/8", metrics_port=0, redis_url=None, fetch_retries=0,
        )  # fmt: skip
        classifier = Classifier.load(image_model)
        text = TextClassifier.load(text_model) if text_on else None
        stop = threading.Event()
        with Service(settings, classifier=classifier, http=False, text_model=text) as service:
            thread = threading.Thread(target=service.serve, args=(stop,),
                                      kwargs={"handle_signals": False}, daemon=True)  # fmt: skip
            thread.start()
            seen = kafka.wait_for(target, len(products), timeout_s=timeout_s)
            stop.set()
            thread.join(60)
        outputs = kafka.read(target)
        records = _decoded(kafka, target)
    finally:
        kafka.cleanup()
    with_category = sum(1 for r in records if r["category"] is not None)
    return {
        "text": text_on,
        "outputs": seen,
        "products_per_s": rate(outputs),
        "with_category": with_category / len(products),
        "by_status": dict(Counter(r["status"] for r in records)),
        "decided_by": dict(Counter(r["decided_by"] for r in records)),
    }


def _decoded(kafka: Kafka, topic: str) -> list[dict[str, Any]]:
    """Every enrichment in ``topic``, decoded."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer({"bootstrap.servers": kafka.bootstrap,
                                         "group.id": f"bench-read-{uuid.uuid4().hex[:8]}",
                                         "auto.offset.reset": "earliest"})  # fmt: skip
    consumer.subscribe([topic])
    total, records = kafka.total(topic), []
    deadline = time.monotonic() + 60
    try:
        while len(records) < total and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error() and message.value() is not None:
                records.append(ENRICHMENT.decode(message.value()))
    finally:
        consumer.close()
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """Run both set-ups ``--rounds`` times, interleaved; print (and write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--failing", type=float, default=0.12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--output", type=Path, default=None, help="folder for the .md/.json")
    args = parser.parse_args(argv)
    from model.bundle import materialise
    from service.demo import HEADS_DIR, TEXT_DIR

    started = time.monotonic()
    rows = fashion_rows(shared_data(), min(args.products, 1000), args.seed)
    hosts = ImageHosts([photo for photo, _ in rows], hosts=4).start()
    rng = random.Random(args.seed)
    products = []
    for i in range(args.products):
        photo_index = i % len(rows)
        failing = rng.random() < args.failing
        url = hosts.missing_url(i) if failing else hosts.url(photo_index, tag=str(i))
        products.append((f"p{i}", url, rows[photo_index][1]))
    failing_share = sum("/missing/" in url for _, url, _ in products) / len(products)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-text-") as work:
        image_model = materialise(HEADS_DIR, Path(work) / "image-model")
        try:
            for round_ in range(args.rounds):
                for text_on in (False, True):
                    run = run_once(text_on=text_on, products=products, image_model=image_model,
                                   text_model=TEXT_DIR, timeout_s=args.timeout_s)  # fmt: skip
                    run["round"] = round_
                    runs.append(run)
                    print(json.dumps(run), file=sys.stderr)
        finally:
            hosts.stop()

    def median(text_on: bool, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["text"] == text_on)

    off_rate, on_rate = median(False, "products_per_s"), median(True, "products_per_s")
    summary = {
        "products": args.products,
        "failing_images": failing_share,
        "text_off": {"products_per_s": off_rate, "with_category": median(False, "with_category")},
        "text_on": {"products_per_s": on_rate, "with_category": median(True, "with_category")},
        "rate_ratio_on_off": on_rate / off_rate if off_rate else float("nan"),
        "runs": runs,
    }
    command = "python -m bench.text_fallback " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    lines = [
        f"{args.products} fashion products with their real titles, {failing_share:.1%} of the "
        f"image URLs answering 404, served cold on the real Kafka broker; median of "
        f"{args.rounds} interleaved rounds:",
        "",
        "| set-up | products/s | products with a category |",
        "| --- | --- | --- |",
        f"| text off (image model alone) | {off_rate:.1f} | {median(False, 'with_category'):.2%} |",
        f"| text on (image + text, fused) | {on_rate:.1f} | {median(True, 'with_category'):.2%} |",
        "",
        f"Rate with text on / off: {summary['rate_ratio_on_off']:.2f}.",
        "",
        f"Command: `{command}` ({time.monotonic() - started:.0f} s).",
    ]
    table = "\n".join(lines)
    print(table)
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "text_fallback.md").write_text(
            "# Failing images, titles present (issue 15)\n\n" + table + "\n"
        )
        (args.output / "text_fallback.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
