"""Tests of model.open_set: the text model and the zero-shot classifier combined, open set."""

from collections.abc import Sequence

import numpy as np
import pytest

from bench.open_set import held_out_leaves
from bench.open_set_scoring import outcome
from model.data import LabelRow
from model.decode import CLASSIFIED, LOW_CONFIDENCE, Decoder, PathNode, Prediction, Status
from model.errors import ModelError
from model.open_set import OpenSetSettings, combine, combine_many, common_prefix, cut_at
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary
from tests.support.decode import SMALL

# SMALL is the hand-made taxonomy of test_decode, depth 3:
#   1 A ── 2 B ── 3 H        leaves: H I C E F G (3, 4, 5, 7, 8, 9)
#     │     └──── 4 I
#     └─ 5 C
#   6 D ── 7 E
#     └─ 8 F
#   9 G
NAMES = dict(zip(range(1, 10), "ABHICDEFG", strict=True))
KNOWN = frozenset({3, 5, 7})
"""The leaves the text model learnt: H, C and E (not I, F or G)."""


def prediction(
    ids: Sequence[int], confidences: Sequence[float], status: Status = CLASSIFIED
) -> Prediction:
    """A prediction answering the last of ``ids`` (a root-first path) at these confidences."""
    path = tuple(
        PathNode(level=level, id=node, name=NAMES[node], confidence=confidence)
        for level, (node, confidence) in enumerate(zip(ids, confidences, strict=True), start=1)
    )
    return Prediction(
        status=status,
        category_id=ids[-1],
        leaf_id=ids[-1],
        path=path,
        confidence=confidences[-1],
        alternatives=(),
    )


@pytest.fixture(scope="module")
def small() -> TruncatedTaxonomy:
    """SMALL cut at depth 3."""
    return Taxonomy.parse(SMALL, source="small.txt").truncate(3)


def test_agreeing_models_answer_the_text_leaf() -> None:
    """When the zero-shot leaf is the text model's, the text model's leaf is answered."""
    text = prediction([1, 2, 3], [0.99, 0.95, 0.9])
    zero = prediction([1, 2, 3], [0.9, 0.8, 0.7])
    answer = combine(text, zero, KNOWN)
    assert (answer.prediction, answer.decided_by, answer.reason) == (text, "TEXT", "TEXT")


def test_zero_shot_names_an_unknown_category_more_confidently() -> None:
    """A confident zero-shot leaf the text model never learnt, surer than the text, wins."""
    text = prediction([1, 2, 3], [0.8, 0.7, 0.6])
    zero = prediction([1, 2, 4], [0.95, 0.9, 0.85])
    answer = combine(text, zero, KNOWN)
    assert answer.prediction is zero
    assert (answer.decided_by, answer.reason) == ("ZERO_SHOT", "UNKNOWN_CATEGORY")


def test_unknown_category_less_sure_than_the_text_is_a_contradiction() -> None:
    """An unknown zero-shot leaf less confident than the text leaf gives their common parent."""
    text = prediction([1, 2, 3], [0.99, 0.98, 0.97])
    zero = prediction([1, 2, 4], [0.9, 0.8, 0.6])
    answer = combine(text, zero, KNOWN)
    assert answer.reason == "DISAGREEMENT"
    assert answer.decided_by == "BOTH"
    assert answer.prediction.status == LOW_CONFIDENCE
    assert answer.prediction.category_id == 2
    assert answer.prediction.confidence == pytest.approx(0.98)


def test_contradiction_on_a_known_leaf_abstains_to_the_common_ancestor() -> None:
    """A confident zero-shot leaf the text knows, off its path, gives the deepest shared node."""
    text = prediction([1, 2, 3], [0.99, 0.9, 0.99])
    zero = prediction([1, 5], [0.9, 0.9])
    answer = combine(text, zero, KNOWN)
    assert answer.reason == "DISAGREEMENT"
    assert [node.id for node in answer.prediction.path] == [1]
    assert answer.prediction.confidence == pytest.approx(0.99)
    assert answer.prediction.leaf_id == 3


def test_contradiction_across_roots_abstains_at_the_root_with_no_confidence() -> None:
    """When even the roots differ the answer is the text model's root at confidence 0."""
    text = prediction([1, 5], [0.6, 0.6])
    zero = prediction([6, 7], [0.9, 0.9])
    answer = combine(text, zero, KNOWN)
    assert answer.prediction.status == LOW_CONFIDENCE
    assert answer.prediction.category_id == 1
    assert answer.prediction.confidence == 0.0


