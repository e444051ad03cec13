"""The crash-loop guard counts unclean starts, corners the killer record and quarantines it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.crashloop import CrashLoopGuard
from service.progress import Progress

P = ("products", 0)


def _died(progress: Progress) -> Progress:
    """What a run wrote, read back by the next run after the writer died."""
    return replace(progress, owner="a run that died")


def _restart(guard: CrashLoopGuard, committed: int, left: Progress) -> Progress:
    """A new owner starts at ``committed`` after the last one left ``left`` and dies; returns
    what it had committed at once (the start it counts)."""
    guard.assigned(P, committed, left)
    return _died(guard.progress(P, committed, [], high=left.high))


class TestCrashLoopGuard:
    def test_a_clean_start_counts_one_start_and_suspects_nothing(self) -> None:
        """After a clean end (starts 0) nothing is careful and nothing is quarantined."""
        guard = CrashLoopGuard(restarts=3)
        state = guard.assigned(P, 100, Progress())
        assert (1, False, None) == (state.starts, state.careful, state.quarantine)

    def test_deaths_at_one_position_corner_the_partition(self) -> None:
        """After `restarts` deaths with the same offsets in work, records go one at a time,
        up to the dead owners' highest offset taken plus the slack."""
        guard = CrashLoopGuard(restarts=3, slack=10)
        left = Progress(starts=1, high=150)  # a run started at 100 and took up to 150
        for _ in range(2):
            left = _restart(guard, 100, left)  # each new owner dies before moving on
            assert not guard.careful(P, 100)
            assert guard.suspect(P)
        state = guard.assigned(P, 100, left)
        assert (True, 160, 0) == (state.careful, state.until, state.starts)
        assert guard.careful(P, 160)
        assert not guard.careful(P, 161)

    def test_a_record_begun_alone_restarts_times_is_quarantined(self) -> None:
        """In careful mode each begin is counted before the record runs; a record begun
        `restarts` times without getting past it is quarantined at the next start."""
        guard = CrashLoopGuard(restarts=2)
        state = guard.assigned(P, 120, Progress(starts=1, until=130, careful=True))
        assert state.quarantine is None
        guard.begin(P, 120)  # begun a second time, committed before it runs
        left = _died(guard.progress(P, 120, [], high=120))
        state = guard.assigned(P, 120, left)  # and the process died again
        assert (120, 2) == (state.quarantine, state.deaths)

    def test_a_death_while_no_careful_record_was_begun_blames_none(self) -> None:
        """Once a careful record is done, the next is not counted until it begins."""
        guard = CrashLoopGuard(restarts=1)
        guard.assigned(P, 120, Progress(starts=1, until=130, careful=True))
        guard.begin(P, 120)
        left = _died(guard.progress(P, 121, [], high=121))  # 120 done; 121 not begun
        assert (0, True) == (left.starts, left.careful)
        assert guard.assigned(P, 121, left).quarantine is None

    def test_careful_mode_counts_each_record_afresh(self) -> None:
        """Beginning the next record starts its own count at 1."""
        guard = CrashLoopGuard(restarts=3, owner="me")
        guard.assigned(P, 120, Progress(starts=2, until=130, careful=True))
        guard.begin(P, 121)
        assert Progress(starts=1, until=130, high=121, careful=True, exact=True, owner="me") == (
            guard.progress(P, 121, [], high=121)
        )

    def test_a_partition_lost_and_regained_by_the_same_run_is_no_death(self) -> None:
        """A session timeout or a broker outage is not a crash: its own metadata read back
        by the same run counts nothing."""
        guard = CrashLoopGuard(restarts=1, owner="me")
        guard.assigned(P, 100, Progress())
        left = guard.progress(P, 100, [], high=150)  # then the partition is lost
        state = guard.assigned(P, 100, left)
        assert (1, False, False) == (state.starts, state.careful, guard.suspect(P))

    def test_getting_past_the_suspects_starts_counting_afresh(self) -> None:
        """Once the committed offset passes `until`, the next death is the first again."""
        guard = CrashLoopGuard(restarts=3, slack=0)
        guard.assigned(P, 100, Progress(starts=3, high=150))
        progress = guard.progress(P, 151, [], high=160)
        assert (1, -1, False) == (progress.starts, progress.until, progress.careful)

    def test_progress_moving_within_the_suspects_keeps_the_count(self) -> None:
        """Outputs acknowledged before the killer do not reset the count."""
        guard = CrashLoopGuard(restarts=3, slack=0)
        guard.assigned(P, 100, Progress(starts=1, high=150))
        assert 2 == guard.progress(P, 140, [], high=150).starts

    def test_an_exact_high_needs_no_slack(self) -> None:
        """A high committed before its batch was taken bounds the suspects exactly."""
        guard = CrashLoopGuard(restarts=3, slack=500)
        state = guard.assigned(P, 100, Progress(starts=2, high=150, exact=True))
        assert 150 == state.until
        assert guard.suspect(P)

    def test_a_clean_start_is_not_suspect(self) -> None:
        """Without a death being counted, batches are taken without an extra commit."""
        guard = CrashLoopGuard(restarts=3)
        guard.assigned(P, 100, Progress())
        assert not guard.suspect(P)

    def test_restarts_must_be_positive(self) -> None:
        """A guard that quarantines on zero deaths would quarantine everything."""
        with pytest.raises(ValueError, match="at least 1"):
            CrashLoopGuard(restarts=0)
