"""Training data: labels files, the deterministic 70/15/15 split, and decoded image arrays.

A labels file is CSV or JSONL with one row per image: the image (a path relative to the
images root, or a URL), `google_category_id`, and optionally `split`, `product_id` and the
product's text (`title`, `description`, `partner_category`, read for the text classifier;
with `require_image=False` the image column may be absent).
Several labelled sources (each a labels file with its images root) are read together by
`read_sources`, which names each row's source and makes its image path absolute.
Images are decoded once with `model.preprocess.decode_image` (the service's own code) in a
process pool and cached on disk as one `.npz` per (files with their sizes and modification
times, size), so later epochs and later runs read pixels straight from memory, and a changed
image is decoded again.

A dataset directory written by `enrich build-dataset` (TFRecord shards, `dataset.json`,
`split.csv`) is read by `load_dataset` into the same (images, rows) pair; the feature names of
its records are defined here, so the builder and training cannot disagree about them.
"""

import csv
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from model.errors import InvalidImageError, ModelError
from model.preprocess import decode_image
from model.taxonomy import TruncatedTaxonomy

SPLITS = ("train", "validation", "test")
# Other spellings found in public datasets' split columns.
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "test"}
_IMAGE_COLUMNS = ("image_path", "image", "image_url", "path", "url")
# The default split when a labels file has no split column, as in the original system.
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)

# The features of a dataset record (one tf.train.Example per product), written by
# `service.dataset` and read by `load_dataset`.
FEATURE_IMAGE = "image"
"""The resized image, JPEG-encoded."""
FEATURE_IMAGE_SIZE = "image_size"
FEATURE_PRODUCT_ID = "product_id"
FEATURE_IMAGE_URL = "image_url"
FEATURE_CATEGORY_ID = "google_category_id"
"""The category the product was labelled with, at any depth."""
FEATURE_TRUNCATED_ID = "category_id"
"""The labelled category truncated to the dataset's depth."""
FEATURE_PATH = "category_path"
"""The truncated category's ids from the root down."""
FEATURE_LEVEL_LABEL = "label_level_{level}"
"""Index per level in the full vocabulary of the truncated taxonomy, -1 below the leaf."""
FEATURE_SHA256 = "sha256"
FEATURE_TITLE = "title"
"""The product's title, description and partner category (UTF-8; absent in shards built
before they were kept, read as empty)."""
FEATURE_DESCRIPTION = "description"
FEATURE_PARTNER_CATEGORY = "partner_category"
"""Hex digest of the downloaded (original) image bytes."""
DATASET_FILE = "dataset.json"
DATASET_SPLITS_FILE = "split.csv"


@dataclass(frozen=True)
class LabelRow:
    """One labelled image."""

    image: str
    category_id: int
    product_id: str
    split: str | None = None
    line: int = 0
    source: str = ""
    """The labelled source the row came from (see `read_sources`); empty from `read_labels`."""
    title: str = ""
    """The product's title (the `title` column), empty when the file has none."""
    description: str = ""
    """The product's description (the `description` column), empty when the file has none."""
    partner_category: str = ""
    """The partner's own category label (`partner_category`), empty when the file has none."""


def read_labels(path: Path, *, require_image: bool = True) -> list[LabelRow]:
    """Read a CSV or JSONL labels file; any bad row raises `ModelError` naming file and line.

    With ``require_image=False`` (text training) a row without an image column is read with
    an empty ``image``; its product id is then the ``product_id`` column or ``"line-<n>"``.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read labels file {path}: {exc}") from exc
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        records: list[tuple[int, dict[str, object]]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ModelError(f"{path}:{number}: not JSON: {exc.msg}") from exc
            if not isinstance(value, dict):
                raise ModelError(f"{path}:{number}: expected a JSON object")
            records.append((number, value))
    else:
        reader = csv.DictReader(text.splitlines())
        records = [(number, dict(row)) for number, row in enumerate(reader, start=2)]
    if not records:
        raise ModelError(f"labels file {path} has no rows")
    return [_row(path, number, record, require_image) for number, record in records]


def _text(record: dict[str, object], column: str) -> str:
    """A text column's value as a string, empty when absent or null."""
    value = record.get(column)
    return "" if value is None else str(value)


