"""The benchmark harness's output timeline and its line in the report (what showed the service's
1.5 s publishing gaps)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.harness import Output, timeline
from bench.service_report import timeline_line


def _outputs(*timestamps_ms: int) -> list[Output]:
    return [Output(f"k{i}", ms, "CLASSIFIED") for i, ms in enumerate(timestamps_ms)]


@pytest.mark.parametrize(
    ("timestamps", "expected"),
    [
        ((), {"first_output_ms": None, "step_ms": 500, "counts": []}),
        ((1_200,), {"first_output_ms": 200, "step_ms": 500, "counts": [1]}),
        (
            (1_100, 1_200, 1_599, 1_600, 3_200),
            {"first_output_ms": 100, "step_ms": 500, "counts": [3, 1, 0, 0, 1]},
        ),
    ],
    ids=["no output", "one output", "a gap of two steps"],
)
def test_the_timeline_counts_outputs_per_step_after_the_first(
    timestamps: tuple[int, ...], expected: dict[str, Any]
) -> None:
    """Outputs are counted per 500 ms from the first one, empty steps included, and the
    first one's delay after the start is given apart."""
    assert timeline(_outputs(*timestamps), 1_000) == expected


def test_the_report_names_the_longest_stretch_without_an_output() -> None:
    """The report's line gives the first output's delay and the longest run of empty steps
    in seconds, so a publishing stall is read off without the JSON."""
    row = timeline(_outputs(1_100, 1_200, 1_599, 1_600, 3_200), 1_000)
    line = timeline_line(row)
    assert line.startswith("first 100 ms after ready; longest stretch without an output 1.0 s")
    assert line.endswith("per step: 3 1 0 0 1")
    assert timeline_line(timeline([], 0)) == "no output"
