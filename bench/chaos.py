"""`make chaos`: the long fault scenarios against the real broker, printed as one table.

    .venv/bin/python bench/chaos.py [--inputs 20000] [--kills 10] [--model DIR]

Needs KAFKA_BOOTSTRAP_SERVERS (``make chaos`` runs it under deploy/local/with-services.sh).
Writes docs/reliability.md (the table and the command) and docs/reliability.json. The model
is an untrained default-shaped `tiny` one unless ``--model`` is given: faults, not accuracy,
are measured here.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import confluent_kafka

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.build import build_model  # noqa: E402
from model.classifier import save_model  # noqa: E402
from model.taxonomy import Taxonomy  # noqa: E402
from model.vocabulary import Vocabulary  # noqa: E402
from service.contract import SingleObjectCodec  # noqa: E402
from service.kafka.admin import KafkaAdmin  # noqa: E402
from tests.reliability.scenarios import (  # noqa: E402
    CountingListener,
    OutputWatcher,
    PrivateBroker,
    Row,
    broker_outage_scenario,
    crash_scenario,
    serve_process,
    service_env,
    ssrf_urls,
)
from tests.support.image_server import ImageServer  # noqa: E402

PRODUCT = SingleObjectCodec.for_schema("product")


def _model(shared: Path, work: Path) -> Path:
    truncated = Taxonomy.load(
        shared / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt"
    ).truncate(4)
    with (shared / "product-images" / "labels.csv").open() as stream:
        ids = [int(row["google_category_id"]) for row in csv.DictReader(stream)]
    vocabulary = Vocabulary.from_labels(truncated, ids)
    model = build_model("tiny", vocabulary.sizes, image_size=32)
    save_model(
        model,
        work / "model",
        name="chaos",
        backbone="tiny",
        image_size=32,
        heads="multi",
        truncated=truncated,
        vocabulary=vocabulary,
        level_weights=None,
        training={},
        metrics={},
    )
    return work / "model"


def _topics(admin: KafkaAdmin, name: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "input": f"chaos-{name}-{suffix}",
        "output": f"chaos-{name}-out-{suffix}",
        "dlq": f"chaos-{name}-dlq-{suffix}",
    }
    admin.create_topics([topics["input"], topics["output"]], partitions=4)
    admin.create_topics([topics["dlq"]], partitions=1)
    return topics


def _product(product_id: str, url: str) -> bytes:
    return PRODUCT.encode(
        {
            "product_id": product_id,
            "partner_id": "chaos",
            "title": None,
            "description": None,
            "image_url": url,
            "additional_image_urls": [],
            "partner_category": None,
            "updated_at": dt.datetime.now(tz=dt.UTC),
        }
    )


def _fill(bootstrap: str, topic: str, server: ImageServer, photos: list[str], count: int) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(count):
        value = _product(f"c{i}", f"{server.url_for(photos[i % len(photos)])}?i={i}")
        if i % 97 == 0:
            value = b"not avro"
        producer.produce(topic, key=f"c{i}".encode(), value=value)
        if i % 5000 == 0:
            producer.poll(0)
    producer.flush(120)


def _ssrf(bootstrap: str, admin: KafkaAdmin, model_dir: Path) -> Row:
    topics = _topics(admin, "ssrf")
    listener = CountingListener()
    urls = ssrf_urls(listener.port)
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    for name, url in urls.items():
        producer.produce(topics["input"], key=name.encode(), value=_product(name, url))
    producer.flush(30)
    env = service_env(
        bootstrap, topics, model_dir, f"chaos-{uuid.uuid4().hex[:6]}", ENRICH_ALLOWED_NETWORKS=""
    )
    watcher = OutputWatcher(bootstrap, [topics["output"], topics["dlq"]])
    process = serve_process(env)
    deadline = time.monotonic() + 120
    while watcher.unique() < len(urls) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.terminate()
    process.wait(60)
    watcher.close()
    listener.close()
    return Row(
        "SSRF (12 guarded targets)",
        1,
        len(urls),
        watcher.count(),
        len(urls) - watcher.unique(),
        watcher.count() - watcher.unique(),
        listener.hits,
        0.0,
    )


def _outage(
    work: Path, server: ImageServer, photos: list[str], model_dir: Path, outage_s: float
) -> tuple[Row, list[bool]]:
    """Stop a private broker (same data) for ``outage_s`` mid-stream, then start it again."""
    broker = PrivateBroker(work / "outage-broker")
    broker.start()
    try:
        admin = KafkaAdmin({"bootstrap.servers": broker.bootstrap})
        topics = _topics(admin, "outage")
        _fill(broker.bootstrap, topics["input"], server, photos, 1000)
        inputs = 1000
        return broker_outage_scenario(
            broker=broker,
            topics=topics,
            model_dir=model_dir,
            inputs=inputs,
            outage_s=outage_s,
            timeout_s=300,
        )
    finally:
        broker.stop(keep=False)


def main() -> None:
    """Run the scenarios, print the table, write docs/reliability.{md,json}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--max-in-flight", type=int, default=200)
    parser.add_argument("--outage-s", type=float, default=20.0)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        sys.exit("chaos: KAFKA_BOOTSTRAP_SERVERS is not set (run `make chaos`)")
    shared = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))
    with (shared / "product-images" / "labels.csv").open() as stream:
        photos = [r["image_path"] for r in csv.DictReader(stream)][:500]
    admin = KafkaAdmin({"bootstrap.servers": bootstrap})
    server = ImageServer(shared / "product-images").start()
    rows: list[Row] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        model_dir = args.model or _model(shared, Path(work))
        for delivery in ("at-least-once", "exactly-once"):
            topics = _topics(admin, "crash")
            _fill(bootstrap, topics["input"], server, photos, args.inputs)
            row = crash_scenario(
                bootstrap=bootstrap,
                topics=topics,
                model_dir=model_dir,
                inputs=args.inputs,
                kills=args.kills,
                max_in_flight=args.max_in_flight,
                delivery=delivery,
                timeout_s=3600,
            )
            print(json.dumps(row.as_dict()), flush=True)
            rows.append(row)
        row = _ssrf(bootstrap, admin, model_dir)
        print(json.dumps(row.as_dict()), flush=True)
        rows.append(row)
        row, readiness = _outage(Path(work), server, photos, model_dir, args.outage_s)
        print(json.dumps({**row.as_dict(), "readyz": readiness}), flush=True)
        rows.append(row)
    server.stop()
    command = (
        f"make chaos CHAOS_ARGS='--inputs {args.inputs} --kills {args.kills} "
        f"--max-in-flight {args.max_in_flight}'"
    )
    header = (
        "| scenario | runs | inputs | outputs | lost | duplicates | guarded hits | max recovery s |"
    )
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [
        f"| {r.scenario} | {r.runs} | {r.inputs:,} | {r.outputs:,} | {r.lost} | {r.duplicates} "
        f"| {r.guarded_hits} | {r.max_recovery_s} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    stamp = dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "reliability.json").write_text(
        json.dumps([r.as_dict() for r in rows], indent=2) + "\n"
    )
    (args.docs / "reliability.md").write_text(
        f"# Reliability\n\nLatest `make chaos` run, {stamp}, on {platform.node()} "
        f"({os.cpu_count()} cores), {time.monotonic() - began:.0f} s:\n\n    {command}\n\n"
        f"{table}\n\n"
        "*Lost*: input offsets with neither an output nor a dead-letter record, counted by "
        "reading both topics back. *Duplicates*: outputs beyond one per input offset (at "
        "least once allows them, bounded by the in-flight limit per kill; exactly-once is read "
        "with `read_committed`). *Max recovery*: from a restart to its first new output "
        "(process start, model load and group join included). Every 97th input is not Avro "
        "and is answered through the dead-letter topic.\n\n"
        "Also in `make test` (tests/reliability/, tests/service/): hostile images (bomb, "
        "truncated, bad CRC, CMYK, 16-bit, palette+alpha, animated GIF, WebP, 1x1, 1x10000, "
        "EXIF-rotated), hostile records (not Avro, unknown fingerprint, cut short, 10 MB "
        "title, 100 KB URL, file/ftp/gopher/data/credential URLs), image-server faults "
        "(tests/service/fetch/), a Redis outage mid-run and SIGTERM drain.\n"
    )


if __name__ == "__main__":
    main()