def _row(path: Path, number: int, record: dict[str, object], require_image: bool) -> LabelRow:
    image = next((str(record[c]) for c in _IMAGE_COLUMNS if record.get(c)), None)
    if image is None and require_image:
        raise ModelError(f"{path}:{number}: no image column (one of {', '.join(_IMAGE_COLUMNS)})")
    raw_id = record.get("google_category_id")
    try:
        category_id = int(str(raw_id).strip())
    except ValueError as exc:
        raise ModelError(f"{path}:{number}: google_category_id {raw_id!r} is not an id") from exc
    split = record.get("split")
    split_name = None
    if split not in (None, ""):
        split_name = _SPLIT_ALIASES.get(str(split).strip().lower(), str(split).strip().lower())
        if split_name not in SPLITS:
            raise ModelError(
                f"{path}:{number}: split {split!r} is not one of {', '.join(SPLITS)} (or val)"
            )
    product_id = str(record.get("product_id") or image or f"line-{number}")
    return LabelRow(
        image or "",
        category_id,
        product_id,
        split_name,
        number,
        title=_text(record, "title"),
        description=_text(record, "description"),
        partner_category=_text(record, "partner_category"),
    )


def _source_names(labels_files: Sequence[Path]) -> list[str]:
    """Each labels file's source name: its folder's name, ``-2``, ``-3``... on a repeat."""
    names: list[str] = []
    for path in labels_files:
        base = path.resolve().parent.name or path.stem
        name, number = base, 1
        while name in names:
            number += 1
            name = f"{base}-{number}"
        names.append(name)
    return names


def read_sources(
    sources: Sequence[tuple[Path, Path]], *, require_image: bool = True
) -> list[LabelRow]:
    """Read several labelled sources, ``(labels file, images root)`` pairs, into one list.

    Each file is read with `read_labels`; its rows keep their order, sources follow each other
    in the order given. Every row gets:

    - ``source``: the labels file's folder name (``product-images``, ``fashion-products``);
      a name already taken gets ``-2``, ``-3``... in order;
    - ``image``: the absolute resolved path ``root / image``, so that
      ``load_images(rows, Path("/"), size)`` (any root works) reads rows of every source; a
      URL (or, with ``require_image=False``, an empty image) stays as it is;
    - ``product_id``: as read, unless the same id occurs in more than one source: then every
      row of that id is prefixed ``"<source>:"`` in every source, so two sources' products
      never merge into one (splits go by product). Ids unique to a source are not prefixed,
      so adding a source never moves another source's products to other splits.

    Raises `ModelError` when ``sources`` is empty or a file cannot be read.
    """
    if not sources:
        raise ModelError("no labelled sources to read")
    names = _source_names([labels for labels, _ in sources])
    per_source: list[list[LabelRow]] = []
    owners: dict[str, set[str]] = defaultdict(set)
    for (labels, root), name in zip(sources, names, strict=True):
        rows = read_labels(labels, require_image=require_image)
        base = Path(root).resolve()
        rows = [
            replace(
                row,
                source=name,
                image=row.image
                if "://" in row.image or not row.image
                else str((base / row.image).resolve()),
            )
            for row in rows
        ]
        for row in rows:
            owners[row.product_id].add(name)
        per_source.append(rows)
    shared = {product for product, where in owners.items() if len(where) > 1}
    return [
        replace(row, product_id=f"{row.source}:{row.product_id}")
        if row.product_id in shared
        else row
        for rows in per_source
        for row in rows
    ]