def test_unsure_text_abstains_like_the_decoder() -> None:
    """Below text_threshold the text model's deepest node that clears it is answered."""
    text = prediction([1, 2, 3], [0.9, 0.6, 0.4])
    zero = prediction([1, 2], [0.9, 0.6], status=LOW_CONFIDENCE)
    answer = combine(text, zero, KNOWN)
    assert (answer.decided_by, answer.reason) == ("TEXT", "TEXT_LOW_CONFIDENCE")
    assert answer.prediction.category_id == 2
    assert answer.prediction.status == LOW_CONFIDENCE


def test_text_exactly_at_its_threshold_is_answered() -> None:
    """A text leaf whose confidence equals text_threshold is answered, as the decoder does."""
    text = prediction([1, 2, 3], [0.9, 0.6, 0.5])
    zero = prediction([1], [0.9], status=LOW_CONFIDENCE)
    assert combine(text, zero, KNOWN).prediction is text
    assert cut_at(text, 0.5) is text
    assert cut_at(text, 0.51).category_id == 2


def test_zero_shot_below_its_threshold_is_no_evidence() -> None:
    """A zero-shot leaf under zero_shot_threshold changes nothing, even an unknown one."""
    text = prediction([1, 2, 3], [0.9, 0.9, 0.3])
    zero = prediction([1, 2, 4], [0.5, 0.45, 0.45])
    answer = combine(text, zero, KNOWN, OpenSetSettings(text_threshold=0.2))
    assert answer.prediction is text


def test_zero_shot_leaf_under_a_text_leaf_counts_as_known_and_agreeing() -> None:
    """A zero-shot leaf below a leaf the text model learnt is that leaf, refined: no conflict."""
    text = prediction([1, 2], [0.9, 0.8])
    zero = prediction([1, 2, 4], [0.99, 0.99, 0.99])
    answer = combine(text, zero, {2})
    assert answer.prediction is text


def test_zero_shot_abstention_counts_only_when_asked() -> None:
    """A zero-shot stop at an ancestor off the text path contradicts only with the option."""
    text = prediction([1, 5], [0.9, 0.9])
    zero = prediction([6], [0.8], status=LOW_CONFIDENCE)
    assert combine(text, zero, KNOWN).prediction is text
    asked = combine(text, zero, KNOWN, OpenSetSettings(zero_shot_ancestors=True))
    assert asked.reason == "DISAGREEMENT"
    assert asked.prediction.confidence == 0.0


def stop_at(ids: Sequence[int], confidences: Sequence[float], best_leaf: int) -> Prediction:
    """A zero-shot abstention at the last of ``ids`` whose best leaf is ``best_leaf``."""
    stopped = prediction(ids, confidences, status=LOW_CONFIDENCE)
    return Prediction(
        status=stopped.status,
        category_id=stopped.category_id,
        leaf_id=best_leaf,
        path=stopped.path,
        confidence=stopped.confidence,
        alternatives=(),
    )


UNKNOWN_BELOW = OpenSetSettings(zero_shot_unknown_below=True)


def test_unknown_leaf_below_a_shared_ancestor_caps_the_text_answer() -> None:
    """A zero-shot stop at the text leaf's parent, best leaf unknown, abstains to that parent."""
    text = prediction([1, 2, 3], [0.99, 0.97, 0.95])
    zero = stop_at([1, 2], [0.9, 0.8], best_leaf=4)
    assert combine(text, zero, KNOWN).prediction is text
    answer = combine(text, zero, KNOWN, UNKNOWN_BELOW)
    assert (answer.decided_by, answer.reason) == ("BOTH", "UNKNOWN_BELOW")
    assert answer.prediction.status == LOW_CONFIDENCE
    assert [node.id for node in answer.prediction.path] == [1, 2]
    assert answer.prediction.confidence == 0.97


@pytest.mark.parametrize(
    ("zero", "why"),
    [
        (stop_at([1, 2], [0.9, 0.8], best_leaf=3), "its best leaf is the text model's own"),
        (stop_at([6], [0.8], best_leaf=7), "its best leaf is one the text model knows"),
        (stop_at([1, 2], [0.9, 0.4], best_leaf=4), "it stopped below the zero-shot threshold"),
    ],
)
def test_unknown_below_needs_a_confident_stop_over_an_unknown_leaf(
    zero: Prediction, why: str
) -> None:
    """The text leaf stands when the zero-shot stop is not confident or its leaf is known."""
    text = prediction([1, 2, 3], [0.99, 0.97, 0.95])
    assert combine(text, zero, KNOWN, UNKNOWN_BELOW).prediction is text, why


def test_unknown_leaf_under_another_root_abstains_at_the_root() -> None:
    """A confident stop under another root over an unknown leaf leaves the text no category."""
    text = prediction([1, 5], [0.9, 0.9])
    answer = combine(text, stop_at([6], [0.8], best_leaf=8), KNOWN, UNKNOWN_BELOW)
    assert answer.reason == "UNKNOWN_BELOW"
    assert (answer.prediction.category_id, answer.prediction.confidence) == (1, 0.0)


