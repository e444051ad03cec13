"""Product text to a fixed-size vector: hashed word and character n-grams, no vocabulary.

:class:`TextFeaturizer` turns a product's title, description and partner category
(:class:`TextFields`, or a plain string: a title) into one L2-normalised float32 vector of
``dim`` numbers. It has no fitted state, so the same settings give the same vector on every
machine, in every process and in every Python version (the hash is BLAKE2b, never Python's
``hash()``, which is salted per process). The steps, per field:

1. **Bound.** At most ``4 * max_chars`` characters of the raw field are read (an unclosed
   tag cut there is dropped); after normalising, the text is cut to ``max_chars``
   (:data:`MAX_CHARS`, 4,000): a huge description costs the same as a long one.
2. **Normalise.** ``<script>``/``<style>`` blocks, comments and tags become spaces; HTML
   entities are unescaped (``&amp;`` → ``&``); Unicode NFKC (full-width letters and
   ligatures to plain ones); case-folded (a stronger lowercase: ``ß`` → ``ss``); runs of
   whitespace become one space.
3. **Tokens.** Runs of letters, digits and combining marks (Unicode categories L, N, M, so
   Devanagari or Thai words keep their vowel signs); everything else separates.
4. **N-grams.** Word unigrams and bigrams (``word_ngrams``), and character 3- to 5-grams
   (``char_ngrams``) of each token padded with a space either side (so ``"tshirts"`` and
   ``"t-shirts"`` share most grams, and scripts without spaces between words still give
   grams).
5. **Hash.** Each n-gram's 64-bit BLAKE2b digest picks its column (``digest % dim``) and a
   sign (the top bit), so colliding n-grams tend to cancel rather than add up.
6. **Weigh.** Sublinear term frequency, ``1 + log(count)``, then the field's vector is
   L2-normalised.

The fields' vectors are added with their weights (:data:`DEFAULT_FIELD_WEIGHTS`: title 1,
description and partner category 0.5 each) and the sum L2-normalised once more. All fields
share one hashed space, so words learned from titles count when they appear in a
description. A product whose fields give no token at all (no text, only punctuation,
emoji, markup) gets the all-zero vector: :meth:`TextFeaturizer.is_empty` says so, and
:class:`model.text_classifier.TextClassifier` abstains on it instead of guessing.

:meth:`TextFeaturizer.transform` returns :class:`SparseFeatures` (CSR-like arrays); batches
are made dense only when a model needs them (:meth:`SparseFeatures.dense`), so 2**15
columns cost memory per batch, not per data set. The settings round-trip through JSON
(:meth:`TextFeaturizer.to_json`, :meth:`TextFeaturizer.from_json`): the model directory
stores them, and loading rebuilds the same featuriser.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.errors import ModelError

__all__ = [
    "DEFAULT_DIM",
    "DEFAULT_FIELD_WEIGHTS",
    "FEATURIZER_KIND",
    "MAX_CHARS",
    "SparseFeatures",
    "TextFeaturizer",
    "TextFields",
    "TextInput",
    "as_fields",
    "normalise",
    "tokens",
]

FEATURIZER_KIND = "hashed-ngrams"
"""The ``kind`` in the settings; a model directory with another kind is refused."""
FEATURIZER_VERSION = 1
"""Bumped whenever the same settings would give other vectors."""
DEFAULT_DIM = 2**15
"""Columns of the vector: 32,768 (a dense layer to 40 leaves is 1.3 M weights)."""
MAX_CHARS = 4000
"""Characters of a field's normalised text that are featurised; the rest is ignored."""
RAW_FACTOR = 4
"""At most ``RAW_FACTOR * max_chars`` raw characters are normalised (markup shrinks)."""
DEFAULT_FIELD_WEIGHTS: Mapping[str, float] = {
    "title": 1.0,
    "description": 0.5,
    "partner_category": 0.5,
}
"""How much each field counts in the sum of the fields' unit vectors."""
_DIGEST_PERSON = b"enrich-text"

_BLOCKS = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENTS = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_TAGS = re.compile(r"<[A-Za-z/!?][^<>]*>")
_UNCLOSED_TAG = re.compile(r"<[A-Za-z/!?][^<>]*$")


@dataclass(frozen=True)
class TextFields:
    """A product's text: its title, description and partner category, each optional."""

    title: str | None = None
    description: str | None = None
    partner_category: str | None = None

    def items(self) -> Iterator[tuple[str, str | None]]:
        """Yield ``(field name, text)`` in a fixed order."""
        yield "title", self.title
        yield "description", self.description
        yield "partner_category", self.partner_category


TextInput = TextFields | str | None
"""What the text classifier takes per product: its fields, a title alone, or nothing."""


