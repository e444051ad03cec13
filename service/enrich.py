"""One product's enrichment: its image and text signals, decided into one record.

:class:`ProductEnricher` runs, for each valid product, in the event loop thread:

- the **text signal** (when a text model is loaded and the product has text) starts first and
  runs in its own inference thread (:class:`TextSignal`, a second
  :class:`~service.batcher.InferenceBatcher`), so it never waits for the image: a product
  whose image fails gets its text answer as soon as the failure is known;
- the **image signal** (when the product has an image URL): cache → fetch → decode → the
  image model's batcher;
- the **decision**: both answered → the two fused (:class:`model.fusion.LateFusion`), one
  answered → that one, none → today's status (``IMAGE_UNAVAILABLE``, ``IMAGE_INVALID`` or
  ``INVALID_INPUT``) and no category;
- with ENRICH_OPEN_SET, a text-only answer checked against the zero-shot classifier
  (:mod:`service.open_set`); with ENRICH_ZERO_SHOT, what nothing classified, zero-shot.

Every record says which signals decided (``decided_by``) and what each said on its own
(``signals``), as contract 1.1.0 spells them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from numpy.typing import NDArray

from model.classifier import Classifier
from model.decode import Prediction
from model.fusion import LateFusion, Scored, scored_outputs
from model.text_classifier import TextClassifier
from model.text_features import TextFields
from model.zero_shot import ZeroShotClassifier
from service.batcher import InferenceBatcher
from service.images import ImageStage
from service.metrics import Metrics
from service.records import Decision, Product, Status, enrichment, signal_entry

if TYPE_CHECKING:  # service.open_set builds on this module's Verdict
    from service.open_set import OpenSetCheck

__all__ = [
    "ProductEnricher",
    "TextSignal",
    "Verdict",
    "ZeroShotSignal",
    "image_scores",
    "text_scores",
]

log = structlog.get_logger(__name__)

_NO_TEXT = "no title, description or partner category"


def image_scores(classifier: Classifier, images: Sequence[NDArray[np.uint8]]) -> list[Scored]:
    """The image model's answers with their leaf distributions (what fusion needs)."""
    if len(images) == 0:
        return []
    batch = np.stack([classifier.prepare(image) for image in images])
    return scored_outputs(classifier.decoder, classifier.info.heads, classifier.predict_raw(batch))


def text_scores(classifier: TextClassifier, texts: Sequence[TextFields]) -> list[Scored | None]:
    """The text model's answers; None for a text with nothing to classify (it abstains)."""
    if len(texts) == 0:
        return []
    features = classifier.featurizer.transform(texts)
    present = np.flatnonzero(~features.empty())
    answers: list[Scored | None] = [None] * len(texts)
    if len(present):
        outputs = classifier.predict_raw(features.take(present))
        scored = scored_outputs(classifier.decoder, classifier.info.heads, outputs)
        for row, answer in zip(present.tolist(), scored, strict=True):
            answers[row] = answer
    return answers


class TextSignal:
    """The text model, its own inference thread, and its fusion with the image model."""

    def __init__(
        self,
        classifier: TextClassifier,
        fusion: LateFusion,
        *,
        max_size: int = 64,
        max_wait_s: float = 0.005,
    ) -> None:
        """Wrap a loaded text model; ``fusion`` must be built on both models' vocabularies."""
        self.classifier = classifier
        self.fusion = fusion
        self.version = classifier.info.version
        self.batcher: InferenceBatcher[Scored | None] = InferenceBatcher(
            lambda texts: text_scores(classifier, texts), max_size=max_size, max_wait_s=max_wait_s
        )

    def start(self) -> None:
        """Start the text inference thread."""
        self.batcher.start()

    def close(self) -> None:
        """Finish queued texts and stop the thread."""
        self.batcher.close()

    async def classify(self, text: TextFields) -> Scored | None:
        """The text model's answer for one product's text (None: nothing to go on)."""
        return await self.batcher.classify(text)

    def fuse(self, image: Scored, text: Scored) -> Prediction:
        """One fused prediction from the two answers of one product."""
        return self.fusion.decide([image], [text])[0]


class ZeroShotSignal:
    """The last resort for a product no model classified: its text scored zero-shot against
    every category of the taxonomy, in an inference thread of its own."""

    def __init__(self, classifier: ZeroShotClassifier, *, max_size: int = 64) -> None:
        """Wrap a zero-shot classifier built on the image model's taxonomy and depth."""
        self.classifier = classifier
        self.version = f"zero-shot-{classifier.version}"
        self.batcher: InferenceBatcher[Prediction] = InferenceBatcher(
            classifier.classify, max_size=max_size, max_wait_s=0.005
        )

    def start(self) -> None:
        """Start the zero-shot thread."""
        self.batcher.start()

    def close(self) -> None:
        """Finish queued texts and stop the thread."""
        self.batcher.close()

    async def classify(self, text: TextFields) -> Prediction | None:
        """The zero-shot answer, or None when no word of the text matched a category."""
        prediction = await self.batcher.classify(text)
        return prediction if prediction.confidence > 0.0 else None

    def entry(self, prediction: Prediction | None) -> dict[str, Any]:
        """Its ``signals`` entry (a TEXT signal): the answer, or the abstention of None."""
        if prediction is None:
            return signal_entry("TEXT", "ABSTAINED", model_version=self.version,
                                error="zero-shot: no word matched a category")  # fmt: skip
        return signal_entry("TEXT", "USED", prediction=prediction, model_version=self.version)


