"""The service benchmark's settings and sizes, its default model, and the limits it measures
the service against: (1) inference and (2) decode."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.decode_rate import decode_rates
from bench.harness import Photo

LATENCY_MS = 100  # the "real-world" image server delay of figure (4)
IMAGE_HOSTS = 16  # loopback addresses standing for a catalog's many image hosts
MISSING_URLS = 200  # distinct 404 URLs of the memory backlog (cached negatively)
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Sizes:
    """How much work each figure gets."""

    decode_images: int
    inference_batches: int
    cold_products: int
    warm_products: int
    latency_s: float
    rss_products: int
    two_products: int
    single_host_products: int
    naive_warm: int
    naive_cold: int


QUICK = Sizes(
    decode_images=200, inference_batches=15, cold_products=1500, warm_products=3000,
    latency_s=8, rss_products=20_000, two_products=2400, single_host_products=240,
    naive_warm=80, naive_cold=25,
)  # fmt: skip
FULL = Sizes(
    decode_images=1000, inference_batches=60, cold_products=4000, warm_products=12_000,
    latency_s=30, rss_products=1_000_000, two_products=8000, single_host_products=1200,
    naive_warm=300, naive_cold=100,
)  # fmt: skip


def say(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the model ----------------------------------------------------------------------------


def default_model(shared: Path, directory: Path) -> Path:
    """An untrained model of the default CPU backbone over the shared labels (same speed as a
    trained one), built once into ``directory``."""
    if (directory / "checksums.sha256").exists():
        return directory
    import csv

    from model.build import build_model
    from model.classifier import save_model
    from model.taxonomy import Taxonomy
    from model.train import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE
    from model.vocabulary import Vocabulary

    say(f"building an untrained {DEFAULT_BACKBONE} model into {directory}")
    taxonomy = shared / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt"
    truncated = Taxonomy.load(taxonomy).truncate(4)
    with (shared / "product-images" / "labels.csv").open() as stream:
        ids = [int(row["google_category_id"]) for row in csv.DictReader(stream)]
    vocabulary = Vocabulary.from_labels(truncated, ids)
    model = build_model(DEFAULT_BACKBONE, vocabulary.sizes, image_size=DEFAULT_IMAGE_SIZE)
    save_model(
        model, directory, name="bench-untrained", backbone=DEFAULT_BACKBONE,
        image_size=DEFAULT_IMAGE_SIZE, heads="multi", truncated=truncated,
        vocabulary=vocabulary, level_weights=None, training={}, metrics={},
    )  # fmt: skip
    return directory


# -- (1) and (2): the limits --------------------------------------------------------------


def inference_limit(model_dir: Path, photos: Sequence[Photo], batch: int, batches: int) -> dict:
    """Images/s of ``predict_raw`` (and of ``classify``, which adds decoding the heads), with
    the runtime the service picks for ``model_dir`` (ENRICH_RUNTIME, default ``auto``: the
    directory's LiteRT flat buffer on a CPU), so the ratios compare like with like."""
    import numpy as np

    from model.classifier import Classifier
    from model.preprocess import decode_image
    from service.config import load_settings

    classifier = Classifier.load(model_dir, runtime=load_settings().runtime)
    size = classifier.input_size
    images = np.stack([decode_image(p.data, size) for p in photos[:batch]])
    for _ in range(3):
        classifier.predict_raw(images)
    times = []
    for _ in range(batches):
        began = time.perf_counter()
        classifier.predict_raw(images)
        times.append(time.perf_counter() - began)
    classify_times = []
    for _ in range(max(3, batches // 3)):
        began = time.perf_counter()
        classifier.classify(list(images))
        classify_times.append(time.perf_counter() - began)
    return {
        "images_per_s": round(batch * len(times) / sum(times), 1),
        "median_batch_ms": round(1000 * statistics.median(times), 1),
        "classify_images_per_s": round(batch * len(classify_times) / sum(classify_times), 1),
        "batch": batch,
        "batches": batches,
        "image_size": size,
        "backbone": classifier.info.backbone,
        "runtime": classifier.runtime.describe(),
    }


def decode_limit(photos: Sequence[Photo], size: int) -> dict:
    """Images/s of ``decode_image`` on one core, and on every core with a process pool."""
    rates = decode_rates([p.data for p in photos], size)
    sizes = [len(p.data) for p in photos]
    return {**rates, "median_file_kib": round(statistics.median(sizes) / 1024, 1)}


COLD_TARGET = 0.8
"""Issue 16's cold target: this share of min((1), (2))."""


def cold_bounds(
    inference: float,
    decode: float,
    decode_one_core: float,
    pipeline_ms: float | None = None,
    cores: int = 2,
) -> dict[str, float]:
    """What the machine's ``cores``, shared, allow the cold run, from the measured limits
    (images/s).

    - ``bound``: min(inference, decode), each stage alone on the whole machine (the target's
      reference);
    - ``shared``: decode and inference one after the other on the same cores, at the rates
      measured on both cores;
    - ``machine``: the same with decoding at ``cores`` times its one-core rate (never
      measured lower than the all-core rate), and every other cost (fetching, the cache,
      Kafka, Avro) at zero: no design on this machine can go faster;
    - ``target`` (``COLD_TARGET`` x ``bound``) and ``target_over_machine``: above 1, the
      target asks for more than the machine can do;
    - with ``pipeline_ms`` (the machine's CPU per product beyond inference that a consumer
      doing the least work needs: the floor consumer's, figure 3c), ``machine_with_pipeline``
      and ``target_over_machine_with_pipeline``, the same with that cost added (fetching an
      image and writing it to the cache would come on top).
    """
    bound = min(inference, decode)
    best_decode = max(decode, cores * decode_one_core)
    machine = 1 / (1 / inference + 1 / best_decode)
    target = COLD_TARGET * bound
    bounds = {
        "bound": bound,
        "shared": 1 / (1 / inference + 1 / decode),
        "machine": machine,
        "target": target,
        "target_over_machine": target / machine,
    }
    if pipeline_ms is not None:
        # A product's pipeline CPU takes 1 / cores of its milliseconds of the machine's time.
        with_pipeline = 1 / (1 / machine + max(pipeline_ms, 0.0) / (1000 * cores))
        bounds["machine_with_pipeline"] = with_pipeline
        bounds["target_over_machine_with_pipeline"] = target / with_pipeline
    return bounds
