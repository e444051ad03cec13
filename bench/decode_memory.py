"""Peak memory of a burst of huge images through the image stage, with the budget and without.

    .venv/bin/python bench/decode_memory.py [--images 12] [--side 7070] [--workers 2,8]
        [--budget 64000000]

Makes ``--images`` RGBA PNGs of ``--side`` x ``--side`` pixels (a transparent canvas with a
few flat shapes: about 220 KB each on the wire, 50 M pixels each once decoded), serves them
from the local image server (tests/support/image_server.py) and loads them all at once
through :meth:`service.images.ImageStage.load`: the service's own fetch → header → decode
budget → decode path, without a cache. Each variant runs in a fresh child process, so its
peak resident memory (``ru_maxrss``) is its own: for each decode pool size in ``--workers``
(the service sizes its pool by the core count), the budget at ``--budget`` and the budget
off (admission by the pool's threads alone, as before the budget). Prints one table, side
by side; ``--json`` also writes it. `make chaos` runs it as its ``decode`` row
(:func:`decode_memory_row`).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.config import Settings  # noqa: E402

if TYPE_CHECKING:
    from tests.reliability.scenarios import Row

DEFAULT_BUDGET = Settings.model_fields["decode_budget_pixels"].default
# The image: 7,070 x 7,070 is just under the 50 M pixel limit, so it is not refused.
DEFAULT_SIDE = 7070
IMAGE_SIZE = 224  # the default backbone's input; the resize is not what costs memory
OFF = 1 << 62  # a budget no burst reaches: admission by count (the pool's threads) alone
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Variant:
    """One child's measurement."""

    workers: int
    budget: int
    images: int
    decoded: int
    most_pixels_at_once: int
    """The most pixels admitted at once (decoding, or queued for a pool thread)."""
    rss_before_mib: float
    peak_rss_mib: float
    seconds: float

    @property
    def growth_mib(self) -> float:
        """Peak resident memory over the resident memory just before the burst."""
        return self.peak_rss_mib - self.rss_before_mib


