"""Head-of-line latency: one slow image in 100, before and after outputs left in key order.

    .venv/bin/python -m bench.hol_latency [--rate 40] [--seconds 30] [--slow-every 100]
        [--slow-s 5] [--before 73b824b] [--docs/--no-docs]

An open-loop producer sends ``--rate`` products a second for ``--seconds`` over 4 partitions;
one image URL in ``--slow-every`` answers only after ``--slow-s`` seconds (a slow shop), the
others at once (the shared photos from a local server). Latency is each output's Kafka
timestamp minus its product's event time. The same load runs against this tree and, side by
side in the same run, against the service of ``--before`` (default 73b824b, the last commit
whose outputs left in per-partition source order), checked out in a temporary git worktree
and run with this virtual environment. Writes bench/results/<date>-hol-latency.json and, with
--docs (the default), the "Head-of-line latency" section of docs/performance.md.

Needs KAFKA_BOOTSTRAP_SERVERS and the shared data (`make bench` runs it).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.harness import (  # noqa: E402
    PRODUCT,
    Kafka,
    bootstrap_servers,
    free_port,
    product_record,
    shared_data,
)
from bench.processes import Process  # noqa: E402
from bench.profiling import percentiles  # noqa: E402
from tests.support.image_server import Behaviour, ImageServer  # noqa: E402
from tests.support.models import tiny_model  # noqa: E402

POINTS = ("p50", "p90", "p99")
SECTION = re.compile(r"<!-- hol-latency -->.*?<!-- /hol-latency -->", re.S)


def _urls(
    server: ImageServer, photos: list[str], count: int, every: int, slow_s: float
) -> list[str]:
    """One URL per product; every ``every``-th answers after ``slow_s`` seconds."""
    urls = []
    for i in range(count):
        photo = photos[i % len(photos)]
        if i % every == every // 2:
            body = (shared_data() / "product-images" / photo).read_bytes()
            urls.append(server.script(f"slow-{uuid.uuid4().hex[:8]}",
                                      Behaviour(body=body, content_type="image/jpeg",
                                                delay_s=slow_s)))  # fmt: skip
        else:
            urls.append(server.url_for(photo) + f"?i={i}")
    return urls


def _open_loop(
    bootstrap: str, topic: str, urls: list[str], rate: float, prefix: str
) -> dict[str, int]:
    """Produce one product per URL at ``rate`` a second; event times (ms) by key."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    events: dict[str, int] = {}
    began = time.perf_counter()
    for i, url in enumerate(urls):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = dt.datetime.now(tz=dt.UTC)
        key = f"{prefix}-{i}"
        producer.produce(topic, key=key.encode(),
                         value=PRODUCT.encode(product_record(key, url, now)))  # fmt: skip
        producer.poll(0)
        events[key] = int(now.timestamp() * 1000)
    producer.flush(30)
    return events


