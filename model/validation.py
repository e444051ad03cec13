"""Scoring a model on its validation inputs during training, the same way for every trainer.

:func:`validation_scores` decodes head outputs into leaves and gives the two figures every
trainer early-stops on (``val_leaf_accuracy``, ``val_weighted_score``);
:class:`BestOnValidation` adds them to each epoch's logs and history, stops after
``patience`` epochs without a better weighted score, and keeps the best epoch's weights in
memory. End-to-end (:mod:`model.train`), transfer (:mod:`model.transfer`) and text
(:mod:`model.text_train`) training use them; only how the outputs are predicted differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from model.classifier import decode_outputs
from model.decode import Decoder
from model.heads import HeadsKind
from model.metrics import weighted_accuracy
from model.taxonomy import TruncatedTaxonomy

__all__ = ["BestOnValidation", "Predict", "validation_scores"]

Predict = Callable[[Any], Mapping[str, NDArray[np.float32]]]
"""Runs a model over the validation inputs: ``model -> {head: probabilities}``."""


def validation_scores(
    decoder: Decoder,
    heads: HeadsKind,
    outputs: Mapping[str, NDArray[np.float32]],
    true_ids: NDArray[np.int64],
    truncated: TruncatedTaxonomy,
    values: Mapping[int, float],
) -> dict[str, float]:
    """The decoded leaves' accuracy and business-value-weighted score against ``true_ids``."""
    predictions = decode_outputs(decoder, heads, outputs)
    predicted = np.array([p.leaf_id for p in predictions], dtype=np.int64)
    return {
        "val_leaf_accuracy": float(np.mean(predicted == true_ids)),
        "val_weighted_score": weighted_accuracy(true_ids, predicted, truncated, values),
    }


class BestOnValidation(keras.callbacks.Callback):  # type: ignore[misc]
    """Scores the validation inputs each epoch; keeps the best epoch's weights in memory.

    Every epoch's logs (with the two scores) are appended to ``history``; with ``stage`` set,
    ``history["stage"]`` records it too (0 heads, 1 fine-tuning). Training stops once
    ``patience`` epochs have passed without a better weighted score than ``best`` (which a
    caller may raise beforehand, so that only an improvement on it counts).
    """

    def __init__(
        self,
        predict: Predict,
        true_ids: NDArray[np.int64],
        *,
        decoder: Decoder,
        heads: HeadsKind,
        truncated: TruncatedTaxonomy,
        values: Mapping[int, float],
        patience: int,
        history: dict[str, list[float]],
        stage: float | None = None,
    ) -> None:
        super().__init__()
        self.predict = predict
        self.true_ids = true_ids
        self.decoder = decoder
        self.heads = heads
        self.truncated = truncated
        self.values = values
        self.patience = patience
        self.history = history
        self.stage = stage
        self.best = -math.inf
        self.best_epoch = -1
        self.best_weights: list[Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        logs.update(
            validation_scores(
                self.decoder,
                self.heads,
                self.predict(self.model),
                self.true_ids,
                self.truncated,
                self.values,
            )
        )
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))
        if self.stage is not None:
            self.history.setdefault("stage", []).append(self.stage)
        if logs["val_weighted_score"] > self.best:
            self.best, self.best_epoch = logs["val_weighted_score"], epoch
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
        elif epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True
