"""The `enrich` command: one group, one subcommand per job, wired here and nowhere else."""

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from model.errors import EnrichError
from model.taxonomy import Taxonomy
from service.cli_litert import export_litert_command
from service.cli_model import compare_command, evaluate_command, train_command
from service.cli_options import EXISTING_DIR, EXISTING_FILE, taxonomy_option
from service.logging import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Universal product categories from product images: service, model and data tools."""


@cli.group()
def taxonomy() -> None:
    """Inspect a Google Product Taxonomy file."""


@taxonomy.command("stats")
@click.option(
    "--taxonomy",
    "taxonomy_file",
    envvar="ENRICH_TAXONOMY",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Google's taxonomy-with-ids file (env ENRICH_TAXONOMY).",
)
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Truncate the taxonomy to this depth.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def taxonomy_stats(taxonomy_file: Path, depth: int, as_json: bool) -> None:
    """Count categories, nodes and leaves of the taxonomy truncated to DEPTH."""
    stats = Taxonomy.load(taxonomy_file).truncate(depth).stats()
    if as_json:
        click.echo(json.dumps(stats))
        return
    click.echo(f"taxonomy version  {stats['version']}")
    click.echo(f"categories        {stats['categories']:,}")
    click.echo(f"depth             {stats['depth']}")
    click.echo(f"nodes             {stats['nodes']:,}")
    click.echo(f"leaves            {stats['leaves']:,}")
    for level, count in enumerate(stats["per_level"], start=1):
        click.echo(f"  level {level}         {count:,}")


@cli.group("build-dataset", invoke_without_command=True)
@click.option(
    "--labels",
    default=None,
    type=EXISTING_FILE,
    help="CSV or JSONL with product_id, image_url, google_category_id.",
)
@click.option(
    "--kafka-topic",
    default=None,
    help="Read labelled products from this topic instead, as one worker of --group-id.",
)
@click.option(
    "--group-id", default="build-dataset", show_default=True, help="Consumer group of workers."
)
@click.option("--worker", default=None, help="This worker's unique name (default: host-pid).")
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="A Kafka worker stops after this many seconds without a message.",
)
@click.option(
    "--taxonomy",
    "taxonomy_file",
    envvar="ENRICH_TAXONOMY",
    default=None,
    type=EXISTING_FILE,
    help="Google's taxonomy-with-ids file (env ENRICH_TAXONOMY).",
)
@click.option("--output", default=None, help="Dataset folder: a local path or a tf.io.gfile URL.")
@click.option("--depth", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--image-size", type=click.IntRange(min=1), default=224, show_default=True)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Labelled products per shard.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Downloads in flight at once.",
)
@click.option(
    "--allowed-networks",
    default="",
    help="Comma-separated networks the address guard lets through (e.g. an internal CDN; "
    "default: ENRICH_ALLOWED_NETWORKS). Timeouts, retries and the byte cap are the service's "
    "ENRICH_* settings.",
)
@click.option(
    "--retry-failed", is_flag=True, help="Fetch again only the failures of the earlier build."
)
@click.option(
    "--cache/--no-cache",
    default=True,
    show_default=True,
    help="Use the service's Redis image cache when REDIS_URL is set.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def build_dataset_command(
    ctx: click.Context,
    labels: Path | None,
    kafka_topic: str | None,
    group_id: str,
    worker: str | None,
    idle_timeout: float,
    taxonomy_file: Path | None,
    output: str | None,
    depth: int,
    image_size: int,
    shard_size: int,
    concurrency: int,
    allowed_networks: str,
    retry_failed: bool,
    cache: bool,
    progress: bool,
) -> None:
    """Download labelled product images into resized TFRecord shards, split 70/15/15.

    With --kafka-topic, run one of any number of workers sharing the topic; then
    `enrich build-dataset finalize` merges their shards' statistics and split.
    """
    if ctx.invoked_subcommand is not None:
        return
    if taxonomy_file is None or output is None:
        raise click.UsageError("--taxonomy and --output are required")
    if (labels is None) == (kafka_topic is None):
        raise click.UsageError("give exactly one of --labels and --kafka-topic")
    if kafka_topic is not None and retry_failed:
        raise click.UsageError("--retry-failed reads the failures file: use it without Kafka")
    from service.dataset import BuildConfig, build_dataset

    settings = _settings()
    networks = tuple(net.strip() for net in allowed_networks.split(",") if net.strip())
    fetch = settings.fetch_config(
        total_connections=concurrency,
        **({"allowed_networks": networks} if networks else {}),
    )
    config = BuildConfig(
        labels=labels or Path(),
        taxonomy=taxonomy_file,
        output=output,
        depth=depth,
        image_size=image_size,
        shard_size=shard_size,
        concurrency=concurrency,
        fetch=fetch,
        retry_failed=retry_failed,
        progress=progress,
        worker=worker or "",
    )
    image_cache = None
    if cache and settings.redis_url:
        from service.cache import ImageCache
        from service.redis_store import RedisStore

        image_cache = ImageCache(
            RedisStore(settings.redis_url, prefix="enrich:", socket_timeout=0.5),
            image_size=image_size,
            ttl_s=settings.cache_ttl_s,
            negative_ttl_s=settings.cache_negative_ttl_s,
        )
    if kafka_topic is not None:
        import socket

        from service.dataset.kafka_source import KafkaSource, run_worker

        name = worker or f"{socket.gethostname()}-{os.getpid()}"
        source = KafkaSource(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=kafka_topic,
            group_id=group_id,
            worker=name,
            idle_timeout_s=idle_timeout,
            config=settings.kafka_config,
        )
        done = run_worker(replace(config, worker=name), source, cache=image_cache)
        click.echo(
            f"worker {name}: {done.products:,} products in {done.shards} shards "
            f"({done.skipped} messages skipped); run `enrich build-dataset finalize`"
        )
        return
    report = build_dataset(config, image_cache)
    stats = report.finalized.stats
    click.echo(
        f"{stats['ok']:,} of {stats['products']:,} products kept, {stats['failed']:,} failed "
        f"({stats['failure_share']:.1%}); {report.shards_written} shards written, "
        f"{report.shards_skipped} already done; splits {stats['splits']}; "
        f"see {output}/stats.md"
    )


@build_dataset_command.command("finalize")
@taxonomy_option
@click.option("--output", required=True, help="The dataset folder the workers wrote.")
def build_dataset_finalize(taxonomy_file: Path, output: str) -> None:
    """Merge every worker's shard manifests: split, failures file, statistics."""
    from service.dataset import finalize
    from service.dataset.manifest import read_manifests
    from service.dataset.storage import join

    configure_logging()
    manifests = read_manifests(join(output, "shards"))
    depth = manifests[0].depth if manifests else 4
    done = finalize(output, Taxonomy.load(taxonomy_file).truncate(depth))
    stats = done.stats
    click.echo(
        f"{done.records:,} records in {done.shards} shards; {stats['failed']:,} failed "
        f"({stats['failure_share']:.1%}); splits {stats['splits']}; see {output}/stats.md"
    )


