"""Inference speed of exported models, measured side by side (interleaved rounds).

The quality grid's images/s come from each evaluation, which may share the machine with
other work; this measures the models against each other in one process, round-robin, so a
noisy neighbour slows them all alike. The figure is the median over rounds of batched
`Classifier.predict_raw` on prepared uint8 batches (decoding excluded).

    python -m bench.model_speed NAME=MODEL_DIR... [--batch 64] [--rounds 5] [--output FILE.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def measure(models: dict[str, Path], batch: int, rounds: int) -> dict[str, float]:
    """Median images/s per model over ``rounds`` interleaved timed batches (one warm-up)."""
    from model.classifier import Classifier

    loaded = {name: Classifier.load(path) for name, path in models.items()}
    rng = np.random.default_rng(0)
    inputs = {
        name: rng.integers(0, 255, (batch, c.input_size, c.input_size, 3), dtype=np.uint8)
        for name, c in loaded.items()
    }
    for name, classifier in loaded.items():
        classifier.predict_raw(inputs[name])
    rates: dict[str, list[float]] = {name: [] for name in loaded}
    for _ in range(rounds):
        for name, classifier in loaded.items():
            began = time.perf_counter()
            classifier.predict_raw(inputs[name])
            rates[name].append(batch / (time.perf_counter() - began))
    return {name: statistics.median(values) for name, values in rates.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=MODEL_DIR")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    models = dict(item.split("=", 1) for item in args.models)
    rates = measure({k: Path(v) for k, v in models.items()}, args.batch, args.rounds)
    lines = [
        f"Median of {args.rounds} interleaved rounds, batch {args.batch}, {os.cpu_count()} CPU "
        "cores, decoding excluded:",
        "",
        "    python -m bench.model_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "",
        "| model | images/s |",
        "| --- | --- |",
        *(f"| {name} | {rate:.0f} |" for name, rate in rates.items()),
    ]
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