def test_text_override_trusts_a_very_sure_text_model() -> None:
    """With text_override set, a text leaf at that confidence survives a contradiction."""
    text = prediction([1, 2, 3], [0.99, 0.99, 0.99])
    zero = prediction([1, 5], [0.9, 0.9])
    answer = combine(text, zero, KNOWN, OpenSetSettings(text_override=0.95))
    assert answer.prediction is text
    assert combine(text, zero, KNOWN).reason == "DISAGREEMENT"


def test_text_without_words_stays_an_abstention() -> None:
    """The text model's no-text abstention (root, confidence 0) is kept when zero-shot is silent."""
    text = prediction([1], [0.0], status=LOW_CONFIDENCE)
    zero = prediction([6], [0.0], status=LOW_CONFIDENCE)
    answer = combine(text, zero, KNOWN)
    assert answer.prediction is text
    assert answer.reason == "TEXT_LOW_CONFIDENCE"


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.35, 0.5, 0.7, 0.95, 1.0])
def test_cut_at_matches_the_decoders_own_abstention(
    small: TruncatedTaxonomy, threshold: float
) -> None:
    """cut_at of a threshold-0 decoding equals decoding at the threshold, for random outputs."""
    vocabulary = Vocabulary.full(small)
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.full(len(vocabulary.leaves), 0.4), size=64)
    at_zero = Decoder(small, vocabulary).decode_leaf(probs)
    at_threshold = Decoder(small, vocabulary, threshold=threshold).decode_leaf(probs)
    assert [cut_at(p, threshold) for p in at_zero] == at_threshold


def test_common_prefix_counts_shared_leading_ids() -> None:
    """common_prefix is the length of the shared root-first run of two paths."""
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 4]) == 2
    assert common_prefix([1], [6]) == 0


@pytest.mark.parametrize(
    "changes", [{"text_threshold": 1.5}, {"zero_shot_threshold": -0.1}, {"text_override": 2}]
)
def test_settings_refuse_thresholds_outside_zero_one(changes: dict[str, float]) -> None:
    """A threshold outside [0, 1] is refused with ModelError."""
    with pytest.raises(ModelError, match=next(iter(changes))):
        OpenSetSettings(**changes)  # type: ignore[arg-type]


def test_combine_many_refuses_batches_of_different_sizes() -> None:
    """The two batches must hold the same products: different lengths raise ModelError."""
    text = prediction([1, 2, 3], [0.9, 0.9, 0.9])
    with pytest.raises(ModelError, match="1 text predictions but 2"):
        combine_many([text], [text, text], KNOWN)


def test_combine_many_answers_each_product_in_order() -> None:
    """combine_many gives combine's answer for every pair, in the products' order."""
    sure = prediction([1, 2, 3], [0.99, 0.99, 0.99])
    unknown = prediction([6, 8], [0.99, 0.99])
    answers = combine_many([sure, prediction([1, 5], [0.2, 0.1])], [sure, unknown], list(KNOWN))
    assert [a.reason for a in answers] == ["TEXT", "UNKNOWN_CATEGORY"]


def test_benchmark_outcomes_tell_right_honest_and_wrong_apart(small: TruncatedTaxonomy) -> None:
    """The benchmark scores a leaf, an ancestor on or off the true path and a wrong leaf."""
    assert outcome(small, prediction([1, 2, 4], [0.9, 0.9, 0.9]), 4) == "right"
    assert outcome(small, prediction([1, 2, 4], [0.9, 0.9, 0.9]), 2) == "right"
    assert outcome(small, prediction([1, 2], [0.9, 0.9], LOW_CONFIDENCE), 4) == "honest_on_path"
    assert outcome(small, prediction([6], [0.9], LOW_CONFIDENCE), 4) == "honest_off_path"
    assert outcome(small, prediction([1, 2, 3], [0.9, 0.9, 0.9]), 4) == "confident_wrong"


def test_benchmark_holds_out_the_ranked_leaves_by_train_rows(small: TruncatedTaxonomy) -> None:
    """Leaves are ranked by train-split rows (validation rows ignored, ties by id)."""
    counts = {3: 5, 4: 4, 5: 4, 7: 2, 8: 1}
    rows = [
        LabelRow(image="", category_id=leaf, product_id=f"{leaf}-{n}", split="train")
        for leaf, count in counts.items()
        for n in range(count)
    ]
    rows += [
        LabelRow(image="", category_id=8, product_id=f"v{n}", split="validation") for n in range(9)
    ]
    assert held_out_leaves(rows, small, (2, 3)) == [4, 5]
    assert held_out_leaves(rows, small, (4, 5)) == [7, 8]