def _settings(**flags: Any) -> Any:
    """Settings from the environment with the given flags winning; logging configured."""
    from service.config import load_settings

    settings = load_settings(**flags)
    configure_logging(settings.log_level, settings.log_format)
    return settings


@cli.command("serve")
@click.option(
    "--model",
    "model_dir",
    type=EXISTING_DIR,
    default=None,
    help="Model directory (env ENRICH_MODEL_DIR).",
)
@click.option(
    "--text-model",
    "text_model_dir",
    type=EXISTING_DIR,
    default=None,
    help="Text model directory (env ENRICH_TEXT_MODEL_DIR): title, description and partner "
    "category classified too, fused with the image, alone when the image fails.",
)
@click.option(
    "--taxonomy",
    type=EXISTING_FILE,
    default=None,
    help="Taxonomy file to check the model against (env ENRICH_TAXONOMY).",
)
@click.option("--input-topic", default=None, help="env ENRICH_INPUT_TOPIC")
@click.option("--output-topic", default=None, help="env ENRICH_OUTPUT_TOPIC")
@click.option("--dead-letter-topic", default=None, help="env ENRICH_DEAD_LETTER_TOPIC")
@click.option("--group-id", default=None, help="env ENRICH_GROUP_ID")
@click.option(
    "--delivery",
    type=click.Choice(["at-least-once", "exactly-once"]),
    default=None,
    help="env ENRICH_DELIVERY (default at-least-once)",
)
@click.option("--metrics-port", type=int, default=None, help="env ENRICH_METRICS_PORT (9464)")
@click.option(
    "--runtime",
    type=click.Choice(["auto", "keras", "litert"]),
    default=None,
    help="What runs the model (env ENRICH_RUNTIME, default auto: the LiteRT flat buffer on a "
    "CPU when the model directory has one, else the Keras model).",
)
def serve_command(**flags: Any) -> None:
    """Enrich products from Kafka until SIGTERM / SIGINT; see the README for every setting."""
    from service.app import Service

    settings = _settings(**flags)
    with Service(settings) as service:
        summary = service.serve()
    click.echo(json.dumps({"consumed": summary.consumed, "produced": summary.produced,
                           "by_status": summary.by_status}))  # fmt: skip


