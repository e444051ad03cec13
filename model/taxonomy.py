"""The Google Product Taxonomy: parsing, lookups, and truncation to the depth the model predicts.

Google publishes the taxonomy as ``taxonomy-with-ids.<locale>.txt``: a header line
``# Google_Product_Taxonomy_Version: 2021-09-21`` followed by one category per line,
``ID - Level1 > Level2 > ...``. :class:`Taxonomy` holds the whole tree;
:meth:`Taxonomy.truncate` cuts it at a depth (4 in this project) and gives the
:class:`TruncatedTaxonomy` that the classifier's per-level heads, the label mapping and the
business-value weighting are built on.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypedDict

from model.errors import TaxonomyError

__all__ = [
    "PATH_SEPARATOR",
    "Category",
    "LabelCoverage",
    "Taxonomy",
    "TaxonomyStats",
    "TruncatedTaxonomy",
]

PATH_SEPARATOR = " > "
"""Separator between the names of a category path, as Google's files write it."""

_LINE = re.compile(r"^\s*(?P<id>\d+)\s+-\s+(?P<path>\S.*?)\s*$")
_VERSION = re.compile(r"^#\s*Google_Product_Taxonomy_Version:\s*(?P<version>\S+)\s*$")
_BAD_CATEGORIES = frozenset({"Cc", "Cn", "Co", "Cs"})


@dataclass(frozen=True)
class Category:
    """One category of the taxonomy: its id, its own name, its full path, and its parent's id.

    ``path`` runs from the root down and ends with ``name``; ``parent_id`` is ``None`` for
    the roots.
    """

    id: int
    name: str
    path: tuple[str, ...]
    parent_id: int | None

    @property
    def depth(self) -> int:
        """Return the category's level: 1 for a root, 2 for its children, and so on."""
        return len(self.path)

    @property
    def path_string(self) -> str:
        """Return the path as Google writes it, e.g. ``"Apparel & Accessories > Shoes"``."""
        return PATH_SEPARATOR.join(self.path)


class TaxonomyStats(TypedDict):
    """Summary figures of a (possibly truncated) taxonomy, for logs, docs and sanity checks."""

    version: str | None
    categories: int
    depth: int
    nodes: int
    leaves: int
    per_level: list[int]


@dataclass(frozen=True)
class LabelCoverage:
    """Which categories of a truncated taxonomy a set of labels reaches.

    ``labels`` are the distinct truncated categories the labels map to, sorted by id;
    ``per_level[k]`` are the distinct ancestors at level ``k + 1`` of those labels (the
    labels themselves included), sorted by id.
    """

    labels: tuple[int, ...]
    per_level: tuple[tuple[int, ...], ...]

    @property
    def roots(self) -> tuple[int, ...]:
        """Return the root categories the labels fall under."""
        return self.per_level[0] if self.per_level else ()

    @property
    def counts(self) -> list[int]:
        """Return how many distinct categories the labels reach at each level, level 1 first."""
        return [len(level) for level in self.per_level]


def _as_path(path: str | Sequence[str]) -> tuple[str, ...]:
    """Turn a ``" > "``-joined string or a sequence of names into a path tuple."""
    if isinstance(path, str):
        return tuple(name.strip() for name in path.split(">"))
    return tuple(path)


def _repair_mojibake(text: str) -> str:
    """Undo UTF-8 text that was once decoded as cp1251 ("MadroГ±o" -> "Madroño").

    Some copies of Google's files carry this damage. The repair is applied only when the
    text round-trips through cp1251 and UTF-8 and the result holds no control, private or
    unassigned characters, so genuine accented or Cyrillic names are left alone.
    """
    if text.isascii():
        return text
    try:
        repaired = text.encode("cp1251").decode("utf-8")
    except UnicodeError:
        return text
    if any(unicodedata.category(char) in _BAD_CATEGORIES for char in repaired):
        return text
    return repaired


@dataclass(frozen=True)
class _Entry:
    """A category line as read, before parents are resolved."""

    line: int
    id: int
    path: tuple[str, ...]


