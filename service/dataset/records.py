"""One dataset record: a tf.train.Example with the features `model.data` names, and the
image work done off the event loop (decode, resize, JPEG-encode).
"""

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.data import (
    FEATURE_CATEGORY_ID,
    FEATURE_DESCRIPTION,
    FEATURE_IMAGE,
    FEATURE_IMAGE_SIZE,
    FEATURE_IMAGE_URL,
    FEATURE_LEVEL_LABEL,
    FEATURE_PARTNER_CATEGORY,
    FEATURE_PATH,
    FEATURE_PRODUCT_ID,
    FEATURE_SHA256,
    FEATURE_TITLE,
    FEATURE_TRUNCATED_ID,
)
from model.errors import InvalidImageError
from model.preprocess import decode_image

__all__ = ["JPEG_QUALITY", "Record", "encode_record", "resize_to_jpeg", "to_jpeg"]

# High enough that the JPEG round trip changes pixels less than augmentation does.
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Record:
    """What a shard keeps of one product whose image was fetched and decoded."""

    product_id: str
    image_url: str
    google_category_id: int
    category_id: int
    """`google_category_id` truncated to the dataset's depth."""
    path: tuple[int, ...]
    labels: tuple[int, ...]
    """Index per level in the full vocabulary of the truncated taxonomy (-1 below the leaf)."""
    sha256: str
    jpeg: bytes
    image_size: int
    title: str = ""
    """The labels' title, description and partner category (empty when they have none): the
    text model trains on them."""
    description: str = ""
    partner_category: str = ""


def to_jpeg(pixels: NDArray[np.uint8]) -> bytes:
    """`(size, size, 3)` uint8 RGB pixels as JPEG bytes."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(
        out, format="JPEG", quality=JPEG_QUALITY
    )
    return out.getvalue()


def resize_to_jpeg(content: bytes, size: int) -> tuple[NDArray[np.uint8], bytes] | str:
    """The image decoded and resized by `decode_image`, with its JPEG; or why it could not be.

    Runs in a worker process, so it returns the failure rather than raising it.
    """
    try:
        pixels = decode_image(content, size)
    except InvalidImageError as exc:
        return str(exc)
    return pixels, to_jpeg(pixels)


def encode_record(record: Record) -> bytes:
    """The record as a serialized tf.train.Example."""
    import tensorflow as tf

    def ints(*values: int) -> Any:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    def text(value: str | bytes) -> Any:
        data = value.encode() if isinstance(value, str) else value
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))

    features = {
        FEATURE_IMAGE: text(record.jpeg),
        FEATURE_IMAGE_SIZE: ints(record.image_size),
        FEATURE_PRODUCT_ID: text(record.product_id),
        FEATURE_IMAGE_URL: text(record.image_url),
        FEATURE_CATEGORY_ID: ints(record.google_category_id),
        FEATURE_TRUNCATED_ID: ints(record.category_id),
        FEATURE_PATH: ints(*record.path),
        FEATURE_SHA256: text(record.sha256),
        FEATURE_TITLE: text(record.title),
        FEATURE_DESCRIPTION: text(record.description),
        FEATURE_PARTNER_CATEGORY: text(record.partner_category),
    }
    for level, label in enumerate(record.labels, start=1):
        features[FEATURE_LEVEL_LABEL.format(level=level)] = ints(label)
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return bytes(example.SerializeToString())
