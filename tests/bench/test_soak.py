"""The soak's pure parts (bench/soak.py): the leak and keep-up verdict, the process readings
and the URL mix. The soak itself runs in `make soak`, not here."""

from __future__ import annotations

import os
import socket
from collections import Counter

from bench.soak import Mix, Sample, judge, tcp_connections, threads


def _series(
    seconds: int = 300,
    rss: float = 800.0,
    rss_growth_per_s: float = 0.0,
    fds: int = 60,
    fd_every_s: int = 0,
    connections: int = 12,
    lag: int = 20,
) -> list[Sample]:
    """A sample every 5 s; optional steady growth of memory and descriptors."""
    return [
        Sample(
            t=float(t),
            rss_mb=rss + rss_growth_per_s * t + (15 if t % 20 == 0 else 0),  # busy moments
            fds=fds + (t // fd_every_s if fd_every_s else 0),
            connections=connections + (1 if t % 15 == 0 else 0),
            threads=40,
            lag=lag,
        )
        for t in range(0, seconds + 1, 5)
    ]


class TestJudge:
    def test_a_flat_run_with_noise_passes(self) -> None:
        verdict = judge(_series(), warmup_s=60, load_end_s=300, lag_bound=500)
        assert verdict.passed, verdict.reasons
        assert 49 == verdict.samples_after_warmup
        assert abs(verdict.rss_growth) < 0.03
        assert abs(verdict.rss_slope_mb_per_min) < 1

    def test_memory_growing_past_ten_percent_fails(self) -> None:
        """0.4 MiB/s on 800 MiB over the 240 s after warm-up: about 12 %."""
        verdict = judge(_series(rss_growth_per_s=0.4), warmup_s=60, load_end_s=300, lag_bound=500)
        assert not verdict.passed
        assert 1 == len(verdict.reasons)
        assert "resident memory grew" in verdict.reasons[0]
        assert 0.10 < verdict.rss_growth < 0.15
        assert verdict.rss_slope_mb_per_min > 20

    def test_memory_growing_a_little_passes(self) -> None:
        verdict = judge(_series(rss_growth_per_s=0.2), warmup_s=60, load_end_s=300, lag_bound=500)
        assert verdict.passed, verdict.reasons
        assert 0.04 < verdict.rss_growth < 0.10

    def test_growth_during_the_warm_up_does_not_count(self) -> None:
        samples = [
            Sample(s.t, s.rss_mb + (0 if s.t >= 60 else -400), s.fds, s.connections, s.threads, 0)
            for s in _series()
        ]
        assert judge(samples, warmup_s=60, load_end_s=300, lag_bound=500).passed

    def test_a_descriptor_every_twenty_seconds_is_a_leak(self) -> None:
        verdict = judge(_series(fd_every_s=20), warmup_s=60, load_end_s=300, lag_bound=500)
        assert not verdict.passed
        assert "open file descriptors went up" in " ".join(verdict.reasons)
        assert verdict.fds_end > verdict.fds_first_half_max

    def test_connections_piling_up_fail(self) -> None:
        samples = [
            Sample(s.t, s.rss_mb, s.fds, s.connections + int(s.t // 30), s.threads, s.lag)
            for s in _series()
        ]
        verdict = judge(samples, warmup_s=60, load_end_s=300, lag_bound=500)
        assert ["TCP connections"] == [r.split(" went")[0] for r in verdict.reasons]

    def test_a_lag_at_the_end_beyond_the_bound_fails(self) -> None:
        verdict = judge(_series(lag=900), warmup_s=60, load_end_s=300, lag_bound=500)
        assert ["900 inputs unanswered at the end of the load (bound 500)"] == list(verdict.reasons)

    def test_samples_after_the_load_are_not_judged(self) -> None:
        """The drain after the load (lag falling, connections closing) is left out."""
        samples = [*_series(), Sample(400, 2000.0, 500, 100, 90, 99_999)]
        assert judge(samples, warmup_s=60, load_end_s=300, lag_bound=500).passed

    def test_too_few_samples_after_the_warm_up_fail(self) -> None:
        verdict = judge(_series(seconds=70), warmup_s=60, load_end_s=70, lag_bound=500)
        assert not verdict.passed
        assert "samples after the warm-up" in verdict.reasons[0]

    def test_no_samples_at_all_fail(self) -> None:
        verdict = judge([], warmup_s=60, load_end_s=300, lag_bound=500)
        assert not verdict.passed


class TestReadings:
    def test_connections_of_this_process_are_counted_not_the_listener(self) -> None:
        pid = os.getpid()
        before = tcp_connections(pid)
        with socket.create_server(("127.0.0.1", 0)) as server:
            assert before == tcp_connections(pid)  # listening sockets are not connections
            client = socket.create_connection(server.getsockname())
            accepted, _ = server.accept()
            try:
                assert before + 2 == tcp_connections(pid)
            finally:
                client.close()
                accepted.close()

    def test_threads_are_counted(self) -> None:
        assert threads(os.getpid()) >= 1


class TestMix:
    def test_the_shares_hold_and_fresh_and_missing_urls_are_unique(self) -> None:
        mix = Mix("http://127.0.0.1:1", ["a.jpg", "b.jpg", "c.jpg"], 2, 0.15, 0.05, "t")
        urls = mix.urls(4000, "soak", seed=1)
        kinds = Counter(
            "missing" if "/missing/" in u else "fresh" if "fresh=" in u else "pool" for u in urls
        )
        assert 0.12 < kinds["fresh"] / 4000 < 0.18
        assert 0.03 < kinds["missing"] / 4000 < 0.07
        pooled = {u for u in urls if "pool=" in u}
        assert {mix.pool_url(0), mix.pool_url(1)} == pooled
        unique = [u for u in urls if "pool=" not in u]
        assert len(unique) == len(set(unique))
        assert urls == mix.urls(4000, "soak", seed=1)
