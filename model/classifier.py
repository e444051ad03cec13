"""The exported model directory and `Classifier`, the one way the service and reports predict.

A model directory holds:

- `model.keras`: the Keras model (uint8 RGB in, one softmax per head out);
- `metadata.json`: name, version (content hash of the weights), backbone, input size, heads,
  taxonomy version and depth, the vocabularies with ids, names and paths, level weights,
  a training data summary and metrics; a text model (`model.text_classifier`) adds
  `"modality": "text"` and its featuriser's settings (no `modality` means images);
- `checksums.sha256`: the SHA-256 of both files, checked on load, and of every other file
  listed there (the LiteRT flat buffers `model.litert` adds: `model.tflite`, ...), checked
  when that file is used.

`Classifier.load(dir)` verifies all of it (and, when given, that a taxonomy agrees with the
one the model was trained on) and fails with `ModelError` saying what does not match; it
refuses a text model, which `model.text_classifier.TextClassifier` loads (both go through
`read_model_directory`). What runs the model is the classifier's runtime
(`model.runtime`): the Keras model, or a LiteRT flat buffer of it (`runtime="auto"|"litert"`).
"""

import hashlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.build import LEAF_HEAD, HeadsKind, level_names
from model.decode import Decoder, Prediction
from model.errors import ModelError
from model.heads import decodes_from_leaf
from model.preprocess import decode_image
from model.runtime import KerasRuntime, Runtime, RuntimeChoice
from model.taxonomy import Category, Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
CHECKSUMS_FILE = "checksums.sha256"
FORMAT_VERSION = 1
IMAGE_MODALITY = "image"
TEXT_MODALITY = "text"

ImageInput = NDArray[np.uint8] | bytes | Path


def weights_version(model: Any) -> str:
    """Content hash of the model's weights: changes with every retrained model, nothing else."""
    digest = hashlib.sha256()
    for weight in model.weights:
        array = np.ascontiguousarray(
            np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
        )
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def taxonomy_nodes(truncated: TruncatedTaxonomy, vocabulary: Vocabulary) -> list[dict[str, Any]]:
    """Every vocabulary node with its level, id, name and full path (for metadata.json)."""
    return [
        {
            "level": level,
            "id": node,
            "path": list(truncated.category(node).path),
        }
        for level, ids in enumerate(vocabulary.levels, start=1)
        for node in ids
    ]


