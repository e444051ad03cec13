"""LiteRT flat buffers of an image model: conversion into the model directory, and running them.

`export_litert` converts a model directory's Keras model with TensorFlow's converter and
writes the flat buffers beside ``model.keras`` (uint8 RGB in, as the Keras model; one float32
probability array per head out, under the heads' names):

- ``model.tflite``: float32, always; it must agree with the Keras model within
  `FLOAT_TOLERANCE` on the probe images, or the export fails;
- ``model.dynamic.tflite`` (``--quantize dynamic``): dynamic-range quantisation, int8
  weights and float activations;
- ``model.int8.tflite`` (``--quantize int8``): full-integer quantisation, int8 weights and
  activations calibrated on a few hundred training images (the input stays uint8 pixels and
  the outputs float32 probabilities; everything between is int8).

It measures each flat buffer against the Keras model (largest probability difference and
top-1 agreement on the probe images, images/s at batch 32 and, given labelled validation
images, leaf accuracy at the model's depth), records all of it under ``"litert"`` in
``metadata.json`` (with ``"runtimes"``), and lists the flat buffers in ``checksums.sha256``.

The default flat buffer (what ``ENRICH_RUNTIME=litert`` and ``auto`` serve) is the float one,
unless validation accuracy was measured and a quantised one is faster and loses at most
`MAX_ACCURACY_DROP` points against the Keras model (`pick_default`).

`LiteRTRuntime` runs a flat buffer with the interpreter of the ``ai-edge-litert`` package
(XNNPACK on the CPU; ``tf.lite.Interpreter``, deprecated, when the package is missing).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import structlog
from numpy.typing import NDArray

from model.build import LEAF_HEAD, level_names
from model.classifier import (
    IMAGE_MODALITY,
    METADATA_FILE,
    MODEL_FILE,
    decode_outputs,
    listed_checksums,
    predict_outputs,
    read_model_directory,
    verified_bytes,
    write_checksums,
)
from model.decode import Decoder
from model.errors import ModelError
from model.heads import HeadsKind
from model.taxonomy import TruncatedTaxonomy
from model.vocabulary import Vocabulary

__all__ = [
    "CALIBRATION_IMAGES",
    "FILES",
    "FLOAT_TOLERANCE",
    "MAX_ACCURACY_DROP",
    "LabelledImages",
    "LiteRTRuntime",
    "Quantization",
    "convert",
    "default_variant",
    "export_litert",
    "measure_speed",
    "pick_default",
    "read_labelled",
]

log = structlog.get_logger(__name__)

Quantization = Literal["none", "dynamic", "int8"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
FILES: dict[str, str] = {
    "none": "model.tflite",
    "dynamic": "model.dynamic.tflite",
    "int8": "model.int8.tflite",
}
LITERT_KEY = "litert"
_FORMAT = 1

FLOAT_TOLERANCE = 1e-4
"""Largest difference allowed between a float flat buffer's probabilities and the Keras
model's, on any head, class and probe image. Measured: 2e-6 on EfficientNet-Lite0 (the demo's
model, real photos) and below 1e-6 on the tiny test models, so this leaves a 50x margin for
other CPUs' kernels while staying far below any difference that moves a decision (the
decoder's thresholds and top-k compare probabilities a hundredth apart or more)."""

MAX_ACCURACY_DROP = 0.5
"""Points of validation leaf accuracy a quantised flat buffer may lose against the Keras model
and still be the default (issue 16)."""

CALIBRATION_IMAGES = 300
"""Training images the int8 quantisation is calibrated on (activation ranges settle after a
few hundred; each costs one float inference at conversion)."""

PROBE_IMAGES = 64
"""Images the flat buffers are compared with the Keras model on at export."""

SPEED_BATCH = 32
SPEED_ROUNDS = 3


@dataclass(frozen=True)
class LabelledImages:
    """Prepared images with their true node at the model's depth (and their source's name)."""

    images: NDArray[np.uint8]
    true_nodes: Sequence[int]
    sources: Sequence[str]

    def __post_init__(self) -> None:
        """Check that every image has its label and source."""
        if not len(self.images) == len(self.true_nodes) == len(self.sources):
            raise ModelError(
                f"{len(self.images)} images but {len(self.true_nodes)} labels and "
                f"{len(self.sources)} sources"
            )


