"""The fixed augmentation views of transfer learning's cached features.

A frozen backbone's outputs are cached per image and per view (:mod:`model.feature_cache`),
so augmentation on them is limited to views fixed before caching: the same view of the same
image is always the same pixels. Views, by number:

0. the image;
1. its mirror image;
2. a zoom: the central ``ZOOM_KEEP`` of each side, resized back to the full size;
3. the zoom's mirror image.

``feature_views=N`` trains on the first ``N``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.errors import ModelError

VIEWS = ("image", "mirror", "zoom", "zoom-mirror")
"""The views' names, by number."""

ZOOM_KEEP = 0.875
"""The share of each side the zoom views keep (a 1.14x zoom on the centre)."""


def check_views(count: int) -> int:
    """``count`` if it is a valid number of views, else a :class:`ModelError`."""
    if not 1 <= count <= len(VIEWS):
        raise ModelError(f"feature_views must be 1 to {len(VIEWS)}, got {count}")
    return count


def zoom(images: NDArray[np.uint8], keep: float = ZOOM_KEEP) -> NDArray[np.uint8]:
    """Each image's central ``keep`` of each side, resized back to its size (bilinear)."""
    if len(images) == 0:
        return images.copy()
    height, width = images.shape[1:3]
    crop_h, crop_w = max(1, round(height * keep)), max(1, round(width * keep))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    out = np.empty_like(images)
    for index, image in enumerate(images):
        crop = image[top : top + crop_h, left : left + crop_w]
        resized = Image.fromarray(crop).resize((width, height), Image.Resampling.BILINEAR)
        out[index] = np.asarray(resized, dtype=np.uint8).reshape(out[index].shape)
    return out


def view_settings(number: int) -> dict[str, object]:
    """What makes view ``number``, for the feature cache's key (a changed zoom recomputes)."""
    return {"view": number, **({"zoom": ZOOM_KEEP} if number >= 2 else {})}


def view(images: NDArray[np.uint8], number: int) -> NDArray[np.uint8]:
    """View ``number`` (see the module's docstring) of a batch ``(n, height, width, 3)``."""
    if not 0 <= number < len(VIEWS):
        raise ModelError(f"no view {number}: there are {len(VIEWS)} ({', '.join(VIEWS)})")
    base = zoom(images) if number >= 2 else images
    return base[:, :, ::-1, :] if number % 2 else base
