"""The open-set check of a product classified from its text alone (ENRICH_OPEN_SET).

The supervised text model only knows the leaves it was trained on; shown a product of any
other category it still names one of them, often confidently. With ENRICH_OPEN_SET (which
needs a text model and ENRICH_ZERO_SHOT), a product the text model classified without its
image (``decided_by`` ``TEXT``) is scored zero-shot over the whole taxonomy too, and
:func:`model.open_set.combine` decides with :data:`model.open_set.OPEN_SET_RULE`: a
category the text model never learnt is given from the zero-shot answer, a contradiction
abstains to the two answers' deepest common ancestor (``LOW_CONFIDENCE``), agreement keeps
the text model's leaf. The record's ``signals`` list the zero-shot answer as a second
``TEXT`` entry (its ``model_version`` starts with ``zero-shot-``). Figures:
``docs/results/open_set/``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

import structlog

from model.decode import Prediction
from model.open_set import OPEN_SET_RULE, OpenSetSettings, combine
from model.text_features import TextFields
from service.enrich import Verdict, ZeroShotSignal
from service.metrics import Metrics

__all__ = ["OpenSetCheck"]

log = structlog.get_logger(__name__)


class OpenSetCheck:
    """The text model's answer checked against the zero-shot classifier's (module doc)."""

    def __init__(
        self,
        zero_shot: ZeroShotSignal,
        known_leaves: Collection[int],
        metrics: Metrics,
        settings: OpenSetSettings = OPEN_SET_RULE,
    ) -> None:
        """``known_leaves``: the leaves the text model can name; ``zero_shot`` is shared
        with the zero-shot fallback (one thread for both)."""
        self.zero_shot = zero_shot
        self.known = frozenset(known_leaves)
        self.metrics = metrics
        self.settings = settings

    async def check(self, verdict: Verdict, text: TextFields) -> Verdict:
        """``verdict`` (decided by the text model alone) as the open-set rule answers it."""
        assert verdict.prediction is not None
        zero_shot = await self.zero_shot.classify(text)
        entry = self.zero_shot.entry(zero_shot)
        if zero_shot is None:
            self.metrics.open_set.labels("NO_MATCH").inc()
            return replace(verdict, signals=[*verdict.signals, entry])
        answer = combine(verdict.prediction, zero_shot, self.known, self.settings)
        self.metrics.open_set.labels(answer.reason).inc()
        chosen: Prediction = answer.prediction
        if chosen is not verdict.prediction:
            log.info("open_set_changed", reason=answer.reason, text=verdict.prediction.category_id,
                     answer=chosen.category_id, status=chosen.status)  # fmt: skip
        return replace(verdict, status=chosen.status, prediction=chosen,
                       signals=[*verdict.signals, entry])  # fmt: skip