def _hash_unit(text: str) -> float:
    """A stable number in [0, 1) for `text` (the same on every machine and Python run)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    rows: Sequence[LabelRow],
    truncated: TruncatedTaxonomy,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> list[LabelRow]:
    """Rows with a split: kept where the file gave one, else 70/15/15 by product id hash.

    Stratified by leaf at the taxonomy's depth: within each leaf, products are ordered by the
    hash of their id and cut at the fractions, so each split holds every leaf in proportion
    and a product (all its images) lands in one split only. Deterministic.

    Long tails: counts are rounded per leaf, and the first product of a leaf always goes to
    train (when the train fraction is above 0), so a leaf with 1 product is train only; with
    the default fractions a leaf with 2 or 3 products has 1 or 2 in train, 1 in test and none
    in validation (validation then lacks that leaf). A product filed under two leaves keeps
    the split its first leaf gave it.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ModelError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    if all(row.split is not None for row in rows):
        return list(rows)
    by_leaf: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        if row.split is None:
            by_leaf[truncated.truncate_id(row.category_id)].add(row.product_id)
    split_of: dict[str, str] = {}
    for products in by_leaf.values():
        ordered = sorted(products, key=lambda p: (_hash_unit(p), p))
        n = len(ordered)
        train_end = round(n * fractions[0])
        if fractions[0] > 0:
            train_end = max(train_end, 1)
        validation_end = train_end + round(n * fractions[1])
        for index, product in enumerate(ordered):
            if index < train_end:
                split_of.setdefault(product, "train")
            elif index < validation_end:
                split_of.setdefault(product, "validation")
            else:
                split_of.setdefault(product, "test")
    return [row if row.split else replace(row, split=split_of[row.product_id]) for row in rows]


def hold_out_validation(
    rows: Sequence[LabelRow], truncated: TruncatedTaxonomy, fraction: float
) -> list[LabelRow]:
    """Take the early-stopping validation rows from the train split; set the file's aside.

    Rows of the file's own validation split become ``test`` (untouched by training, for
    ``enrich evaluate --split validation`` on the original file); within each leaf, the
    train rows' products are ordered by id hash and the first ``fraction`` of them become
    ``validation``. Rows without a split are split 70/15/15 first. Deterministic.

    Long tails: a leaf keeps at least one train product, so a leaf with a single train
    product keeps it in train and the hold-out validation lacks that leaf (with a fraction
    of 0.1, a leaf needs 6 train products before one is held out). A leaf that only the
    file's validation split has (now ``test``) has no train row at all; training's vocabulary
    must then come from the labels it trains on.
    """
    if not 0.0 < fraction < 1.0:
        raise ModelError(f"the validation fraction must be in (0, 1), got {fraction}")
    rows = assign_splits(rows, truncated)
    by_leaf: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        if row.split == "train":
            by_leaf[truncated.truncate_id(row.category_id)].add(row.product_id)
    chosen: set[str] = set()
    for products in by_leaf.values():
        ordered = sorted(products, key=lambda p: (_hash_unit("validation:" + p), p))
        chosen.update(ordered[: min(round(len(ordered) * fraction), len(ordered) - 1)])
    out: list[LabelRow] = []
    for row in rows:
        if row.split == "validation":
            row = replace(row, split="test")
        elif row.split == "train" and row.product_id in chosen:
            row = replace(row, split="validation")
        out.append(row)
    return out


