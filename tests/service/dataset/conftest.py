"""A labelled catalog served locally: real shared images with a planted mix of failures."""

import csv
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.dataset import BuildConfig
from service.fetch import FetchConfig
from tests.support.image_server import Behaviour, ImageServer

CATEGORIES = 4
PER_CATEGORY = 15
_HTML = b"<!doctype html><html><body>Our shop</body></html>"
_BROKEN_JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 200

# The planted failures: (name, outcome class each one must be counted as).
PLANTED = {
    "bad-syntax": "invalid_url",
    "ftp": "invalid_url",
    "missing": "http_4xx",
    "server-error": "http_5xx",
    "hang": "timeout",
    "html": "not_an_image",
    "moved-to-html": "redirected_to_non_image",
    "endless": "too_large",
    "private": "blocked_address",
    "no-dns": "dns_failure",
    "reset": "connection_error",
    "corrupt": "image_invalid",
}


@dataclass(frozen=True)
class Catalog:
    """The labels file and what was planted in it."""

    labels: Path
    server: ImageServer
    real: list[dict[str, str]]
    """The real images' rows, in file order (they come first)."""
    duplicates: tuple[str, str]
    """Two product ids whose URLs serve the same bytes as the first real product."""


def fast_fetch() -> FetchConfig:
    """Short timeouts and one quick retry, the local server let through the guard."""
    return FetchConfig(
        total_connections=16,
        connect_timeout_s=1.0,
        read_timeout_s=0.5,
        total_timeout_s=2.0,
        max_bytes=2 * 1024 * 1024,
        retries=1,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        allowed_networks=("127.0.0.0/8",),
    )


def build_config(
    catalog: Catalog, taxonomy: Path, output: Path, **overrides: object
) -> BuildConfig:
    """A small, quick build of `catalog` into `output`."""
    settings: dict[str, object] = {
        "labels": catalog.labels,
        "taxonomy": taxonomy,
        "output": str(output),
        "image_size": 32,
        "shard_size": 10,
        "concurrency": 16,
        "fetch": fast_fetch(),
        "decode_workers": 0,
        "progress": False,
    }
    settings.update(overrides)
    return BuildConfig(**settings)  # type: ignore[arg-type]


def _real_rows(shared_data: Path) -> list[dict[str, str]]:
    by_category: dict[str, list[dict[str, str]]] = defaultdict(list)
    with (shared_data / "product-images" / "labels.csv").open() as stream:
        for row in csv.DictReader(stream):
            by_category[row["google_category_id"]].append(row)
    chosen = sorted(c for c, rows in by_category.items() if len(rows) >= PER_CATEGORY)
    return [row for c in chosen[:CATEGORIES] for row in by_category[c][:PER_CATEGORY]]


def planted_texts(index: int) -> dict[str, str]:
    """The title, description and partner category planted on real row ``index`` (even)."""
    return {
        "title": f"Réal product n°{index}",
        "description": f"<p>Description of {index}</p>",
        "partner_category": f"Partner > Shelf {index % 3}",
    }


@pytest.fixture(scope="module")
def catalog_server(shared_data: Path) -> Iterator[ImageServer]:
    """An image server for the whole module (the builds share it)."""
    server = ImageServer(shared_data / "product-images").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def catalog(
    catalog_server: ImageServer, shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Catalog:
    """60 real images in 4 categories, 2 duplicates of the first, then one of each failure."""
    server = catalog_server
    real = _real_rows(shared_data)
    first = real[0]
    category = first["google_category_id"]
    first_bytes = (shared_data / "product-images" / first["image_path"]).read_bytes()
    urls = {
        "bad-syntax": "not a url",
        "ftp": "ftp://example.com/a.jpg",
        "missing": server.url_for("nowhere/missing.jpg"),
        "server-error": server.script("server-error", Behaviour(status=500)),
        "hang": server.script("hang", Behaviour(hang=True)),
        "html": server.script("html", Behaviour(body=_HTML, content_type="text/html")),
        "moved-to-html": server.script("moved", Behaviour(redirect_to="/scripted/html")),
        "endless": server.script("endless", Behaviour(endless=True)),
        "private": "http://10.0.0.1/x.jpg",
        "no-dns": "http://no-such-host.invalid/x.jpg",
        "reset": server.script(
            "reset", Behaviour(body=b"\xff\xd8\xff" * 100, reset_after_bytes=30)
        ),
        "corrupt": server.script(
            "corrupt", Behaviour(body=_BROKEN_JPEG, content_type="image/jpeg")
        ),
    }
    records = [
        {
            "product_id": f"real-{index:03d}",
            "image_url": server.url_for(row["image_path"]),
            "google_category_id": row["google_category_id"],
            **(planted_texts(index) if index % 2 == 0 else {}),  # odd rows have no text at all
        }
        for index, row in enumerate(real)
    ]
    duplicates = ("dup-a", "dup-b")
    for name in duplicates:
        url = server.script(name, Behaviour(body=first_bytes, content_type="image/jpeg"))
        records.append({"product_id": name, "image_url": url, "google_category_id": category})
    for name, url in urls.items():
        records.append(
            {"product_id": f"fail-{name}", "image_url": url, "google_category_id": category}
        )
    path = tmp_path_factory.mktemp("catalog") / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return Catalog(path, server, real, duplicates)
