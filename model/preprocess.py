"""Image bytes to the model's input: one function, used by training, evaluation and the service.

The service and training must never disagree about how an image becomes pixels, so both call
`decode_image`: first frame only, EXIF orientation applied, any mode to 8-bit RGB (alpha
composited on white), then a bilinear resize of the whole image to `size` x `size` (no crop:
a product photo's edges often hold the product). JPEGs are decoded in draft mode at the
smallest DCT scale still at least twice the target, which makes large photos cheap to decode
and is deterministic for a given file. `decoded_pixels` reads only the header and says how
many pixels `decode_image` will allocate, so a caller can budget memory before decoding.
"""

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from model.errors import InvalidImageError

# Far above any product photo (a 50-megapixel camera frame), far below what exhausts memory:
# a decompression bomb declares a huge canvas in a few bytes.
DEFAULT_MAX_PIXELS = 50_000_000

# Pillow's own check must stay on: it runs inside `Image.open`, before a format's first frame
# is allocated (a GIF frame may declare 65,496 x 60,280 pixels inside a 40 x 40 screen, found
# by `make fuzz`), while ours below sees only `image.size` after opening. Its warning (above
# the limit) is turned into an error in `decode_image`; `decode_image` raises the limit when a
# caller asks for more.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS

# Pillow allocates an image in blocks of 16 MiB by default, under glibc's largest mmap
# threshold (32 MiB): once a large image is freed, glibc serves later blocks from the decoding
# thread's own heap and keeps them there after the image is gone, so each decode thread holds
# on to its largest image's worth. 50 M-pixel RGBA PNGs decoded one at a time on two threads
# peaked at 2.2 GB instead of 1.2 GB (bench/decode_memory.py), which undoes a decode budget.
# Blocks of 64 MiB are always mmapped, so they go back to the system when freed. An operator's
# PILLOW_BLOCK_SIZE wins.
PILLOW_BLOCK_SIZE = 64 * 1024 * 1024
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(PILLOW_BLOCK_SIZE)  # type: ignore[attr-defined]  # C core, no stub

# What the magic bytes of each accepted format look like (Pillow may recognise more).
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF"})

_WHITE = (255, 255, 255)

_T = TypeVar("_T")


def decode_image(
    data: bytes | Path,
    size: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
) -> NDArray[np.uint8]:
    """Decode image bytes (or a file) into a `(size, size, 3)` uint8 RGB array.

    Images over `max_pixels`, or with a side shorter than `min_side` pixels, are refused.
    Raises `InvalidImageError` with the reason for anything that is not a usable image.
    """
    return _open(data, size, max_pixels, min_side, _to_array)


def decoded_pixels(
    data: bytes | Path,
    size: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
) -> int:
    """How many pixels `decode_image` with the same arguments will allocate, from the header.

    Nothing is decoded: the header's width x height, or for a JPEG the size of the DCT scale
    its draft mode decodes. Raises `InvalidImageError` where `decode_image` would refuse the
    image before decoding it (not an image, unsupported format, too large, too small).
    """
    return _open(data, size, max_pixels, min_side, _draft_pixels)


def _open(
    data: bytes | Path,
    size: int,
    max_pixels: int,
    min_side: int,
    then: Callable[[Image.Image, int], _T],
) -> _T:
    """Open the image, check its header, and return `then(image, size)`; errors as reasons."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # only ever raised, so a race between threads is benign
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                _check_header(image, max_pixels, min_side)
                return then(image, size)
    except InvalidImageError:
        raise
    except UnidentifiedImageError as exc:
        raise InvalidImageError("not an image Pillow recognises") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = Image.MAX_IMAGE_PIXELS or max_pixels
        raise InvalidImageError(f"image exceeds the limit of {limit:,} pixels: {exc}") from exc
    except MemoryError as exc:  # a hostile header can still ask for more than this process has
        raise InvalidImageError("image too large to decode in memory") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"corrupt image: {exc}") from exc


def _check_header(image: Image.Image, max_pixels: int, min_side: int) -> None:
    """Refuse, from the header alone, what `decode_image` never decodes."""
    if image.format not in ACCEPTED_FORMATS:
        raise InvalidImageError(f"unsupported image format {image.format}")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"empty image {width}x{height}")
    if width * height > max_pixels:
        raise InvalidImageError(
            f"image of {width}x{height} pixels exceeds the limit of {max_pixels:,} pixels"
        )
    if min(width, height) < min_side:
        raise InvalidImageError(
            f"image of {width}x{height} pixels is too small (short side under {min_side} pixels)"
        )


def _draft(image: Image.Image, size: int) -> None:
    """Let a JPEG decode at the smallest DCT scale still at least twice `size` (no-op otherwise)."""
    if image.format == "JPEG":
        image.draft("RGB", (size * 2, size * 2))


def _draft_pixels(image: Image.Image, size: int) -> int:
    _draft(image, size)
    width, height = image.size
    return width * height


def _to_array(image: Image.Image, size: int) -> NDArray[np.uint8]:
    _draft(image, size)
    image.seek(0)
    image.load()
    image = ImageOps.exif_transpose(image) or image
    rgb = _to_rgb(image)
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(resized, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) greyscale: keep the top 8 bits of the range actually used.
        values = np.asarray(image, dtype=np.uint32)
        top = int(values.max()) if values.size else 0
        shift = max(0, top.bit_length() - 8)
        return Image.fromarray((values >> shift).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.clip(np.asarray(image, dtype=np.float32), 0, 255).astype(np.uint8)
        return Image.fromarray(values, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or image.mode == "RGBA":
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