@cli.command("replay")
@click.option(
    "--model",
    "model_dir",
    type=EXISTING_DIR,
    default=None,
    help="Model directory (env ENRICH_MODEL_DIR): the new model to reclassify with.",
)
@click.option(
    "--text-model",
    "text_model_dir",
    type=EXISTING_DIR,
    default=None,
    help="Text model directory (env ENRICH_TEXT_MODEL_DIR) to reclassify with too.",
)
@click.option("--taxonomy", type=EXISTING_FILE, default=None)
@click.option("--input-topic", default=None, help="Topic to replay (env ENRICH_INPUT_TOPIC).")
@click.option(
    "--output-topic",
    default=None,
    help="Where the reclassification goes (default: ENRICH_OUTPUT_TOPIC).",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Start at this UTC time instead of the beginning.",
)
@click.option(
    "--group-id",
    default=None,
    help="Consumer group of the replay (default: <ENRICH_GROUP_ID>-replay).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def replay_command(
    model_dir: Path | None, text_model_dir: Path | None, taxonomy: Path | None,
    input_topic: str | None, output_topic: str | None, since: Any, group_id: str | None,
    progress: bool,
) -> None:  # fmt: skip
    """Reclassify a topic from its beginning (or --since) up to its end now, then exit."""
    import datetime as dt

    from tqdm import tqdm

    from service.app import Service

    settings = _settings(model_dir=model_dir, text_model_dir=text_model_dir, taxonomy=taxonomy,
                         input_topic=input_topic, metrics_port=0)  # fmt: skip
    bar: Any = None

    def on_start(total: int) -> None:
        nonlocal bar
        bar = tqdm(total=total, unit="product", desc="replay", disable=not progress)

    def on_progress(count: int) -> None:
        if bar is not None:
            bar.update(count)

    group = group_id or f"{settings.group_id}-replay"
    started = since.replace(tzinfo=dt.UTC) if since is not None else None
    with Service(settings, group_id=group) as service:
        summary = service.replay(since=started, output_topic=output_topic, on_start=on_start,
                                 on_progress=on_progress)  # fmt: skip
    if bar is not None:
        bar.close()
    click.echo(json.dumps({"consumed": summary.consumed, "produced": summary.produced,
                           "by_status": summary.by_status,
                           "seconds": round(summary.seconds, 1)}))  # fmt: skip


@cli.command("demo")
@click.option("--products", type=click.IntRange(min=1), default=300, show_default=True)
@click.option(
    "--model",
    "model_dir",
    type=EXISTING_DIR,
    default=None,
    help="Use this model instead of the demo's pretrained one.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"products", "outputs", "by_status", "products_per_second", "model", '
    '"real_photos"}.',
)
def demo_command(products: int, model_dir: Path | None, as_json: bool) -> None:
    """The whole path on real photos with a pretrained model: mock broker, in-process cache,
    local image server."""
    from service.demo import format_table, run_demo

    configure_logging("WARNING")
    result = run_demo(products=products, model_dir=model_dir)
    click.echo(json.dumps(result.to_json()) if as_json else format_table(result))
    if result.outputs < result.products - result.dead_lettered:
        raise EnrichError(f"the demo got {result.outputs} outputs for {result.products} products")


for _command in (train_command, evaluate_command, compare_command, export_litert_command):
    cli.add_command(_command)


def main() -> None:
    """Console entry point: run the CLI, turning the project's errors into a message and exit 1."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EnrichError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
