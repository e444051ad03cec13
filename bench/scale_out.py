"""Scale-out: the throughput of 1, 2 and 3 `enrich serve` processes in one consumer group.

    .venv/bin/python -m bench.scale_out [--products 1200] [--partitions 6] [--processes 1 2 3]
                                        [--model demo|tiny|DIR] [--docs FILE | --no-docs]

Against the Kafka broker at KAFKA_BOOTSTRAP_SERVERS (run it under
deploy/local/with-services.sh). For each process count: fresh input and output topics with
``--partitions`` partitions, that many `python -m service.cli serve` children in one group,
ready (model loaded and warmed, partitions assigned) and the group stable; then the same
backlog of products (the same keys, photos and order every time) is produced, and the run
waits for an output per product. *Products/s* is outputs per second from the first output's
Kafka timestamp to the last one's; *from backlog* counts from the moment the backlog started
to go in. The children have no Redis: every product's image is fetched from a local server
holding the shared photos in memory and decoded, so no run is warmed by an earlier one.

The model is the demo's (``--model demo``, the default: EfficientNet-Lite0 with its packaged
ImageNet weights and the heads in service/demo_assets/heads, materialised by
model.bundle.materialise, served by Keras), the tests' untrained 32 px ``tiny`` model, or a
model directory. CPU use is read from /proc over each measured span: the children's, and the
rest of the machine's (other work sharing the cores).

Prints the markdown page and writes it to ``--docs`` (default docs/results/scale_out.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    PRODUCT,
    REPO_ROOT,
    ImageHosts,
    Kafka,
    bootstrap_servers,
    free_port,
    load_photos,
    product_record,
    rate,
    rate_since,
    service_env,
    shared_data,
)
from bench.processes import (
    Process,
    cpu_description,
    machine_busy_s,
    memory_gib,
    process_cpu_s,
)

DOCS = REPO_ROOT / "docs" / "results" / "scale_out.md"
EVENT_TIME = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def say(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def model_directory(choice: str, work: Path) -> tuple[Path, str]:
    """The model to serve and a line saying what it is."""
    if choice == "demo":
        from service.demo import pretrained_model

        return pretrained_model(work), (
            "the demo model: EfficientNet-Lite0 (packaged ImageNet weights) with the heads of "
            "service/demo_assets/heads, materialised by model.bundle.materialise, Keras runtime"
        )
    if choice == "tiny":
        from tests.support.models import tiny_model

        return tiny_model(shared_data(), work / "tiny", "scale-out-bench"), (
            "the tests' untrained `tiny` model (32 px, tests/support/models.py)"
        )
    return Path(choice), f"the model directory {choice}"


class Runner:
    """The topics, the image server and the service children of one benchmark run."""

    def __init__(self, args: argparse.Namespace, model_dir: Path, work: Path) -> None:
        self.args = args
        self.model_dir = model_dir
        self.work = work
        self.run_id = uuid.uuid4().hex[:8]
        self.kafka = Kafka(bootstrap_servers(), self.run_id)
        self.dlq = self.kafka.topic("scale-dlq", partitions=1)
        self.hosts = ImageHosts(load_photos(shared_data(), args.photos), hosts=4).start()

    def close(self) -> None:
        self.hosts.stop()
        self.kafka.cleanup()

    def env(self, **settings: str) -> dict[str, str]:
        """A child's environment: the broker, the model, no Redis, the given settings."""
        return service_env(self.model_dir, self.dlq, redis=None, **settings)

    def items(self) -> list[tuple[bytes, bytes]]:
        """The backlog: the same products (keys, photos, order) for every process count."""
        items = []
        for i in range(self.args.products):
            key = f"scale-{i}"
            url = self.hosts.url(i, tag=f"{i}")
            items.append((key.encode(), PRODUCT.encode(product_record(key, url, EVENT_TIME))))
        return items

    def measure(self, count: int) -> dict[str, Any]:
        """``count`` children in one group through the backlog; the row's figures."""
        partitions = self.args.partitions
        name = f"p{count}"
        source = self.kafka.topic(f"scale-{name}-in", partitions=partitions)
        target = self.kafka.topic(f"scale-{name}-out", partitions=partitions)
        group = f"bench-scale-{name}-{self.run_id}"
        children: list[Process] = []
        try:
            for k in range(count):
                port = free_port()
                env = self.env(input_topic=source, output_topic=target, group_id=group,
                               metrics_port=str(port))  # fmt: skip
                child = Process(["service.cli", "serve"], env, self.work / f"{name}-{k}.log")
                children.append(child.start())
                child.port = port
            for child in children:
                child.wait_ready(child.port)
            self.kafka.wait_stable(group, count)
            items = self.items()
            say(f"{count} process(es) ready on {partitions} partitions: {len(items)} products")
            cpu_before = sum(process_cpu_s(c.pid) for c in children)
            busy_before, began = machine_busy_s(), time.monotonic()
            began_ms = int(time.time() * 1000)
            self.kafka.produce(source, items)
            held = self.kafka.wait_for(
                target, len(items), timeout_s=120 + len(items) / 2.0,
                alive=lambda: all(c.alive() for c in children),
            )  # fmt: skip
            wall = time.monotonic() - began
            service_cpu_s = sum(process_cpu_s(c.pid) for c in children) - cpu_before
            service_cores = service_cpu_s / wall
            machine_cores = (machine_busy_s() - busy_before) / wall
        finally:
            exits = [child.stop() for child in children if child.popen is not None]
        outputs = self.kafka.read(target, values=True)
        statuses: dict[str, int] = {}
        for output in outputs:
            statuses[str(output.status)] = statuses.get(str(output.status), 0) + 1
        row = {
            "processes": count,
            "partitions": partitions,
            "products": len(items),
            "outputs": len(outputs),
            "held_at_end": held,
            "products_per_s": round(rate(outputs), 1),
            "from_backlog_per_s": round(rate_since(outputs, began_ms), 1),
            "service_cores": round(service_cores, 2),
            "per_service_cpu_s": round(len(outputs) / service_cpu_s, 1) if service_cpu_s else 0.0,
            "other_cores": round(max(0.0, machine_cores - service_cores), 2),
            "statuses": statuses,
            "exits": exits,
        }
        say(f"    {row}")
        return row


