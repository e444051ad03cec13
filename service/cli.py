"""The `enrich` command: one group, one subcommand per job, wired here and nowhere else."""

import json
import sys
from pathlib import Path

import click

from model.errors import EnrichError
from model.taxonomy import Taxonomy


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


def main() -> None:
    """Console entry point: run the CLI, turning the project's errors into a message and exit 1."""
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
