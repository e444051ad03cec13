"""Open set: one answer from the supervised text model and the zero-shot classifier.

A real catalog is full of categories nobody labelled. The supervised text model
(:mod:`model.text_classifier`) only knows the leaves it was trained on and, shown a product
from any other category, still names one of them, often confidently. The zero-shot
classifier (:mod:`model.zero_shot`) knows every leaf of the truncated taxonomy but is less
accurate on the leaves the text model learnt. :func:`combine` asks both and answers, per
product, in this order (the first rule that applies decides):

1. **Unknown category.** The zero-shot classifier names a leaf ``CLASSIFIED`` at
   ``zero_shot_threshold`` or more that the text model cannot name (neither that leaf nor
   an ancestor of it is among the text model's leaves), more confidently than the text
   model names its own leaf: the text model never learnt that category, so its answer can
   only be one of the wrong ones. The zero-shot answer is taken as it is (``decided_by``
   ``ZERO_SHOT``).
2. **Contradiction.** The zero-shot classifier commits (``CLASSIFIED`` at
   ``zero_shot_threshold``) to a leaf off the text model's path (one it knows, or one it
   does not know but less confidently than the text model's own): the two contradict each
   other, so neither leaf is given. The answer is their deepest common ancestor on the
   text model's path, ``LOW_CONFIDENCE`` (``decided_by`` ``BOTH``; the root at confidence
   0 when even their roots differ). With ``zero_shot_ancestors`` (off by default) a
   zero-shot abstention to an ancestor that clears ``zero_shot_threshold`` and lies off the
   text model's path contradicts it too. With ``text_override`` set, a text leaf at that
   confidence or more is answered instead (off by default).
2b. **Unknown below** (``zero_shot_unknown_below``, off by default; added in the second
   protocol, see ``bench/open_set.py``). The zero-shot classifier stops at an ancestor that
   clears ``zero_shot_threshold`` and its best leaf under it is one the text model cannot
   name (and not the text model's own leaf): the product may well belong to a category the
   text model never learnt beside the one it names ("Wallets & Money Clips" under "Handbags,
   Wallets & Cases" while the text model only knows "Handbags"), so the text model's leaf is
   not given. The answer is the deepest common ancestor of that ancestor and the text
   model's path, ``LOW_CONFIDENCE`` (``decided_by`` ``BOTH``).
3. **Unsure text.** The text model's leaf confidence is below ``text_threshold``: the
   deepest node of its path whose confidence clears the threshold (the root when none
   does), ``LOW_CONFIDENCE``, exactly as :class:`~model.decode.Decoder` abstains
   (``decided_by`` ``TEXT``).
4. Otherwise the text model's leaf, ``CLASSIFIED`` (``decided_by`` ``TEXT``).

By default a zero-shot answer that is not ``CLASSIFIED`` (it stopped at an ancestor, or no
word of the text matched anything) is no evidence against the text model and never changes
the answer.

Why these choices. ``text_threshold`` 0.5 and ``zero_shot_threshold`` 0.5 are each model's
own abstention threshold (more likely wrong than right below it), fixed a priori, not
tuned. Comparing the two confidences in rule 1 is parameter-free: on the seen leaves'
training hold-out the zero-shot classifier sometimes commits to an absurd unknown leaf
("Flat Mineral Water" for "Women Casual Gold Flats") while the text model is certain of the
right one; there the two contradict and the answer is an abstention, not either leaf.
Contradictions cost coverage on the categories the text model knows (a few points).

How far it gets (``bench/open_set.py``, ``docs/results/open_set/``): with 5 fashion leaves
denied to the text model, these defaults answer right or abstain honestly on 73% of those
leaves' products, short of the issue's 90%; ``text_threshold`` 0.7, chosen on a pseudo open
set built from training rows, reaches 86%. The failure left: the zero-shot classifier stops
at the right parent ("Handbags, Wallets & Cases") while the text model confidently names the
one sibling it knows ("Handbags"). Rule 2b answers it: :data:`OPEN_SET_RULE` (the service's,
``ENRICH_OPEN_SET``) reaches 97% on those 5 leaves (whose failures suggested it) and 90% on
10 fresh leaves, at the price of more abstentions on the leaves the text model knows.

Pure functions over :class:`~model.decode.Prediction` objects: no model, no I/O. The text
prediction should be decoded at threshold 0 (its full path with every level's confidence);
one decoded at a higher threshold works too, its abstention is then kept.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from model.decode import CLASSIFIED, LOW_CONFIDENCE, Prediction
from model.errors import ModelError

__all__ = [
    "OPEN_SET_RULE",
    "OpenSetAnswer",
    "OpenSetSettings",
    "Reason",
    "combine",
    "combine_many",
    "common_prefix",
    "cut_at",
]

Reason = Literal["TEXT", "TEXT_LOW_CONFIDENCE", "UNKNOWN_CATEGORY", "DISAGREEMENT", "UNKNOWN_BELOW"]
"""Which rule of :func:`combine` decided (see the module docstring)."""


@dataclass(frozen=True)
class OpenSetSettings:
    """The thresholds of :func:`combine` (see the module docstring for why these values)."""

    text_threshold: float = 0.5
    """The text model's leaf confidence below which it abstains to an ancestor."""
    zero_shot_threshold: float = 0.5
    """The zero-shot leaf confidence from which it may name an unknown category or
    contradict the text model."""
    zero_shot_ancestors: bool = False
    """Whether a zero-shot abstention (``LOW_CONFIDENCE`` at an ancestor whose confidence
    clears ``zero_shot_threshold``) off the text model's path contradicts it too (rule 2)."""
    text_override: float | None = None
    """The text leaf confidence from which a zero-shot contradiction (rule 2) is ignored and
    the text leaf answered; ``None``: never ignored."""
    zero_shot_unknown_below: bool = False
    """Whether a zero-shot abstention (``LOW_CONFIDENCE`` at an ancestor whose confidence
    clears ``zero_shot_threshold``) whose best leaf the text model cannot name caps the answer
    at that ancestor's deepest common ancestor with the text model's path (rule 2b)."""

    def __post_init__(self) -> None:
        """Refuse a threshold outside [0, 1], quoting it (ModelError)."""
        for name in ("text_threshold", "zero_shot_threshold", "text_override"):
            value = getattr(self, name)
            if value is None and name == "text_override":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ModelError(f"{name} must be a number in [0, 1], got {value!r}")