def make_images(directory: Path, count: int, side: int) -> list[Path]:
    """``count`` distinct, highly compressible RGBA PNGs of ``side`` x ``side``."""
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = Image.new("RGBA", (side, side), (255, 255, 255, 0))
        draw = ImageDraw.Draw(image)
        step = side // (count + 4)
        draw.rectangle(
            (step * (i + 1), side // 7, side - side // 7, side - step), fill=(200, 30 + i, 30, 255)
        )
        draw.ellipse((side // 5, side // 5, side // 2, side // 2), fill=(20, 20, 200 - i, 128))
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=9)
        del draw, image
        path = directory / f"big-{i:02d}.png"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def _rss_mib() -> float:
    """Resident memory now, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _child(directory: Path, workers: int, budget: int) -> Variant:
    """Serve the PNGs in ``directory`` and load them all at once through one ImageStage."""
    from PIL import Image

    from model.preprocess import decode_image
    from service.fetch.fetcher import FetchConfig, ImageFetcher
    from service.images import ImageStage
    from service.metrics import Metrics
    from tests.support.image_server import ImageServer

    names = sorted(p.name for p in directory.glob("*.png"))
    server = ImageServer(directory).start()
    warm = io.BytesIO()
    Image.new("RGBA", (64, 64)).save(warm, "PNG")
    config = FetchConfig(allowed_networks=("127.0.0.0/8",), total_timeout_s=300, read_timeout_s=300)

    async def run() -> tuple[list[bool], float, float, int]:
        with ThreadPoolExecutor(workers) as pool:
            async with ImageFetcher(config) as fetcher:
                stage = ImageStage(
                    fetcher, None, image_size=IMAGE_SIZE, decode_pool=pool,
                    max_pixels=Settings.model_fields["max_image_pixels"].default,
                    metrics=Metrics(), decode_budget_pixels=budget,
                )  # fmt: skip
                decode_image(warm.getvalue(), IMAGE_SIZE)  # Pillow's plugins loaded first
                before = _rss_mib()
                began = time.monotonic()
                outcomes = await asyncio.gather(*(stage.load(server.url_for(n)) for n in names))
                seconds = time.monotonic() - began
                decoded = [o.pixels is not None for o in outcomes]
                return decoded, before, seconds, stage.budget.peak

    try:
        decoded, before, seconds, most = asyncio.run(run())
    finally:
        server.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return Variant(workers, budget, len(names), sum(decoded), most, before, peak, seconds)


def measure(directory: Path, workers: int, budget: int) -> Variant:
    """One variant in a fresh child process."""
    command = [sys.executable, __file__, "--child", str(directory), str(workers), str(budget)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"decode_memory child failed ({done.returncode}): {done.stderr[-2000:]}")
    return Variant(**json.loads(done.stdout.strip().splitlines()[-1]))


def run_all(
    images: int, side: int, workers: list[int], budget: int, work: Path
) -> tuple[list[Variant], int]:
    """Every variant, budget on then off for each pool size; and the PNGs' mean size in bytes."""
    paths = make_images(work / "images", images, side)
    wire = sum(p.stat().st_size for p in paths) // len(paths)
    variants = []
    for count in workers:
        for chosen in (budget, OFF):
            variant = measure(work / "images", count, chosen)
            print(json.dumps(asdict(variant)), flush=True)
            variants.append(variant)
    return variants, wire


def table(variants: list[Variant]) -> str:
    """The side-by-side Markdown table."""
    lines = [
        "| decode pool workers | decode budget (pixels) | images decoded | most pixels admitted "
        "at once | RSS before MiB | peak RSS MiB | peak - before MiB | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        budget = "off" if v.budget == OFF else f"{v.budget:,}"
        lines.append(
            f"| {v.workers} | {budget} | {v.decoded}/{v.images} | {v.most_pixels_at_once:,} "
            f"| {v.rss_before_mib:,.0f} | {v.peak_rss_mib:,.0f} | {v.growth_mib:,.0f} "
            f"| {v.seconds:.1f} |"
        )
    return "\n".join(lines)


def decode_memory_row(
    images: int = 12, side: int = DEFAULT_SIDE, workers: int = 8, budget: int = DEFAULT_BUDGET
) -> tuple[Row, dict[str, Any]]:
    """`make chaos`'s row: the burst with ``workers`` decode threads, budget on and off."""
    from tests.reliability.scenarios import Row  # here: the children need no Kafka client

    with tempfile.TemporaryDirectory() as work:
        variants, wire = run_all(images, side, [workers], budget, Path(work))
    on, off = variants
    row = Row(
        scenario=(
            f"decode memory burst ({images} x {side:,}² RGBA PNG, {wire / 1000:,.0f} KB each, "
            f"{workers} decode threads): peak RSS +{on.growth_mib:,.0f} MiB with the "
            f"{budget / 1e6:g} M pixel budget, +{off.growth_mib:,.0f} MiB without"
        ),
        runs=len(variants),
        inputs=sum(v.images for v in variants),
        outputs=sum(v.decoded for v in variants),
        lost=sum(v.images - v.decoded for v in variants),
        duplicates=0,
        guarded_hits=0,
        max_recovery_s=0.0,
    )
    return row, {"variants": [asdict(v) for v in variants], "wire_bytes": wire}


def main() -> None:
    """Generate the burst, measure every variant, print the table."""
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        directory, workers, budget = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(asdict(_child(directory, workers, budget))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="PNGs in the burst")
    parser.add_argument("--side", type=int, default=DEFAULT_SIDE, help="their width and height")
    parser.add_argument("--workers", default="2,8", help="decode pool sizes, comma-separated")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="pixels")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        variants, wire = run_all(args.images, args.side, workers, args.budget, Path(work))
    print(
        f"\n{args.images} RGBA PNGs of {args.side:,} x {args.side:,} pixels, {wire:,} bytes each "
        f"on average, loaded at once; {time.monotonic() - began:.0f} s in all\n"
    )
    print(table(variants))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(v) for v in variants], indent=2) + "\n")


if __name__ == "__main__":
    main()