def report(rows: list[dict[str, Any]], described: str, command: str, started: dt.datetime,
           seconds: float) -> str:  # fmt: skip
    """The markdown page."""
    one = rows[0]["products_per_s"] if rows and rows[0]["processes"] == 1 else None
    lines = [
        "# Scale-out: processes in one consumer group",
        "",
        f"Run on {started:%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, "
        f"{cpu_description()}, {memory_gib()} GiB), {seconds:.0f} s:",
        "",
        f"    {command}",
        "",
        "| processes | partitions | products | outputs | products/s (first to last output) "
        "| vs 1 process | products/s (from backlog) | service CPU cores | other CPU cores "
        "| products per service CPU second | exit codes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = f"{row['products_per_s'] / one:.2f}x" if one else "-"
        lines.append(
            f"| {row['processes']} | {row['partitions']} | {row['products']:,} "
            f"| {row['outputs']:,} | {row['products_per_s']:,} | {ratio} "
            f"| {row['from_backlog_per_s']:,} | {row['service_cores']} | {row['other_cores']} "
            f"| {row['per_service_cpu_s']} | {' '.join(str(e) for e in row['exits'])} |"
        )
    statuses = sorted({s for row in rows for s in row["statuses"]})
    lines += [
        "",
        f"Model: {described}. Every product's image comes from a local server holding the "
        "shared photos in memory (4 loopback addresses) and is decoded by the service: the "
        "children have no Redis, so no run is warmed by an earlier one. Each row has fresh "
        "topics, the same backlog (same keys, photos, order) produced once the children are "
        "ready and the group is stable; model loading and group joins are not counted. "
        "*Service CPU cores*: CPU seconds of the children over the measured span per second; "
        "*other CPU cores*: the rest of the machine's busy time over it (Kafka, the "
        "benchmark's producer and image server, and anything else sharing the machine); "
        "the children get what that leaves them, so rows taken while other work ran differ "
        "in products/s more than in *products per service CPU second* (outputs over the "
        f"children's CPU seconds in the span). Output statuses: {', '.join(statuses)}.",
        "",
        f"All processes share this machine's {os.cpu_count()} cores: a process added here "
        "gains only the CPU one process leaves idle (compare the service CPU cores), and past "
        "that it shares the same cores, so these rows show what scaling out costs on one "
        "machine, not what a process per machine would gain. The partition count caps the "
        f"useful processes of one group: with {rows[0]['partitions'] if rows else '?'} "
        "partitions, more processes than that would hold none.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=1200)
    parser.add_argument("--photos", type=int, default=300, help="distinct photos served")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--model", default="demo", help="demo, tiny or a model directory")
    parser.add_argument("--docs", type=Path, default=DOCS)
    parser.add_argument("--no-docs", dest="docs", action="store_const", const=None)
    args = parser.parse_args(argv)
    command = "python -m bench.scale_out " + shlex.join(sys.argv[1:] if argv is None else argv)
    if os.nice(0) > 0:  # say so when it ran behind everything else on the machine
        command = f"nice -n {os.nice(0)} {command}"
    started = dt.datetime.now(tz=dt.UTC)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="scale-out-") as scratch:
        work = Path(scratch)
        model_dir, described = model_directory(args.model, work)
        runner = Runner(args, model_dir, REPO_ROOT / ".run" / "bench" / "scale_out")
        try:
            rows = [runner.measure(count) for count in args.processes]
        finally:
            runner.close()
    page = report(rows, described, command.strip(), started, time.monotonic() - began)
    print(page)
    if args.docs is not None:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(page)
        say(f"wrote {args.docs}")


if __name__ == "__main__":
    main()
