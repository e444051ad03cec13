"""The model subcommands of `enrich`: train (images, or `--text`), evaluate, compare
(registered in `service.cli`)."""

from pathlib import Path

import click
from click.core import ParameterSource

from service.cli_options import (
    EXISTING_DIR,
    EXISTING_FILE,
    NAMED_WEIGHTS,
    OUTPUT_DIR,
    WEIGHTS,
    taxonomy_option,
)
from service.logging import configure_logging

# Options of `enrich train` that only image training reads; `--text` refuses them when given.
_IMAGE_ONLY = (
    "images_root",
    "dataset",
    "backbone",
    "image_size",
    "weights",
    "end_to_end",
    "fine_tune_blocks",
    "fine_tune_epochs",
    "fine_tune_learning_rate",
    "feature_views",
    "augmented_epochs",
    "cache_dir",
    "schedule",
    "warmup_epochs",
    "augment",
    "class_weighting",
    "bn_momentum",
    "time_budget_s",
    "resume",
)


def _given(name: str) -> bool:
    """Whether the current command's parameter ``name`` was given (not left at its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _option_flag(name: str) -> str:
    """The command-line spelling of the current command's parameter ``name``."""
    for param in click.get_current_context().command.params:
        if param.name == name and param.opts:
            return str(param.opts[0])
    return name


@click.command("train")
@click.option(
    "--labels",
    multiple=True,
    type=EXISTING_FILE,
    help="CSV or JSONL labels file; several (each with its --images) train on all at once.",
)
@click.option(
    "--text",
    is_flag=True,
    help="Train the text classifier on the labels' title (and description, "
    "partner_category) columns instead of images: no --images needed (model.text_train).",
)
@click.option(
    "--text-features",
    type=click.IntRange(min=16),
    default=None,
    help="--text only: the hashed feature columns (default 32768); fewer make a smaller model "
    "(the demo's has 4096).",
)
@click.option(
    "--images",
    "images_root",
    multiple=True,
    type=EXISTING_DIR,
    help="Folder the labels' image paths are relative to (one per --labels, in order).",
)
@click.option(
    "--dataset",
    default=None,
    type=EXISTING_DIR,
    help="A folder built by `enrich build-dataset`, instead of --labels and --images.",
)
@taxonomy_option
@click.option("--depth", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--output", required=True, type=OUTPUT_DIR, help="Run directory to write.")
@click.option("--backbone", default=None, help="Backbone name (default: the CPU default).")
@click.option(
    "--image-size",
    type=click.IntRange(min=32),
    default=None,
    help="Input side in pixels (default: the default backbone's, else its native).",
)
@click.option(
    "--weights",
    type=WEIGHTS,
    default=None,
    help="Pretrained backbone weights: 'imagenet-lite' (packaged, efficientnet_lite0..2), "
    "'imagenet' (keras.applications, fetched by Keras on first use) or a local file. "
    "Pretrained weights train by transfer learning unless --end-to-end.",
)
@click.option(
    "--end-to-end",
    is_flag=True,
    help="With pretrained --weights, train the whole network instead of cached features.",
)
@click.option(
    "--fine-tune-blocks",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Transfer learning: backbone blocks, from the top, trained after the heads.",
)
@click.option("--fine-tune-epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--fine-tune-learning-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-4,
    show_default=True,
)
@click.option(
    "--feature-views",
    type=click.IntRange(1, 4),
    default=2,
    show_default=True,
    help=(
        "Transfer learning: cached views per training image (2 adds the mirror image, "
        "4 a zoom on the centre and its mirror image)."
    ),
)
@click.option(
    "--augmented-epochs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help=(
        "Transfer learning: after --fine-tune-blocks on cached activations, train those blocks "
        "and the heads end to end on randomly augmented images for up to this many epochs "
        "(each runs the whole backbone over every training image)."
    ),
)
@click.option(
    "--cache-dir",
    type=OUTPUT_DIR,
    default=None,
    help="Decoded images and backbone features are cached here (default OUTPUT/cache).",
)
@click.option(
    "--heads",
    type=click.Choice(["marginal", "multi", "leaf"]),
    default="marginal",
    show_default=True,
    help="marginal (default): a leaf softmax summed to every level, trained with the leaf "
    "loss plus depth-weighted level losses; multi: a softmax per level; leaf: one flat "
    "softmax (the baseline). See docs/results/.",
)
@click.option(
    "--vocabulary", type=click.Choice(["labels", "full"]), default="labels", show_default=True
)
@click.option(
    "--level-weights",
    default=None,
    help="Comma-separated loss weight per level, e.g. 1,2,3,4 (default: by depth).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--learning-rate", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True
)
@click.option(
    "--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True
)
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option(
    "--class-weighting", type=click.Choice(["none", "balanced"]), default="none", show_default=True
)
@click.option(
    "--bn-momentum",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="BatchNormalization momentum (default: the measured training default).",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Epochs without a better validation weighted score before stopping.",
)
@click.option(
    "--time-budget",
    "time_budget_s",
    type=click.FloatRange(min=1),
    default=None,
    help="Stop before an epoch that would end after this many seconds.",
)
@click.option(
    "--business-values",
    multiple=True,
    type=EXISTING_FILE,
    help="CSV google_category_id,business_value for the validation score (repeatable).",
)
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Early-stop on this fraction of the train split and leave the file's validation "
    "split untouched (it becomes 'test' in split.csv), for an unbiased `enrich evaluate`.",
)
@click.option("--name", default="catalog-classifier", show_default=True)
@click.option(
    "--verbose",
    type=click.IntRange(0, 2),
    default=1,
    show_default=True,
    help="Keras progress: 0 silent, 1 progress bar, 2 one line per epoch.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Go on from the run directory's last checkpoint.")
