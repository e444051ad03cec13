"""The label space of a model: which categories each head predicts, and in which order.

A :class:`Vocabulary` fixes, for every level ``1..depth`` of a :class:`TruncatedTaxonomy`,
the category ids that level's softmax head predicts, sorted by id, so that output ``i`` of
head ``level_k`` always means the same category. It is either the categories the training
labels reach (:meth:`Vocabulary.from_labels`, the default) or the whole truncated taxonomy
(:meth:`Vocabulary.full`). Its :attr:`~Vocabulary.leaves` are the label space of the flat
baseline's single ``leaf`` head.

The vocabulary is closed under ancestors (every node's parent is in it) and every level
holds at least one category, so every head has at least one output. It is saved in the
model's ``metadata.json`` with :meth:`Vocabulary.to_json` (ids and names, level by level)
and read back, checked against the taxonomy, with :meth:`Vocabulary.from_json`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.errors import ModelError, TaxonomyError
from model.taxonomy import TruncatedTaxonomy

__all__ = ["MISSING", "Vocabulary"]

MISSING = -1
"""The label index of a level the category is shallower than (the head is masked there)."""


@dataclass(frozen=True)
class Vocabulary:
    """Per-level category ids of a model's heads, built on a truncated taxonomy.

    ``levels[k]`` holds the ids of level ``k + 1``, sorted by id; ``depth`` is the truncated
    taxonomy's depth and equals ``len(levels)``. Construction checks that every id is a node
    of ``truncated`` at its level, that every node's parent is in the vocabulary, and that no
    level is empty; it raises :class:`ModelError` otherwise. Two vocabularies are equal when
    their levels are (the taxonomy object is not compared).
    """

    truncated: TruncatedTaxonomy = field(repr=False, compare=False)
    levels: tuple[tuple[int, ...], ...]
    depth: int = field(init=False)
    leaves: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """The nodes without a child in the vocabulary, sorted by id (a shallower leaf counts)."""
    _index: tuple[Mapping[int, int], ...] = field(init=False, repr=False, compare=False)
    _leaf_index: Mapping[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the levels against the taxonomy and build the lookups."""
        truncated = self.truncated
        levels = tuple(tuple(int(node) for node in level) for level in self.levels)
        if len(levels) != truncated.depth:
            raise ModelError(
                f"a vocabulary needs {truncated.depth} levels (the truncation depth), "
                f"got {len(levels)}"
            )
        for number, level in enumerate(levels, start=1):
            if not level:
                raise ModelError(
                    f"level {number} of the vocabulary is empty: no label reaches depth "
                    f"{number}; truncate the taxonomy at depth {number - 1} or shallower"
                )
            if list(level) != sorted(set(level)):
                raise ModelError(f"level {number} of the vocabulary is not sorted and unique")
        index = tuple({node: position for position, node in enumerate(level)} for level in levels)
        parents: set[int] = set()
        for number, level in enumerate(levels, start=1):
            for node in level:
                try:
                    category = truncated.category(node)
                except TaxonomyError as error:
                    raise ModelError(f"vocabulary level {number}: {error}") from error
                if category.depth != number:
                    raise ModelError(
                        f"vocabulary level {number} lists category {node}, which is at "
                        f"level {category.depth}"
                    )
                if category.parent_id is not None:
                    if category.parent_id not in index[number - 2]:
                        raise ModelError(
                            f"vocabulary level {number} lists category {node} without its "
                            f"parent {category.parent_id}"
                        )
                    parents.add(category.parent_id)
        leaves = tuple(sorted(node for level in levels for node in level if node not in parents))
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "depth", len(levels))
        object.__setattr__(self, "leaves", leaves)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_leaf_index", {leaf: i for i, leaf in enumerate(leaves)})

    @classmethod
    def from_labels(cls, truncated: TruncatedTaxonomy, category_ids: Iterable[int]) -> Vocabulary:
        """Build the vocabulary the labels reach: their truncated categories and all ancestors.

        Labels may be ids of any depth of the full taxonomy; repeats are fine. Raises
        :class:`ModelError` for an unknown id, or when no label reaches the truncation depth
        (a head would have no output).
        """
        try:
            coverage = truncated.coverage(category_ids)
        except TaxonomyError as error:
            raise ModelError(f"cannot build a vocabulary from the labels: {error}") from error
        if not coverage.labels:
            raise ModelError("cannot build a vocabulary from no labels")
        levels = list(coverage.per_level)
        levels += [()] * (truncated.depth - len(levels))
        return cls(truncated, tuple(levels))

    @classmethod
    def full(cls, truncated: TruncatedTaxonomy) -> Vocabulary:
        """Build the vocabulary of every node of the truncated taxonomy."""
        levels = list(truncated.levels)
        levels += [()] * (truncated.depth - len(levels))
        return cls(truncated, tuple(levels))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Return the number of outputs of each level's head, level 1 first."""
        return tuple(len(level) for level in self.levels)

    def __contains__(self, category_id: object) -> bool:
        """Return whether ``category_id`` is a node of the vocabulary (at any level)."""
        return any(category_id in level for level in self._index)

    def index(self, level: int, category_id: int) -> int:
        """Return the position of a node in the vocabulary of ``level`` (1 = roots).

        Raises :class:`ModelError` when the category is not in the vocabulary at that level.
        """
        if not 1 <= level <= self.depth:
            raise ValueError(f"level must be between 1 and {self.depth}, got {level}")
        position = self._index[level - 1].get(category_id)
        if position is None:
            raise ModelError(f"category {category_id} is not in the vocabulary of level {level}")
        return position

    def _node(self, category_id: int) -> int:
        """Truncate a full-taxonomy id to its node; raise :class:`ModelError` if not covered."""
        try:
            node = self.truncated.truncate_id(category_id)
        except TaxonomyError as error:
            raise ModelError(str(error)) from error
        category = self.truncated.category(node)
        if node not in self._index[category.depth - 1]:
            raise ModelError(
                f"category {category_id} (node {node}, {category.path_string!r}) "
                "is not in the vocabulary"
            )
        return node

    def encode(self, category_id: int) -> tuple[int, ...]:
        """Return the label index per level for a category of any depth of the full taxonomy.

        The category is truncated first; a level deeper than its node gets :data:`MISSING`
        (-1). Raises :class:`ModelError` when the node is not in the vocabulary.
        """
        node = self._node(category_id)
        path = self.truncated.path_ids(node)
        return tuple(
            self._index[level][path[level]] if level < len(path) else MISSING
            for level in range(self.depth)
        )

    def encode_many(self, category_ids: Iterable[int]) -> NDArray[np.int64]:
        """Return :meth:`encode` of each category as a ``(n, depth)`` int64 array."""
        cache: dict[int, tuple[int, ...]] = {}
        rows: list[tuple[int, ...]] = []
        for raw in category_ids:
            category_id = int(raw)
            if category_id not in cache:
                cache[category_id] = self.encode(category_id)
            rows.append(cache[category_id])
        return np.array(rows, dtype=np.int64).reshape(len(rows), self.depth)

    def leaf_index(self, category_id: int) -> int:
        """Return the flat head's label index: the position of the category's node in leaves.

        The category is truncated first. Raises :class:`ModelError` when the node is not in
        the vocabulary or is not one of its leaves.
        """
        node = self._node(category_id)
        position = self._leaf_index.get(node)
        if position is None:
            raise ModelError(
                f"category {category_id} (node {node}) is not a leaf of the vocabulary: "
                "other labels lie beneath it, so the flat head cannot predict it"
            )
        return position

    def leaf_indices(self, category_ids: Iterable[int]) -> NDArray[np.int64]:
        """Return :meth:`leaf_index` of each category as an int64 array."""
        cache: dict[int, int] = {}
        out: list[int] = []
        for raw in category_ids:
            category_id = int(raw)
            if category_id not in cache:
                cache[category_id] = self.leaf_index(category_id)
            out.append(cache[category_id])
        return np.array(out, dtype=np.int64)

    def to_json(self) -> dict[str, Any]:
        """Return the vocabulary as JSON-ready data: taxonomy version, depth, ids and names.

        ``{"taxonomy_version": ..., "depth": D, "levels": [[{"id": ..., "name": ...}, ...],
        ...]}``, levels in order and ids sorted, so the same vocabulary always gives the
        same data.
        """
        return {
            "taxonomy_version": self.truncated.taxonomy.version,
            "depth": self.depth,
            "levels": [
                [{"id": node, "name": self.truncated.name(node)} for node in level]
                for level in self.levels
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], truncated: TruncatedTaxonomy) -> Vocabulary:
        """Read back :meth:`to_json` data, checking it against ``truncated``.

        Raises :class:`ModelError` when the data is malformed, when its depth or taxonomy
        version (both known) differ from ``truncated``'s, or when an id is not a node at its
        level or has another name there (a model trained on another taxonomy).
        """
        try:
            version = data["taxonomy_version"]
            depth = data["depth"]
            raw_levels = data["levels"]
            levels = tuple(
                tuple((int(entry["id"]), str(entry["name"])) for entry in level)
                for level in raw_levels
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"malformed vocabulary data: {error!r}") from error
        known = truncated.taxonomy.version
        if version is not None and known is not None and version != known:
            raise ModelError(
                f"the vocabulary was built on taxonomy version {version}, "
                f"this taxonomy is version {known}"
            )
        if depth != truncated.depth:
            raise ModelError(
                f"the vocabulary has depth {depth}, the taxonomy is truncated at {truncated.depth}"
            )
        for number, level in enumerate(levels, start=1):
            for node, name in level:
                try:
                    actual = truncated.name(node)
                except TaxonomyError as error:
                    raise ModelError(f"vocabulary level {number}: {error}") from error
                if actual != name:
                    raise ModelError(
                        f"vocabulary level {number}: category {node} is named {name!r}, "
                        f"the taxonomy names it {actual!r}"
                    )
        return cls(truncated, tuple(tuple(node for node, _ in level) for level in levels))
