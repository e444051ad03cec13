"""An exported model's images/s on whatever accelerator Keras' backend sees (issue 16, item 5).

    KERAS_BACKEND=jax python -m bench.gpu_speed MODEL_DIR [--batches 32 64 ... 1024]
        [--policies float32 mixed_bfloat16 mixed_float16] [--rounds 10] [--output FILE]

The device machine this project is sometimes lent (one H200) has JAX and PyTorch but neither
TensorFlow nor Keras: carry Keras' wheel and a materialised model directory, set
``KERAS_BACKEND`` to ``jax`` or ``torch``, and run this one script. It measures, in one run:

- **inference**: the model directory's Keras model (checksums verified) on batches of
  uint8 images of its input size, at each batch size and dtype policy: images/s over
  ``--rounds`` timed calls after two warm-up calls, each call's outputs brought back to the
  host (so the timing includes the device finishing its work). ``float32`` is the model as
  saved; a mixed policy is the same model rebuilt layer by layer under that policy with the
  same weights (``with_policy``), and its leaf agreement with float32 is reported;
- **decode**: `model.preprocess.decode_image` (what the service does to a fetched image) on
  real photos (``--photos``, default the demo's), in one process and in a pool of every core.

Prints a Markdown table and writes the figures as JSON to ``--output`` (default
``gpu_speed.json``; under ``$OUT`` on the device machine). Runs on a CPU too (slowly, small
batches), which is how its test runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "service" / "demo_assets" / "photos"
BATCHES = (32, 64, 128, 256, 512, 1024)
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
WARM_UP = 2


def with_policy(model: Any, policy: str) -> Any:
    """``model`` rebuilt with every layer under the dtype ``policy``, with the same weights
    (Keras keeps a mixed policy's variables, and so its weights, in float32)."""
    import keras

    if policy == "float32":
        return model

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = keras.DTypePolicy(policy)
        return layer.__class__.from_config(config)

    rebuilt = keras.models.clone_model(model, clone_function=clone, recursive=True)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _host(outputs: Any) -> dict[str, NDArray[np.float32]]:
    """A call's outputs as float32 numpy arrays (waits for the device to finish)."""
    import keras

    if not isinstance(outputs, dict):
        outputs = {"output": outputs}
    return {
        name: np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)
        for name, value in outputs.items()
    }


def images_per_s(model: Any, batch: NDArray[np.uint8], rounds: int) -> float:
    """Images/s of ``model`` on ``batch`` over ``rounds`` timed calls after the warm-up."""
    for _ in range(WARM_UP):
        _host(model(batch, training=False))
    began = time.perf_counter()
    for _ in range(rounds):
        _host(model(batch, training=False))
    return len(batch) * rounds / (time.perf_counter() - began)


def leaf_agreement(reference: dict[str, Any], other: dict[str, Any]) -> float:
    """The share of images whose most probable class agrees on the deepest head."""
    head = sorted(reference, key=lambda name: reference[name].shape[-1])[-1]
    return float(np.mean(reference[head].argmax(-1) == other[head].argmax(-1)))


def decode_figures(photos: Sequence[bytes], size: int, repeat: int) -> dict[str, Any]:
    """`bench.decode_rate.decode_rates` over ``repeat`` passes of the photos."""
    from bench.decode_rate import decode_rates

    return {"photos": len(photos), **decode_rates(list(photos) * repeat, size)}


def _devices() -> list[str]:
    """What the backend computes on, as it names it."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return [str(device) for device in jax.devices()]
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return ["cpu"]
        if backend == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_logical_devices()]
    except Exception as exc:  # a report line, never a failure
        return [f"unknown ({exc})"]
    return ["cpu"]


def run(
    model_dir: Path,
    batches: Sequence[int],
    policies: Sequence[str],
    rounds: int,
    photos_dir: Path,
    decode_repeat: int,
) -> dict[str, Any]:
    """Every figure of the page, as a dict."""
    import keras

    from model.classifier import IMAGE_MODALITY, read_model_directory
    from model.preprocess import decode_image

    model, metadata, _ = read_model_directory(model_dir, taxonomy=None, modality=IMAGE_MODALITY)
    size = int(metadata["input_size"])
    files = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        raise SystemExit(f"no photos in {photos_dir}")
    photos = [p.read_bytes() for p in files]
    decoded = np.stack([decode_image(data, size) for data in photos])
    largest = max(batches)
    pool = np.resize(decoded, (largest, size, size, 3)).astype(np.uint8)
    reference = _host(model(pool[: min(64, largest)], training=False))
    rows: list[dict[str, Any]] = []
    for policy in policies:
        try:
            variant = with_policy(model, policy)
            agreement = leaf_agreement(
                reference, _host(variant(pool[: min(64, largest)], training=False))
            )
        except Exception as exc:  # a policy this backend cannot run is a row
            rows.append({"policy": policy, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{policy}: {exc}", file=sys.stderr)
            continue
        for batch in batches:
            rate = images_per_s(variant, pool[:batch], rounds)
            rows.append(
                {
                    "policy": policy,
                    "batch": batch,
                    "images_per_s": round(rate, 1),
                    "leaf_agreement_with_float32": round(agreement, 4),
                }
            )
            print(f"{policy} batch {batch}: {rate:,.1f} images/s", file=sys.stderr)
    return {
        "model": str(model_dir),
        "backbone": metadata.get("backbone"),
        "input_size": size,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "devices": _devices(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "rounds": rounds,
        "inference": rows,
        "decode": decode_figures(photos, size, decode_repeat),
    }


def markdown(report: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    lines = [
        f"Model `{report['model']}` ({report['backbone']}, {report['input_size']} px), Keras "
        f"{report['keras']} on {report['backend']}, devices: {', '.join(report['devices'])}; "
        f"{report['machine']}.",
        "",
        "| policy | batch | images/s | leaf agreement with float32 |",
        "| --- | --- | --- | --- |",
    ]
    for row in report["inference"]:
        if "error" in row:
            lines.append(f"| {row['policy']} | - | failed: {row['error']} | - |")
            continue
        lines.append(
            f"| {row['policy']} | {row['batch']} | {row['images_per_s']:,.1f} | "
            f"{row['leaf_agreement_with_float32']:.4f} |"
        )
    d = report["decode"]
    lines += [
        "",
        f"Decode (`decode_image` to {report['input_size']} px, {d['photos']} photos, "
        f"{d['images']} decodes): {d['one_core_images_per_s']:,.1f} images/s on one core, "
        f"{d['all_cores_images_per_s']:,.1f} on {d['cores']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_speed", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--decode-repeat", type=int, default=20, help="passes over the photos")
    parser.add_argument("--output", type=Path, default=Path("gpu_speed.json"))
    args = parser.parse_args(argv)
    if min(args.batches) < 1 or args.rounds < 1:
        parser.error("batches and rounds must be at least 1")
    report = run(
        args.model_dir, args.batches, args.policies, args.rounds, args.photos, args.decode_repeat
    )
    page = markdown(report)
    print(page)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
