"""`TextClassifier`: a text model directory, and product text to taxonomy predictions.

A text model directory has the image model's format (:mod:`model.classifier`: ``model.keras``,
``metadata.json``, ``checksums.sha256``, verified on load, versioned by the weights' hash)
with ``"modality": "text"``, ``"backbone": "text-hashing"``, ``input_size`` the feature
dimension, and ``text_features``, the featuriser's settings
(:meth:`model.text_features.TextFeaturizer.to_json`), from which loading rebuilds the
featuriser that made the training inputs. The Keras model is the features vector in
(``text_features``, float32), dropout, and the same heads as the image model
(:func:`model.heads.attach_heads`); outputs decode with the same :class:`~model.decode.Decoder`
(threshold, alternatives, abstention to an ancestor).

**No text, no guess.** A product whose text gives no feature (no title, description or
partner category, or only markup, punctuation or emoji) is not run through the model, whose
answer would only be the training prior. Its prediction is an abstention:
``LOW_CONFIDENCE``, ``confidence`` 0.0, the path only the root of the prior's most probable
leaf (with confidence 0.0 too), ``leaf_id`` that leaf, and no alternatives. A confidence of
0 is below every threshold, so nothing downstream mistakes it for evidence;
:meth:`TextClassifier.is_empty` tells such texts apart beforehand.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.classifier import (
    TEXT_MODALITY,
    ModelInfo,
    decode_outputs,
    read_model_directory,
)
from model.decode import Decoder, Prediction, abstention
from model.errors import ModelError
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.text_features import SparseFeatures, TextFeaturizer, TextInput
from model.vocabulary import Vocabulary

__all__ = ["TEXT_BACKBONE", "TEXT_INPUT", "TextClassifier", "predict_sparse"]

TEXT_BACKBONE = "text-hashing"
"""The ``backbone`` a text model directory names."""
TEXT_INPUT = "text_features"
"""The name of a text model's input."""
_BATCH = 256


def predict_sparse(
    model: Any, features: SparseFeatures, batch_size: int = _BATCH
) -> dict[str, NDArray[np.float32]]:
    """Run ``model`` over sparse feature rows, densifying one batch at a time."""
    outputs: dict[str, list[NDArray[np.float32]]] = {}
    for start in range(0, len(features), batch_size):
        dense = features.dense(slice(start, start + batch_size))
        for head, values in model.predict_on_batch(dense).items():
            outputs.setdefault(head, []).append(np.asarray(values, dtype=np.float32))
    return {head: np.concatenate(parts) for head, parts in outputs.items()}


class TextClassifier:
    """A loaded text model directory: ``classify`` a batch of product texts.

    Safe to call from one inference thread while other threads build batches: model calls
    are serialised by a lock.
    """

    def __init__(
        self,
        model: Any,
        metadata: Mapping[str, Any],
        truncated: TruncatedTaxonomy,
        *,
        threshold: float = 0.0,
        top_k: int = 5,
    ) -> None:
        """Wrap a Keras text model with its metadata (see :meth:`load`)."""
        self._model = model
        self.metadata = dict(metadata)
        self.truncated = truncated
        self.featurizer = TextFeaturizer.from_json(metadata.get("text_features", {}))
        if int(metadata["input_size"]) != self.featurizer.dim:
            raise ModelError(
                f"the model takes {metadata['input_size']} features but its featuriser makes "
                f"{self.featurizer.dim}"
            )
        self.vocabulary = Vocabulary.from_json(metadata["vocabulary"], truncated)
        self.info = ModelInfo.from_metadata(metadata)
        self.decoder = Decoder(truncated, self.vocabulary, threshold=threshold, top_k=top_k)
        self._lock = threading.Lock()
        self._empty: Prediction | None = None

    @property
    def model(self) -> Any:
        """The underlying Keras model."""
        return self._model

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        taxonomy: Taxonomy | Path | None = None,
        threshold: float = 0.0,
        top_k: int = 5,
    ) -> TextClassifier:
        """Load and verify a text model directory; ``taxonomy``, when given, must agree.

        Raises ModelError for a damaged directory, an image model, or featuriser settings
        this code cannot reproduce.
        """
        model, metadata, truncated = read_model_directory(
            directory, taxonomy=taxonomy, modality=TEXT_MODALITY
        )
        return cls(model, metadata, truncated, threshold=threshold, top_k=top_k)

    def is_empty(self, text: TextInput) -> bool:
        """Whether ``text`` has nothing to classify from (the classifier then abstains)."""
        return self.featurizer.is_empty(text)

    def predict_raw(self, features: SparseFeatures) -> dict[str, NDArray[np.float32]]:
        """The heads' probabilities for featurised texts (every row, empty ones included)."""
        with self._lock:
            return predict_sparse(self._model, features)

    def _abstention(self) -> Prediction:
        """The answer for a text without features (see the module docstring)."""
        if self._empty is None:
            zero = SparseFeatures(
                np.zeros(2, dtype=np.int64),
                np.zeros(0, dtype=np.int32),
                np.zeros(0, dtype=np.float32),
                self.featurizer.dim,
            )
            prior = decode_outputs(self.decoder, self.info.heads, self.predict_raw(zero))[0]
            self._empty = abstention(prior)
        return self._empty

    def classify(self, texts: Sequence[TextInput]) -> list[Prediction]:
        """Predictions for a batch of texts, in order (any batch size, empty included).

        A text is a :class:`~model.text_features.TextFields`, a string (a title) or None.
        """
        if len(texts) == 0:
            return []
        features = self.featurizer.transform(texts)
        empty = features.empty()
        answers: list[Prediction | None] = [None] * len(texts)
        present = np.flatnonzero(~empty)
        if len(present):
            outputs = self.predict_raw(features.take(present))
            for row, prediction in zip(
                present.tolist(),
                decode_outputs(self.decoder, self.info.heads, outputs),
                strict=True,
            ):
                answers[row] = prediction
        if empty.any():
            abstention = self._abstention()
            for row in np.flatnonzero(empty).tolist():
                answers[row] = abstention
        return [answer for answer in answers if answer is not None]
