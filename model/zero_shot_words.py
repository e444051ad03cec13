"""Words for the zero-shot classifier: a title's words, a category's aliases, synonym tables.

:mod:`model.zero_shot` scores BM25 matches between the two sides built here.

- **A title** (:func:`text_concepts`): case-folded, NFKC-normalised :func:`words`, less
  function words (:data:`STOPWORDS`), describing words (:data:`ATTRIBUTE_WORDS`) and model
  codes, each reduced to its singular (:func:`stem`) and weighed by its place (the product
  type comes last); each is a :class:`Concept` matched in several forms: itself, its
  synonyms, the known last part of a compound (:func:`split_compound`).
- **A category** (:class:`AliasIndex`): its name and each kind the name joins
  (:func:`conjuncts`), as stems, indexed with ``bm25s``.

**Where the synonym tables come from.** Retail titles name products with words the
taxonomy never uses (``"sneakers"`` for what it files under ``"Shoes"``). Two tables map such
words to the taxonomy's own, and are kept apart by where they come from:

- :data:`GENERAL_SYNONYMS`: the everyday English name of a product type, unambiguous in a
  shop, that any catalog engineer writes from general knowledge without looking at any data
  set (``"sneaker"`` → ``"shoe"``, ``"jeans"`` → ``"pant"``, ``"fridge"`` →
  ``"refrigerator"``). This is the strictly zero-shot table and the default
  (``ZeroShotConfig(synonyms="general")``).
- :data:`SYNONYMS_FROM_TRAINING_TITLES`: every entry added or chosen after reading the
  fashion-products *training* titles, or that only makes sense for that data: Indian-English
  and regional words (``"kurta"``, ``"churidar"``, ``"dupatta"``, ``"innerwear"``,
  ``"deo"``), the data set's spellings (``"shoulderbag"``, ``"flop"`` of "flip flops"), and
  fashion senses of words that name something else elsewhere in the taxonomy (``"flat"``,
  ``"wedge"``, ``"heel"``, ``"clutch"``, ``"tie"``, ``"cap"``, ``"muffler"``, ``"tee"``,
  ``"stocking"``, ``"shades"``). Whenever it was in doubt whether an entry would be written
  without the data, it went here. Using it (``synonyms="all"``) is *not* strictly
  zero-shot.

The table was first written as one, its apparel part after reading the training titles; it
was split afterwards, entry by entry, by the rule above (the general table is what passes
the "without the data" test, not a record of what was written first). No validation title
was read for either table, and the split was fixed before the validation figures were
measured; nothing in them is fitted to labels. The other hand-set parts, the attribute
words and the weights and temperature of ``ZeroShotConfig``, were designed on the training
titles too; they name no product type and are the same whichever tables are used.

Both tables hold singular words and are compared after :func:`stem`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from model.static_embeddings import StaticEmbeddings
from model.taxonomy import TruncatedTaxonomy
from model.text_features import TextFields, normalise, tokens

__all__ = [
    "ATTRIBUTE_WORDS",
    "GENERAL_SYNONYMS",
    "STOPWORDS",
    "SYNONYMS_FROM_TRAINING_TITLES",
    "AliasIndex",
    "Concept",
    "SynonymChoice",
    "conjuncts",
    "split_compound",
    "stem",
    "synonym_table",
    "text_concepts",
    "words",
]

FloatArray = NDArray[np.float32]

_MAX_WORDS = 64
"""Content words read per field: a title has a dozen; a long description counts no more."""

SynonymChoice = Literal["general", "all", "none"]
"""Which synonym tables are used: the general one, both, or neither."""


def _listed(text: str) -> list[str]:
    """The words of a space-separated list (word tables read better as text)."""
    return text.split()


_IRREGULAR = dict(
    pair.split(":")
    for pair in _listed(
        "men:man women:woman children:child feet:foot teeth:tooth mice:mouse geese:goose "
        "people:person scarves:scarf knives:knife wolves:wolf leaves:leaf shelves:shelf "
        "halves:half loaves:loaf calves:calf hooves:hoof lives:life wives:wife thieves:thief "
        "series:series species:species news:news"
    )
)
"""Irregular plurals, and singulars that look like plurals."""

_SINGULAR_IS = frozenset(
    _listed("tennis iris trellis debris cannabis penis pelvis axis ibis marquis hubris")
)
"""Singular words ending in ``-is`` besides ``-sis`` and ``-itis`` ones (``"analysis"``)."""


def words(text: str) -> list[str]:
    """Return the case-folded words of ``text`` (the text featuriser's normalisation)."""
    return tokens(normalise(text))


def stem(word: str) -> str:
    """Return a case-folded word's singular stem (``"watches"`` → ``"watch"``).

    A light English plural stripper, the same for titles and for the taxonomy, so only
    consistency matters: irregular plurals first (``"men"`` → ``"man"``); ``-sses``,
    ``-xes``, ``-ches``, ``-shes`` lose ``-es``; a final ``-s`` goes unless the word ends in
    ``-ss``, ``-us``, ``-sis``, ``-itis`` or is a known singular (``"tennis"``). As in Porter's
    stemmer a final consonant-``y`` and a final ``-ie`` become ``-i``, so both plurals in
    ``-ies`` meet their singular (``"accessories"``/``"accessory"`` → ``"accessori"``,
    ``"neckties"``/``"necktie"`` → ``"neckti"``). Words of three letters or fewer, and words
    with digits, are left alone. ``stem(stem(w)) == stem(w)``.
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or not word.isalpha():
        return word
    base = word
    if word.endswith("ies") and len(word) > 4:
        base = word[:-3] + "i"
    elif word.endswith(("sses", "xes", "ches", "shes", "zzes")):
        base = word[:-2]
    elif word.endswith("s") and not (
        word.endswith(("ss", "us", "sis", "itis")) or word in _SINGULAR_IS
    ):
        base = word[:-1]
        if base in _IRREGULAR:
            return _IRREGULAR[base]
    if len(base) > 3 and base.endswith("y") and base[-2] not in "aeiou":
        return base[:-1] + "i"
    if len(base) > 4 and base.endswith("ie"):
        return base[:-1]
    return base


STOPWORDS = frozenset(
    _listed(
        "a an and or the of for with without in on to by from at as is are be this that these "
        "those into over under per via its it your our my plus"
    )
)
"""Function words: they name nothing."""

ATTRIBUTE_WORDS = frozenset(
    stem(word)
    for word in _listed(
        # Colours and shades.
        "black white blue navy red green grey gray brown beige pink purple maroon olive yellow "
        "orange cream tan silver gold golden khaki teal turquoise lavender magenta mustard "
        "charcoal peach coral rust burgundy multi multicolor multicolour multicoloured violet "
        "indigo aqua cyan mauve lime ivory off copper bronze nude fluorescent neon sea dark light "
        "bright pastel wine coffee metallic transparent melange "
        # Who it is for.
        "man woman unisex boy girl kid lady gent her him male female "
        "adult teen junior "
        # Pattern, fit, finish, pack size, marketing.
        "printed print solid striped stripe checked check plain floral graphic textured "
        "embroidered slim regular fit skinny straight relaxed loose classic basic casual smart "
        "everyday assorted pack set pair pcs piece combo count lot size small medium large xl xxl "
        "xs new original genuine premium quality style stylish fashion fashionable trendy latest "
        "designer brand branded best sale offer free shipping"
    )
)
"""Words of a product title that describe the product rather than name it (after
:func:`stem`): colours, audiences, patterns and fits, pack sizes, marketing. They are dropped
from titles: the taxonomy names kinds of product, and a colour matching ``"Black Pepper"``
or ``"Sea Salt"`` is no evidence. No product-type word is in it."""

GENERAL_SYNONYMS: Mapping[str, tuple[str, ...]] = {
    # Footwear: everyday names of kinds of shoe; the taxonomy files them all under "Shoes".
    **dict.fromkeys(
        _listed("sandal slipper sneaker loafer moccasin clog espadrille brogue boot footwear"),
        ("shoe",),
    ),
    # Tops.
    **dict.fromkeys(
        _listed("tshirt blouse sweater sweatshirt hoodie pullover cardigan camisole tunic henley"),
        ("shirt", "top"),
    ),
    # Trousers.
    **dict.fromkeys(_listed("trouser jean chino legging sweatpant"), ("pant",)),
    # Underwear, hosiery.
    **dict.fromkeys(_listed("panty knicker"), ("underwear",)),
    "pantyhose": ("hosiery",),
    # Accessories.
    **dict.fromkeys(_listed("beanie beret fedora"), ("hat",)),
    "satchel": ("handbag",),
    **dict.fromkeys(_listed("rucksack daypack"), ("backpack",)),
    **dict.fromkeys(_listed("duffle holdall"), ("duffel",)),
    **dict.fromkeys(_listed("wristwatch timepiece"), ("watch",)),
    "spectacles": ("eyeglasses",),
    "gown": ("dress",),
    # Personal care.
    "fragrance": ("perfume", "cologne"),
    # Beyond apparel: everyday names the taxonomy spells otherwise.
    "tv": ("television",),
    "fridge": ("refrigerator",),
    "couch": ("sofa",),
    **dict.fromkeys(_listed("smartphone cellphone"), ("phone",)),
    **dict.fromkeys(_listed("earphone earbud"), ("headphone",)),
    "hoover": ("vacuum",),
    "nappy": ("diaper",),
}
"""Everyday retail names of product types mapped to the words the taxonomy uses for the same
thing or its kind (``"sandal"`` → ``"shoe"``), written from general knowledge: the strictly
zero-shot table (see the module docstring)."""

SYNONYMS_FROM_TRAINING_TITLES: Mapping[str, tuple[str, ...]] = {
    # Fashion senses of words the taxonomy uses otherwise ("Wedge Tools", "Flat Mineral
    # Water", "Heel" in crafts), British ones with another US sense, the data's "flip flops".
    **dict.fromkeys(_listed("flop trainer mule heel stiletto derby oxford wedge flat"), ("shoe",)),
    # "Golf Tees", "Water Polo", "Baby Jumpers", "Bicycle Jerseys"; Indian kurta and kurti.
    **dict.fromkeys(_listed("tee polo jumper jersey kurta kurti"), ("shirt", "top")),
    # "Paper Joggers"; "capris", "slacks"; the Indian churidar.
    **dict.fromkeys(_listed("jogger capri slack churidar"), ("pant",)),
    # "Briefcases", boxer dogs, thong sandals; Indian-English "innerwear".
    **dict.fromkeys(_listed("brief boxer thong innerwear"), ("underwear",)),
    # "Holiday Stockings"; "tight" is mostly an adjective.
    **dict.fromkeys(_listed("stocking tight"), ("hosiery",)),
    # Indian-English "muffler" (a vehicle part in the taxonomy), "stole", "dupatta".
    **dict.fromkeys(_listed("muffler stole dupatta pashmina"), ("scarf", "shawl")),
    "cap": ("hat",),  # "Wig Caps", "Water Polo Caps", bottle and lens caps
    "tie": ("necktie",),  # cable ties, hair ties
    # Vehicle clutches, British purses (wallets), "Shopping Totes"; the data's "shoulderbag".
    **dict.fromkeys(_listed("clutch purse tote shoulderbag"), ("handbag",)),
    "shades": ("sunglasses",),  # "Window Blinds & Shades"
    "frock": ("dress",),
    "saree": ("sari",),
    # Indian-English "deo"; perfumers' abbreviations.
    "deo": ("deodorant",),
    **dict.fromkeys(_listed("edt edp"), ("perfume", "cologne")),
}
"""Synonyms added or chosen after reading the fashion-products *training* titles, or that
only make sense for such data: using them is not strictly zero-shot (see the module
docstring)."""


def synonym_table(choice: SynonymChoice) -> dict[str, tuple[str, ...]]:
    """The synonym entries ``choice`` uses: ``"general"``, ``"all"`` (both tables), ``"none"``.

    Raises ValueError for any other choice.
    """
    if choice == "none":
        return {}
    if choice == "general":
        return dict(GENERAL_SYNONYMS)
    if choice == "all":
        return {**GENERAL_SYNONYMS, **SYNONYMS_FROM_TRAINING_TITLES}
    raise ValueError(f"synonyms must be 'general', 'all' or 'none', got {choice!r}")


@dataclass
class Concept:
    """One word of a text: its weight and the forms it can match in (form → discount)."""

    weight: float
    forms: dict[str, float]
    surface: str


def text_concepts(
    fields: TextFields,
    *,
    field_weights: Mapping[str, float],
    head_decay: float,
    synonyms: Mapping[str, tuple[str, ...]],
    synonym_weight: float,
    known: set[str],
    compound_weight: float,
) -> list[Concept]:
    """The words of a text that name something, each once, with its best weight and its forms.

    Per field (weighed ``field_weights``), words of one letter, with digits, function words and
    :data:`ATTRIBUTE_WORDS` are dropped; the ``k``-th remaining word from the end weighs
    ``head_decay ** k`` (a description's words instead share two words' weight). A word's
    forms: its stem (1), its stemmed ``synonyms`` (``synonym_weight``), and when the stem is
    not ``known`` the known last part of it as a compound and that part's synonyms
    (``compound_weight``).
    """
    concepts: dict[str, Concept] = {}
    for name, value in fields.items():
        weight = field_weights.get(name, 0.0)
        if not value or weight <= 0:
            continue
        content = [
            word
            for word in words(value)
            if len(word) > 1
            and word.isalpha()
            and word not in STOPWORDS
            and stem(word) not in ATTRIBUTE_WORDS
        ][:_MAX_WORDS]
        # A description has no head word at its end; its words share two words' weight.
        flat = weight * min(1.0, 2.0 / len(content)) if content else 0.0
        for rank, word in enumerate(reversed(content)):
            term = stem(word)
            word_weight = flat if name == "description" else weight * head_decay**rank
            concept = concepts.get(term)
            if concept is None:
                forms = {term: 1.0}
                for synonym in synonyms.get(term, ()):
                    forms.setdefault(synonym, synonym_weight)
                tail = "" if term in known else split_compound(term, known, prefix_known=False)
                if tail:
                    forms.setdefault(tail, compound_weight)
                    for synonym in synonyms.get(tail, ()):
                        forms.setdefault(synonym, compound_weight)
                concepts[term] = concept = Concept(0.0, forms, word)
            concept.weight = max(concept.weight, word_weight)
    return [concept for concept in concepts.values() if concept.weight > 0]


def conjuncts(name: str) -> list[str]:
    """The kinds a category name joins, with the words they share carried over.

    ``"Shirts & Tops"`` → ``["Shirts", "Tops"]``. A one-word part borrows the leading
    modifier of a longer first part (``"Bread Boxes & Bags"`` → ``"Bread Bags"``), or else
    the head of the next longer part (``"Clothing & Closet Storage"`` → ``"Clothing
    Storage"``), as English coordination usually means. A name without ``&`` or commas gives
    itself.
    """
    parts = [part.split() for part in re.split(r"\s*(?:&|,)\s*", name) if part.strip()]
    if len(parts) < 2:
        return [name]
    modifier = parts[0][:-1]
    out: list[str] = []
    for position, part in enumerate(parts):
        if len(part) == 1 and position > 0 and modifier:
            part = [*modifier, *part]
        elif len(part) == 1 and not modifier:
            later = next((p for p in parts[position + 1 :] if len(p) > 1), None)
            if later is not None:
                part = [*part, *later[1:]]
        out.append(" ".join(part))
    return out


def split_compound(word: str, known: set[str] | frozenset[str], *, prefix_known: bool) -> str:
    """The longest known last part of a compound word (``"necktie"`` → ``"tie"``), or ``""``.

    The last part has at least 4 letters, or 3 when the first part is known too; with
    ``prefix_known`` the first part must always be known.
    """
    for cut in range(1, len(word) - 2):
        head, tail = word[:cut], word[cut:]
        if tail not in known:
            continue
        if head in known or (not prefix_known and len(tail) >= 4):
            return tail
    return ""


class AliasIndex:
    """The taxonomy's aliases, their BM25 term scores and (optionally) static embeddings.

    Every category of the full taxonomy gives aliases, credited to its node of the truncated
    tree: its name and each of its :func:`conjuncts` (weight 1, or ``descendant_weight`` for a
    category below the cut depth), and the known last part of each compound word in them
    (:func:`split_compound`, times ``compound_weight``). Aliases are lists of stems indexed
    with ``bm25s`` (``k1``, ``b``); with ``embeddings`` each alias's text is embedded too.
    """

    def __init__(
        self,
        truncated: TruncatedTaxonomy,
        *,
        descendant_weight: float,
        compound_weight: float,
        k1: float,
        b: float,
        embeddings: StaticEmbeddings | None = None,
    ) -> None:
        """Index every category's aliases (a second or two for the full taxonomy)."""
        import bm25s  # type: ignore[import-untyped]

        taxonomy = truncated.taxonomy
        self.nodes = truncated.nodes
        """The truncated tree's nodes: ``alias_nodes`` and :meth:`node_scores` index them."""
        node_index = {node: index for index, node in enumerate(self.nodes)}
        names = [category.name for category in taxonomy]
        self.vocabulary = {
            stem(word) for name in names for word in words(name) if word not in STOPWORDS
        }
        """Every stem of the taxonomy's names: what a title word can match as itself."""
        alias_tokens: list[list[str]] = []
        alias_nodes: list[int] = []
        alias_weights: list[float] = []
        alias_texts: list[str] = []
        for category in taxonomy:
            node = node_index[truncated.truncate_id(category.id)]
            weight = 1.0 if category.depth <= truncated.depth else descendant_weight
            seen: set[tuple[str, ...]] = set()
            for text in dict.fromkeys([category.name, *conjuncts(category.name)]):
                stems = [stem(word) for word in words(text) if word not in STOPWORDS]
                if stems and tuple(stems) not in seen:
                    seen.add(tuple(stems))
                    alias_tokens.append(stems)
                    alias_nodes.append(node)
                    alias_weights.append(weight)
                    alias_texts.append(text)
                for word in stems:
                    tail = split_compound(word, self.vocabulary, prefix_known=True)
                    if tail and (tail,) not in seen:
                        seen.add((tail,))
                        alias_tokens.append([tail])
                        alias_nodes.append(node)
                        alias_weights.append(weight * compound_weight)
                        alias_texts.append(tail)
        self.alias_nodes = np.asarray(alias_nodes, dtype=np.intp)
        self.alias_weights = np.asarray(alias_weights, dtype=np.float32)
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(alias_tokens, show_progress=False)
        scores = retriever.scores
        self._data = np.asarray(scores["data"], dtype=np.float32)
        self._indices = np.asarray(scores["indices"], dtype=np.intp)
        self._indptr = np.asarray(scores["indptr"], dtype=np.intp)
        self._terms: dict[str, int] = {
            term: int(index) for term, index in retriever.vocab_dict.items() if term
        }
        # A term's best possible score: in a one-word alias that is the term (Lucene BM25,
        # as bm25s scores). Dividing by it makes a one-word exact match 1 and a longer
        # alias a partial match ("Wedge Tools" 0.8 for "wedge").
        documents = len(alias_tokens)
        frequency = np.diff(self._indptr).astype(np.float64)
        idf = np.log(1.0 + (documents - frequency + 0.5) / (frequency + 0.5))
        average = float(np.mean([len(tokens_) for tokens_ in alias_tokens]))
        tf_one = 1.0 / (1.0 + k1 * (1.0 - b + b / average))
        self._best = (idf * tf_one).astype(np.float32)
        self.alias_vectors = embeddings.embed(alias_texts) if embeddings is not None else None

    def term_matches(self, term: str) -> tuple[NDArray[np.intp], FloatArray]:
        """The aliases ``term`` occurs in and its BM25 score there, over its best possible."""
        index = self._terms.get(term)
        if index is None:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32)
        start, stop = self._indptr[index], self._indptr[index + 1]
        best = float(self._best[index])
        values = self._data[start:stop] / best if best > 0 else self._data[start:stop]
        return self._indices[start:stop], np.minimum(values, 1.0)

    def node_scores(self, aliases: NDArray[np.intp], values: FloatArray) -> FloatArray:
        """Per node (plus one padding slot, 0), the best of its aliases' discounted values."""
        scores = np.zeros(len(self.nodes) + 1, dtype=np.float32)
        np.maximum.at(scores, self.alias_nodes[aliases], values * self.alias_weights[aliases])
        return scores