def as_fields(text: TextInput) -> TextFields:
    """``text`` as :class:`TextFields` (a string is a title); ModelError for anything else."""
    if text is None:
        return TextFields()
    if isinstance(text, str):
        return TextFields(title=text)
    if isinstance(text, TextFields):
        return text
    raise ModelError(f"expected a string, TextFields or None, got {type(text).__name__}")


def normalise(text: str, max_chars: int = MAX_CHARS) -> str:
    """Return ``text`` without markup, NFKC, case-folded, one space between words, bounded.

    At most ``RAW_FACTOR * max_chars`` characters are read and at most ``max_chars`` are
    returned (see the module docstring).
    """
    raw = text[: RAW_FACTOR * max_chars]
    raw = _BLOCKS.sub(" ", raw)
    raw = _COMMENTS.sub(" ", raw)
    raw = _TAGS.sub(" ", raw)
    raw = _UNCLOSED_TAG.sub(" ", raw)
    clean = unicodedata.normalize("NFKC", html.unescape(raw)).casefold()
    return " ".join(clean.split())[:max_chars]


def _is_word_char(char: str) -> bool:
    """Letters, digits and combining marks (Unicode categories L, N, M) make words."""
    return unicodedata.category(char)[0] in "LNM"


def tokens(normalised: str) -> list[str]:
    """Return the words of normalised text: runs of letters, digits and combining marks."""
    words: list[str] = []
    current: list[str] = []
    for char in normalised:
        if _is_word_char(char):
            current.append(char)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


@lru_cache(maxsize=2**18)
def _digest(gram: str) -> int:
    """The n-gram's 64-bit BLAKE2b digest as an unsigned int (stable everywhere)."""
    data = hashlib.blake2b(gram.encode("utf-8"), digest_size=8, person=_DIGEST_PERSON).digest()
    return int.from_bytes(data, "little")


@dataclass(frozen=True)
class SparseFeatures:
    """Rows of hashed features in CSR form: row ``i`` is ``values[indptr[i]:indptr[i+1]]``
    at columns ``indices[indptr[i]:indptr[i+1]]`` of ``dim``."""

    indptr: NDArray[np.int64]
    indices: NDArray[np.int32]
    values: NDArray[np.float32]
    dim: int

    def __len__(self) -> int:
        """The number of rows."""
        return len(self.indptr) - 1

    def empty(self) -> NDArray[np.bool_]:
        """Per row: whether it has no feature at all (the all-zero vector)."""
        return np.asarray(np.diff(self.indptr) == 0)

    def take(self, rows: Sequence[int] | NDArray[np.integer[Any]]) -> SparseFeatures:
        """The rows ``rows`` (any order, repeats allowed) as new :class:`SparseFeatures`."""
        chosen = np.asarray(rows, dtype=np.int64).reshape(-1)
        starts = self.indptr[chosen]
        lengths = self.indptr[chosen + 1] - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        positions = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return SparseFeatures(indptr, self.indices[positions], self.values[positions], self.dim)

    def dense(self, rows: slice | Sequence[int] | NDArray[np.integer[Any]] | None = None) -> Any:
        """Rows (all, a slice or an index array) as a dense ``(n, dim)`` float32 array."""
        if rows is None:
            part = self
        elif isinstance(rows, slice):
            part = self.take(np.arange(len(self))[rows])
        else:
            part = self.take(rows)
        out = np.zeros((len(part), part.dim), dtype=np.float32)
        row_of = np.repeat(np.arange(len(part)), np.diff(part.indptr))
        out[row_of, part.indices] = part.values
        return out