@dataclass(frozen=True)
class Verdict:
    """What a product's record says: status, category, who decided, each signal's entry."""

    status: Status
    prediction: Prediction | None
    decided_by: Decision
    signals: list[dict[str, Any]]
    error: str | None = None


class ProductEnricher:
    """Builds the enrichment record of one product from its signals (see the module doc)."""

    def __init__(
        self,
        images: ImageStage,
        batcher: InferenceBatcher[Any],
        model_record: Mapping[str, Any],
        metrics: Metrics,
        text: TextSignal | None = None,
        zero_shot: ZeroShotSignal | None = None,
        open_set: OpenSetCheck | None = None,
    ) -> None:
        """``batcher`` answers images with predictions, or with :class:`Scored` when ``text``
        is given (fusion needs the image's leaf distribution); ``zero_shot`` answers what
        nothing else did; ``open_set`` checks what the text model answered alone."""
        self.images = images
        self.batcher = batcher
        self.model_record = dict(model_record)
        self.metrics = metrics
        self.text = text
        self.zero_shot = zero_shot
        self.open_set = open_set

    def uses_text(self, product: Product) -> bool:
        """Whether this product's text will be classified."""
        return (self.text is not None or self.zero_shot is not None) and product.has_text

    async def enrich(
        self, product: Product, source: tuple[str, int, int]
    ) -> tuple[dict[str, Any], Status]:
        """The record and status of one product whose record itself is valid."""
        text_task: asyncio.Task[Scored | None] | None = None
        if self.text is not None and product.has_text:
            text_task = asyncio.ensure_future(self.text.classify(product.text))
        image_answer: Scored | Prediction | None = None
        image_status: Status = "INVALID_INPUT"
        image_error = product.image_error
        info = None
        if product.image_error is None:
            assert product.image_url is not None
            outcome = await self.images.load(product.image_url.strip())
            info = outcome.info
            if outcome.pixels is None:
                image_status = outcome.status or "IMAGE_UNAVAILABLE"
                image_error = outcome.reason
                log.info("image_failed", status=image_status, reason=outcome.reason)
            else:
                image_answer = await self.batcher.classify(outcome.pixels)
        text_answer = await text_task if text_task is not None else None
        verdict = self.decide(product, image_answer, image_status, image_error, text_answer)
        if verdict.decided_by == "TEXT" and self.open_set is not None:
            verdict = await self.open_set.check(verdict, product.text)
        if verdict.decided_by == "NONE" and self.zero_shot is not None and product.has_text:
            verdict = self._zero_shot(verdict, await self.zero_shot.classify(product.text))
        self.metrics.decided.labels(verdict.decided_by).inc()
        record = enrichment(
            product, status=verdict.status, model=self.model_record, source=source,
            error=verdict.error, prediction=verdict.prediction, image=info,
            decided_by=verdict.decided_by, signals=verdict.signals,
        )  # fmt: skip
        return record, verdict.status

    def decide(
        self,
        product: Product,
        image: Scored | Prediction | None,
        image_status: Status,
        image_error: str | None,
        text: Scored | None,
    ) -> Verdict:
        """Choose the record's category from what each signal gave."""
        version = self.model_record.get("version")
        image_prediction = image.prediction if isinstance(image, Scored) else image
        signals: list[dict[str, Any]] = []
        if image_prediction is not None:
            signals.append(signal_entry("IMAGE", "USED", prediction=image_prediction,
                                        model_version=version))  # fmt: skip
        else:
            missing = product.image_error is not None
            signals.append(
                signal_entry("IMAGE", "MISSING" if missing else "FAILED", error=image_error)
            )
        if self.text is not None:
            if text is not None:
                signals.append(signal_entry("TEXT", "USED", prediction=text.prediction,
                                            model_version=self.text.version))  # fmt: skip
            elif product.has_text:
                signals.append(
                    signal_entry("TEXT", "ABSTAINED", model_version=self.text.version,
                                 error="the text has no word or character the model reads")
                )  # fmt: skip
            else:
                signals.append(signal_entry("TEXT", "MISSING", error=_NO_TEXT))
        if image_prediction is not None and text is not None and self.text is not None:
            assert isinstance(image, Scored)
            fused = self.text.fuse(image, text)
            return Verdict(fused.status, fused, "FUSED", signals)
        if image_prediction is not None:
            return Verdict(image_prediction.status, image_prediction, "IMAGE", signals)
        if text is not None:
            return Verdict(text.prediction.status, text.prediction, "TEXT", signals)
        return Verdict(image_status, None, "NONE", signals, error=image_error)

    def _zero_shot(self, verdict: Verdict, prediction: Prediction | None) -> Verdict:
        """The zero-shot answer in place of no answer (its own ``signals`` entry, TEXT)."""
        assert self.zero_shot is not None
        entry = self.zero_shot.entry(prediction)
        if prediction is None:
            return Verdict(verdict.status, None, "NONE", [*verdict.signals, entry],
                           verdict.error)  # fmt: skip
        return Verdict(prediction.status, prediction, "TEXT", [*verdict.signals, entry])
