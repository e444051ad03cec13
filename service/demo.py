"""``enrich demo``: the whole path on embedded defaults, on a machine with nothing started.

Everything here is GENERATED, and the output says so: six real Google Product Taxonomy
categories, a catalog of products whose "photos" are drawn procedurally (one colour and
shape family per category, with random size, position, rotation and noise), a small model
trained on them in about a minute on CPU (or ``--model DIR``), librdkafka's built-in mock
cluster as the broker, an in-process cache instead of Redis, and a local HTTP image server
on 127.0.0.1 (allowed through the address guard for the demo only). A few products are
broken on purpose (a missing image, a 404, a page that is not an image, a record that is not
Avro, a deletion) so every status shows up.
"""

from __future__ import annotations

import datetime as dt
import gc
import io
import json
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import numpy as np
import structlog
from aiohttp import web
from PIL import Image, ImageDraw, ImageFilter

from service.cache import MemoryStore
from service.config import Settings, load_settings
from service.contract import SingleObjectCodec
from service.errors import EnrichError

__all__ = ["DemoResult", "run_demo"]

log = structlog.get_logger(__name__)

# Real Google Product Taxonomy lines (version 2021-09-21), just what the demo needs.
TAXONOMY = """# Google_Product_Taxonomy_Version: 2021-09-21
166 - Apparel & Accessories
1604 - Apparel & Accessories > Clothing
2271 - Apparel & Accessories > Clothing > Dresses
212 - Apparel & Accessories > Clothing > Shirts & Tops
187 - Apparel & Accessories > Shoes
412 - Food, Beverages & Tobacco
422 - Food, Beverages & Tobacco > Food Items
430 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables
5793 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Vegetables
5795 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Fruits
536 - Home & Garden
696 - Home & Garden > Decor
"""

# category id → (base colour, shape) of its generated photos.
CLASSES: dict[int, tuple[tuple[int, int, int], str]] = {
    2271: ((200, 40, 60), "triangle"),
    212: ((40, 90, 200), "square"),
    187: ((60, 60, 60), "ellipse"),
    5795: ((230, 160, 30), "circle"),
    5793: ((40, 160, 60), "bars"),
    696: ((150, 60, 170), "star"),
}


@dataclass
class DemoResult:
    """What the demo did, for the table and ``--json``."""

    products: int
    outputs: int
    by_status: dict[str, int]
    products_per_second: float
    dead_lettered: int
    accuracy: float | None
    rows: list[dict[str, Any]]
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """The machine-readable summary."""
        return {
            "products": self.products,
            "outputs": self.outputs,
            "by_status": self.by_status,
            "products_per_second": round(self.products_per_second, 2),
            "dead_lettered": self.dead_lettered,
            "accuracy_on_generated_photos": self.accuracy,
        }