def _decode_one(args: tuple[str, int]) -> NDArray[np.uint8] | str:
    path, size = args
    try:
        return decode_image(Path(path), size)
    except (InvalidImageError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _file_stamp(path: str) -> str:
    """``"size:mtime_ns"`` of a file, ``"missing"`` when it cannot be stat'ed (cache key)."""
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def load_images(
    rows: Sequence[LabelRow],
    root: Path,
    size: int,
    *,
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[NDArray[np.uint8], list[int]]:
    """Decode the rows' images to `(n, size, size, 3)` uint8, in row order.

    Returns the array of the images that decoded and the indices (into `rows`) of those that
    did not; an unreadable image is reported, never silently dropped. URLs are not fetched
    here (that is the dataset builder's job): rows must name files below `root` (or absolute
    paths, as `read_sources` gives, whatever `root`).

    The cache key covers each file's resolved path, size and modification time (ns) and the
    image size, so rewriting, replacing or deleting an image decodes afresh.
    """
    paths = []
    for row in rows:
        if "://" in row.image:
            raise ModelError(
                f"line {row.line}: {row.image} is a URL; build a dataset from URLs with "
                "`enrich build-dataset` first"
            )
        paths.append(str((root / row.image).resolve()))
    key = hashlib.sha256(
        ("\n".join(f"{path}\t{_file_stamp(path)}" for path in paths) + f"\n{size}").encode()
    ).hexdigest()[:16]
    cache = cache_dir / f"images-{size}px-{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        with np.load(cache) as stored:
            return stored["images"], [int(i) for i in stored["failed"]]
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    failed: list[int] = []
    jobs = [(p, size) for p in paths]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = pool.map(_decode_one, jobs, chunksize=32)
        iterator: Iterable[NDArray[np.uint8] | str] = (
            tqdm(results, total=len(jobs), desc=f"decode {size}px", unit="img")
            if progress
            else results
        )
        for index, result in enumerate(iterator):
            if isinstance(result, str):
                failed.append(index)
            else:
                images[index] = result
    keep = np.setdiff1d(np.arange(len(paths)), np.asarray(failed, dtype=np.int64))
    images = images[keep]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, failed=np.asarray(failed, dtype=np.int64))
        tmp.replace(cache)
    return images, failed


def _read_text(path: str) -> str:
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "r") as stream:
            return str(stream.read())
    except (OSError, tf.errors.OpError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc


_TEXT_FEATURES = (FEATURE_TITLE, FEATURE_DESCRIPTION, FEATURE_PARTNER_CATEGORY)


def _feature_text(feature: Any, name: str) -> str:
    """A text feature of a stored example, empty when the shard does not have it."""
    if name not in feature or not feature[name].bytes_list.value:
        return ""
    return bytes(feature[name].bytes_list.value[0]).decode(errors="replace")


def load_dataset(
    directory: str | Path, size: int, *, progress: bool = True
) -> tuple[NDArray[np.uint8], list[LabelRow]]:
    """Read a dataset built by `enrich build-dataset` into `(n, size, size, 3)` uint8 and rows.

    `directory` is a local path or any `tf.io.gfile` URL. Row `i` describes image `i`; its
    `image` is `<shard>#<record>`, its `line` is `i`, its split comes from the dataset's
    `split.csv`, its title, description and partner category from the record. Images are
    resized to `size` by `decode_image` when the dataset was built at another size.
    """
    import tensorflow as tf

    root = str(directory).rstrip("/")
    try:
        info = json.loads(_read_text(f"{root}/{DATASET_FILE}"))
        shards = [str(name) for name in info["shards"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{root}/{DATASET_FILE} is not a dataset description: {exc}") from exc
    # A product may be in two shards (a Kafka message consumed twice): the split file names
    # the one whose record counts.
    split_of = {
        row["product_id"]: (row["split"], row.get("shard") or "")
        for row in csv.DictReader(_read_text(f"{root}/{DATASET_SPLITS_FILE}").splitlines())
    }
    jpegs: list[bytes] = []
    rows: list[LabelRow] = []
    for shard in shards:
        for number, raw in enumerate(
            tf.data.TFRecordDataset(f"{root}/{shard}").as_numpy_iterator()
        ):
            feature = tf.train.Example.FromString(raw).features.feature
            product_id = feature[FEATURE_PRODUCT_ID].bytes_list.value[0].decode()
            split, owner = split_of.get(product_id, ("", ""))
            if not split or (owner and not shard.endswith(f"/{owner}.tfrecord")):
                continue
            category_id = int(feature[FEATURE_CATEGORY_ID].int64_list.value[0])
            jpegs.append(bytes(feature[FEATURE_IMAGE].bytes_list.value[0]))
            texts = (_feature_text(feature, name) for name in _TEXT_FEATURES)
            rows.append(
                LabelRow(f"{shard}#{number}", category_id, product_id, split, len(rows), "",
                         *texts)
            )  # fmt: skip
    images = np.empty((len(jpegs), size, size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = pool.map(lambda data: decode_image(data, size), jpegs)
        iterator: Iterable[NDArray[np.uint8]] = (
            tqdm(decoded, total=len(jpegs), desc=f"dataset {size}px", unit="img")
            if progress
            else decoded
        )
        for index, image in enumerate(iterator):
            images[index] = image
    return images, rows
