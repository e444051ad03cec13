"""Backbone outputs cached on disk per image, so a frozen backbone runs once per image.

Transfer learning (:mod:`model.transfer`) computes what a frozen backbone makes of each
image once and reuses it for every seed, head design, depth and later run. The cache is
content-addressed at two levels:

* **settings**: everything that changes the computation (backbone, input size, weights,
  cut point, augmentation view, Keras version) picks a folder, ``features-<digest>/``;
* **images**: within it, each image is found by the SHA-256 of its decoded pixels. A changed
  image is a new digest, so only it is computed again; a different selection of the same
  images (another depth, hold-out or source mix) computes nothing.

A folder holds chunks, one per computation: ``<chunk>.features.npy`` (one row per image)
and ``<chunk>.digests.npy`` (the rows' image digests), the digests written last and renamed
into place, so an interrupted write leaves no chunk that looks complete. An unreadable
chunk is ignored (its images are computed again) and reported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

__all__ = ["FeatureCache", "image_digests"]

log = structlog.get_logger(__name__)

_DIGEST_BYTES = 16


def image_digests(images: NDArray[np.uint8]) -> NDArray[np.void]:
    """Each image's identity: the first 16 bytes of the SHA-256 of its shape and pixels."""
    out = np.empty(len(images), dtype=f"V{_DIGEST_BYTES}")
    for index, image in enumerate(images):
        digest = hashlib.sha256(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).data)
        out[index] = np.void(digest.digest()[:_DIGEST_BYTES])
    return out


@dataclass(frozen=True)
class FeatureCache:
    """Per-image backbone outputs under ``directory``; see the module docstring."""

    directory: Path

    def folder(self, settings: dict[str, Any]) -> Path:
        """The folder of one computation's settings."""
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
        return self.directory / f"features-{key}"

    def _index(self, folder: Path) -> dict[bytes, tuple[Path, int]]:
        """Image digest -> (features file, row), over every complete, readable chunk."""
        index: dict[bytes, tuple[Path, int]] = {}
        for digests_path in sorted(folder.glob("*.digests.npy")):
            features_path = digests_path.with_name(
                digests_path.name.replace(".digests.npy", ".features.npy")
            )
            try:
                digests = np.load(digests_path)
                rows = np.load(features_path, mmap_mode="r").shape[0]
            except (OSError, ValueError) as exc:
                log.warning("feature_chunk_unreadable", chunk=str(digests_path), error=str(exc))
                continue
            if rows != len(digests):
                log.warning("feature_chunk_unreadable", chunk=str(digests_path), error="rows")
                continue
            for row, digest in enumerate(digests):
                index.setdefault(bytes(digest), (features_path, row))
        return index

    def _write(self, folder: Path, digests: NDArray[np.void], features: NDArray[Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        chunk = hashlib.sha256(digests.tobytes()).hexdigest()[:24]
        features_path = folder / f"{chunk}.features.npy"
        digests_path = folder / f"{chunk}.digests.npy"
        for path, array in ((features_path, features), (digests_path, digests)):
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("wb") as stream:
                np.save(stream, array)
            tmp.replace(path)

    def get_or_compute(
        self,
        images: NDArray[np.uint8],
        settings: dict[str, Any],
        compute: Callable[[NDArray[np.uint8]], NDArray[Any]],
        digests: NDArray[np.void] | None = None,
    ) -> tuple[NDArray[Any], int]:
        """Features of ``images`` (row ``i`` for image ``i``), computing only the missing.

        ``compute`` gets the images not in the cache (in order) and returns their features.
        ``digests`` are the images' :func:`image_digests` when the caller has them already
        (several settings over the same images hash them once). Returns ``(features,
        hits)``: ``hits`` is how many images came from the cache.
        """
        folder = self.folder(settings)
        if not (folder / "settings.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "settings.json").write_text(json.dumps(settings, indent=1, sort_keys=True))
        if digests is None:
            digests = image_digests(images)
        index = self._index(folder)
        missing = [i for i, digest in enumerate(digests) if bytes(digest) not in index]
        fresh: NDArray[Any] | None = None
        if missing:
            fresh = compute(images[missing])
            self._write(folder, digests[missing], fresh)
        template = fresh if fresh is not None else None
        opened: dict[Path, NDArray[Any]] = {}
        out: NDArray[Any] | None = None
        fresh_row = {i: row for row, i in enumerate(missing)}
        for i, digest in enumerate(digests):
            if i in fresh_row and fresh is not None:
                value = fresh[fresh_row[i]]
            else:
                path, row = index[bytes(digest)]
                if path not in opened:
                    opened[path] = np.load(path, mmap_mode="r")
                value = opened[path][row]
            if out is None:
                source = template if template is not None else value[None]
                out = np.empty((len(images), *value.shape), dtype=source.dtype)
            out[i] = value
        if out is None:
            out = np.empty((0,), dtype="float32")
        return out, len(images) - len(missing)
