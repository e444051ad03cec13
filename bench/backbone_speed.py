"""Training and inference speed of candidate backbones on this machine, side by side.

Used to choose the default CPU backbone and image size (docs/results/scratch/README.md). Each
candidate is the real multi-head model (heads sized like the shared data at depth 4:
2, 5, 13, 5) trained on random uint8 batches; the figures are images/s of a training step
and of batched inference, medians over the timed steps, all measured in one run.

    .venv/bin/python bench/backbone_speed.py [--candidates mobilenet_v3_small:128,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import keras
import numpy as np

from model.build import build_model, compile_model, count_params

DEFAULT = (
    "mobilenet_v3_small:96,mobilenet_v3_small:128,mobilenet_v3_small:160,"
    "mobilenet_v3_large:128,efficientnet_b0:128,resnet50:128"
)


def measure(backbone: str, size: int, batch: int, steps: int) -> dict[str, object]:
    """Images/s of training steps and of inference for one backbone at one size."""
    keras.utils.set_random_seed(0)
    sizes = [2, 5, 13, 5]
    model = build_model(backbone, sizes, image_size=size, bn_momentum=0.9)
    compile_model(model, level_weights=None, learning_rate=1e-3, heads="multi")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = {f"level_{k + 1}": rng.integers(0, n, batch) for k, n in enumerate(sizes)}
    for _ in range(2):  # compile and warm up
        model.train_on_batch(images, labels)
        model.predict_on_batch(images)
    train_times, infer_times = [], []
    for _ in range(steps):
        began = time.perf_counter()
        model.train_on_batch(images, labels)
        train_times.append(time.perf_counter() - began)
        began = time.perf_counter()
        model.predict_on_batch(images)
        infer_times.append(time.perf_counter() - began)
    return {
        "backbone": backbone,
        "image_size": size,
        "parameters": count_params(model),
        "train_images_per_s": round(batch / statistics.median(train_times), 1),
        "inference_images_per_s": round(batch / statistics.median(infer_times), 1),
    }


def main() -> None:
    """Measure every candidate and print one JSON line each, then a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=DEFAULT, help="backbone:size,...")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for item in args.candidates.split(","):
        backbone, size = item.split(":")
        row = measure(backbone, int(size), args.batch, args.steps)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\nbatch {args.batch}, {args.steps} timed steps, backend {keras.backend.backend()}")
    print("| backbone | size | parameters | train img/s | inference img/s |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['backbone']} | {row['image_size']} | {row['parameters']:,} | "
            f"{row['train_images_per_s']} | {row['inference_images_per_s']} |"
        )


if __name__ == "__main__":
    main()
