"""`enrich export-litert`: LiteRT flat buffers of an exported image model (registered in
`service.cli`)."""

from pathlib import Path
from typing import Any

import click

from service.cli_options import EXISTING_DIR, EXISTING_FILE, OUTPUT_DIR
from service.logging import configure_logging

__all__ = ["export_litert_command"]


@click.command("export-litert")
@click.argument("model_dir", type=EXISTING_DIR)
@click.option(
    "--quantize",
    "quantizations",
    multiple=True,
    type=click.Choice(["none", "dynamic", "int8"]),
    help="Quantised flat buffers to add to the float one (repeat for both): dynamic "
    "(int8 weights) or int8 (int8 weights and activations, calibrated on --labels' train "
    "split).",
)
@click.option(
    "--labels",
    multiple=True,
    type=EXISTING_FILE,
    help="CSV or JSONL labels file, with its --images: the train split calibrates int8, the "
    "validation split measures each flat buffer's accuracy (repeat for several sources).",
)
@click.option(
    "--images",
    "images_root",
    multiple=True,
    type=EXISTING_DIR,
    help="Images root of the --labels file in the same position.",
)
@click.option(
    "--taxonomy",
    "taxonomy_file",
    envvar="ENRICH_TAXONOMY",
    type=EXISTING_FILE,
    default=None,
    help="Google's taxonomy-with-ids file, to place the labels (env ENRICH_TAXONOMY; needed "
    "with --labels).",
)
@click.option(
    "--calibration-count",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Training images int8 is calibrated on.",
)
@click.option(
    "--cache-dir",
    type=OUTPUT_DIR,
    default=None,
    help="Decoded images are cached here (the same files as `enrich train`'s cache).",
)
def export_litert_command(
    model_dir: Path,
    quantizations: tuple[str, ...],
    labels: tuple[Path, ...],
    images_root: tuple[Path, ...],
    taxonomy_file: Path | None,
    calibration_count: int,
    cache_dir: Path | None,
) -> None:
    """Write LiteRT flat buffers of an image model directory beside its model.keras.

    model.tflite (float) always; model.dynamic.tflite and model.int8.tflite with --quantize.
    Each is compared with the Keras model (and, given --labels, its validation accuracy
    measured); metadata.json and checksums.sha256 list them. `enrich serve` runs the default
    one on a CPU (ENRICH_RUNTIME=auto): the float one, unless a quantised one is faster and
    loses at most 0.5 points of validation accuracy.
    """
    import json

    from model.classifier import METADATA_FILE
    from model.litert import FILES, LabelledImages, export_litert, read_labelled
    from model.taxonomy import Taxonomy

    if len(labels) != len(images_root):
        raise click.UsageError(
            f"--labels and --images pair up in order: got {len(labels)} --labels and "
            f"{len(images_root)} --images"
        )
    if "int8" in quantizations and not labels:
        raise click.UsageError("--quantize int8 needs --labels and --images to calibrate on")
    if labels and taxonomy_file is None:
        raise click.UsageError("--labels needs --taxonomy (or ENRICH_TAXONOMY)")
    configure_logging()
    calibration: LabelledImages | None = None
    validation: LabelledImages | None = None
    if labels:
        assert taxonomy_file is not None
        metadata = json.loads((model_dir / METADATA_FILE).read_text())
        size = int(metadata["input_size"])
        truncated = Taxonomy.load(taxonomy_file).truncate(int(metadata["taxonomy"]["depth"]))
        sources = tuple(zip(labels, images_root, strict=True))
        validation = read_labelled(sources, truncated, "validation", size, cache_dir=cache_dir,
                                   progress=True)  # fmt: skip
        if "int8" in quantizations:
            calibration = read_labelled(sources, truncated, "train", size,
                                        limit=calibration_count, cache_dir=cache_dir)  # fmt: skip
    entry = export_litert(
        model_dir,
        quantizations=quantizations,
        calibration=None if calibration is None else calibration.images,
        validation=validation,
    )
    keras_validation = entry["keras"].get("validation")
    click.echo("| flat buffer | MB | max difference | top-1 agreement | images/s | accuracy |")
    click.echo("| --- | --- | --- | --- | --- | --- |")
    click.echo(f"| model.keras | | | | {entry['keras']['images_per_s']:.0f} | "
               f"{_accuracy(keras_validation)} |")  # fmt: skip
    for name, figures in entry["files"].items():
        click.echo(
            f"| {FILES[name]} | {figures['bytes'] / 1e6:.1f} | "
            f"{figures['max_abs_difference']:.2e} | {figures['top1_agreement']:.3f} | "
            f"{figures['images_per_s']:.0f} | {_accuracy(figures.get('validation'))} |"
        )
    click.echo(f"default: {FILES[entry['default']]} ({entry['default_reason']})")


def _accuracy(validation: dict[str, Any] | None) -> str:
    if not validation:
        return "not measured"
    return f"{validation['accuracy']:.4f} on {validation['images']} images"