OPEN_SET_RULE = OpenSetSettings(
    text_threshold=0.7, zero_shot_ancestors=True, zero_shot_unknown_below=True
)
"""The settings the service uses (ENRICH_OPEN_SET): the second protocol's of
``bench/open_set.py``, the one tested on fresh held-out leaves."""


@dataclass(frozen=True)
class OpenSetAnswer:
    """The combined answer, which model decided it and by which rule."""

    prediction: Prediction
    decided_by: Literal["TEXT", "ZERO_SHOT", "BOTH"]
    reason: Reason


def cut_at(prediction: Prediction, threshold: float) -> Prediction:
    """``prediction`` abstaining as a :class:`~model.decode.Decoder` at ``threshold`` would:
    unchanged when its answer clears the threshold and is ``CLASSIFIED``, else
    ``LOW_CONFIDENCE`` at the deepest node of its path that clears it (the root if none)."""
    path = prediction.path
    if prediction.status == CLASSIFIED and path[-1].confidence >= threshold:
        return prediction
    deepest = len(path) - 1 if prediction.status == LOW_CONFIDENCE else len(path) - 2
    chosen = 0
    for level in range(deepest, -1, -1):
        if path[level].confidence >= threshold:
            chosen = level
            break
    if prediction.status == LOW_CONFIDENCE and chosen == len(path) - 1:
        return prediction
    return Prediction(
        status=LOW_CONFIDENCE,
        category_id=path[chosen].id,
        leaf_id=prediction.leaf_id,
        path=path[: chosen + 1],
        confidence=path[chosen].confidence,
        alternatives=prediction.alternatives,
    )


def common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    """How many leading ids two root-first paths share (0 when even the roots differ)."""
    shared = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        shared += 1
    return shared


