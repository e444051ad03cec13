"""The installed `enrich` command."""

import json
import subprocess
import sys
from pathlib import Path

ENRICH = Path(sys.executable).parent / "enrich"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENRICH), *args], capture_output=True, text=True, timeout=60)


class TestTaxonomyStats:
    """enrich taxonomy stats."""

    def test_real_file_at_depth_4(self, taxonomy_file: Path) -> None:
        """On the real Google file it prints the figures the design relies on."""
        result = _run(
            "taxonomy", "stats", "--taxonomy", str(taxonomy_file), "--depth", "4", "--json"
        )
        assert 0 == result.returncode, result.stderr
        expected = {
            "version": "2021-09-21",
            "categories": 5595,
            "depth": 4,
            "nodes": 3765,
            "leaves": 3270,
            "per_level": [21, 192, 1349, 2203],
        }
        assert expected == json.loads(result.stdout)

    def test_readable_output(self, taxonomy_file: Path) -> None:
        """Without --json it prints a readable table with the same figures."""
        result = _run("taxonomy", "stats", "--taxonomy", str(taxonomy_file))
        assert 0 == result.returncode, result.stderr
        assert "leaves            3,270" in result.stdout

    def test_broken_file_is_a_clear_error(self, tmp_path: Path) -> None:
        """A file with a broken line exits 1 with a message naming the file and line."""
        bad = tmp_path / "tax.txt"
        bad.write_text("# Google_Product_Taxonomy_Version: x\n1 - A\nnot a category line\n")
        result = _run("taxonomy", "stats", "--taxonomy", str(bad))
        assert 1 == result.returncode
        assert "tax.txt" in result.stderr
        assert "3" in result.stderr.split("tax.txt", 1)[1]
        assert "Traceback" not in result.stderr

    def test_missing_file(self, tmp_path: Path) -> None:
        """A file that does not exist is a usage error (exit 2), not a traceback."""
        result = _run("taxonomy", "stats", "--taxonomy", str(tmp_path / "nope.txt"))
        assert 2 == result.returncode
        assert "does not exist" in result.stderr


class TestHelp:
    """enrich --help."""

    def test_lists_subcommands(self) -> None:
        """The top-level help lists the taxonomy group."""
        result = _run("--help")
        assert 0 == result.returncode
        assert "taxonomy" in result.stdout
