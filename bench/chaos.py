"""`make chaos`: the long fault scenarios against the real broker, printed as one table.

    .venv/bin/python bench/chaos.py [--inputs 20000] [--kills 10] [--model DIR]
        [--hanging-inputs 30000] [--redis-outage-s 30] [--fuzz-s 300] [--soak-s 600]
        [--decode-images 12] [--decode-workers 8]
        [--poison-inputs 2000] [--only crash,poison,ssrf,outage,hanging,redis,fuzz,soak,decode]

Needs KAFKA_BOOTSTRAP_SERVERS (``make chaos`` runs it under deploy/local/with-services.sh;
``--only`` with fuzz and decode alone needs no broker)
and root for the SSRF row's network namespace (without it the row keeps to loopback and says
so). Writes docs/reliability.md (the table and the command) and docs/reliability.json. The
model is an untrained default-shaped `tiny` one unless ``--model`` is given: faults, not
accuracy, are measured here.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.decode_memory import decode_memory_row  # noqa: E402
from bench.fuzz import fuzz_row  # noqa: E402
from bench.soak import soak_row  # noqa: E402
from service.kafka.admin import KafkaAdmin  # noqa: E402
from tests.reliability.crash import crash_scenario  # noqa: E402
from tests.reliability.flow import hanging_scenario  # noqa: E402
from tests.reliability.network import (  # noqa: E402
    NetnsUnavailableError,
    PrivateNetwork,
    ssrf_scenario,
)
from tests.reliability.outages import (  # noqa: E402
    PrivateBroker,
    PrivateRedis,
    broker_outage_scenario,
    redis_outage_scenario,
)
from tests.reliability.poison import poison_scenario, poison_topics  # noqa: E402
from tests.reliability.scenarios import (  # noqa: E402
    Row,
    produce,
    product_value,
    service_topics,
)
from tests.support.image_server import ImageServer  # noqa: E402
from tests.support.models import tiny_model  # noqa: E402

SCENARIOS = ("crash", "poison", "ssrf", "outage", "hanging", "redis", "fuzz", "soak", "decode")
_WITHOUT_BROKER = frozenset({"fuzz", "decode"})
_WITH_MODEL = frozenset(
    {"crash", "poison", "ssrf", "outage", "hanging", "redis"}
)  # soak makes its own


def _topics(admin: KafkaAdmin, name: str) -> dict[str, str]:
    return service_topics(admin, name, prefix="chaos")


def _fill(bootstrap: str, topic: str, server: ImageServer, photos: list[str], count: int) -> None:
    items = []
    for i in range(count):
        value = product_value(f"c{i}", f"{server.url_for(photos[i % len(photos)])}?i={i}")
        items.append((f"c{i}", b"not avro" if i % 97 == 0 else value))
    produce(bootstrap, topic, items)


def _ssrf(bootstrap: str, admin: KafkaAdmin, model_dir: Path, work: Path) -> Row:
    """Every guarded target through a serve child; outside loopback in a network namespace."""
    network: PrivateNetwork | None = PrivateNetwork()
    try:
        assert network is not None
        network.start()
    except NetnsUnavailableError as exc:
        print(f"chaos: no network namespace ({exc}); SSRF keeps to loopback", flush=True)
        network = None
    try:
        result = ssrf_scenario(
            bootstrap=bootstrap, topics=_topics(admin, "ssrf"), model_dir=model_dir, work=work,
            network=network,
        )  # fmt: skip
    finally:
        if network is not None:
            network.close()
    if result.probe_hits != result.probed:
        raise RuntimeError(f"only {result.probe_hits} of {result.probed} SSRF targets were live")
    wrong = {n: a for n, a in result.answers.items() if a[0] != "IMAGE_UNAVAILABLE"}
    if wrong:
        raise RuntimeError(f"SSRF targets answered other than IMAGE_UNAVAILABLE: {wrong}")
    if network is None:
        result.row.scenario += " (no network namespace: loopback only)"
    return result.row


def _hanging(
    bootstrap: str, admin: KafkaAdmin, model_dir: Path, server: ImageServer, photos: list[str],
    args: argparse.Namespace,
) -> list[Row]:  # fmt: skip
    """Every ``--hanging-every``-th image URL hangs: on the photos' server, then on 127.0.0.2
    (one all-healthy run is the baseline of both rows)."""
    timeout = args.hanging_timeout_s
    extra = {
        "ENRICH_CONNECT_TIMEOUT_S": str(timeout),
        "ENRICH_READ_TIMEOUT_S": str(timeout),
        "ENRICH_TOTAL_TIMEOUT_S": str(2 * timeout),
        "ENRICH_FETCH_RETRIES": "1",
        "ENRICH_ALLOWED_NETWORKS": "127.0.0.1/32,127.0.0.2/32",
    }
    hang_server = ImageServer(server.root, host="127.0.0.2").start()
    rows: list[Row] = []
    baseline = None
    try:
        for own_host in (False, True):
            row, baseline, hanging = hanging_scenario(
                bootstrap=bootstrap, make_topics=lambda name: _topics(admin, name),
                model_dir=model_dir, server=server, photos=photos, inputs=args.hanging_inputs,
                hanging_every=args.hanging_every, env_extra=extra,
                hang_server=hang_server if own_host else None, timeout_s=3600, baseline=baseline,
            )  # fmt: skip
            if own_host:
                row.scenario = row.scenario.replace("):", ", on a host of their own):", 1)
            unclassified = sum(
                n for status, n in hanging.healthy_statuses.items()
                if status not in {"CLASSIFIED", "LOW_CONFIDENCE"}
            )  # fmt: skip
            if unclassified:
                row.scenario += f", {unclassified:,} healthy products NOT classified"
            print(json.dumps({
                "own_host": own_host,
                "healthy_per_s": [round(baseline.healthy_per_s, 1),
                                  round(hanging.healthy_per_s, 1)],
                "delivered_per_s": [round(baseline.delivered_per_s, 1),
                                    round(hanging.delivered_per_s, 1)],
                "hanging_statuses": sorted(set(hanging.statuses.values())),
                "hanging_requests": sorted(set(hanging.requests.values())),
                "healthy_statuses": hanging.healthy_statuses,
                "healthy_reasons": hanging.healthy_reasons,
            }), flush=True)  # fmt: skip
            rows.append(row)
    finally:
        hang_server.stop()
    return rows


def _redis(
    bootstrap: str, admin: KafkaAdmin, model_dir: Path, server: ImageServer, photos: list[str],
    work: Path, args: argparse.Namespace,
) -> Row:  # fmt: skip
    """Products flowing at ``--redis-rate``; a private Redis stopped for ``--redis-outage-s``."""
    redis = PrivateRedis(work / "redis")
    redis.start()
    try:
        row, details = redis_outage_scenario(
            bootstrap=bootstrap, topics=_topics(admin, "redis"), model_dir=model_dir,
            server=server, photos=photos, redis=redis, rate=args.redis_rate,
            before_s=args.redis_before_s, outage_s=args.redis_outage_s,
            after_s=args.redis_after_s, timeout_s=3600,
        )  # fmt: skip
    finally:
        redis.stop()
    print(json.dumps(dataclasses.asdict(details)), flush=True)
    return row


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


def _soak(args: argparse.Namespace) -> Row:
    """``--soak-s`` at half the measured capacity; the verdict goes into the scenario's name."""
    row, details = soak_row(seconds=args.soak_s, model_dir=args.model)
    verdict = details["verdict"]
    row.scenario += (
        f": RSS {verdict['rss_after_warmup_mb']:.0f} → {verdict['rss_end_mb']:.0f} MiB "
        f"({100 * verdict['rss_growth']:+.1f} %), fds {verdict['fds_first_half_max']} → "
        f"{verdict['fds_end']}, connections {verdict['connections_first_half_max']} → "
        f"{verdict['connections_end']}, "
        + ("passed" if details["passed"] else "FAILED: " + "; ".join(details["reasons"]))
    )
    print(json.dumps({k: v for k, v in details.items() if k != "series"}, default=str), flush=True)
    return row


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20_000, help="crash rows: products")
    parser.add_argument("--kills", type=int, default=10, help="crash rows: kill -9s")
    parser.add_argument("--max-in-flight", type=int, default=200, help="crash rows")
    parser.add_argument("--poison-inputs", type=int, default=2000,
                        help="poison rows: products (4 poison per 500, one killer)")  # fmt: skip
    parser.add_argument("--outage-s", type=float, default=20.0, help="broker outage")
    parser.add_argument("--hanging-inputs", type=int, default=30_000,
                        help="hanging rows: products per run (three runs)")  # fmt: skip
    parser.add_argument("--hanging-every", type=int, default=10,
                        help="hanging rows: 1 in this many image URLs hangs")  # fmt: skip
    parser.add_argument("--hanging-timeout-s", type=float, default=2.0,
                        help="hanging rows: connect/read timeout (total 2x, 1 retry)")  # fmt: skip
    parser.add_argument("--redis-outage-s", type=float, default=30.0)
    parser.add_argument("--redis-rate", type=float, default=50.0, help="products per second")
    parser.add_argument("--redis-before-s", type=float, default=15.0,
                        help="Redis row: flow before the outage")  # fmt: skip
    parser.add_argument("--redis-after-s", type=float, default=30.0,
                        help="Redis row: flow after Redis is back")  # fmt: skip
    parser.add_argument("--fuzz-s", type=float, default=300.0, help="fuzz rows: per target")
    parser.add_argument("--soak-s", type=float, default=600.0, help="soak row: seconds of load")
    parser.add_argument("--decode-images", type=int, default=12,
                        help="decode memory row: 7,070 x 7,070 RGBA PNGs at once")  # fmt: skip
    parser.add_argument("--decode-workers", type=int, default=8,
                        help="decode memory row: decode pool threads")  # fmt: skip
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")  # fmt: skip
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"--only: unknown scenarios {sorted(unknown)}")
    # The command written to the docs: the crash rows' flags always, the others when changed.
    given = [f"--inputs {args.inputs}", f"--kills {args.kills}",
             f"--max-in-flight {args.max_in_flight}"]  # fmt: skip
    for dest, value in vars(args).items():
        if dest in {"inputs", "kills", "max_in_flight", "model", "docs"}:
            continue
        if value != parser.get_default(dest):
            shown = f"{value:g}" if isinstance(value, float) else value
            given.append(f"--{dest.replace('_', '-')} {shown}")
    args.command = f"make chaos CHAOS_ARGS='{' '.join(given)}'"
    return args


