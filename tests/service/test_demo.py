"""`enrich demo` runs the whole path on embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli
from service.demo import CLASSES, TAXONOMY

pytestmark = pytest.mark.slow


def test_demo_enriches_every_product_and_prints_json() -> None:
    """The demo trains, serves 60 generated products through the mock broker, reports JSON."""
    result = CliRunner().invoke(cli, ["demo", "--products", "60", "--json"],
                                catch_exceptions=False)  # fmt: skip
    assert 0 == result.exit_code, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert 65 == summary["products"]
    assert 64 == summary["outputs"]
    assert {"IMAGE_INVALID": 1, "IMAGE_UNAVAILABLE": 1, "INVALID_INPUT": 1, "TOMBSTONE": 1} == {
        k: v for k, v in summary["by_status"].items() if k not in ("CLASSIFIED", "LOW_CONFIDENCE")
    }
    assert 60 == summary["by_status"].get("CLASSIFIED", 0) + summary["by_status"].get(
        "LOW_CONFIDENCE", 0
    )
    assert summary["products_per_second"] > 0


def test_the_embedded_taxonomy_lines_are_googles(taxonomy_file: Path) -> None:
    """Every category the demo embeds is a line of the real taxonomy file, verbatim."""
    real = set(taxonomy_file.read_text(encoding="utf-8").splitlines())
    embedded = [line for line in TAXONOMY.splitlines() if line and not line.startswith("#")]
    assert [] == [line for line in embedded if line not in real]
    assert set(CLASSES) <= {int(line.split(" - ")[0]) for line in embedded}
