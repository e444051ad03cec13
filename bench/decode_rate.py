"""How fast `model.preprocess.decode_image` (what the service does to a fetched image) runs on
this machine: one core, and a process pool of every core. Shared by `bench.service_bench`
and the device machine's `bench.gpu_speed`, so it imports nothing beyond the model package."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["decode_rates"]


def _decode_one(item: tuple[bytes, int]) -> int:
    from model.preprocess import decode_image

    return int(decode_image(item[0], item[1]).shape[0])


def decode_rates(photos: Sequence[bytes], size: int) -> dict[str, Any]:
    """Images/s decoding ``photos`` (encoded files) to ``size`` px: in this process, then in a
    pool of every core (its workers started before the clock runs)."""
    items = [(data, size) for data in photos]
    for item in items[:5]:
        _decode_one(item)
    began = time.perf_counter()
    for item in items:
        _decode_one(item)
    one = len(items) / (time.perf_counter() - began)
    cores = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(cores, mp_context=context) as pool:
        list(pool.map(_decode_one, items[: cores * 4]))  # start the workers
        began = time.perf_counter()
        list(pool.map(_decode_one, items, chunksize=8))
        every = len(items) / (time.perf_counter() - began)
    return {
        "one_core_images_per_s": round(one, 1),
        "all_cores_images_per_s": round(every, 1),
        "cores": cores,
        "images": len(items),
    }