def _ancestor(text: Prediction, zero_shot: Prediction) -> Prediction:
    """The deepest common ancestor of the two answers' leaves, ``LOW_CONFIDENCE``, on the text
    model's path with its confidences; the root alone when even the roots differ (then at
    confidence 0: the two models do not agree on anything)."""
    text_path = text.path
    shared = common_prefix([node.id for node in text_path], [node.id for node in zero_shot.path])
    if shared == 0:
        root = text_path[0]
        return Prediction(
            status=LOW_CONFIDENCE,
            category_id=root.id,
            leaf_id=text.leaf_id,
            path=(type(root)(level=1, id=root.id, name=root.name, confidence=0.0),),
            confidence=0.0,
            alternatives=text.alternatives,
        )
    node = text_path[shared - 1]
    return Prediction(
        status=LOW_CONFIDENCE,
        category_id=node.id,
        leaf_id=text.leaf_id,
        path=text_path[:shared],
        confidence=node.confidence,
        alternatives=text.alternatives,
    )


def _leaf_confidence(prediction: Prediction) -> float:
    """The confidence of the leaf a prediction answers; 0 when it answered an ancestor."""
    return prediction.confidence if prediction.status == CLASSIFIED else 0.0


def combine(
    text: Prediction,
    zero_shot: Prediction,
    known_leaves: Collection[int],
    settings: OpenSetSettings | None = None,
) -> OpenSetAnswer:
    """One product's answer from the text model's and the zero-shot classifier's predictions.

    ``known_leaves`` are the leaves the text model can name (its vocabulary's leaves). The
    rules, in order, are the module docstring's.
    """
    settings = settings or OpenSetSettings()
    text_path = [node.id for node in text.path]
    zero_path = [node.id for node in zero_shot.path]
    committed = (
        zero_shot.status == CLASSIFIED and zero_shot.confidence >= settings.zero_shot_threshold
    )
    if committed or (
        settings.zero_shot_ancestors
        and zero_shot.status == LOW_CONFIDENCE
        and zero_shot.confidence >= settings.zero_shot_threshold
    ):
        unknown = committed and not any(node in known_leaves for node in zero_path)
        if unknown and zero_shot.confidence > _leaf_confidence(text):
            return OpenSetAnswer(zero_shot, "ZERO_SHOT", "UNKNOWN_CATEGORY")
        # The zero-shot leaf agrees with the text model's answer when one path holds the other.
        agrees = common_prefix(text_path, zero_path) == min(len(text_path), len(zero_path))
        overridden = (
            settings.text_override is not None
            and text.status == CLASSIFIED
            and text.confidence >= settings.text_override
        )
        if not agrees and not overridden:
            return OpenSetAnswer(_ancestor(text, zero_shot), "BOTH", "DISAGREEMENT")
    if (
        settings.zero_shot_unknown_below
        and zero_shot.status == LOW_CONFIDENCE
        and zero_shot.confidence >= settings.zero_shot_threshold
        and zero_shot.leaf_id != text.leaf_id
        and zero_shot.leaf_id not in known_leaves
        and not any(node in known_leaves for node in zero_path)
    ):
        return OpenSetAnswer(_ancestor(text, zero_shot), "BOTH", "UNKNOWN_BELOW")
    chosen = cut_at(text, settings.text_threshold)
    reason: Reason = "TEXT" if chosen.status == CLASSIFIED else "TEXT_LOW_CONFIDENCE"
    return OpenSetAnswer(chosen, "TEXT", reason)


def combine_many(
    texts: Sequence[Prediction],
    zero_shots: Sequence[Prediction],
    known_leaves: Collection[int],
    settings: OpenSetSettings | None = None,
) -> list[OpenSetAnswer]:
    """:func:`combine` for a batch (the two sequences in the same product order)."""
    if len(texts) != len(zero_shots):
        raise ModelError(f"{len(texts)} text predictions but {len(zero_shots)} zero-shot ones")
    known = known_leaves if isinstance(known_leaves, set | frozenset) else set(known_leaves)
    return [
        combine(text, zero, known, settings) for text, zero in zip(texts, zero_shots, strict=True)
    ]
