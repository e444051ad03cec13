"""The decode memory bench (bench/decode_memory.py) on a tiny burst: every variant runs in a
child of its own and decodes every image. The real burst runs in `make chaos`, not here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.decode_memory import OFF, run_all, table


@pytest.mark.integration
def test_a_tiny_burst_is_measured_with_the_budget_and_without(tmp_path: Path) -> None:
    """Three 300 x 300 PNGs against room for one are admitted one at a time, and all decode
    with the budget and without; each variant's peak memory is read in its own process."""
    variants, wire = run_all(3, 300, [2], 90_000, tmp_path)
    assert [(2, 90_000, 3, 90_000), (2, OFF, 3)] == [
        (v.workers, v.budget, v.decoded, v.most_pixels_at_once)[: 4 if v.budget != OFF else 3]
        for v in variants
    ]
    assert all(v.peak_rss_mib >= v.rss_before_mib > 0 for v in variants)
    assert wire > 0
    assert "| 2 | 90,000 | 3/3 | 90,000 |" in table(variants)