def main() -> None:
    """Run the scenarios, print the table, write docs/reliability.{md,json}."""
    args = _arguments()
    only = set(args.only.split(","))
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if not bootstrap and not only <= _WITHOUT_BROKER:
        sys.exit("chaos: KAFKA_BOOTSTRAP_SERVERS is not set (run `make chaos`)")
    shared = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))
    with (shared / "product-images" / "labels.csv").open() as stream:
        photos = [r["image_path"] for r in csv.DictReader(stream)][:500]
    admin = KafkaAdmin({"bootstrap.servers": bootstrap})
    server = ImageServer(shared / "product-images").start()
    rows: list[Row] = []
    began = time.monotonic()

    def note(row: Row, **extra: object) -> None:
        print(json.dumps({**row.as_dict(), **extra}), flush=True)
        rows.append(row)

    with tempfile.TemporaryDirectory() as work:
        model_dir = args.model or Path(work) / "model"
        if args.model is None and only & _WITH_MODEL:
            tiny_model(shared, model_dir, "chaos")
        for delivery in ("at-least-once", "exactly-once") if "crash" in only else ():
            topics = _topics(admin, "crash")
            _fill(bootstrap, topics["input"], server, photos, args.inputs)
            note(crash_scenario(
                bootstrap=bootstrap, topics=topics, model_dir=model_dir, inputs=args.inputs,
                kills=args.kills, max_in_flight=args.max_in_flight, delivery=delivery,
                timeout_s=3600,
            ))  # fmt: skip
        for delivery in ("at-least-once", "exactly-once") if "poison" in only else ():
            note(poison_scenario(
                bootstrap=bootstrap, topics=poison_topics(admin, "poison"),
                model_dir=model_dir, urls=[server.url_for(p) for p in photos],
                inputs=args.poison_inputs, delivery=delivery, work=Path(work) / "poison",
                timeout_s=1800,
            ))  # fmt: skip
        if "ssrf" in only:
            note(_ssrf(bootstrap, admin, model_dir, Path(work)))
        if "outage" in only:
            row, readiness = _outage(Path(work), server, photos, model_dir, args.outage_s)
            note(row, readyz=readiness)
        if "hanging" in only:
            for row in _hanging(bootstrap, admin, model_dir, server, photos, args):
                note(row)
        if "redis" in only:
            note(_redis(bootstrap, admin, model_dir, server, photos, Path(work), args))
        for target in ("image", "record") if "fuzz" in only else ():
            note(fuzz_row(target, args.fuzz_s, Path(work) / "fuzz" / target))
        if "soak" in only:
            note(_soak(args))
        if "decode" in only:
            row, details = decode_memory_row(args.decode_images, workers=args.decode_workers)
            note(row, **details)
    server.stop()
    _write(args, rows, time.monotonic() - began)