def save_model(
    model: Any,
    directory: Path,
    *,
    name: str,
    backbone: str,
    image_size: int,
    heads: HeadsKind,
    truncated: TruncatedTaxonomy,
    vocabulary: Vocabulary,
    level_weights: Sequence[float] | None,
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the model directory; returns the metadata written.

    ``extra`` adds top-level metadata fields (a text model's ``modality`` and featuriser
    settings); it may not replace a field written here.
    """
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_FILE)
    metadata = {
        "format": FORMAT_VERSION,
        "name": name,
        "version": weights_version(model),
        "backbone": backbone,
        "input_size": image_size,
        "heads": heads,
        "taxonomy": {
            "version": truncated.taxonomy.version or "unknown",
            "depth": truncated.depth,
            "nodes": taxonomy_nodes(truncated, vocabulary),
        },
        "vocabulary": vocabulary.to_json(),
        "level_weights": list(level_weights) if level_weights is not None else None,
        "training": dict(training),
        "metrics": dict(metrics),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    clashes = sorted(set(extra or {}) & set(metadata))
    if clashes:
        raise ModelError(f"extra metadata may not replace {', '.join(clashes)}")
    metadata.update(extra or {})
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    write_checksums(directory, (MODEL_FILE, METADATA_FILE))
    return metadata


def write_checksums(directory: Path, filenames: Sequence[str]) -> None:
    """Write `checksums.sha256` listing the SHA-256 of each of ``filenames`` (and no other)."""
    (directory / CHECKSUMS_FILE).write_text(
        "".join(f"{_sha256(directory / name)}  {name}\n" for name in filenames)
    )


def listed_checksums(directory: Path) -> dict[str, str]:
    """The file names `checksums.sha256` lists, with their expected SHA-256."""
    listing = directory / CHECKSUMS_FILE
    if not listing.exists():
        raise ModelError(f"{directory} is not a model directory: {CHECKSUMS_FILE} is missing")
    expected = {}
    for line in listing.read_text().splitlines():
        digest, _, filename = line.partition("  ")
        expected[filename] = digest
    return expected


def verified_bytes(directory: Path, filename: str) -> bytes:
    """The contents of a model directory's file, after checking them against its checksum.

    The bytes returned are the bytes checked, so the file cannot change in between. Raises
    ModelError when the file is missing, unlisted or differs from its checksum.
    """
    path = directory / filename
    expected = listed_checksums(directory)
    if filename not in expected:
        raise ModelError(f"{directory / CHECKSUMS_FILE} has no checksum for {filename}")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"model directory {directory} lacks {filename}: {exc}") from exc
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected[filename]:
        raise ModelError(
            f"checksum mismatch for {path}: expected {expected[filename]}, got {actual}; "
            "the file was changed or damaged after export"
        )
    return content


def _verify_checksums(directory: Path) -> None:
    expected = listed_checksums(directory)
    for filename in (MODEL_FILE, METADATA_FILE):
        path = directory / filename
        if filename not in expected:
            raise ModelError(f"{directory / CHECKSUMS_FILE} has no checksum for {filename}")
        if not path.exists():
            raise ModelError(f"model directory {directory} lacks {filename}")
        actual = _sha256(path)
        if actual != expected[filename]:
            raise ModelError(
                f"checksum mismatch for {path}: expected {expected[filename]}, got {actual}; "
                "the file was changed or damaged after export"
            )


def taxonomy_from_metadata(metadata: Mapping[str, Any], source: str) -> Taxonomy:
    """A taxonomy of just the model's vocabulary nodes, rebuilt from their stored paths."""
    nodes = metadata["taxonomy"]["nodes"]
    id_of_path = {tuple(n["path"]): int(n["id"]) for n in nodes}
    categories = []
    for node in nodes:
        path = tuple(node["path"])
        parent = id_of_path.get(path[:-1]) if len(path) > 1 else None
        categories.append(Category(int(node["id"]), path[-1], path, parent))
    return Taxonomy(categories, version=metadata["taxonomy"]["version"], source=source)


def _check_against(metadata: Mapping[str, Any], taxonomy: Taxonomy, directory: Path) -> None:
    wanted = metadata["taxonomy"]["version"]
    if taxonomy.version != wanted:
        raise ModelError(
            f"model {directory} was trained on taxonomy version {wanted}, "
            f"but the taxonomy given is version {taxonomy.version}"
        )
    for node in metadata["taxonomy"]["nodes"]:
        node_id = int(node["id"])
        if node_id not in taxonomy:
            raise ModelError(f"model {directory}: category {node_id} is not in the taxonomy given")
        path = list(taxonomy.category(node_id).path)
        if path != node["path"]:
            raise ModelError(
                f"model {directory}: category {node_id} is {' > '.join(node['path'])!r} in the "
                f"model but {' > '.join(path)!r} in the taxonomy given"
            )


def model_modality(directory: Path) -> str:
    """What a model directory's model reads: ``"image"`` or ``"text"`` (from metadata.json).

    Reads the metadata only (no checksums, no weights); raises ModelError when it cannot.
    """
    try:
        metadata = json.loads((Path(directory) / METADATA_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {Path(directory) / METADATA_FILE}: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ModelError(f"{Path(directory) / METADATA_FILE} is not a JSON object")
    return str(metadata.get("modality", IMAGE_MODALITY))


def read_model_directory(
    directory: Path, *, taxonomy: Taxonomy | Path | None, modality: str
) -> tuple[Any, dict[str, Any], TruncatedTaxonomy]:
    """Verify and load a model directory: the Keras model, its metadata, its taxonomy.

    Checks the checksums, the format, the ``modality`` (a directory without one is an
    image model), the taxonomy when one is given, and the weights' version. Raises
    ModelError saying what does not match.
    """
    import keras

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"model directory {directory} does not exist")
    _verify_checksums(directory)
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
    except ValueError as exc:
        raise ModelError(f"{directory / METADATA_FILE} is not JSON: {exc}") from exc
    if metadata.get("format") != FORMAT_VERSION:
        raise ModelError(
            f"{directory} has model format {metadata.get('format')!r}; "
            f"this code reads format {FORMAT_VERSION}"
        )
    found = metadata.get("modality", IMAGE_MODALITY)
    if found != modality:
        loader = "TextClassifier" if found == TEXT_MODALITY else "Classifier"
        raise ModelError(
            f"{directory} holds a model of {found}s, not of {modality}s; load it with {loader}"
        )
    if taxonomy is not None:
        full = taxonomy if isinstance(taxonomy, Taxonomy) else Taxonomy.load(taxonomy)
        _check_against(metadata, full, directory)
    else:
        full = taxonomy_from_metadata(metadata, str(directory / METADATA_FILE))
    truncated = full.truncate(int(metadata["taxonomy"]["depth"]))
    try:
        keras_model = keras.saving.load_model(directory / MODEL_FILE, compile=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {directory / MODEL_FILE}: {exc}") from exc
    if weights_version(keras_model) != metadata["version"]:
        raise ModelError(f"{directory}: the weights do not match the version in metadata.json")
    return keras_model, metadata, truncated


@dataclass(frozen=True)
class ModelInfo:
    """The model's identity, as the output records name it."""

    name: str
    version: str
    backbone: str
    taxonomy_version: str
    depth: int
    input_size: int
    heads: HeadsKind

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "ModelInfo":
        """The identity a model directory's `metadata.json` gives."""
        return cls(
            name=metadata["name"],
            version=metadata["version"],
            backbone=metadata["backbone"],
            taxonomy_version=metadata["taxonomy"]["version"],
            depth=int(metadata["taxonomy"]["depth"]),
            input_size=int(metadata["input_size"]),
            heads=metadata["heads"],
        )

    def to_record(self) -> dict[str, Any]:
        """The `model` field of the CategoryEnrichment contract."""
        return {
            "name": self.name,
            "version": self.version,
            "backbone": self.backbone,
            "taxonomy_version": self.taxonomy_version,
            "depth": self.depth,
        }


def predict_outputs(
    model: Any, images: NDArray[np.uint8], batch_size: int
) -> dict[str, NDArray[np.float32]]:
    """Run the model over `images` in batches; one float32 probability array per head."""
    outputs: dict[str, list[NDArray[np.float32]]] = {}
    for start in range(0, len(images), batch_size):
        batch = model.predict_on_batch(images[start : start + batch_size])
        for head, values in batch.items():
            outputs.setdefault(head, []).append(np.asarray(values, dtype=np.float32))
    return {head: np.concatenate(parts) for head, parts in outputs.items()}


def decode_outputs(
    decoder: Decoder, heads: HeadsKind, outputs: Mapping[str, NDArray[np.float32]]
) -> list[Prediction]:
    """Decode one head-output dict into predictions (multi-head or flat)."""
    if decodes_from_leaf(heads):
        return decoder.decode_leaf(outputs[LEAF_HEAD])
    return decoder.decode_multi([outputs[n] for n in level_names(len(outputs))])


class Classifier:
    """A loaded model directory: `classify` a batch of images into taxonomy predictions.

    The heads' probabilities come from ``runtime`` (default: the Keras model itself; see
    `model.runtime` for a LiteRT flat buffer). Safe to call from one inference thread while
    other threads build batches: calls are serialised by a lock.
    """

    def __init__(
        self,
        model: Any,
        metadata: Mapping[str, Any],
        truncated: TruncatedTaxonomy,
        *,
        threshold: float = 0.0,
        top_k: int = 5,
        runtime: Runtime | None = None,
    ) -> None:
        self._model = model
        self.runtime: Runtime = runtime if runtime is not None else KerasRuntime(model)
        self.metadata = dict(metadata)
        self.truncated = truncated
        self.vocabulary = Vocabulary.from_json(metadata["vocabulary"], truncated)
        self.info = ModelInfo.from_metadata(metadata)
        self.decoder = Decoder(truncated, self.vocabulary, threshold=threshold, top_k=top_k)
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The underlying Keras model."""
        return self._model

    @property
    def input_size(self) -> int:
        """The side of the square uint8 RGB images the model takes."""
        return self.info.input_size

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        taxonomy: Taxonomy | Path | None = None,
        threshold: float = 0.0,
        top_k: int = 5,
        runtime: RuntimeChoice = "keras",
        gpu: bool | None = None,
        num_threads: int | None = None,
    ) -> "Classifier":
        """Load and verify a model directory; `taxonomy`, when given, must agree with it.

        ``runtime`` says what predicts (`model.runtime.open_runtime`): ``"keras"`` the Keras
        model; ``"litert"`` the directory's default LiteRT flat buffer (ModelError when it has
        none, or it is damaged); ``"auto"`` the flat buffer on a CPU, the Keras model when a
        GPU is visible (``gpu``, default: asked of TensorFlow) or there is no flat buffer.
        ``num_threads``: the LiteRT interpreter's threads (default: this process's cores).
        """
        from model.runtime import open_runtime

        keras_model, metadata, truncated = read_model_directory(
            directory, taxonomy=taxonomy, modality=IMAGE_MODALITY
        )
        chosen = open_runtime(
            Path(directory), keras_model, metadata, runtime, gpu=gpu, num_threads=num_threads
        )
        return cls(
            keras_model, metadata, truncated, threshold=threshold, top_k=top_k, runtime=chosen
        )

    def prepare(self, image: ImageInput) -> NDArray[np.uint8]:
        """One image as the model's input: bytes and files go through `decode_image` (as in
        training); arrays of another size are resized the same way (bilinear, whole image)."""
        size = self.input_size
        if isinstance(image, bytes | Path):
            return decode_image(image, size)
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ModelError(
                f"expected a (height, width, 3) uint8 RGB array, got {array.dtype} {array.shape}"
            )
        if array.shape[:2] == (size, size):
            return array
        resized = Image.fromarray(array, "RGB").resize(
            (size, size), Image.Resampling.BILINEAR, reducing_gap=None
        )
        return np.asarray(resized, dtype=np.uint8)

    def predict_raw(self, batch: NDArray[np.uint8]) -> dict[str, NDArray[np.float32]]:
        """The heads' probabilities for a prepared `(n, size, size, 3)` uint8 batch."""
        with self._lock:
            return self.runtime(batch)

    def classify(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Predictions for a batch of images of any size (any batch size, empty included)."""
        if len(images) == 0:
            return []
        batch = np.stack([self.prepare(image) for image in images])
        return decode_outputs(self.decoder, self.info.heads, self.predict_raw(batch))
