"""What the service writes into the metadata of each committed offset, and reads back.

A committed offset says "everything below is done". Two more facts travel with it, in the
offset's metadata string (the broker stores it atomically with the offset, also inside a
transaction, and hands it to whichever instance owns the partition next):

- ``done``: offsets *above* the committed one whose output is already out (outputs leave in
  key order, not partition order: :mod:`service.ordering`). The next owner skips them instead
  of producing them again, so exactly-once stays exactly once.
- the crash-loop state (:mod:`service.crashloop`): how many times in a row an owner started
  here and died without getting past the offsets that were in work (``starts``, ``until``),
  the highest offset taken so far (``high``), and whether the partition is being processed
  one record at a time to find the record that kills the process (``careful``).

The text is short and versioned (``e1;d=1-5,9;s=2;u=1k;h=1k;c;x``): offsets are base 36 and
relative to the committed offset. Metadata this service did not write (another tool's, or
none) reads as an empty :class:`Progress`; the broker caps metadata at 4,096 bytes by default
(``offset.metadata.max.bytes``), which :data:`MAX_LENGTH` stays under by construction
(:data:`service.ordering.MAX_HOLES` bounds the ranges of ``done``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog

__all__ = ["MAX_LENGTH", "Progress"]

log = structlog.get_logger(__name__)

VERSION = "e1"
MAX_LENGTH = 4000
"""Longest metadata written (the broker's default limit is 4,096 bytes)."""


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if number == 0:
        return "0"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out


def _ranges(offsets: Iterable[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for offset in sorted(set(offsets)):
        if ranges and offset == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], offset)
        else:
            ranges.append((offset, offset))
    return ranges


@dataclass(frozen=True)
class Progress:
    """A partition's state beside its committed offset; offsets here are absolute."""

    done: tuple[int, ...] = ()
    """Offsets above the committed one whose output is already out."""
    starts: int = 0
    """Starts at this position since the partition last got past ``until`` (0: ended clean)."""
    until: int = -1
    """The highest offset that may have been in work when an earlier owner died."""
    high: int = -1
    """The highest offset taken when this was written."""
    careful: bool = False
    """Records up to ``until`` are processed one at a time (a crash loop is being cornered)."""
    exact: bool = False
    """``high`` was committed before the records up to it were taken (not after)."""
    owner: str = ""
    """The run (process) that wrote it: a partition lost and regained by the same run is no
    death."""

    def encode(self, committed: int) -> str:
        """The metadata string to commit with ``committed``."""
        parts = [VERSION]
        above = [o - committed for o in self.done if o > committed]
        if above:
            parts.append(
                "d="
                + ",".join(_b36(a) if a == b else f"{_b36(a)}-{_b36(b)}" for a, b in _ranges(above))
            )
        if self.starts:
            parts.append(f"s={self.starts}")
        if self.until >= committed:
            parts.append(f"u={_b36(self.until - committed)}")
        if self.high >= committed:
            parts.append(f"h={_b36(self.high - committed)}")
        if self.careful:
            parts.append("c")
        if self.exact:
            parts.append("x")
        if self.owner:
            parts.append(f"o={self.owner}")
        text = ";".join(parts)
        if len(text) > MAX_LENGTH:
            # ``done`` only needs to be a subset of what is out: the outputs left off are
            # produced again by the next owner (a duplicate, never a loss).
            kept = self._fit(parts, committed)
            log.warning("offset_metadata_trimmed", length=len(text), kept=len(kept))
            return kept
        return text

    def _fit(self, parts: list[str], committed: int) -> str:
        """``parts`` with the ranges of ``done`` cut from the top until the text fits."""
        others = [p for p in parts if not p.startswith("d=")]
        room = MAX_LENGTH - len(";".join(others)) - len(";d=")
        ranges, used = [], 0
        above = [o - committed for o in self.done if o > committed]
        for a, b in _ranges(above):
            item = _b36(a) if a == b else f"{_b36(a)}-{_b36(b)}"
            if used + len(item) + 1 > room:
                break
            ranges.append(item)
            used += len(item) + 1
        if ranges:
            others.insert(1, "d=" + ",".join(ranges))
        return ";".join(others)

    @classmethod
    def decode(cls, text: str | None, committed: int) -> Progress:
        """Read metadata written by :meth:`encode` with ``committed``; anything else (another
        writer's metadata, none, or damaged text) reads as no progress."""
        if not text or (not text.startswith(VERSION + ";") and text != VERSION):
            return cls()
        try:
            done: list[int] = []
            values: dict[str, int] = {}
            careful = exact = False
            owner = ""
            for part in text.split(";")[1:]:
                name, _, value = part.partition("=")
                if name == "d":
                    for item in value.split(","):
                        first, dash, last = item.partition("-")
                        if dash and not last:
                            raise ValueError(f"range {item} has no end")
                        low, high = int(first, 36), int(last or first, 36)
                        if high - low > 10_000_000:
                            raise ValueError(f"range {item} is implausibly long")
                        done.extend(committed + o for o in range(low, high + 1))
                elif name == "c":
                    careful = True
                elif name == "x":
                    exact = True
                elif name == "o":
                    owner = value
                elif name == "s":
                    values["s"] = int(value)
                elif name in ("u", "h"):
                    values[name] = committed + int(value, 36)
            return cls(
                done=tuple(done),
                starts=values.get("s", 0),
                until=values.get("u", -1),
                high=values.get("h", -1),
                careful=careful,
                exact=exact,
                owner=owner,
            )
        except ValueError as exc:
            log.warning("offset_metadata_unreadable", metadata=text[:200], error=str(exc))
            return cls()
