"""The crash-loop guard: a record that keeps killing the process is quarantined, not retried
forever.

A record whose processing kills the process (a decoder crash, memory exhaustion, a bug that
escapes every handler) is never committed past: each restart takes the same offsets and dies
again, and the rest of its partition waits forever. The guard counts, per partition, the
*unclean* starts at a position and corners the record in three steps, keeping its state in
the committed offset's metadata (:mod:`service.progress`), so it survives the process and
follows the partition to whichever instance owns it next:

1. **Counting.** Every assignment commits its position at once with ``starts`` one higher
   than the last owner left it; a clean end (revoke, shutdown) writes 0, and a run that gets
   past every offset the dead owner might have had in work (``until``) starts counting afresh.
2. **Cornering.** After ``restarts`` deaths with the same offsets in work, the partition's
   records up to ``until`` are processed *one at a time* ("careful"): each is counted and
   committed as the position before it begins, and it begins only when no other record of a
   careful or counting partition is in work anywhere in the process, so a death names it.
3. **Quarantine.** A record begun alone ``restarts`` times without getting past it goes to
   the dead-letter topic with the reason, unprocessed (``enrich_quarantined_total``, an ERROR
   log), and the partition goes on.

``until`` is the highest offset the dead owners had taken. While a death is being counted
(:meth:`CrashLoopGuard.suspect`) the service commits the highest offset of each consumed
batch before taking it, so that figure is exact; after a first, unexpected death it is the
figure of the dead owner's last commit plus ``slack`` (the records it may have taken since).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace

from service.progress import Progress

__all__ = ["CrashLoopGuard", "GuardState"]

Partition = tuple[str, int]


@dataclass
class GuardState:
    """One assigned partition's crash-loop state."""

    starts: int
    at: int
    """The committed offset ``starts`` counts starts at."""
    until: int = -1
    careful: bool = False
    quarantine: int | None = None
    """The offset to quarantine when it is consumed (careful mode found it)."""
    deaths: int = 0
    """Deaths of the record to quarantine, for its dead-letter reason."""
    skip: frozenset[int] = field(default_factory=frozenset)
    """Offsets above ``at`` whose output an earlier owner already published."""


class CrashLoopGuard:
    """Decides, per partition, whether to count, corner or quarantine; see the module."""

    def __init__(self, restarts: int = 3, slack: int = 500, owner: str | None = None) -> None:
        """``restarts``: deaths before cornering, and deaths of one record alone before its
        quarantine; ``slack``: records a dead owner may have taken after its last commit."""
        if restarts < 1:
            raise ValueError(f"restarts must be at least 1, got {restarts}")
        self.restarts = restarts
        self.slack = slack
        self.owner = owner or secrets.token_hex(4)
        """This run's name in the metadata it writes."""
        self._states: dict[Partition, GuardState] = {}

    def assigned(self, key: Partition, committed: int, progress: Progress) -> GuardState:
        """Start a partition at its committed offset, given what the last owner wrote."""
        if progress.owner == self.owner:
            # This run lost the partition (a session timeout, a broker outage) and got it
            # back: no process died, so nothing is counted.
            progress = replace(progress, starts=max(0, progress.starts - 1), owner="")
        state = GuardState(starts=progress.starts + 1, at=committed, skip=frozenset(progress.done))
        if progress.careful:
            # ``starts`` counts how often the committed record was begun alone; each begin
            # that did not get past it ended in a death.
            state.careful, state.until, state.starts = True, progress.until, progress.starts
            if progress.starts >= self.restarts:
                state.quarantine, state.deaths = committed, progress.starts
        elif progress.starts > 0:  # the last owner died with this range in work
            slack = 0 if progress.exact else self.slack
            state.until = max(progress.until, progress.high + slack)
            if progress.starts >= self.restarts:
                state.careful, state.starts = True, 0  # from now on, one record at a time
        self._states[key] = state
        return state

    def state(self, key: Partition) -> GuardState | None:
        """The partition's state, if it is assigned."""
        return self._states.get(key)

    def suspect(self, key: Partition) -> bool:
        """Whether a death is being counted here: then the highest offset about to be taken
        is committed before each batch, so the next death's range is exact."""
        state = self._states.get(key)
        return state is not None and (state.careful or state.starts >= 2)

    def begin(self, key: Partition, offset: int) -> None:
        """A careful record starts alone: count it (committed before it runs)."""
        state = self._states[key]
        if state.at == offset:
            state.starts += 1
        else:
            state.at, state.starts = offset, 1

    def careful(self, key: Partition, offset: int) -> bool:
        """Whether this offset of the partition must be processed alone."""
        state = self._states.get(key)
        return state is not None and state.careful and offset <= state.until

    def progress(self, key: Partition, committed: int, done: list[int], high: int) -> Progress:
        """The metadata to commit with ``committed`` while the partition runs."""
        state = self._states.get(key)
        if state is None:
            return Progress(done=tuple(done), high=high, owner=self.owner)
        if committed > state.until:  # past every offset the dead owner might have had
            state.careful, state.until = False, -1
            if committed != state.at:
                state.starts, state.at = 1, committed
        elif state.careful and committed != state.at:
            state.starts, state.at = 0, committed  # the last one is done; none begun yet
        return Progress(
            done=tuple(done), starts=state.starts, until=state.until, high=high,
            careful=state.careful, exact=self.suspect(key), owner=self.owner,
        )  # fmt: skip

    def forget(self, key: Partition) -> None:
        """The partition left this instance."""
        self._states.pop(key, None)
