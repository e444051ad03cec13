"""Heads bundles: the trained heads alone, re-attached to a packaged pretrained backbone.

A transfer-learning run trains only the heads (and perhaps the top blocks) of a backbone
whose weights are installed with a package (``weights="imagenet-lite"``). When the backbone
was not fine-tuned, everything the run learned fits in a few hundred kilobytes: the heads.
:func:`save_bundle` writes them with what is needed to rebuild the whole model
(``heads.keras`` and ``bundle.json``: backbone, input size, head design, dropout and the
taxonomy nodes and vocabulary, as in a model directory's metadata), and :func:`materialise`
rebuilds an ordinary model directory from a bundle and the packaged backbone weights. The
demo ships such a bundle, so it classifies real photos with a pretrained model without
shipping the backbone's megabytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import keras

from model.backbones import IMAGENET_LITE
from model.build import build_model
from model.classifier import save_model, taxonomy_from_metadata, taxonomy_nodes
from model.errors import ModelError
from model.heads import HeadsKind, check_heads
from model.taxonomy import TruncatedTaxonomy
from model.vocabulary import Vocabulary

__all__ = ["BUNDLE_FILE", "HEADS_FILE", "materialise", "save_bundle"]

BUNDLE_FILE = "bundle.json"
HEADS_FILE = "heads.keras"
_FORMAT = 1


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_bundle(
    directory: Path,
    head_model: Any,
    *,
    name: str,
    backbone: str,
    image_size: int,
    heads: HeadsKind,
    dropout: float,
    truncated: TruncatedTaxonomy,
    vocabulary: Vocabulary,
    training: dict[str, Any],
) -> Path:
    """Write ``heads.keras`` and ``bundle.json`` into ``directory``; return the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    heads_path = directory / HEADS_FILE
    # An uncompiled copy: the bundle holds the weights, not the optimizer's state.
    plain = keras.Model.from_config(head_model.get_config())
    plain.set_weights(head_model.get_weights())
    plain.save(heads_path)
    bundle = {
        "format": _FORMAT,
        "name": name,
        "backbone": backbone,
        "weights": IMAGENET_LITE,
        "input_size": image_size,
        "heads": heads,
        "dropout": dropout,
        "taxonomy": {
            "version": truncated.taxonomy.version or "unknown",
            "depth": truncated.depth,
            "nodes": taxonomy_nodes(truncated, vocabulary),
        },
        "vocabulary": vocabulary.to_json(),
        "training": training,
        "heads_sha256": _digest(heads_path),
    }
    (directory / BUNDLE_FILE).write_text(json.dumps(bundle, indent=1, sort_keys=True) + "\n")
    return directory


def materialise(bundle_dir: Path, output: Path) -> Path:
    """Rebuild the whole model of a bundle as a model directory at ``output``; return it.

    The backbone comes with its packaged ImageNet weights (the ``pretrained`` extra), the
    heads from the bundle. Raises ModelError for a missing, damaged or foreign bundle.
    """
    try:
        bundle = json.loads((bundle_dir / BUNDLE_FILE).read_text())
        heads_path = bundle_dir / HEADS_FILE
        if bundle.get("format") != _FORMAT:
            raise ModelError(f"{bundle_dir}: bundle format {bundle.get('format')!r} unknown")
        if _digest(heads_path) != bundle["heads_sha256"]:
            raise ModelError(f"{heads_path}: checksum differs from {BUNDLE_FILE}")
        truncated = taxonomy_from_metadata(bundle, str(bundle_dir)).truncate(
            int(bundle["taxonomy"]["depth"])
        )
        vocabulary = Vocabulary.from_json(bundle["vocabulary"], truncated)
        kind = check_heads(bundle["heads"])
        trained = keras.saving.load_model(heads_path)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{bundle_dir}: not a readable heads bundle: {exc}") from exc
    model = build_model(
        bundle["backbone"],
        [len(level) for level in vocabulary.levels],
        heads=kind,
        leaf_size=len(vocabulary.leaves),
        image_size=int(bundle["input_size"]),
        weights=bundle["weights"],
        dropout=float(bundle["dropout"]),
        name=str(bundle["name"]).replace("-", "_"),
        leaf_paths=vocabulary.encode_many(vocabulary.leaves),
    )
    for layer in trained.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    save_model(
        model,
        output,
        name=str(bundle["name"]),
        backbone=str(bundle["backbone"]),
        image_size=int(bundle["input_size"]),
        heads=kind,
        truncated=truncated,
        vocabulary=vocabulary,
        level_weights=None,
        training={**bundle["training"], "materialised_from": str(bundle_dir)},
        metrics={},
    )
    return output