def draw_photo(category: int, rng: random.Random, size: int = 96) -> bytes:
    """A generated "product photo" of ``category`` as JPEG bytes."""
    colour, shape = CLASSES[category]
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    jitter = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in colour)
    fill: Any = jitter
    half = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(half, size - half), rng.randint(half, size - half)
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ellipse":
        draw.ellipse((box[0], cy - half // 2, box[2], cy + half // 2), fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    elif shape == "bars":
        for x in range(box[0], box[2], max(4, half // 3)):
            draw.rectangle((x, box[1], x + max(2, half // 6), box[3]), fill=fill)
    else:  # star
        points = []
        for k in range(10):
            radius = half if k % 2 == 0 else half // 2
            angle = np.pi / 5 * k + rng.random()
            points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
        draw.polygon(points, fill=fill)
    image = image.rotate(rng.uniform(-20, 20), fillcolor=background)
    noise = np.asarray(image, dtype=np.int16) + np.random.default_rng(
        rng.randint(0, 2**31)
    ).integers(-12, 13, (size, size, 3))
    image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _write_training_set(root: Path, per_class: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = ["image_path,google_category_id,split"]
    for category in CLASSES:
        for index in range(per_class):
            name = f"train/{category}-{index}.jpg"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(draw_photo(category, rng))
            split = "validation" if index % 5 == 0 else "train"
            rows.append(f"{name},{category},{split}")
    labels = root / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return labels


def train_demo_model(work: Path, *, per_class: int = 80, epochs: int = 8, seed: int = 0) -> Path:
    """Train the demo's small model on generated photos; return its model directory."""
    from model.train import TrainConfig, train

    (work / "taxonomy.txt").write_text(TAXONOMY)
    labels = _write_training_set(work / "data", per_class, seed)
    result = train(
        TrainConfig(
            labels=labels, images_root=work / "data", taxonomy=work / "taxonomy.txt",
            output=work / "run", depth=4, backbone="tiny", image_size=48, epochs=epochs,
            batch_size=32, learning_rate=3e-3, warmup_epochs=0, patience=epochs,
            name="demo-generated", verbose=0, seed=seed,
        )
    )  # fmt: skip
    return result.model_dir


class _ImageHost:
    """The demo's image server: generated photos, a 404 and an HTML page, on 127.0.0.1."""

    def __init__(self, photos: dict[str, bytes]) -> None:
        self.photos = photos

    async def start(self) -> tuple[web.AppRunner, int]:
        async def photo(request: web.Request) -> web.Response:
            body = self.photos.get(request.match_info["name"])
            if body is None:
                return web.Response(status=404, text="no such photo")
            return web.Response(body=body, content_type="image/jpeg")

        async def page(_: web.Request) -> web.Response:
            return web.Response(text="<html><body>Our shop</body></html>", content_type="text/html")

        app = web.Application()
        app.router.add_get("/photos/{name}", photo)
        app.router.add_get("/", page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        return runner, int(server.sockets[0].getsockname()[1])


def _mock_cluster() -> tuple[confluent_kafka.Producer, str]:
    """librdkafka's built-in mock cluster; it lives as long as the returned client."""
    holder = confluent_kafka.Producer(
        {"test.mock.num.brokers": 1, "bootstrap.servers": "", "log_level": 3}
    )
    brokers = holder.list_topics(timeout=10).brokers.values()
    return holder, ",".join(f"{b.host}:{b.port}" for b in brokers)


def run_demo(
    *, products: int = 300, model_dir: Path | None = None, work_dir: Path | None = None
) -> DemoResult:
    """Train (unless given a model), start everything embedded, enrich ``products``."""
    from model.classifier import Classifier
    from service.app import Service

    temporary = tempfile.TemporaryDirectory(prefix="enrich-demo-") if work_dir is None else None
    work = Path(temporary.name) if temporary is not None else Path(work_dir or ".")
    try:
        if model_dir is None:
            log.info("demo_training", note="a small model on GENERATED photos, about a minute")
            model_dir = train_demo_model(work)
        classifier = Classifier.load(model_dir, top_k=3)
        holder, bootstrap = _mock_cluster()
        rng = random.Random(1)
        photos: dict[str, bytes] = {}
        truth: dict[str, int] = {}
        for index in range(products):
            category = rng.choice(list(CLASSES))
            name = f"p{index}.jpg"
            photos[name] = draw_photo(category, rng)
            truth[f"product-{index}"] = category
        # Popular photos reused under a second URL, as partners often do (cache dedup).
        for index in range(0, products, 10):
            photos[f"copy-{index}.jpg"] = photos[f"p{index}.jpg"]
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap, input_topic="demo-products",
            output_topic="demo-categories", dead_letter_topic="demo-dead-letter",
            group_id="demo", allowed_networks="127.0.0.0/8", metrics_port=0,
            batch_max_size=32, batch_max_wait_ms=10, shutdown_deadline_s=10,
        )  # fmt: skip
        with Service(settings, classifier=classifier, store=MemoryStore(max_entries=10_000),
                     http=True) as service:  # fmt: skip
            runner, port = service.loop.call(_ImageHost(photos).start())
            base = f"http://127.0.0.1:{port}"
            sent = _produce_catalog(settings, products, base, truth)
            stop = threading.Event()
            outcome: dict[str, Any] = {}
            thread = threading.Thread(
                target=_serve_into, args=(service, stop, outcome), name="serve"
            )
            began = time.monotonic()
            thread.start()
            records = _read_outputs(settings, expected=sent["outputs"], timeout_s=120)
            elapsed = time.monotonic() - began
            stop.set()
            thread.join(60)
            metrics = service.metrics.summary()
            service.loop.call(runner.cleanup())
        # The mock cluster lives in `holder`: let every other client go first.
        del service
        gc.collect()
        del holder
    finally:
        if temporary is not None:
            temporary.cleanup()
    codec = SingleObjectCodec.for_schema("category_enrichment", settings.schema_dir)
    decoded = [codec.decode(value) for value in records if value is not None]
    by_status = Counter(record["status"] for record in decoded)
    tombstones = sum(1 for value in records if value is None)
    if tombstones:
        by_status["TOMBSTONE"] = tombstones
    scored = [r for r in decoded if r["status"] == "CLASSIFIED" and r["product_id"] in truth]
    correct = sum(1 for r in scored if r["category"]["id"] == truth[r["product_id"]])
    rows = [
        {
            "product_id": r["product_id"],
            "status": r["status"],
            "category": r["category"]["path_string"] if r["category"] else "",
            "confidence": r["category"]["path"][-1]["confidence"] if r["category"] else None,
            "truth": TAXONOMY_NAMES.get(truth.get(r["product_id"], 0), ""),
            "error": r["error"] or "",
        }
        for r in decoded
    ]
    summary = outcome.get("summary")
    return DemoResult(
        products=sent["products"],
        outputs=len(records),
        by_status=dict(sorted(by_status.items())),
        products_per_second=len(records) / elapsed if elapsed > 0 else 0.0,
        dead_lettered=summary.dead_lettered if summary is not None else 0,
        accuracy=correct / len(scored) if scored else None,
        rows=rows,
        metrics=metrics,
    )


def _serve_into(service: Any, stop: threading.Event, outcome: dict[str, Any]) -> None:
    """Serve until ``stop``; keep the run's summary in ``outcome``."""
    outcome["summary"] = service.serve(stop, handle_signals=False)


TAXONOMY_NAMES = {
    int(line.split(" - ")[0]): line.split(" - ")[1].split(" > ")[-1]
    for line in TAXONOMY.splitlines()
    if line and not line.startswith("#")
}


def _produce_catalog(
    settings: Settings, products: int, base: str, truth: dict[str, int]
) -> dict[str, int]:
    """Write the generated catalog (and the broken products) to the input topic."""
    codec = SingleObjectCodec.for_schema("product", settings.schema_dir)
    producer = confluent_kafka.Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    now = dt.datetime.now(tz=dt.UTC)

    def send(product_id: str, url: str | None) -> None:
        record: dict[str, Any] = {
            "product_id": product_id, "partner_id": "demo-partner", "title": None,
            "description": None, "image_url": url, "additional_image_urls": [],
            "partner_category": None, "updated_at": now,
        }  # fmt: skip
        producer.produce(settings.input_topic, key=product_id.encode(), value=codec.encode(record),
                         headers=[("content-type", codec.content_type.encode())])  # fmt: skip

    for index in range(products):
        url = f"{base}/photos/{'copy-' if index % 10 == 0 and index else 'p'}{index}.jpg"
        send(f"product-{index}", url)
    send("broken-missing-image", None)
    send("broken-404", f"{base}/photos/gone.jpg")
    send("broken-not-an-image", f"{base}/")
    producer.produce(settings.input_topic, key=b"broken-not-avro", value=b'{"json": true}')
    producer.produce(settings.input_topic, key=b"product-0", value=None)  # a deletion
    if producer.flush(30):
        raise EnrichError("the demo could not write its catalog to the mock broker")
    # Outputs: every product, the three broken ones and the tombstone (the bad record is
    # dead-lettered instead).
    return {"products": products + 5, "outputs": products + 4}


def _read_outputs(settings: Settings, *, expected: int, timeout_s: float) -> list[bytes | None]:
    """Read the output topic until ``expected`` records arrived (or the timeout)."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": "demo-reader",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.output_topic])
    values: list[bytes | None] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            values.append(message.value())
    finally:
        consumer.close()
    return values


def format_table(result: DemoResult, limit: int = 20) -> str:
    """The demo's results for people."""
    lines = [
        "GENERATED DATA: the products, photos and model below are synthetic (see `enrich demo "
        "--help`); the broker is librdkafka's mock cluster and the cache is in-process.",
        "",
        f"{'product':<22} {'status':<18} {'confidence':>10}  category / reason",
    ]
    shown = [r for r in result.rows if r["product_id"].startswith("broken")]
    shown += [r for r in result.rows if not r["product_id"].startswith("broken")][:limit]
    for row in shown:
        confidence = "" if row["confidence"] is None else f"{row['confidence']:.2f}"
        detail = row["category"] or row["error"]
        lines.append(f"{row['product_id']:<22} {row['status']:<18} {confidence:>10}  {detail}")
    lines += [
        "",
        f"products in: {result.products}   outputs: {result.outputs}   dead-lettered: "
        f"{result.dead_lettered}   products/s: {result.products_per_second:.1f}",
        "by status: " + ", ".join(f"{k} {v}" for k, v in result.by_status.items()),
    ]
    if result.accuracy is not None:
        lines.append(
            f"accuracy of CLASSIFIED answers on the generated photos: {result.accuracy:.3f}"
        )
    lines.append("metrics: " + json.dumps(
        {k: v for k, v in result.metrics.items() if v}, sort_keys=True))  # fmt: skip
    return "\n".join(lines)