def _write(args: argparse.Namespace, rows: list[Row], seconds: float) -> None:
    """Print the table; write it with the command and the notes to --docs."""
    command = args.command
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
        f"({os.cpu_count()} cores), {seconds:.0f} s:\n\n    {command}\n\n"
        f"{table}\n\n"
        "*Lost*: input offsets with neither an output nor a dead-letter record, counted by "
        "reading both topics back. *Duplicates*: outputs beyond one per input offset (at "
        "least once allows them, bounded by the in-flight limit per kill; exactly-once is read "
        "with `read_committed`). *Max recovery*: from a restart to its first new output "
        "(process start, model load and group join included). Every 97th input of the crash "
        "rows is not Avro and is answered through the dead-letter topic.\n\n"
        f"*Poison records*: {args.poison_inputs:,} products over 4 partitions; every 500th "
        "is followed by a keyless tombstone, 1.05 MB of undecodable bytes, a product with a "
        "1.1 MB partner_id and one with a 2,000-byte product_id, and one product kills the "
        "process whenever it is read (os._exit, as a crashing decoder would). The output topic "
        "is compacted and the dead-letter topic takes at most 20,000 bytes a record. The "
        "service is restarted whenever it dies: *runs* counts the starts, *max recovery* is "
        "the whole run in seconds, and a partition is *stopped* when its committed offset is "
        "short of its end once every input is answered.\n\n"
        "*SSRF*: image URLs at loopback in every spelling, private and link-local literals, "
        "and, outside loopback, real hosts made for the run: a network namespace joined by a "
        "veth pair with addresses in 10/8, 172.16/12 and 192.168/16, written as literals and "
        "as host names that resolve to them (the service child sees a hosts file of its own). "
        "A listener on each counts connections: *guarded hits* must be 0; each target first "
        "takes one connection from the harness itself, so it is live.\n\n"
        f"*Image URLs hanging*: one backlog of {args.hanging_inputs:,} products three times: "
        f"all healthy, then 1 in {args.hanging_every} image URLs accepting and never answering "
        f"(connect and read timeout {args.hanging_timeout_s:g} s, total twice that, 1 retry) "
        "on the photos' own server (a shop that hangs on some paths; the row's runs include "
        "the all-healthy one), then on a host of their own (127.0.0.2). The *healthy rate* is "
        "healthy products enriched per second (their records' `processed_at`, between the 10th "
        "and 90th percentile) against the all-healthy run; the target is at least 0.5x. "
        "*Delivered* is healthy outputs per second from the first output to the last healthy "
        "one (runs before per-key order: outputs left in source order, so each partition's "
        "wait behind its hanging product showed there). *Max recovery* there is the longest a "
        "hanging product waited for its IMAGE_UNAVAILABLE after its image's first request; "
        "a row also says how many healthy products were not classified, if any.\n\n"
        f"*Redis outage*: products at {args.redis_rate:g}/s whose images come from 50 URLs; "
        f"{args.redis_before_s:g} s in, the service's Redis stops for {args.redis_outage_s:g} s "
        "and comes back empty; products keep coming for "
        f"{args.redis_after_s:g} s more. *Max recovery* there is from Redis's restart to "
        "the first cache hit counted at `/metrics`.\n\n"
        f"*Fuzz*: atheris (libFuzzer) for {args.fuzz_s:g} s on each entry point of outside "
        "bytes (`bench/fuzz.py`): `decode_image`, and a Kafka value through "
        "`SingleObjectCodec.decode`, `parse_product` and the enrichment encode; *inputs* are "
        "executions, *lost* the inputs that raised anything but the project's typed errors "
        "(or ran out of memory or time).\n\n"
        f"*Soak*: the service for {args.soak_s:g} s at half its measured capacity "
        "(`bench/soak.py`; 80 % cached images, 15 % fetched, 5 % 404): resident memory after "
        "the warm-up (the first 20 %) against the end must grow less than 10 %, and open fds, "
        "sockets and threads must not rise above their first half's maximum.\n\n"
        f"*Decode memory burst*: {args.decode_images} RGBA PNGs of 7,070 x 7,070 pixels (about "
        "220 KB each on the wire, 50 M pixels each decoded) loaded at once through "
        f"`ImageStage.load` with {args.decode_workers} decode threads, each variant in a fresh "
        "process (`bench/decode_memory.py`): peak resident memory over the memory before the "
        "burst, with the default decode budget (`decode_budget_pixels`) and without one; "
        "*outputs* are the images decoded, *lost* the ones that were not.\n\n"
        "Also in `make test` (tests/reliability/, tests/service/): short versions of the rows "
        "above; hostile images (bomb, truncated, bad CRC, CMYK, 16-bit, palette+alpha, animated "
        "GIF, WebP, 1x1, 1x10000, EXIF-rotated), hostile records (not Avro, unknown "
        "fingerprint, cut short, 10 MB title, 100 KB URL, file/ftp/gopher/data/credential "
        "URLs), image-server faults (tests/service/fetch/) and SIGTERM drain.\n"
    )


if __name__ == "__main__":
    main()