def train_command(
    labels: tuple[Path, ...],
    text: bool,
    text_features: int | None,
    images_root: tuple[Path, ...],
    dataset: Path | None,
    taxonomy_file: Path,
    depth: int,
    output: Path,
    backbone: str | None,
    image_size: int | None,
    weights: str | None,
    end_to_end: bool,
    fine_tune_blocks: int,
    fine_tune_epochs: int,
    fine_tune_learning_rate: float,
    feature_views: int,
    augmented_epochs: int,
    cache_dir: Path | None,
    heads: str,
    vocabulary: str,
    level_weights: str | None,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    schedule: str,
    warmup_epochs: int,
    augment: bool,
    class_weighting: str,
    bn_momentum: float | None,
    patience: int,
    time_budget_s: float | None,
    business_values: tuple[Path, ...],
    holdout: float | None,
    name: str,
    verbose: int,
    seed: int,
    resume: bool,
) -> None:
    """Train the classifier and export the best model to OUTPUT/model.

    With pretrained --weights the backbone is frozen and its features cached (transfer
    learning, `model.transfer`); otherwise the whole network is trained (`model.train`).
    With --text the text classifier is trained on the labels' titles (`model.text_train`);
    the image-only options are refused then.
    """
    from model.build import parse_level_weights
    from model.train import DEFAULT_BACKBONE, DEFAULT_BN_MOMENTUM, DEFAULT_IMAGE_SIZE, TrainConfig
    from model.train import train as run_training

    if text:
        given = [_option_flag(name) for name in _IMAGE_ONLY if _given(name)]
        if given:
            raise click.UsageError(f"{', '.join(given)}: not used by --text training")
        if not labels:
            raise click.UsageError("--text needs --labels, a labels file with a title column")
        from model.text_features import TextFeaturizer
        from model.text_train import TextTrainConfig, train_text

        configure_logging()
        featurizer = TextFeaturizer() if text_features is None else TextFeaturizer(text_features)
        result = train_text(
            TextTrainConfig(
                labels=labels,
                taxonomy=taxonomy_file,
                output=output,
                depth=depth,
                heads=heads,  # type: ignore[arg-type]
                vocabulary=vocabulary,  # type: ignore[arg-type]
                level_weights=parse_level_weights(level_weights, depth) if level_weights else None,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                patience=patience,
                holdout=holdout,
                business_values=business_values,
                seed=seed,
                name=name if _given("name") else "catalog-text-classifier",
                verbose=verbose,
                featurizer=featurizer,
            )
        )
        click.echo(
            f"trained the text classifier {result.epochs_run} epochs in {result.elapsed_s:.0f}s "
            f"({result.stopped_because}); best epoch {result.best_epoch + 1}, validation "
            f"weighted score {result.best_score:.4f}; model: {result.model_dir}"
        )
        return
    if text_features is not None:
        raise click.UsageError("--text-features: only used by --text training")
    sources = tuple(zip(labels, images_root, strict=False))
    if dataset is not None:
        if labels or images_root:
            raise click.UsageError("give either --dataset or --labels with --images, not both")
        sources = ((dataset / "split.csv", dataset),)
    elif not labels or len(labels) != len(images_root):
        raise click.UsageError("give --labels and --images in pairs (one --images per --labels)")
    if weights is None and (fine_tune_blocks or end_to_end):
        raise click.UsageError("--fine-tune-blocks and --end-to-end need pretrained --weights")
    if augmented_epochs and not fine_tune_blocks:
        raise click.UsageError("--augmented-epochs needs --fine-tune-blocks (the blocks it trains)")
    configure_logging()
    chosen = backbone or DEFAULT_BACKBONE
    size = image_size or (DEFAULT_IMAGE_SIZE if chosen == DEFAULT_BACKBONE else None)
    config = TrainConfig(
        labels=sources[0][0],
        images_root=sources[0][1],
        sources=sources if len(sources) > 1 else (),
        dataset=dataset,
        taxonomy=taxonomy_file,
        output=output,
        depth=depth,
        backbone=chosen,
        image_size=size,
        weights=weights if weights is None or weights in NAMED_WEIGHTS else Path(weights),
        fine_tune_blocks=fine_tune_blocks,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_learning_rate=fine_tune_learning_rate,
        feature_views=feature_views,
        augmented_epochs=augmented_epochs,
        cache_dir=cache_dir,
        heads=heads,  # type: ignore[arg-type]
        vocabulary=vocabulary,  # type: ignore[arg-type]
        level_weights=parse_level_weights(level_weights, depth) if level_weights else None,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        schedule=schedule,  # type: ignore[arg-type]
        warmup_epochs=warmup_epochs,
        augment=augment,
        class_weighting=class_weighting,  # type: ignore[arg-type]
        bn_momentum=DEFAULT_BN_MOMENTUM if bn_momentum is None else bn_momentum,
        patience=patience,
        time_budget_s=time_budget_s,
        business_values=business_values[0] if business_values else None,
        business_values_files=business_values[1:],
        resume=resume,
        holdout=holdout,
        seed=seed,
        name=name,
        verbose=verbose,
    )
    if weights is not None and not end_to_end:
        from model.transfer import train_transfer

        result = train_transfer(config)
    else:
        result = run_training(config)
    click.echo(
        f"trained {result.epochs_run} epochs in {result.elapsed_s:.0f}s "
        f"({result.stopped_because}); best epoch {result.best_epoch + 1}, validation weighted "
        f"score {result.best_score:.4f}; model: {result.model_dir}"
    )