def _interpreter_class() -> tuple[Any, str]:
    """LiteRT's interpreter class and what it is (the package, else TensorFlow's copy)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the deprecated copy in TensorFlow runs the same flat buffers
        import tensorflow as tf

        return tf.lite.Interpreter, f"tf.lite {tf.__version__}"
    return Interpreter, f"ai-edge-litert {package_metadata.version('ai-edge-litert')}"


class LiteRTRuntime:
    """One flat buffer in the LiteRT interpreter (XNNPACK on the CPU, ``num_threads``).

    Not thread-safe: `model.classifier.Classifier` serialises its calls. A batch of another
    size than the last resizes the input (cheap; the interpreter plans again).
    """

    name = "litert"

    def __init__(
        self, content: bytes, *, file: str, quantization: str, num_threads: int = 1
    ) -> None:
        """Load the flat buffer ``content`` (named ``file``, quantised as ``quantization``)."""
        interpreter_class, self.interpreter = _interpreter_class()
        try:
            interpreter = interpreter_class(model_content=content, num_threads=num_threads)
            signatures = interpreter.get_signature_list()
            if len(signatures) != 1:
                raise ModelError(f"{file} has {len(signatures)} signatures; expected one")
            key, signature = next(iter(signatures.items()))
            if len(signature["inputs"]) != 1:
                raise ModelError(f"{file} takes {len(signature['inputs'])} inputs; expected one")
            self._runner = interpreter.get_signature_runner(key)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"LiteRT cannot load {file}: {exc}") from exc
        self._input = str(signature["inputs"][0])
        self._interpreter = interpreter  # the runner needs its interpreter alive
        self.file = file
        self.quantization = quantization
        self.num_threads = num_threads

    @classmethod
    def from_directory(
        cls,
        directory: Path,
        metadata: Mapping[str, Any],
        variant: str,
        *,
        num_threads: int = 1,
    ) -> LiteRTRuntime:
        """The model directory's flat buffer of ``variant`` (``none``, ``dynamic``, ``int8``),
        checked against its checksum; ModelError when it is not there or differs."""
        entry = _litert(metadata)
        files = entry.get("files", {}) if entry else {}
        if variant not in files:
            raise ModelError(f"{directory} has no LiteRT flat buffer quantised {variant!r}")
        filename = str(files[variant]["file"])
        content = verified_bytes(directory, filename)
        return cls(content, file=filename, quantization=variant, num_threads=num_threads)

    def __call__(self, batch: NDArray[np.uint8]) -> dict[str, NDArray[np.float32]]:
        """The heads' probabilities for a prepared uint8 batch."""
        outputs = self._runner(**{self._input: np.ascontiguousarray(batch, dtype=np.uint8)})
        return {head: np.array(values, dtype=np.float32) for head, values in outputs.items()}

    def describe(self) -> dict[str, Any]:
        """Runtime, file, quantisation, threads and interpreter, for logs and reports."""
        return {
            "runtime": self.name,
            "file": self.file,
            "quantization": self.quantization,
            "threads": self.num_threads,
            "interpreter": self.interpreter,
        }


