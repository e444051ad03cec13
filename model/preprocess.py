"""Image bytes to the model's input: one function, used by training, evaluation and the service.

The service and training must never disagree about how an image becomes pixels, so both call
`decode_image`: first frame only, EXIF orientation applied, any mode to 8-bit RGB (alpha
composited on white), then a bilinear resize of the whole image to `size` x `size` (no crop:
a product photo's edges often hold the product). JPEGs are decoded in draft mode at the
smallest DCT scale still at least twice the target, which makes large photos cheap to decode
and is deterministic for a given file.
"""

import io
import warnings
from pathlib import Path

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

# What the magic bytes of each accepted format look like (Pillow may recognise more).
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF"})

_WHITE = (255, 255, 255)


def decode_image(
    data: bytes | Path, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> NDArray[np.uint8]:
    """Decode image bytes (or a file) into a `(size, size, 3)` uint8 RGB array.

    Raises `InvalidImageError` with the reason for anything that is not a usable image.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # only ever raised, so a race between threads is benign
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                return _to_array(image, size, max_pixels)
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


def _to_array(image: Image.Image, size: int, max_pixels: int) -> NDArray[np.uint8]:
    if image.format not in ACCEPTED_FORMATS:
        raise InvalidImageError(f"unsupported image format {image.format}")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"empty image {width}x{height}")
    if width * height > max_pixels:
        raise InvalidImageError(
            f"image of {width}x{height} pixels exceeds the limit of {max_pixels:,} pixels"
        )
    if image.format == "JPEG":
        image.draft("RGB", (size * 2, size * 2))
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