def measure(tree: Path, label: str, args: argparse.Namespace, model_dir: Path,
            server: ImageServer, photos: list[str], work: Path) -> dict[str, Any]:  # fmt: skip
    """The latency of one service tree under the load."""
    run = uuid.uuid4().hex[:6]
    kafka = Kafka(bootstrap_servers(), run)
    source, target, dlq = kafka.topic(f"hol-{label}-in"), kafka.topic(f"hol-{label}-out"), \
        kafka.topic(f"hol-{label}-dlq", partitions=1)  # fmt: skip
    port = free_port()
    env = {
        **os.environ, "PYTHONPATH": str(tree), "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers(),
        "ENRICH_MODEL_DIR": str(model_dir), "ENRICH_INPUT_TOPIC": source,
        "ENRICH_OUTPUT_TOPIC": target, "ENRICH_DEAD_LETTER_TOPIC": dlq,
        "ENRICH_GROUP_ID": f"hol-{label}-{run}", "ENRICH_ALLOWED_NETWORKS": "127.0.0.0/8",
        "ENRICH_METRICS_HOST": "127.0.0.1", "ENRICH_METRICS_PORT": str(port),
        "ENRICH_LOG_LEVEL": "WARNING", "ENRICH_LOG_FORMAT": "json", "TF_CPP_MIN_LOG_LEVEL": "2",
    }  # fmt: skip
    env.pop("REDIS_URL", None)
    # Started from the tree itself, so its `service` package is the one imported.
    process = Process(["service.cli", "serve"], env, work / f"{label}.log")
    with process.log.open("ab") as stream:
        process.popen = subprocess.Popen(process.args, env=env, cwd=tree, stdout=stream,
                                         stderr=subprocess.STDOUT)  # fmt: skip
    try:
        process.wait_ready(port)
        count = int(args.rate * args.seconds)
        urls = _urls(server, photos, count, args.slow_every, args.slow_s)
        events = _open_loop(kafka.bootstrap, source, urls, args.rate, label)
        kafka.wait_for(target, count, timeout_s=120 + args.slow_s * 4, alive=process.alive)
        outputs = kafka.read(target)
    finally:
        process.stop()
        kafka.cleanup()
    slow = {
        f"{label}-{i}" for i in range(len(events)) if i % args.slow_every == args.slow_every // 2
    }
    latencies = [o.timestamp_ms - events[o.key] for o in outputs if o.key in events]
    others = [o.timestamp_ms - events[o.key] for o in outputs
              if o.key in events and o.key not in slow]  # fmt: skip
    return {
        "tree": label, "products": len(latencies), "slow": len(slow),
        "all_ms": percentiles(latencies, (50, 90, 99)),
        "others_ms": percentiles(others, (50, 90, 99)),
    }  # fmt: skip


def _worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True)  # fmt: skip
    return where


def main() -> None:
    """Run the load against both trees, print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--slow-every", type=int, default=100)
    parser.add_argument("--slow-s", type=float, default=5.0)
    parser.add_argument("--before", default="73b824b")
    parser.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    shared = shared_data()
    with (shared / "product-images" / "labels.csv").open() as stream:
        photos = [row["image_path"] for row in csv.DictReader(stream)][:300]
    server = ImageServer(shared / "product-images").start()
    results = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        model_dir = tiny_model(shared, work / "model", "hol")
        before = _worktree(args.before, work / "before") if args.before else None
        try:
            if before is not None:
                results.append(measure(before, "before", args, model_dir, server, photos, work))
            results.append(measure(REPO, "after", args, model_dir, server, photos, work))
        finally:
            server.stop()
            if before is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(before)], check=False)  # fmt: skip
    command = " ".join(["python -m bench.hol_latency", *sys.argv[1:]])
    stamp = dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(json.dumps({"command": command, "date": stamp, "results": results}, indent=2))
    out = REPO / "bench" / "results" / f"{stamp[:10]}-hol-latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "date": stamp, "args": vars(args),
                               "results": results}, indent=2) + "\n")  # fmt: skip
    if args.docs:
        _write_docs(results, command, stamp, args)


def _write_docs(results: list[dict[str, Any]], command: str, stamp: str,
                args: argparse.Namespace) -> None:  # fmt: skip
    rows = [
        f"| {r['tree']} | {r['products']} | "
        + " | ".join(f"{r[group][p]:,}" for group in ("all_ms", "others_ms") for p in POINTS)
        + " |"
        for r in results
    ]
    section = "\n".join([
        "<!-- hol-latency -->",
        "## Head-of-line latency",
        "",
        f"One image in {args.slow_every} answers after {args.slow_s:g} s; {args.rate:g} "
        f"products/s for {args.seconds:g} s over 4 partitions (open loop); latency from event "
        f"time to the output's Kafka timestamp, in ms (*others*: the products whose image is not "
        f"slow). *before*: the service of {args.before} "
        "(outputs in per-partition source order); *after*: this tree (order per product key). "
        f"Measured {stamp} with `{command}` (part of `make bench`).",
        "",
        "| service | products | p50 all | p90 all | p99 all | p50 others | p90 others "
        "| p99 others |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "<!-- /hol-latency -->",
    ])  # fmt: skip
    doc = REPO / "docs" / "performance.md"
    text = doc.read_text() if doc.exists() else "# Performance\n"
    text = (
        SECTION.sub(section, text)
        if SECTION.search(text)
        else text.rstrip() + "\n\n" + section + "\n"
    )
    doc.write_text(text)


if __name__ == "__main__":
    main()
