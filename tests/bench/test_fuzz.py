"""The fuzz targets of bench/fuzz.py without atheris: seeds and random mutations, no crash."""

from __future__ import annotations

import inspect
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench import fuzz
from bench.fuzz import (
    IMAGE_SIZE,
    RECORD_ERRORS,
    TARGETS,
    Target,
    image_seeds,
    mutate,
    parse_log,
    record_seeds,
    smoke_check,
)
from service.pipeline import EnrichmentService

REPO_ROOT = Path(__file__).resolve().parents[2]

CRASH_LOG = """\
INFO: Seed: 2476936324
#2\tINITED cov: 2 ft: 2 corp: 1/1b exec/s: 0 rss: 47Mb
#1677\tNEW    cov: 6 ft: 6 corp: 3/9b lim: 17 exec/s: 0 rss: 47Mb L: 4/4 MS: 5 InsertByte-

 === Uncaught Python exception: ===
RuntimeError: boom
Traceback (most recent call last):
  File "/tmp/t.py", line 4, in f
    raise RuntimeError("boom")
RuntimeError: boom

==17670== ERROR: libFuzzer: fuzz target exited
SUMMARY: libFuzzer: fuzz target exited
artifact_prefix='/w/findings/image-'; Test unit written to /w/findings/image-crash-95d6de85
Base64: QUJZJ0FBCltZ
stat::number_of_executed_units: 22172
stat::average_exec_per_sec:     1100
stat::new_units_added:          2
stat::slowest_unit_time_sec:    0
stat::peak_rss_mb:              47
"""


@pytest.fixture(scope="module")
def photos_and_hostile(shared_data: Path) -> dict[str, bytes]:
    return image_seeds(shared_data)


class TestTargets:
    def test_image_target_takes_seeds_and_mutations_without_a_crash(
        self, photos_and_hostile: dict[str, bytes]
    ) -> None:
        """Photos, hostile images and 300 mutations: decoded or InvalidImageError, nothing
        else."""
        outcomes = smoke_check("image", seeds=photos_and_hostile, mutations=300)
        assert len(photos_and_hostile) + 300 == sum(outcomes.values())
        assert {"decoded", "rejected"} == set(outcomes)
        assert outcomes["decoded"] >= 3  # the photos at least

    def test_record_target_takes_seeds_and_mutations_without_a_crash(self) -> None:
        """Valid and invalid products and 500 mutations: each outcome the pipeline knows."""
        seeds = record_seeds()
        outcomes = smoke_check("record", seeds=seeds, mutations=500)
        assert len(seeds) + 500 == sum(outcomes.values())
        assert {"dead-letter", "invalid-input", "valid"} == set(outcomes)

    def test_seed_records_end_as_the_pipeline_answers_them(self) -> None:
        seeds = record_seeds()
        got = {name: fuzz.record_input(data) for name, data in seeds.items()}
        assert "valid" == got["plain"] == got["full"] == got["ipv6"] == got["far-future"]
        assert "invalid-input" == got["file-url"] == got["credentials"] == got["long-url"]
        assert "dead-letter" == got["not-avro"] == got["unknown-fingerprint"]

    def test_an_unexpected_exception_fails_the_smoke_check_naming_the_input(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def fragile(data: bytes) -> str:
            if data.startswith(b"\xff"):
                raise IndexError("a bug")
            return "fine"

        monkeypatch.setitem(TARGETS, "fragile", Target("fragile", "fragile", fragile, dict))
        with pytest.raises(IndexError) as caught:
            smoke_check("fragile", seeds={"ok": b"\x00abc", "bad": b"\xffabc"}, mutations=0)
        assert any("'bad'" in note for note in caught.value.__notes__)

    def test_the_image_size_is_the_default_models(self) -> None:
        from model.train import DEFAULT_IMAGE_SIZE

        assert DEFAULT_IMAGE_SIZE == IMAGE_SIZE

    def test_record_errors_are_what_the_pipeline_catches(self) -> None:
        """The allowed exceptions are those `_handle` dead-letters, no more, no fewer."""
        source = inspect.getsource(EnrichmentService._handle)
        caught = re.search(r"except \(([^)]*)\) as exc:", source)
        assert caught is not None
        names = {name.strip() for name in caught.group(1).split(",")}
        assert names == {error.__name__ for error in RECORD_ERRORS}

    def test_the_targets_import_and_run_without_atheris(self) -> None:
        """With atheris unimportable, the module loads and a target runs (CI has no atheris)."""
        code = (
            "import sys; sys.modules['atheris'] = None\n"
            "from bench.fuzz import record_input, record_seeds\n"
            "print(record_input(record_seeds()['plain']))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert 0 == done.returncode, done.stderr
        assert "valid" == done.stdout.strip()


class TestMutations:
    def test_mutations_are_deterministic_and_mostly_change_the_input(self) -> None:
        data = bytes(range(256)) * 4
        first = [mutate(data, rng, [data]) for rng in [random.Random(7)] * 20]
        again = [mutate(data, rng, [data]) for rng in [random.Random(7)] * 20]
        assert first == again
        rng = random.Random(1)
        changed = Counter(mutate(data, rng, [b"xyz"]) != data for _ in range(200))
        assert changed[True] > 180

    def test_an_empty_input_becomes_random_bytes(self) -> None:
        rng = random.Random(3)
        assert any(mutate(b"", rng, [b"a"]) for _ in range(10))


class TestLog:
    def test_a_crash_log_gives_executions_the_saved_input_and_the_traceback(self) -> None:
        summary = parse_log(CRASH_LOG)
        assert 22172 == summary.executions
        assert 1100 == summary.exec_per_s
        assert ["/w/findings/image-crash-95d6de85"] == summary.artifacts
        assert summary.error.startswith("RuntimeError: boom")
        assert 'raise RuntimeError("boom")' in summary.error

    def test_a_clean_log_without_final_stats_counts_the_done_line(self) -> None:
        summary = parse_log("#65536\tpulse  cov: 6\nDone 70001 runs in 31 second(s)\n")
        assert 70001 == summary.executions
        assert [] == summary.artifacts
        assert "" == summary.error

    def test_a_cut_log_falls_back_to_the_last_progress_line(self) -> None:
        summary = parse_log("#2\tINITED cov: 2\n#4096\tpulse  cov: 9\n")
        assert 4096 == summary.executions

    def test_a_log_of_a_child_that_ran_nothing_has_no_executions(self) -> None:
        summary = parse_log("ModuleNotFoundError: No module named 'atheris'\n")
        assert summary.executions is None