class Taxonomy:
    """The full Google Product Taxonomy: every category, looked up by id or by path.

    Build one with :meth:`load` (a file) or :meth:`parse` (text or lines). Categories are
    kept in the order they were given; children are listed sorted by id.
    """

    def __init__(
        self,
        categories: Iterable[Category],
        *,
        version: str | None = None,
        source: str = "<categories>",
    ) -> None:
        """Hold ``categories``, checking that ids and paths are unique and parents are consistent.

        ``version`` is the taxonomy's version string (``None`` when unknown); ``source``
        names where the categories came from, for error messages.
        """
        self.version = version
        self.source = source
        by_id: dict[int, Category] = {}
        by_path: dict[tuple[str, ...], int] = {}
        for category in categories:
            if category.id in by_id:
                raise TaxonomyError(f"{source}: duplicate category id {category.id}")
            if category.path in by_path:
                raise TaxonomyError(
                    f"{source}: categories {by_path[category.path]} and {category.id} "
                    f"share the path {category.path_string!r}"
                )
            by_id[category.id] = category
            by_path[category.path] = category.id
        children: dict[int | None, list[int]] = {None: []}
        for category in by_id.values():
            if not category.path or category.name != category.path[-1]:
                raise TaxonomyError(
                    f"{source}: category {category.id} is named {category.name!r} "
                    f"but its path is {category.path!r}"
                )
            expected_parent = by_path.get(category.path[:-1]) if category.depth > 1 else None
            if category.parent_id != expected_parent:
                raise TaxonomyError(
                    f"{source}: category {category.id} ({category.path_string!r}) has "
                    f"parent {category.parent_id}, its path says {expected_parent}"
                )
            children.setdefault(category.id, [])
            children.setdefault(category.parent_id, []).append(category.id)
        self._by_id = by_id
        self._by_path = by_path
        self._children = {parent: tuple(sorted(ids)) for parent, ids in children.items()}
        self.categories: Mapping[int, Category] = MappingProxyType(by_id)
        """Every category by id, in the order given (file order for a parsed taxonomy)."""

    @classmethod
    def parse(cls, text: str | Iterable[str], source: str = "<string>") -> Taxonomy:
        """Parse a ``taxonomy-with-ids`` text (a string, or an iterable of lines).

        ``source`` names the text in error messages. The version header sets
        :attr:`version`; other ``#`` lines and blank lines are skipped. Raises
        :class:`TaxonomyError`, naming ``source`` and the 1-based line number, for an
        unparsable line, a duplicate id or path, or a category whose parent path has no
        line of its own (parents may come after their children in the text).
        """
        lines = text.splitlines() if isinstance(text, str) else text
        version: str | None = None
        entries: list[_Entry] = []
        seen_ids: dict[int, int] = {}
        seen_paths: dict[tuple[str, ...], int] = {}
        for number, raw in enumerate(lines, start=1):
            line = raw.strip().lstrip("\ufeff")
            if not line:
                continue
            if line.startswith("#"):
                header = _VERSION.match(line)
                if header is not None:
                    version = header["version"]
                continue
            match = _LINE.match(line)
            path = _as_path(_repair_mojibake(match["path"])) if match is not None else ()
            if match is None or not all(path):
                raise TaxonomyError(
                    f"{source}:{number}: expected 'ID - Name > Name > ...', got {raw.rstrip()!r}"
                )
            category_id = int(match["id"])
            if category_id in seen_ids:
                raise TaxonomyError(
                    f"{source}:{number}: duplicate category id {category_id} "
                    f"(first on line {seen_ids[category_id]})"
                )
            if path in seen_paths:
                raise TaxonomyError(
                    f"{source}:{number}: duplicate path {PATH_SEPARATOR.join(path)!r} "
                    f"(first on line {seen_paths[path]})"
                )
            seen_ids[category_id] = number
            seen_paths[path] = number
            entries.append(_Entry(line=number, id=category_id, path=path))
        id_by_path = {entry.path: entry.id for entry in entries}
        categories: list[Category] = []
        for entry in entries:
            parent_id: int | None = None
            if len(entry.path) > 1:
                parent_id = id_by_path.get(entry.path[:-1])
                if parent_id is None:
                    raise TaxonomyError(
                        f"{source}:{entry.line}: category {entry.id} has no parent category "
                        f"{PATH_SEPARATOR.join(entry.path[:-1])!r} in the file"
                    )
            categories.append(Category(entry.id, entry.path[-1], entry.path, parent_id))
        return cls(categories, version=version, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Taxonomy:
        """Read and parse a ``taxonomy-with-ids`` file (UTF-8, optional byte-order mark).

        Raises :class:`TaxonomyError` naming the file if it cannot be read, and the line as
        well if it is not UTF-8 or does not parse (see :meth:`parse`).
        """
        file = Path(path)
        try:
            data = file.read_bytes()
        except OSError as error:
            raise TaxonomyError(f"{file}: cannot read the taxonomy: {error}") from error
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise TaxonomyError(f"{file}:{line}: not valid UTF-8: {error.reason}") from error
        return cls.parse(text, source=str(file))

    def __len__(self) -> int:
        """Return the number of categories."""
        return len(self._by_id)

    def __iter__(self) -> Iterator[Category]:
        """Iterate over the categories in the order given."""
        return iter(self._by_id.values())

    def __contains__(self, category_id: object) -> bool:
        """Return whether ``category_id`` is the id of a category."""
        return category_id in self._by_id

    @property
    def depth(self) -> int:
        """Return the depth of the deepest category (0 for an empty taxonomy)."""
        return max((category.depth for category in self._by_id.values()), default=0)

    def category(self, category_id: int) -> Category:
        """Return the category with this id; raise :class:`TaxonomyError` if there is none."""
        try:
            return self._by_id[category_id]
        except KeyError:
            raise TaxonomyError(f"{self.source}: unknown category id {category_id}") from None

    def by_path(self, path: str | Sequence[str]) -> Category:
        """Return the category at ``path`` (a ``" > "``-joined string or a sequence of names).

        Raises :class:`TaxonomyError` if no category has that path.
        """
        key = _as_path(path)
        try:
            return self._by_id[self._by_path[key]]
        except KeyError:
            raise TaxonomyError(
                f"{self.source}: no category at path {PATH_SEPARATOR.join(key)!r}"
            ) from None

    def children(self, category_id: int | None = None) -> tuple[Category, ...]:
        """Return the direct children of a category, sorted by id; ``None`` gives the roots."""
        if category_id is not None:
            self.category(category_id)
        return tuple(self._by_id[child] for child in self._children[category_id])

    def path_ids(self, category_id: int) -> tuple[int, ...]:
        """Return the ids from the root down to ``category_id``, both included."""
        ids: list[int] = []
        current: int | None = category_id
        while current is not None:
            ids.append(current)
            current = self.category(current).parent_id
        return tuple(reversed(ids))

    def ancestor(self, category_id: int, level: int) -> int | None:
        """Return the id of the category's ancestor at ``level`` (1 = root).

        The category itself counts when it is at that level; ``None`` when it is shallower.
        """
        if level < 1:
            raise ValueError(f"levels start at 1, got {level}")
        ids = self.path_ids(category_id)
        return ids[level - 1] if level <= len(ids) else None

    def truncate(self, depth: int = 4) -> TruncatedTaxonomy:
        """Return the taxonomy cut at ``depth``: only categories at that depth or shallower."""
        return TruncatedTaxonomy(self, depth)

    def stats(self, depth: int | None = None) -> TaxonomyStats:
        """Return summary figures at ``depth`` (the full depth when ``None``)."""
        return self.truncate(self.depth if depth is None else depth).stats()


class TruncatedTaxonomy:
    """A taxonomy cut at a depth: the label space of the classifier.

    Its nodes are the categories at ``depth`` or shallower; its leaves are the nodes with no
    child among the nodes. Every category of the full taxonomy maps to one node, its ancestor
    at ``min(category depth, depth)``. ``levels[k]`` is the vocabulary of level ``k + 1``:
    the node ids at that level, sorted by id, so that index ``i`` of a per-level output
    always means the same category.
    """

    def __init__(self, taxonomy: Taxonomy, depth: int) -> None:
        """Cut ``taxonomy`` at ``depth`` (at least 1)."""
        if depth < 1:
            raise ValueError(f"the truncation depth must be at least 1, got {depth}")
        self.taxonomy = taxonomy
        self.depth = depth
        nodes = sorted(category.id for category in taxonomy if category.depth <= depth)
        self.nodes: tuple[int, ...] = tuple(nodes)
        """Every node's id, sorted."""
        self._node_set = frozenset(nodes)
        self.leaves: tuple[int, ...] = tuple(
            node
            for node in nodes
            if taxonomy.category(node).depth == depth or not taxonomy.children(node)
        )
        """The ids of the nodes without children in the truncated tree, sorted."""
        levels: list[list[int]] = [[] for _ in range(depth)]
        for node in nodes:
            levels[taxonomy.category(node).depth - 1].append(node)
        while levels and not levels[-1]:
            levels.pop()
        self.levels: tuple[tuple[int, ...], ...] = tuple(tuple(level) for level in levels)
        """Per-level vocabularies: ``levels[k]`` holds the node ids of level ``k + 1``, sorted.

        There are fewer than ``depth`` levels when the taxonomy is shallower than ``depth``.
        """
        self._level_index: tuple[dict[int, int], ...] = tuple(
            {node: index for index, node in enumerate(level)} for level in self.levels
        )

    def __len__(self) -> int:
        """Return the number of nodes."""
        return len(self.nodes)

    def __contains__(self, category_id: object) -> bool:
        """Return whether ``category_id`` is a node of the truncated tree."""
        return category_id in self._node_set

    def _check_level(self, level: int) -> None:
        """Raise ``ValueError`` unless ``level`` is between 1 and :attr:`depth`."""
        if not 1 <= level <= self.depth:
            raise ValueError(f"level must be between 1 and {self.depth}, got {level}")

    def _node(self, category_id: int) -> Category:
        """Return a node's category; raise :class:`TaxonomyError` if it is not a node."""
        category = self.taxonomy.category(category_id)
        if category.depth > self.depth:
            raise TaxonomyError(
                f"{self.taxonomy.source}: category {category_id} is at depth "
                f"{category.depth}, below the truncation depth {self.depth}"
            )
        return category

    def category(self, category_id: int) -> Category:
        """Return the node with this id; raise :class:`TaxonomyError` for any other id."""
        return self._node(category_id)

    def name(self, category_id: int) -> str:
        """Return the node's own name (the last element of its path)."""
        return self._node(category_id).name

    def id_for_path(self, path: str | Sequence[str]) -> int:
        """Return the id of the node at ``path`` (``" > "``-joined string or names)."""
        return self._node(self.taxonomy.by_path(path).id).id

    def is_leaf(self, category_id: int) -> bool:
        """Return whether the node has no child in the truncated tree."""
        category = self._node(category_id)
        return category.depth == self.depth or not self.taxonomy.children(category_id)

    def children(self, category_id: int | None = None) -> tuple[int, ...]:
        """Return the ids of a node's children in the truncated tree; ``None`` gives the roots."""
        if category_id is not None and self._node(category_id).depth == self.depth:
            return ()
        return tuple(child.id for child in self.taxonomy.children(category_id))

    def level_index(self, level: int, category_id: int) -> int:
        """Return the position of the node in the vocabulary of ``level`` (1 = roots).

        Raises :class:`TaxonomyError` when the category is not a node at that level.
        """
        self._check_level(level)
        index = (
            self._level_index[level - 1].get(category_id)
            if level <= len(self._level_index)
            else None
        )
        if index is None:
            raise TaxonomyError(
                f"{self.taxonomy.source}: category {category_id} is not at level {level}"
            )
        return index

    def truncate_id(self, category_id: int) -> int:
        """Map any category of the full taxonomy to its node: its ancestor at the cut depth.

        A category at the cut depth or shallower maps to itself.
        """
        ids = self.taxonomy.path_ids(category_id)
        return ids[min(len(ids), self.depth) - 1]

    def path_ids(self, category_id: int) -> tuple[int, ...]:
        """Return the node ids from the root down to the category's node, both included.

        Any category of the full taxonomy is accepted; its path is cut at the depth.
        """
        return self.taxonomy.path_ids(category_id)[: self.depth]

    def ancestor(self, category_id: int, level: int) -> int | None:
        """Return the id of the category's ancestor at ``level`` (1 to :attr:`depth`).

        Any category of the full taxonomy is accepted; the category itself counts when it
        is at that level; ``None`` when it is shallower than ``level``.
        """
        self._check_level(level)
        return self.taxonomy.ancestor(category_id, level)

    def sum_up(self, values: Mapping[int, float]) -> dict[int, float]:
        """Roll per-category values (e.g. business value) up into the truncated tree.

        Returns every node, sorted by id, mapped to the sum of the values given for it and
        for every category beneath it in the full taxonomy (0.0 when none is given).
        Raises :class:`TaxonomyError` naming any id of ``values`` that is not a category.
        """
        totals = dict.fromkeys(self.nodes, 0.0)
        for category_id, value in values.items():
            for node in self.path_ids(category_id):
                totals[node] += value
        return totals

    def coverage(self, category_ids: Iterable[int]) -> LabelCoverage:
        """Return which nodes a set of labels (ids of any depth, repeats allowed) reaches.

        Each label is truncated with :meth:`truncate_id`; the result lists the distinct
        truncated labels and, per level, the distinct ancestors they have there. Raises
        :class:`TaxonomyError` naming any label that is not a category.
        """
        labels = {self.truncate_id(category_id) for category_id in category_ids}
        per_level: list[set[int]] = [set() for _ in self.levels]
        for label in labels:
            for level, node in enumerate(self.path_ids(label)):
                per_level[level].add(node)
        while per_level and not per_level[-1]:
            per_level.pop()
        return LabelCoverage(
            labels=tuple(sorted(labels)),
            per_level=tuple(tuple(sorted(level)) for level in per_level),
        )

    def stats(self) -> TaxonomyStats:
        """Return the version, category count, cut depth, node and leaf counts, level sizes."""
        return TaxonomyStats(
            version=self.taxonomy.version,
            categories=len(self.taxonomy),
            depth=self.depth,
            nodes=len(self.nodes),
            leaves=len(self.leaves),
            per_level=[len(level) for level in self.levels],
        )
