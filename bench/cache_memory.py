"""Redis memory per cached image, measured: how big a Redis a million images need.

    python -m bench.cache_memory [--images 2000] [--sizes 128 160 224] [--redis-url URL]

Writes ``--images`` real shared photos through the service's own `ImageCache` (decoded to
each model input size, raw and zlib-compressed, one content entry and one URL header each,
as the service writes them) into an empty Redis database, and reads Redis' ``used_memory``
before and after. Prints bytes per image and GiB per million images. The database given
(default: a throw-away ``redis-server`` on a free port, started and stopped here) is flushed.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import redis

from bench.harness import free_port, load_photos, shared_data
from model.preprocess import decode_image
from service.cache import ImageCache, Put
from service.redis_store import RedisStore


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def measure(url: str, photos: Sequence[bytes], size: int, compress: bool) -> float:
    """Bytes of Redis memory per image for one input size and encoding."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    before = int(client.info("memory")["used_memory"])
    cache = ImageCache(RedisStore(url, prefix="enrich:"), image_size=size, compress=compress)
    writes = [
        Put(
            f"https://shop.example/{i}.jpg",
            decode_image(data, size),
            hashlib.sha256(data).hexdigest(),
        )
        for i, data in enumerate(photos)
    ]
    for start in range(0, len(writes), 200):
        cache.put_many(writes[start : start + 200])
    after = int(client.info("memory")["used_memory"])
    client.flushdb()
    return (after - before) / len(photos)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every size, raw and compressed; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 224])
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args(argv)
    photos = [p.data for p in load_photos(shared_data(), args.images)]
    server = None
    url = args.redis_url
    work = tempfile.mkdtemp(prefix="bench-redis-")
    if url is None:
        port = free_port()
        server = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", work],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(50):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
    try:
        lines = [
            f"{len(photos)} shared product photos written through `ImageCache` "
            "(content entry + URL header each):",
            "",
            "| input size | encoding | bytes per image | GiB per million images |",
            "| --- | --- | --- | --- |",
        ]
        for size in args.sizes:
            for compress in (False, True):
                per_image = measure(url, photos, size, compress)
                name = "zlib" if compress else "raw (default)"
                lines.append(f"| {size} px | {name} | {per_image:,.0f} | "
                             f"{per_image * 1e6 / 2**30:,.1f} |")  # fmt: skip
        command = "python -m bench.cache_memory " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        lines += ["", f"Command: `{command}`."]
        print("\n".join(lines))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