@click.command("evaluate")
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=EXISTING_DIR,
    help="A model directory written by `enrich train`.",
)
@click.option(
    "--labels",
    required=True,
    multiple=True,
    type=EXISTING_FILE,
    help="CSV or JSONL labels file; repeat for several sources, each with its --images.",
)
@click.option(
    "--images",
    "images_root",
    multiple=True,
    type=EXISTING_DIR,
    help="Images root of the --labels file in the same position (image models: required; "
    "a text model reads the labels' titles instead).",
)
@taxonomy_option
@click.option(
    "--business-values",
    multiple=True,
    type=EXISTING_FILE,
    help="CSV google_category_id,business_value; repeat to merge several (image models: "
    "required; a text model reports the weighted score only with them).",
)
@click.option("--output", required=True, type=OUTPUT_DIR, help="Report directory to write.")
@click.option(
    "--split",
    default="validation",
    show_default=True,
    help="Rows of this split only (when the labels have splits); 'all' for every row.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
def evaluate_command(
    model_dir: Path,
    labels: tuple[Path, ...],
    images_root: tuple[Path, ...],
    taxonomy_file: Path,
    business_values: tuple[Path, ...],
    output: Path,
    split: str,
    batch_size: int,
) -> None:
    """Evaluate a model: report.json, report.md, confusion, coverage, reliability and mistakes.

    Several labelled sources are evaluated together with --labels A --images A_ROOT --labels
    B --images B_ROOT (paired in order); the report adds each source's own figures.

    A text model directory (from `enrich train --text`) is evaluated on the labels' titles:
    no --images; report.json and report.md with the accuracy per level (`model.text_train`).
    """
    from model.classifier import TEXT_MODALITY, model_modality
    from model.evaluate import EvaluateConfig, evaluate

    if model_modality(model_dir) == TEXT_MODALITY:
        _evaluate_text(
            model_dir, labels, images_root, taxonomy_file, business_values, output, split
        )
        return
    for name, values in (("--images", images_root), ("--business-values", business_values)):
        if not values:
            raise click.UsageError(f"Missing option '{name}' (an image model needs it).")
    if len(labels) != len(images_root):
        raise click.UsageError(
            f"--labels and --images pair up in order: got {len(labels)} --labels and "
            f"{len(images_root)} --images"
        )
    configure_logging()
    report = evaluate(
        EvaluateConfig(
            model_dir=model_dir,
            labels=labels[0],
            images_root=images_root[0],
            taxonomy=taxonomy_file,
            business_values=business_values[0] if len(business_values) == 1 else business_values,
            output=output,
            split=None if split == "all" else split,
            batch_size=batch_size,
            sources=tuple(zip(labels, images_root, strict=True)) if len(labels) > 1 else (),
        )
    )
    click.echo(
        f"leaf accuracy {report['leaf_accuracy']:.4f} (macro {report['macro_accuracy']:.4f}), "
        f"weighted score {report['weighted_score']:.4f}, ECE {report['ece']:.4f} on "
        f"{report['data']['images']} images; report: {output / 'report.md'}"
    )
    if len(report["sources"]) > 1:
        for entry in report["sources"]:
            accuracy = "n/a" if entry["leaf_accuracy"] is None else f"{entry['leaf_accuracy']:.4f}"
            click.echo(f"  {entry['name']}: leaf accuracy {accuracy} on {entry['images']} images")


def _evaluate_text(
    model_dir: Path,
    labels: tuple[Path, ...],
    images_root: tuple[Path, ...],
    taxonomy_file: Path,
    business_values: tuple[Path, ...],
    output: Path,
    split: str,
) -> None:
    """`enrich evaluate` of a text model: accuracy per level on the labels' titles."""
    from model.text_train import evaluate_text

    if images_root:
        raise click.UsageError(f"{model_dir} is a text model: --images is not used")
    configure_logging()
    report = evaluate_text(
        model_dir,
        labels,
        taxonomy_file,
        output,
        split=None if split == "all" else split,
        business_values=business_values,
    )
    weighted = report["weighted_score"]
    click.echo(
        f"text model: leaf accuracy {report['leaf_accuracy']:.4f} "
        f"(macro {report['macro_accuracy']:.4f}"
        + ("" if weighted is None else f", weighted score {weighted:.4f}")
        + f") on {report['data']['products']} products "
        f"({report['data']['without_text']} without text); report: {output / 'report.md'}"
    )
    for entry in report["levels"]:
        accuracy = "n/a" if entry["accuracy"] is None else f"{entry['accuracy']:.4f}"
        click.echo(f"  level {entry['level']}: accuracy {accuracy}")


@click.command("compare")
@click.argument("report_dirs", nargs=-1, required=True, type=EXISTING_DIR)
@click.option(
    "--output", required=True, type=OUTPUT_DIR, help="Where comparison.md, .csv and .png go."
)
def compare_command(report_dirs: tuple[Path, ...], output: Path) -> None:
    """Put evaluation reports side by side: Markdown, CSV and PNG."""
    from model.compare import compare

    rows = compare(list(report_dirs), output)
    click.echo(f"compared {len(rows)} models: {output / 'comparison.md'}")
