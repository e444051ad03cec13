"""Click option types and options shared by the `enrich` subcommands."""

from pathlib import Path
from typing import Any

import click

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
OUTPUT_DIR = click.Path(file_okay=False, path_type=Path)
NAMED_WEIGHTS = ("imagenet", "imagenet-lite")


class _WeightsType(click.ParamType):  # type: ignore[type-arg]
    """'imagenet', 'imagenet-lite', or the path of an existing local weight file."""

    name = "imagenet|imagenet-lite|FILE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if value in NAMED_WEIGHTS:
            return str(value)
        return str(EXISTING_FILE.convert(value, param, ctx))


WEIGHTS = _WeightsType()


def taxonomy_option(function: Any) -> Any:
    """The --taxonomy option shared by the model commands."""
    return click.option(
        "--taxonomy",
        "taxonomy_file",
        envvar="ENRICH_TAXONOMY",
        required=True,
        type=EXISTING_FILE,
        help="Google's taxonomy-with-ids file (env ENRICH_TAXONOMY).",
    )(function)
