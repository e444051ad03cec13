"""The metadata committed beside each offset: written short, read back, foreign text ignored."""

from __future__ import annotations

import pytest

from service.ordering import MAX_HOLES
from service.progress import MAX_LENGTH, Progress


class TestProgress:
    @pytest.mark.parametrize(
        "progress",
        [
            Progress(),
            Progress(done=(101, 102, 103, 110)),
            Progress(starts=2, until=150, high=140),
            Progress(done=(105,), starts=1, until=100, high=120, careful=True),
            Progress(starts=2, until=130, high=120, exact=True),
        ],
    )
    def test_what_is_written_reads_back_equal(self, progress: Progress) -> None:
        """Encoding then decoding at the same committed offset gives the same progress."""
        text = progress.encode(100)
        assert progress == Progress.decode(text, 100)

    def test_offsets_are_short_ranges_relative_to_the_commit(self) -> None:
        """Runs of offsets become base-36 ranges from the committed offset."""
        assert "e1;d=1-3,a;s=2" == Progress(done=(1001, 1002, 1003, 1010), starts=2).encode(1000)

    def test_offsets_at_or_below_the_commit_are_not_written(self) -> None:
        """The committed offset already says they are done."""
        assert "e1" == Progress(done=(99, 100), until=50, high=80).encode(100)

    @pytest.mark.parametrize("text", [None, "", "hello", "e2;d=1", "{json: 1}"])
    def test_metadata_of_other_writers_reads_as_no_progress(self, text: str | None) -> None:
        """Another tool's metadata (or none) never makes the service skip anything."""
        assert Progress() == Progress.decode(text, 100)

    @pytest.mark.parametrize("text", ["e1;d=zz-", "e1;s=x", "e1;d=0-zzzzzzz"])
    def test_damaged_metadata_reads_as_no_progress(self, text: str) -> None:
        """Damaged text is logged and ignored, never an error that stops the partition."""
        assert Progress() == Progress.decode(text, 100)

    def test_the_worst_case_fits_the_brokers_limit(self) -> None:
        """MAX_HOLES holes over a wide window stay under the 4,096-byte metadata limit."""
        committed = 10**9
        done = [committed + 1_000_000 + 7 * i for i in range(MAX_HOLES + 1)]
        text = Progress(done=tuple(done), starts=99, until=committed + 10**7,
                        high=committed + 10**7, careful=True).encode(committed)  # fmt: skip
        assert len(text) <= MAX_LENGTH

    def test_metadata_over_the_limit_keeps_the_lowest_done_offsets_that_fit(self) -> None:
        """The broker would refuse longer metadata: the highest outputs are left off (the next
        owner produces them again, a duplicate and never a loss), everything else is kept."""
        progress = Progress(done=tuple(range(1, 20_000, 2)), starts=2, high=30_000)
        text = progress.encode(0)
        back = Progress.decode(text, 0)
        assert len(text) <= MAX_LENGTH
        assert (2, 30_000) == (back.starts, back.high)
        assert back.done == progress.done[: len(back.done)]
        assert len(back.done) > 500
