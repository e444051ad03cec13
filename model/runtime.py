"""What runs an image model: the Keras model, or a LiteRT flat buffer of it, and the choice.

A `Runtime` turns a prepared ``(n, size, size, 3)`` uint8 batch into one float32 probability
array per head; `model.classifier.Classifier` decodes whatever its runtime gives. Two exist:

- `KerasRuntime`: the Keras model (``predict_on_batch``), on whatever device TensorFlow has;
- `model.litert.LiteRTRuntime`: a flat buffer of the model directory (`enrich export-litert`)
  in the LiteRT interpreter with XNNPACK on the CPU.

`choose_runtime` is the rule (``ENRICH_RUNTIME``): ``keras`` and ``litert`` are obeyed (a
directory without a flat buffer cannot serve ``litert``); ``auto`` takes the Keras model when
a GPU is visible (XNNPACK runs on the CPU only) or the directory has no flat buffer, and the
directory's default flat buffer otherwise. `open_runtime` applies it and logs the choice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import structlog
from numpy.typing import NDArray

from model.errors import ModelError

__all__ = [
    "RUNTIME_CHOICES",
    "KerasRuntime",
    "Runtime",
    "RuntimeChoice",
    "choose_runtime",
    "cpu_threads",
    "gpu_visible",
    "open_runtime",
]

log = structlog.get_logger(__name__)

RuntimeChoice = Literal["auto", "keras", "litert"]
RUNTIME_CHOICES: tuple[str, ...] = get_args(RuntimeChoice)


class Runtime(Protocol):
    """Runs the model: a prepared uint8 batch in, each head's float32 probabilities out."""

    name: str
    """``"keras"`` or ``"litert"``."""

    def __call__(self, batch: NDArray[np.uint8]) -> dict[str, NDArray[np.float32]]:
        """The heads' probabilities for ``batch``, one ``(n, classes)`` array per head."""
        ...

    def describe(self) -> dict[str, Any]:
        """What runs, for logs and reports (runtime, file, quantisation, threads...)."""
        ...


class KerasRuntime:
    """The Keras model itself (TensorFlow picks the device)."""

    name = "keras"

    def __init__(self, model: Any) -> None:
        """Run ``model``, a Keras model with a dict of heads as output."""
        self.model = model

    def __call__(self, batch: NDArray[np.uint8]) -> dict[str, NDArray[np.float32]]:
        """The heads' probabilities for ``batch`` (``predict_on_batch``)."""
        outputs = self.model.predict_on_batch(batch)
        return {head: np.asarray(values, dtype=np.float32) for head, values in outputs.items()}

    def describe(self) -> dict[str, Any]:
        """``{"runtime": "keras", "file": "model.keras"}``."""
        return {"runtime": self.name, "file": "model.keras"}


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (the Keras model then runs there)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def cpu_threads() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def choose_runtime(
    requested: str, metadata: Mapping[str, Any], *, gpu: bool, directory: Path
) -> tuple[Literal["keras", "litert"], str]:
    """Which runtime serves the model of ``metadata`` when ``requested``, and why.

    Raises ModelError for an unknown choice, or ``litert`` for a directory without a flat
    buffer (saying how to make one).
    """
    from model.litert import default_variant

    if requested not in RUNTIME_CHOICES:
        raise ModelError(f"runtime must be one of {', '.join(RUNTIME_CHOICES)}; got {requested!r}")
    variant = default_variant(metadata)
    if requested == "keras":
        return "keras", "asked for"
    if requested == "litert":
        if variant is None:
            raise ModelError(
                f"runtime litert asked for, but {directory} has no LiteRT flat buffer: "
                f"run `enrich export-litert {directory}` (or use runtime keras or auto)"
            )
        return "litert", "asked for"
    if gpu:
        return "keras", "a GPU is visible"
    if variant is None:
        return "keras", "no LiteRT flat buffer in the model directory"
    return "litert", "CPU only and a LiteRT flat buffer in the model directory"


def open_runtime(
    directory: Path,
    keras_model: Any,
    metadata: Mapping[str, Any],
    requested: str = "auto",
    *,
    gpu: bool | None = None,
    num_threads: int | None = None,
) -> Runtime:
    """The runtime `choose_runtime` picks for a verified model directory, ready to run.

    ``gpu`` says whether a GPU is visible (default: asked of TensorFlow, only for ``auto``);
    ``num_threads`` is the interpreter's threads (default: this process's cores). A flat
    buffer is checked against its checksum before it is used (ModelError when it is missing
    or differs). Logs ``runtime_selected`` with the choice and the reason.
    """
    if requested == "auto" and gpu is None:
        gpu = gpu_visible()
    chosen, reason = choose_runtime(requested, metadata, gpu=bool(gpu), directory=directory)
    runtime: Runtime
    if chosen == "keras":
        runtime = KerasRuntime(keras_model)
    else:
        from model.litert import LiteRTRuntime, default_variant

        variant = default_variant(metadata)
        assert variant is not None  # choose_runtime made sure
        runtime = LiteRTRuntime.from_directory(
            directory, metadata, variant, num_threads=num_threads or cpu_threads()
        )
    log.info(
        "runtime_selected",
        requested=requested,
        reason=reason,
        model=str(directory),
        **runtime.describe(),
    )
    return runtime