@dataclass(frozen=True)
class TextFeaturizer:
    """The settings of the hashed n-gram featuriser (see the module docstring)."""

    dim: int = DEFAULT_DIM
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (3, 5)
    max_chars: int = MAX_CHARS
    field_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FIELD_WEIGHTS))

    def __post_init__(self) -> None:
        """Refuse settings that cannot work, quoting them (ModelError)."""
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 16:
            raise ModelError(f"dim must be a whole number >= 16, got {self.dim!r}")
        for name, (low, high) in (
            ("word_ngrams", self.word_ngrams),
            ("char_ngrams", self.char_ngrams),
        ):
            if not 0 <= low <= high or (low == 0 and high != 0):
                raise ModelError(f"{name} must be (low, high) with 1 <= low <= high, or (0, 0)")
        if self.word_ngrams == (0, 0) and self.char_ngrams == (0, 0):
            raise ModelError("word_ngrams and char_ngrams cannot both be off")
        if (
            isinstance(self.max_chars, bool)
            or not isinstance(self.max_chars, int)
            or self.max_chars < 1
        ):
            raise ModelError(f"max_chars must be a whole number >= 1, got {self.max_chars!r}")
        unknown = set(self.field_weights) - set(DEFAULT_FIELD_WEIGHTS)
        if unknown or not all(math.isfinite(w) and w >= 0.0 for w in self.field_weights.values()):
            raise ModelError(
                f"field_weights must give numbers >= 0 for {', '.join(DEFAULT_FIELD_WEIGHTS)}; "
                f"got {dict(self.field_weights)!r}"
            )

    def grams(self, normalised: str) -> list[str]:
        """The n-grams of normalised text, each prefixed by its kind (``w``, ``c``)."""
        words = tokens(normalised)
        grams: list[str] = []
        low, high = self.word_ngrams
        if high:
            for n in range(low, high + 1):
                grams += [f"w{n}:" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        low, high = self.char_ngrams
        if high:
            for word in words:
                padded = f" {word} "
                for n in range(low, high + 1):
                    grams += [f"c:{padded[i : i + n]}" for i in range(len(padded) - n + 1)]
        return grams

    def _field_vector(self, text: str) -> dict[int, float]:
        """One field's unit vector as ``{column: value}`` (empty when it has no token)."""
        counts = Counter(self.grams(normalise(text, self.max_chars)))
        vector: dict[int, float] = {}
        for gram, count in counts.items():
            digest = _digest(gram)
            column = digest % self.dim
            sign = -1.0 if digest >> 63 else 1.0
            vector[column] = vector.get(column, 0.0) + sign * (1.0 + math.log(count))
        norm = math.sqrt(sum(value * value for value in vector.values()))
        if norm == 0.0:
            return {}
        return {column: value / norm for column, value in vector.items()}

    def vector(self, text: TextInput) -> dict[int, float]:
        """One product's features as ``{column: value}``, L2 norm 1 (empty: no text)."""
        total: dict[int, float] = {}
        for name, value in as_fields(text).items():
            weight = float(self.field_weights.get(name, 0.0))
            if not value or weight == 0.0:
                continue
            for column, part in self._field_vector(value).items():
                total[column] = total.get(column, 0.0) + weight * part
        norm = math.sqrt(sum(value * value for value in total.values()))
        if norm == 0.0:
            return {}
        return {column: value / norm for column, value in total.items() if value != 0.0}

    def is_empty(self, text: TextInput) -> bool:
        """Whether ``text`` gives the all-zero vector (nothing to classify from)."""
        return not self.vector(text)

    def transform(self, texts: Iterable[TextInput]) -> SparseFeatures:
        """Every text's features, in order, as :class:`SparseFeatures`."""
        indptr = [0]
        indices: list[int] = []
        values: list[float] = []
        for text in texts:
            vector = self.vector(text)
            columns = sorted(vector)
            indices += columns
            values += [vector[column] for column in columns]
            indptr.append(len(indices))
        return SparseFeatures(
            np.asarray(indptr, dtype=np.int64),
            np.asarray(indices, dtype=np.int32),
            np.asarray(values, dtype=np.float32),
            self.dim,
        )

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON (what a model directory's metadata stores)."""
        return {
            "kind": FEATURIZER_KIND,
            "version": FEATURIZER_VERSION,
            "dim": self.dim,
            "word_ngrams": list(self.word_ngrams),
            "char_ngrams": list(self.char_ngrams),
            "max_chars": self.max_chars,
            "field_weights": dict(self.field_weights),
            "hash": "blake2b-64, signed",
            "weighting": "1 + log(tf), L2 per field and overall",
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TextFeaturizer:
        """Rebuild the featuriser from :meth:`to_json`; ModelError when it is not one."""
        if not isinstance(data, Mapping) or data.get("kind") != FEATURIZER_KIND:
            raise ModelError(f"not {FEATURIZER_KIND!r} featuriser settings: {data!r:.200}")
        if data.get("version") != FEATURIZER_VERSION:
            raise ModelError(
                f"featuriser version {data.get('version')!r}; this code computes version "
                f"{FEATURIZER_VERSION}, so it would not reproduce the model's inputs"
            )
        try:
            word = tuple(int(n) for n in data["word_ngrams"])
            char = tuple(int(n) for n in data["char_ngrams"])
            if len(word) != 2 or len(char) != 2:
                raise ValueError("n-gram ranges are (low, high) pairs")
            return cls(
                dim=int(data["dim"]),
                word_ngrams=(word[0], word[1]),
                char_ngrams=(char[0], char[1]),
                max_chars=int(data["max_chars"]),
                field_weights={str(k): float(v) for k, v in dict(data["field_weights"]).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"bad featuriser settings: {exc}") from exc