def _litert(metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    entry = metadata.get(LITERT_KEY)
    return entry if isinstance(entry, Mapping) else None


def default_variant(metadata: Mapping[str, Any]) -> str | None:
    """The quantisation of the flat buffer a model directory serves by default, or None when
    its metadata lists no flat buffer."""
    entry = _litert(metadata)
    if entry is None or not entry.get("files"):
        return None
    return str(entry["default"])


def convert(
    keras_model: Any,
    quantization: str = "none",
    calibration: NDArray[np.uint8] | None = None,
) -> bytes:
    """A LiteRT flat buffer of ``keras_model`` (uint8 images of any batch size in).

    ``int8`` needs ``calibration``, representative prepared images. Raises ModelError when
    the converter fails.
    """
    import keras
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ModelError(f"quantization must be one of {', '.join(QUANTIZATIONS)}")
    if quantization == "int8" and (calibration is None or len(calibration) == 0):
        raise ModelError("int8 quantisation needs calibration images")
    shape = [None, *keras_model.input_shape[1:]]
    with tempfile.TemporaryDirectory(prefix="litert-") as saved:
        # The model called with training=False under one signature, written quietly (the
        # converter's own Keras path prints every variable).
        archive = keras.export.ExportArchive()
        archive.track(keras_model)
        archive.add_endpoint(
            "serve",
            lambda image: keras_model(image, training=False),
            input_signature=[tf.TensorSpec(shape, tf.uint8, name="image")],
        )
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serve"])
        if quantization != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "int8":
            assert calibration is not None
            images = calibration

            def representative() -> Any:
                for index in range(len(images)):
                    yield [images[index : index + 1]]

            converter.representative_dataset = representative
        try:
            return bytes(converter.convert())
        except Exception as exc:  # the converter raises many kinds; all mean the same here
            raise ModelError(f"LiteRT conversion ({quantization}) failed: {exc}") from exc


def _decoding_head(outputs: Mapping[str, NDArray[np.float32]]) -> str:
    return LEAF_HEAD if LEAF_HEAD in outputs else level_names(len(outputs))[-1]


def agreement(
    reference: Mapping[str, NDArray[np.float32]], outputs: Mapping[str, NDArray[np.float32]]
) -> dict[str, float]:
    """How close ``outputs`` are to ``reference``: the largest probability difference over
    every head, and the share of images whose top class agrees on the head decoding starts
    from (``leaf``, else the deepest level)."""
    if set(reference) != set(outputs):
        raise ModelError(f"heads differ: {sorted(reference)} against {sorted(outputs)}")
    difference = max(float(np.max(np.abs(reference[h] - outputs[h]))) for h in reference)
    head = _decoding_head(reference)
    top = np.argmax(reference[head], axis=1) == np.argmax(outputs[head], axis=1)
    return {"max_abs_difference": difference, "top1_agreement": float(np.mean(top))}


def _run_all(
    predict: Callable[[NDArray[np.uint8]], dict[str, NDArray[np.float32]]],
    images: NDArray[np.uint8],
    batch_size: int,
) -> dict[str, NDArray[np.float32]]:
    parts: dict[str, list[NDArray[np.float32]]] = {}
    for start in range(0, len(images), batch_size):
        for head, values in predict(images[start : start + batch_size]).items():
            parts.setdefault(head, []).append(values)
    return {head: np.concatenate(values) for head, values in parts.items()}


def leaf_accuracy(
    predict: Callable[[NDArray[np.uint8]], dict[str, NDArray[np.float32]]],
    labelled: LabelledImages,
    decoder: Decoder,
    heads: HeadsKind,
    batch_size: int = SPEED_BATCH,
) -> dict[str, Any]:
    """Leaf accuracy at the model's depth of ``predict`` on ``labelled``, overall and per
    source: ``{"accuracy": a, "images": n, "sources": {name: {"accuracy", "images"}}}``."""
    outputs = _run_all(predict, labelled.images, batch_size)
    predicted = [p.leaf_id for p in decode_outputs(decoder, heads, outputs)]
    correct = np.array([p == t for p, t in zip(predicted, labelled.true_nodes, strict=True)])
    names = np.asarray(labelled.sources)
    return {
        "accuracy": float(correct.mean()),
        "images": len(correct),
        "sources": {
            str(name): {
                "accuracy": float(correct[names == name].mean()),
                "images": int((names == name).sum()),
            }
            for name in dict.fromkeys(labelled.sources)
        },
    }


def measure_speed(
    runtimes: Mapping[str, Callable[[NDArray[np.uint8]], Any]],
    images: NDArray[np.uint8],
    *,
    batch: int = SPEED_BATCH,
    rounds: int = SPEED_ROUNDS,
) -> dict[str, float]:
    """Median images/s of each runtime on one ``batch`` of ``images`` (repeated to fill it),
    over ``rounds`` interleaved rounds after one warm-up each, so a noisy neighbour slows
    them all alike."""
    repeats = -(-batch // max(1, len(images)))
    inputs = np.concatenate([images] * repeats)[:batch]
    for predict in runtimes.values():
        predict(inputs)
    rates: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(rounds):
        for name, predict in runtimes.items():
            began = time.perf_counter()
            predict(inputs)
            rates[name].append(batch / (time.perf_counter() - began))
    return {name: statistics.median(values) for name, values in rates.items()}


def pick_default(
    variants: Mapping[str, Mapping[str, Any]], keras_accuracy: float | None
) -> tuple[str, str]:
    """The flat buffer to serve by default, and why.

    ``variants`` maps each quantisation to its figures (``images_per_s`` and, when measured,
    ``validation.accuracy``). The float one (``none``) unless a quantised one is faster and its
    validation accuracy is at most `MAX_ACCURACY_DROP` points under ``keras_accuracy``; a
    quantised one without a measured accuracy is never the default.
    """
    quantised = [name for name in variants if name != "none"]
    if not quantised:
        return "none", "float: the only flat buffer"
    if keras_accuracy is None:
        return "none", "float: the quantised flat buffers' validation accuracy was not measured"
    best, speed = "none", float(variants["none"].get("images_per_s") or 0.0)
    reason = (
        f"float: no quantised flat buffer is faster and within {MAX_ACCURACY_DROP} points of "
        "the Keras model's validation accuracy"
    )
    for name in quantised:
        validation = variants[name].get("validation")
        if not validation:
            continue
        drop = 100 * (keras_accuracy - float(validation["accuracy"]))
        rate = float(variants[name].get("images_per_s") or 0.0)
        if drop <= MAX_ACCURACY_DROP and rate > speed:
            best, speed = name, rate
            reason = f"{name}: the fastest, validation accuracy {-drop:+.2f} points from Keras"
    return best, reason


def read_labelled(
    sources: Sequence[tuple[Path, Path]],
    truncated: TruncatedTaxonomy,
    split: str,
    size: int,
    *,
    limit: int | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> LabelledImages:
    """The prepared images of ``split`` of labelled sources (``(labels, images root)`` pairs).

    Splits as training makes them (`model.data.assign_splits`: the file's, else 70/15/15 by
    product); with ``limit``, that many rows spread over sources and categories (ordered by a
    hash of the image path). Unreadable images are left out. Raises ModelError when no image
    of the split can be read.
    """
    from model.data import assign_splits, load_images, read_sources

    rows = [r for r in assign_splits(read_sources(sources), truncated) if r.split == split]
    if limit is not None:
        rows = sorted(rows, key=lambda r: hashlib.sha256(r.image.encode()).hexdigest())[:limit]
    images, failed = load_images(rows, Path("/"), size, cache_dir=cache_dir, progress=progress)
    unreadable = set(failed)
    kept = [row for index, row in enumerate(rows) if index not in unreadable]
    if not kept:
        raise ModelError(f"no readable image in the {split} split of the labelled sources")
    if failed:
        log.warning("images_unreadable", split=split, count=len(failed))
    return LabelledImages(
        images,
        [truncated.truncate_id(row.category_id) for row in kept],
        [row.source for row in kept],
    )


def _random_probe(size: int) -> NDArray[np.uint8]:
    return np.random.default_rng(0).integers(0, 256, (PROBE_IMAGES, size, size, 3), np.uint8)


def export_litert(
    directory: Path,
    *,
    quantizations: Sequence[str] = (),
    calibration: NDArray[np.uint8] | None = None,
    validation: LabelledImages | None = None,
    probe: NDArray[np.uint8] | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Write the model directory's LiteRT flat buffers; return the ``"litert"`` metadata entry.

    The float flat buffer always, plus one per quantisation in ``quantizations`` (``dynamic``,
    ``int8``; ``int8`` needs ``calibration``). ``probe`` images (default: the first
    `PROBE_IMAGES` of ``validation``, else of ``calibration``, else random pixels) compare
    each with the Keras model; ``validation`` adds leaf accuracies. Flat buffers of an earlier
    export that this one does not write are removed. Raises ModelError for a damaged or text
    model directory, a failed conversion, or a float flat buffer beyond `FLOAT_TOLERANCE`.
    """
    from model.runtime import KerasRuntime, cpu_threads

    directory = Path(directory)
    keras_model, metadata, truncated = read_model_directory(
        directory, taxonomy=None, modality=IMAGE_MODALITY
    )
    unknown = sorted(set(quantizations) - set(QUANTIZATIONS))
    if unknown:
        raise ModelError(f"unknown quantisation {', '.join(unknown)}: use dynamic or int8")
    wanted = ["none", *dict.fromkeys(q for q in quantizations if q != "none")]
    size = int(metadata["input_size"])
    threads = num_threads or cpu_threads()
    if probe is not None:
        probe_source = "given"
    elif validation is not None:
        probe, probe_source = validation.images[:PROBE_IMAGES], "validation"
    elif calibration is not None and len(calibration):
        probe, probe_source = calibration[:PROBE_IMAGES], "calibration"
    else:
        probe, probe_source = _random_probe(size), "random pixels"
    reference = predict_outputs(keras_model, probe, SPEED_BATCH)
    keras = KerasRuntime(keras_model)
    runtimes: dict[str, Callable[[NDArray[np.uint8]], Any]] = {"keras": keras}
    figures: dict[str, dict[str, Any]] = {}
    contents: dict[str, bytes] = {}
    for quantization in wanted:
        began = time.perf_counter()
        content = convert(keras_model, quantization, calibration)
        seconds = time.perf_counter() - began
        runtime = LiteRTRuntime(
            content, file=FILES[quantization], quantization=quantization, num_threads=threads
        )
        measured = agreement(reference, _run_all(runtime, probe, SPEED_BATCH))
        if quantization == "none" and measured["max_abs_difference"] > FLOAT_TOLERANCE:
            raise ModelError(
                f"the float flat buffer differs from the Keras model by "
                f"{measured['max_abs_difference']:.2e} on the probe images, more than the "
                f"tolerance {FLOAT_TOLERANCE:.0e}; nothing was written"
            )
        contents[quantization] = content
        runtimes[quantization] = runtime
        figures[quantization] = {
            "file": FILES[quantization],
            "bytes": len(content),
            "conversion_s": round(seconds, 1),
            **measured,
        }
        log.info("litert_converted", model=str(directory), quantization=quantization,
                 bytes=len(content), seconds=round(seconds, 1), **measured)  # fmt: skip
    speeds = measure_speed(runtimes, probe)
    for quantization in wanted:
        figures[quantization]["images_per_s"] = round(speeds[quantization], 1)
    keras_accuracy: dict[str, Any] | None = None
    if validation is not None:
        vocabulary = Vocabulary.from_json(metadata["vocabulary"], truncated)
        decoder = Decoder(truncated, vocabulary)
        heads: HeadsKind = metadata["heads"]
        keras_accuracy = leaf_accuracy(keras, validation, decoder, heads)
        for quantization in wanted:
            figures[quantization]["validation"] = leaf_accuracy(
                runtimes[quantization], validation, decoder, heads
            )
    default, reason = pick_default(
        figures, None if keras_accuracy is None else float(keras_accuracy["accuracy"])
    )
    _, interpreter = _interpreter_class()
    entry: dict[str, Any] = {
        "format": _FORMAT,
        "default": default,
        "default_reason": reason,
        "input": {"name": "image", "dtype": "uint8", "shape": [-1, size, size, 3]},
        "tolerance": {
            "float_max_abs_difference": FLOAT_TOLERANCE,
            "max_accuracy_drop_points": MAX_ACCURACY_DROP,
        },
        "probe": {"images": len(probe), "source": probe_source},
        "calibration": {"images": 0 if calibration is None else len(calibration)},
        "keras": {
            "images_per_s": round(speeds["keras"], 1),
            **({"validation": keras_accuracy} if keras_accuracy is not None else {}),
        },
        "files": figures,
        "speed": {"batch": SPEED_BATCH, "rounds": SPEED_ROUNDS, "threads": threads},
        "converter": _converter_version(),
        "interpreter": interpreter,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write(directory, metadata, entry, contents)
    log.info("litert_exported", model=str(directory), default=default, reason=reason,
             files=[FILES[q] for q in wanted])  # fmt: skip
    return entry


def _converter_version() -> str:
    import tensorflow as tf

    return f"tensorflow {tf.__version__}"


def _write(
    directory: Path,
    metadata: dict[str, Any],
    entry: dict[str, Any],
    contents: Mapping[str, bytes],
) -> None:
    """Flat buffers, then metadata, then the checksums of all of them; stale ones go."""
    for quantization, content in contents.items():
        target = directory / FILES[quantization]
        partial = target.with_suffix(".partial")
        partial.write_bytes(content)
        partial.replace(target)
    written = {FILES[q] for q in contents}
    for name in set(FILES.values()) - written:
        (directory / name).unlink(missing_ok=True)
    metadata = {**metadata, LITERT_KEY: entry, "runtimes": ["keras", "litert"]}
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    kept = [n for n in listed_checksums(directory) if n not in set(FILES.values())]
    others = [n for n in kept if n not in (MODEL_FILE, METADATA_FILE)]
    write_checksums(directory, [MODEL_FILE, METADATA_FILE, *others, *sorted(written)])
