"""Zero-shot text classification: product text scored against every category of the taxonomy.

A shop may send products in categories nobody labelled. :class:`ZeroShotClassifier` needs no
training data: it is built from the truncated taxonomy alone and scores a product's title
(and description and partner category, when given) against every leaf, so an unseen
category can still be given, or an ancestor when the evidence is weak. The two sides it
matches, a title's words and a category's aliases, are built in :mod:`model.zero_shot_words`
(with the synonym tables and where each comes from); the optional static embeddings are
in :mod:`model.static_embeddings`.

**What a category is made of.** Every category of the full taxonomy gives *aliases*, short
phrases that name it: its own name, and each part of a name that joins several kinds
(:func:`~model.zero_shot_words.conjuncts`: ``"Shirts & Tops"`` gives ``"Shirts"`` and
``"Tops"``; ``"Bread Boxes & Bags"`` gives ``"Bread Bags"``, not ``"Bags"``). A category deeper
than the cut depth names its truncated ancestor with a discount (``descendant_weight``). A
compound word of the taxonomy also names its category by its last part, with a discount
(``"Undershirts"`` → ``"shirt"``). Words are case-folded, NFKC-normalised and reduced to their
singular (:func:`~model.zero_shot_words.stem`).

**What a title is made of.** Product titles put the product type last and brand, audience,
colour and pattern first (``"Puma Men Black Running Shoes"``). Words that describe rather
than name a product (:data:`~model.zero_shot_words.ATTRIBUTE_WORDS`) and words with digits
(model codes) are dropped; the remaining words weigh ``head_decay ** k`` for the ``k``-th
from the end, so the last one counts most. Each word is a *concept* that can be matched in
several forms, the best of which counts: the word itself, its synonyms in the taxonomy's
vocabulary (``synonym_weight``; ``ZeroShotConfig.synonyms`` picks the tables: ``"general"``,
the default and strictly zero-shot, ``"all"`` adding the words chosen after reading the
fashion-products training titles, or ``"none"``), the last part of a compound the taxonomy
does not know (``"tshirts"`` → ``"shirt"``, ``compound_weight``), and the cosine between the
word's static embedding and each alias's (``embedding_weight``, counting only above
``embedding_floor``; off by default: measured on the fashion titles it changes next to
nothing once plurals, compounds and synonyms are matched, see ``docs/results/zero_shot.md``).

**Scoring.** A form matches an alias with its BM25 score (``bm25s``: term saturation and
alias-length normalisation, so ``"Wallets"`` beats ``"Wallet Chains"`` for ``"wallet"``),
divided by the score it would have in a one-word alias that is the form itself: an exact
one-word name is 1, a longer name a partial match (``"Wedge Tools"`` about 0.8 for
``"wedge"``). A node's match is its best alias's. A leaf's score is, per concept, the better
of its own match and ``ancestor_weight`` times its best ancestor's (a word naming "Clothing"
is evidence for every kind of clothing, a little less than naming the kind), weighed by the
concept's weight and summed; divided by the sum of the weights it is the share of the title
the leaf explains, in [0, 1].

**Probabilities and decoding.** Leaf probabilities are ``softmax(score / temperature)``;
:class:`~model.decode.Decoder` sums them up the tree (a node's confidence is its leaves' mass)
and decodes as for the ``marginal`` head (``decode="marginal"``, each level's mass counts,
so a node whose many leaves share the evidence wins over one lone leaf that matches a word)
or as the flat head (``decode="leaf"``, the best leaf). With ``threshold`` the answer stops at
the deepest ancestor whose confidence clears it (``LOW_CONFIDENCE``): a vague title
(``"Men's clothing"``) spreads its mass over a subtree and is answered by the subtree's root.
A text without any word, or without one that matches any category, gets the abstention
:class:`~model.text_classifier.TextClassifier` gives an empty text: ``LOW_CONFIDENCE``,
confidence 0, a root only (no evidence, no guess).

**Offline only.** Nothing here opens a connection; the static embeddings are read from the
``wordllama`` wheel (:class:`~model.static_embeddings.StaticEmbeddings`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from model.decode import Decoder, Prediction, abstention
from model.errors import ModelError
from model.static_embeddings import EMBEDDINGS_PACKAGE, StaticEmbeddings
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.text_features import TextInput, as_fields
from model.vocabulary import Vocabulary
from model.zero_shot_words import (
    ATTRIBUTE_WORDS,
    GENERAL_SYNONYMS,
    SYNONYMS_FROM_TRAINING_TITLES,
    AliasIndex,
    Concept,
    SynonymChoice,
    stem,
    synonym_table,
    text_concepts,
    words,
)

__all__ = [
    "ATTRIBUTE_WORDS",
    "DEFAULT_THRESHOLD",
    "EMBEDDINGS_PACKAGE",
    "GENERAL_SYNONYMS",
    "LEAF_OUTPUT",
    "SYNONYMS_FROM_TRAINING_TITLES",
    "StaticEmbeddings",
    "SynonymChoice",
    "ZeroShotClassifier",
    "ZeroShotConfig",
    "path_bm25_scores",
    "path_cosine_scores",
    "stem",
    "synonym_table",
    "words",
]

LEAF_OUTPUT = "leaf"
"""The key of :meth:`ZeroShotClassifier.predict_raw`'s output, as a flat model's head."""
DEFAULT_THRESHOLD = 0.5
"""Below this confidence the answer stops at an ancestor: more likely wrong than right."""

FloatArray = NDArray[np.float32]


@dataclass(frozen=True)
class ZeroShotConfig:
    """How the zero-shot classifier weighs its evidence (see the module docstring)."""

    head_decay: float = 0.5
    """Weight of a title word relative to the next one: the last word counts most."""
    ancestor_weight: float = 0.8
    """How much a word matching a leaf's ancestor counts for the leaf (1 would be fully):
    as much as a two-word alias holding the word, a little less than the leaf's own name."""
    descendant_weight: float = 0.8
    """How much an alias from a category below the cut depth counts for its truncated node."""
    synonym_weight: float = 0.9
    """How much a match through a synonym table counts against a match of the word itself."""
    compound_weight: float = 0.8
    """How much a match through the last part of a compound word counts."""
    embedding_weight: float = 0.0
    """How much a perfect embedding match (cosine 1) counts; 0 switches embeddings off."""
    embedding_floor: float = 0.5
    """Cosines at or below this count nothing; above it they rise linearly to the weight."""
    synonyms: SynonymChoice = "general"
    """Which synonym tables are used (:mod:`model.zero_shot_words`): ``"general"``, the
    strictly zero-shot :data:`GENERAL_SYNONYMS`; ``"all"``, with
    :data:`SYNONYMS_FROM_TRAINING_TITLES` too (chosen after reading the fashion-products
    training titles: not strictly zero-shot); ``"none"``."""
    temperature: float = 0.04
    """Softmax temperature on scores in [0, 1] (the share of the title a leaf explains): a
    leaf explaining a tenth more of the title is e**2.5 (12) times as probable. Set by the
    coverage it gives on the fashion-products *training* titles (0.05 answered half, 0.03
    nearly all); it moves confidences, and the chosen leaf only through marginal decoding."""
    decode: Literal["marginal", "leaf"] = "marginal"
    """How the leaf probabilities are decoded (see the module docstring)."""
    field_weights: Mapping[str, float] = field(
        default_factory=lambda: {"title": 1.0, "partner_category": 1.0, "description": 0.3}
    )
    """Weight of each text field's words; a word in several fields counts its best."""
    k1: float = 1.2
    """BM25 term-frequency saturation."""
    b: float = 0.75
    """BM25 length normalisation: how much a longer alias is penalised."""

    def __post_init__(self) -> None:
        """Refuse values outside their ranges, quoting them (ModelError)."""
        for name in (
            "head_decay",
            "ancestor_weight",
            "descendant_weight",
            "synonym_weight",
            "compound_weight",
            "embedding_weight",
            "b",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ModelError(f"{name} must be in [0, 1], got {value!r}")
        if not 0.0 <= self.embedding_floor < 1.0:
            raise ModelError(f"embedding_floor must be in [0, 1), got {self.embedding_floor!r}")
        if not self.temperature > 0.0:
            raise ModelError(f"temperature must be > 0, got {self.temperature!r}")
        if self.synonyms not in get_args(SynonymChoice):
            raise ModelError(f"synonyms must be 'general', 'all' or 'none', got {self.synonyms!r}")
        if self.decode not in ("marginal", "leaf"):
            raise ModelError(f"decode must be 'marginal' or 'leaf', got {self.decode!r}")
        if self.k1 < 0.0:
            raise ModelError(f"k1 must be >= 0, got {self.k1!r}")
        unknown = set(self.field_weights) - {"title", "description", "partner_category"}
        if unknown or any(weight < 0 for weight in self.field_weights.values()):
            raise ModelError(f"bad field_weights {dict(self.field_weights)!r}")

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-able values."""
        data = asdict(self)
        data["field_weights"] = dict(self.field_weights)
        return data


def _ancestor_table(
    truncated: TruncatedTaxonomy, leaves: Sequence[int], nodes: Sequence[int]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Per leaf, its ancestors' and its own positions in ``nodes`` (``len(nodes)`` pads)."""
    position = {node: index for index, node in enumerate(nodes)}
    paths = np.full((len(leaves), truncated.depth), len(nodes), dtype=np.intp)
    own = np.zeros(len(leaves), dtype=np.intp)
    for row, leaf in enumerate(leaves):
        for level, node in enumerate(truncated.path_ids(leaf)[:-1]):
            paths[row, level] = position[node]
        own[row] = position[leaf]
    return paths, own


class ZeroShotClassifier:
    """Product texts to taxonomy predictions, with no training data (see the module docstring).

    Built from a truncated taxonomy; ``embeddings`` (default: the packaged static embeddings
    when ``config.embedding_weight`` > 0) add soft matches. ``threshold`` and ``top_k`` are
    the :class:`~model.decode.Decoder`'s. Results have :class:`TextClassifier`'s shape, so the
    two are interchangeable for a caller. Safe to call from several threads.
    """

    def __init__(
        self,
        truncated: TruncatedTaxonomy,
        *,
        config: ZeroShotConfig | None = None,
        embeddings: StaticEmbeddings | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        top_k: int = 5,
    ) -> None:
        """Index the taxonomy's aliases (a second or two for the full taxonomy)."""
        self.config = config or ZeroShotConfig()
        if embeddings is None and self.config.embedding_weight > 0:
            embeddings = StaticEmbeddings.load()
        self.embeddings = embeddings if self.config.embedding_weight > 0 else None
        self.truncated = truncated
        self.vocabulary = Vocabulary.full(truncated)
        self.decoder = Decoder(truncated, self.vocabulary, threshold=threshold, top_k=top_k)
        self._index = AliasIndex(
            truncated,
            descendant_weight=self.config.descendant_weight,
            compound_weight=self.config.compound_weight,
            k1=self.config.k1,
            b=self.config.b,
            embeddings=self.embeddings,
        )
        self._leaves = self.vocabulary.leaves
        self._paths, self._own = _ancestor_table(truncated, self._leaves, self._index.nodes)
        self._synonyms: dict[str, tuple[str, ...]] = {
            stem(word): tuple(stem(target) for target in targets)
            for word, targets in synonym_table(self.config.synonyms).items()
        }
        self._lock = threading.Lock()
        self._empty: Prediction | None = None
        settings = json.dumps(
            {"config": self.config.to_json(), "taxonomy": truncated.taxonomy.version},
            sort_keys=True,
        )
        self.version = hashlib.sha256(settings.encode()).hexdigest()[:12]
        """Identifies the settings and taxonomy version: the same version, the same answers."""

    @classmethod
    def from_taxonomy(
        cls,
        taxonomy: Taxonomy | Path,
        *,
        depth: int = 4,
        config: ZeroShotConfig | None = None,
        embeddings: StaticEmbeddings | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        top_k: int = 5,
    ) -> ZeroShotClassifier:
        """Build from a taxonomy (or its file) cut at ``depth``."""
        loaded = taxonomy if isinstance(taxonomy, Taxonomy) else Taxonomy.load(taxonomy)
        return cls(
            loaded.truncate(depth),
            config=config,
            embeddings=embeddings,
            threshold=threshold,
            top_k=top_k,
        )

    def is_empty(self, text: TextInput) -> bool:
        """Whether ``text`` has no word at all (the classifier then abstains).

        The classifier also abstains on a text whose words match no category.
        """
        return not any(words(value) for _, value in as_fields(text).items() if value)

    def _concepts(self, text: TextInput) -> list[Concept]:
        """The words of a text that name something, with their weights and forms."""
        config = self.config
        return text_concepts(
            as_fields(text),
            field_weights=config.field_weights,
            head_decay=config.head_decay,
            synonyms=self._synonyms,
            synonym_weight=config.synonym_weight,
            known=self._index.vocabulary,
            compound_weight=config.compound_weight,
        )

    def scores(self, texts: Sequence[TextInput]) -> FloatArray:
        """Per text, every leaf's score in [0, 1]: the share of the text's words it explains.

        Leaves are in :attr:`vocabulary` order (``vocabulary.leaves``); a text without a
        word that names anything scores 0 everywhere.
        """
        index = self._index
        config = self.config
        all_concepts = [self._concepts(text) for text in texts]
        soft: dict[str, tuple[NDArray[np.intp], FloatArray]] = {}
        if self.embeddings is not None and index.alias_vectors is not None:
            surfaces = sorted({c.surface for concepts in all_concepts for c in concepts})
            if surfaces:
                cosines = self.embeddings.embed(surfaces) @ index.alias_vectors.T
                scale = config.embedding_weight / (1.0 - config.embedding_floor)
                for surface, row in zip(surfaces, cosines, strict=True):
                    hits = np.flatnonzero(row > config.embedding_floor)
                    soft[surface] = (hits, (row[hits] - config.embedding_floor) * scale)
        out = np.zeros((len(texts), len(self._leaves)), dtype=np.float32)
        ancestor = config.ancestor_weight
        for row, concepts in enumerate(all_concepts):
            total_weight = sum(concept.weight for concept in concepts)
            if total_weight <= 0:
                continue
            for concept in concepts:
                aliases: list[NDArray[np.intp]] = []
                values: list[FloatArray] = []
                for form, discount in concept.forms.items():
                    hits, matched = index.term_matches(form)
                    aliases.append(hits)
                    values.append(matched * discount)
                if concept.surface in soft:
                    aliases.append(soft[concept.surface][0])
                    values.append(soft[concept.surface][1])
                nodes = index.node_scores(
                    np.concatenate(aliases), np.concatenate(values).astype(np.float32)
                )
                own = nodes[self._own]
                inherited = nodes[self._paths].max(axis=1) * ancestor
                out[row] += concept.weight * np.maximum(own, inherited)
            out[row] /= total_weight
        return out

    def predict_raw(self, texts: Sequence[TextInput]) -> dict[str, FloatArray]:
        """Leaf probabilities, ``{"leaf": (texts, leaves)}``: the scores' softmax.

        A text that matches nothing gets the uniform distribution (:meth:`classify`
        abstains on it instead).
        """
        return {LEAF_OUTPUT: self._softmax(self.scores(texts))}

    def _softmax(self, scores: FloatArray) -> FloatArray:
        """``softmax(scores / temperature)`` per row."""
        logits = scores / self.config.temperature
        if len(logits):
            logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        out: FloatArray = probabilities.astype(np.float32)
        return out

    def _decode(self, probabilities: FloatArray) -> list[Prediction]:
        """Decode leaf probabilities as configured (marginal per level, or the flat head)."""
        if self.config.decode == "leaf":
            return self.decoder.decode_leaf(probabilities)
        return self.decoder.decode_multi(self.decoder.level_confidences(probabilities))

    def _abstention(self) -> Prediction:
        """The answer for a text without words: a root at confidence 0 (as TextClassifier)."""
        if self._empty is None:
            uniform = np.full((1, len(self._leaves)), 1.0 / len(self._leaves))
            prior = self._decode(uniform.astype(np.float32))[0]
            self._empty = abstention(prior)
        return self._empty

    def classify(self, texts: Sequence[TextInput]) -> list[Prediction]:
        """Predictions for a batch of texts, in order (any batch size, empty included).

        A text is a :class:`~model.text_features.TextFields`, a string (a title) or None.
        """
        if len(texts) == 0:
            return []
        scores = self.scores(texts)
        # No word matched anything (or there was no word): no evidence, no guess.
        matched = scores.max(axis=1) > 0.0
        answers: list[Prediction | None] = [None] * len(texts)
        present = np.flatnonzero(matched).tolist()
        if present:
            probabilities = self._softmax(scores[present])
            for row, prediction in zip(present, self._decode(probabilities), strict=True):
                answers[row] = prediction
        if not matched.all():
            with self._lock:
                abstention = self._abstention()
            for row in np.flatnonzero(~matched).tolist():
                answers[row] = abstention
        return [answer for answer in answers if answer is not None]


def _leaf_paths(truncated: TruncatedTaxonomy) -> list[str]:
    """Every leaf's path as text, in the order of ``truncated.leaves``."""
    return [" > ".join(truncated.taxonomy.category(leaf).path) for leaf in truncated.leaves]


def path_cosine_scores(
    truncated: TruncatedTaxonomy, embeddings: StaticEmbeddings, texts: Sequence[str]
) -> FloatArray:
    """Baseline: the cosine between each text's and each leaf path's mean-pooled embedding."""
    return embeddings.embed(list(texts)) @ embeddings.embed(_leaf_paths(truncated)).T


def path_bm25_scores(truncated: TruncatedTaxonomy, texts: Sequence[str]) -> FloatArray:
    """Baseline: plain BM25 (``bm25s``, its English stopwords, no stemming) over leaf paths."""
    import bm25s  # type: ignore[import-untyped]

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(_leaf_paths(truncated), stopwords="en", show_progress=False),
        show_progress=False,
    )
    out = np.zeros((len(texts), len(truncated.leaves)), dtype=np.float32)
    for row, text in enumerate(texts):
        query = bm25s.tokenize([text], stopwords="en", return_ids=False, show_progress=False)[0]
        if query:
            out[row] = retriever.get_scores(list(query))
    return out
