"""The cold run's bounds (bench/service_limits.py `cold_bounds`): what two shared cores allow
at most, from the measured inference and decode limits, and whether issue 16's cold target
(0.8 x min(inference, decode)) is above it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench.harness import REPO_ROOT
from bench.service_bench import derive
from bench.service_limits import cold_bounds
from bench.service_report import table


@pytest.mark.parametrize(
    ("inference", "decode", "one_core", "machine", "over"),
    [
        # The record run of 2026-12-01 04:01 (bench/results/2026-12-01-0401-vm.md): the target,
        # 462.4, is above what the cores could do even with decoding at twice one core.
        (578.0, 1326.9, 785.0, 422.5, 1.094),
        # Inference far faster than decoding: the bound is decoding's, the target within reach.
        (5000.0, 1000.0, 500.0, 833.3, 0.96),
        # Two cores decoding better than twice one core: the measured rate is used.
        (400.0, 900.0, 400.0, 276.9, 1.156),
    ],
)
def test_the_machine_bound_is_decode_and_inference_one_after_the_other_on_both_cores(
    inference: float, decode: float, one_core: float, machine: float, over: float
) -> None:
    bounds = cold_bounds(inference, decode, one_core)

    assert bounds["machine"] == pytest.approx(machine, abs=0.1)
    assert bounds["target_over_machine"] == pytest.approx(over, abs=0.001)


def test_the_target_is_eight_tenths_of_the_slower_limit_and_above_the_shared_bound() -> None:
    bounds = cold_bounds(578.0, 1326.9, 785.0)

    assert bounds["bound"] == 578.0
    assert bounds["target"] == pytest.approx(462.4)
    assert bounds["shared"] == pytest.approx(402.6, abs=0.1)
    assert bounds["shared"] <= bounds["machine"]  # the optimistic decode never lowers it


def test_the_floor_consumers_own_cpu_per_product_lowers_the_machine_bound() -> None:
    # The record run: the floor consumer's machine CPU 3.836 ms a product, inference's own
    # 2000 / 578.0 = 3.460 ms: 0.376 ms a product the least work needs besides inference.
    bounds = cold_bounds(578.0, 1326.9, 785.0, pipeline_ms=3.836 - 2000 / 578.0)

    assert bounds["machine_with_pipeline"] == pytest.approx(391.4, abs=0.1)
    assert bounds["target_over_machine_with_pipeline"] == pytest.approx(1.181, abs=0.001)


def test_without_a_floor_run_there_is_no_pipeline_bound_and_a_negative_cost_counts_as_zero() -> (
    None
):
    assert "machine_with_pipeline" not in cold_bounds(578.0, 1326.9, 785.0)
    free = cold_bounds(578.0, 1326.9, 785.0, pipeline_ms=-0.1)
    assert free["machine_with_pipeline"] == pytest.approx(free["machine"])


def test_the_record_states_the_cold_target_against_both_machine_bounds() -> None:
    """The record run of 04:01, derived again, says in its cold row how far the target is
    above what the machine allows."""
    record = json.loads((REPO_ROOT / "bench/results/2026-12-01-0401-vm.json").read_text())
    details = record.pop("details")
    details["cores"] = 2  # the VM it ran on (records since carry it; derive asks the OS)
    bench = SimpleNamespace(figures=record, details=details, env=dict)

    derive(bench)  # type: ignore[arg-type]
    (row,) = [line for line in table(record, details) if line.startswith("| 4 |")]

    assert details["cold_target_over_machine"] == pytest.approx(1.094, abs=0.001)
    assert "the target 462.4 is 1.09x the most 2 cores can decode and classify" in row
    assert "1.18x the 391.4 left once the floor consumer's 0.38 ms" in row


def test_more_cores_decode_more_and_spread_the_pipelines_cpu_thinner() -> None:
    two = cold_bounds(578.0, 1326.9, 785.0, pipeline_ms=0.376)
    four = cold_bounds(578.0, 1326.9, 785.0, pipeline_ms=0.376, cores=4)

    assert four["machine"] == pytest.approx(1 / (1 / 578.0 + 1 / 3140.0))
    assert four["machine_with_pipeline"] == pytest.approx(1 / (1 / four["machine"] + 0.376 / 4000))
    assert four["machine"] > two["machine"]
