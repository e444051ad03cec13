"""`enrich build-dataset` against a sequential download loop, on a scripted mix of failures.

    .venv/bin/python -m bench.dataset_bench [--quick] [--products N] [--latency-ms 50]

A local image server adds `--latency-ms` to every answer and serves the shared photos plus a
scripted mix: 1 % invalid links and 12 % failing in assorted ways (404, 500, HTML pages,
redirects to a page, endless bodies, private addresses, unknown hosts, reset connections,
corrupt JPEGs); the rest are real shared images. It measures images/s of the whole build
(fetch, decode, resize, TFRecord shards) and of a loop downloading the same URLs one after
another with the same fetcher, and checks that the build's statistics count exactly what was
planted. Timeouts are left out of the mix: each would cost the sequential loop a full timeout.

Writes bench/results/<date>-dataset[-quick].md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.dataset import BuildConfig, build_dataset
from service.fetch import FetchConfig, ImageFetcher
from service.logging import configure_logging
from tests.support.image_server import Behaviour, ImageServer

REPO_ROOT = Path(__file__).resolve().parent.parent
INVALID_SHARE = 0.01
FAILING_SHARE = 0.12
_HTML = b"<!doctype html><html><body>Our shop</body></html>"

# Each failing kind: the outcome class it must be counted as, and how to make its URL.
_FAILING = (
    ("missing", "http_4xx"),
    ("server-error", "http_5xx"),
    ("html", "not_an_image"),
    ("moved", "redirected_to_non_image"),
    ("endless", "too_large"),
    ("private", "blocked_address"),
    ("no-dns", "dns_failure"),
    ("reset", "connection_error"),
    ("corrupt", "image_invalid"),
)


def _fetch_config() -> FetchConfig:
    return FetchConfig(
        total_connections=64,
        per_host=64,  # One local host stands for many shops.
        max_bytes=2 * 1024 * 1024,
        retries=1,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        allowed_networks=("127.0.0.0/8",),
    )


def _failing_url(server: ImageServer, kind: str, index: int) -> str:
    if kind == "missing":
        return server.url_for(f"nowhere/{index}.jpg")
    if kind == "private":
        return f"http://10.0.0.1/{index}.jpg"
    if kind == "no-dns":
        return f"http://shop-{index}.invalid/a.jpg"
    behaviours = {
        "server-error": Behaviour(status=500),
        "html": Behaviour(body=_HTML, content_type="text/html"),
        "moved": Behaviour(redirect_to="/scripted/html"),
        "endless": Behaviour(endless=True),
        "reset": Behaviour(body=b"\xff\xd8\xff" * 100, reset_after_bytes=30),
        "corrupt": Behaviour(body=b"\xff\xd8\xff\xe0" + bytes(200), content_type="image/jpeg"),
    }
    if kind == "moved":
        server.script("html", behaviours["html"])
    return server.script(f"{kind}-{index}", behaviours[kind])


def make_catalog(
    server: ImageServer, shared: Path, total: int, path: Path
) -> tuple[list[str], Counter[str]]:
    """Write the labels file of `total` products; returns the URLs and the planted counts."""
    with (shared / "product-images" / "labels.csv").open() as stream:
        photos = [(r["image_path"], r["google_category_id"]) for r in csv.DictReader(stream)]
    invalid = round(total * INVALID_SHARE)
    failing = round(total * FAILING_SHARE)
    planted: Counter[str] = Counter()
    rows: list[dict[str, str]] = []
    for index in range(total):
        image, category = photos[(index * 7919) % len(photos)]
        if index < invalid:
            url, outcome = f"not a link {index}", "invalid_url"
        elif index < invalid + failing:
            kind, outcome = _FAILING[index % len(_FAILING)]
            url = _failing_url(server, kind, index)
        else:
            url, outcome = server.url_for(image), "ok"
        planted[outcome] += 1
        rows.append(
            {"product_id": f"p{index:06d}", "image_url": url, "google_category_id": category}
        )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [row["image_url"] for row in rows], planted


async def sequential(urls: Sequence[str]) -> float:
    """Seconds to download every URL one after another with the same fetcher."""
    started = time.monotonic()
    async with ImageFetcher(_fetch_config()) as fetcher:
        for url in urls:
            await fetcher.fetch(url)
    return time.monotonic() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both measurements and the check; the figures as a dict."""
    shared = Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    server = ImageServer(shared / "product-images", latency_s=args.latency_ms / 1000).start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            labels = Path(folder) / "labels.jsonl"
            urls, planted = make_catalog(server, shared, args.products, labels)
            config = BuildConfig(
                labels=labels,
                taxonomy=shared / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt",
                output=str(Path(folder) / "dataset"),
                image_size=args.image_size,
                concurrency=args.concurrency,
                fetch=_fetch_config(),
                progress=False,
            )
            started = time.monotonic()
            report = build_dataset(config)
            build_s = time.monotonic() - started
            sequential_s = asyncio.run(sequential(urls))
    finally:
        server.stop()
    stats = report.finalized.stats
    counted = {name: value["count"] for name, value in stats["outcomes"].items()}
    expected = {name: planted[name] for name in counted}
    return {
        "products": args.products,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "image_size": args.image_size,
        "build_s": round(build_s, 2),
        "build_images_per_s": round(args.products / build_s, 1),
        "sequential_s": round(sequential_s, 2),
        "sequential_images_per_s": round(args.products / sequential_s, 1),
        "speed_up": round(sequential_s / build_s, 1),
        "planted": expected,
        "counted": counted,
        "statistics_exact": expected == counted,
        "cpus": os.cpu_count(),
    }


def markdown(figures: dict[str, Any]) -> str:
    """The figures as a short report."""
    lines = [
        f"# build-dataset benchmark ({dt.date.today().isoformat()})",
        "",
        f"{figures['products']:,} products, {figures['latency_ms']} ms per answer, "
        f"concurrency {figures['concurrency']}, {figures['image_size']} px, "
        f"{figures['cpus']} CPUs.",
        "",
        "| run | seconds | images/s |",
        "| --- | ---: | ---: |",
        f"| build-dataset | {figures['build_s']} | {figures['build_images_per_s']} |",
        f"| sequential downloads | {figures['sequential_s']} | "
        f"{figures['sequential_images_per_s']} |",
        "",
        f"Speed-up {figures['speed_up']}x. Statistics exactly as planted: "
        f"{'yes' if figures['statistics_exact'] else 'NO'}.",
        "",
        "| outcome | planted | counted |",
        "| --- | ---: | ---: |",
    ]
    for name, count in figures["counted"].items():
        lines.append(f"| {name} | {figures['planted'][name]} | {count} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Run, print and write the results; exit 1 when the statistics are not as planted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 products instead of 3,000")
    parser.add_argument("--products", type=int, default=None)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    # The server's side of resets and endless bodies is logged as errors by aiohttp: expected.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    args.products = args.products or (300 if args.quick else 3000)
    figures = run(args)
    text = markdown(figures)
    print(text)
    stem = f"{dt.date.today().isoformat()}-dataset{'-quick' if args.quick else ''}"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stem}.md").write_text(text)
    (args.results / f"{stem}.json").write_text(json.dumps(figures, indent=1) + "\n")
    if not figures["statistics_exact"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
