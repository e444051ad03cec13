"""bench.checkout: the commit and data paths a results page names."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.checkout import checkout_label, shown_path


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def _repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    (repo / "model").mkdir(parents=True)
    (repo / "model" / "a.py").write_text("x = 1\n")
    (repo / "notes.txt").write_text("hello\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "first")
    return repo, _git(repo, "rev-parse", "--short", "HEAD")


def test_a_clean_checkout_is_named_by_its_commit(tmp_path: Path) -> None:
    """Nothing changed: the short commit alone."""
    repo, head = _repo(tmp_path)
    assert checkout_label(repo=repo) == head


def test_a_changed_file_marks_the_label_dirty(tmp_path: Path) -> None:
    """A modified tracked file adds +dirty."""
    repo, head = _repo(tmp_path)
    (repo / "model" / "a.py").write_text("x = 2\n")
    assert checkout_label(repo=repo) == head + "+dirty"


def test_only_the_named_paths_count_when_given(tmp_path: Path) -> None:
    """A change outside the named paths leaves the label clean; one inside marks it."""
    repo, head = _repo(tmp_path)
    (repo / "notes.txt").write_text("changed\n")
    assert checkout_label("model", repo=repo) == head
    (repo / "model" / "a.py").write_text("x = 3\n")
    assert checkout_label("model", repo=repo) == head + "+dirty"


def test_outside_git_the_label_is_unknown(tmp_path: Path) -> None:
    """A folder no git repository holds gives 'unknown', not an exception."""
    plain = tmp_path / "plain"
    plain.mkdir()
    assert checkout_label(repo=plain) == "unknown"


def test_paths_under_the_shared_folder_are_shown_relative_to_it(tmp_path: Path) -> None:
    """A shared data file is named relative to the shared folder; anything else as given."""
    shared = tmp_path / "shared"
    (shared / "fashion").mkdir(parents=True)
    assert shown_path(shared / "fashion" / "labels.csv", shared) == "fashion/labels.csv"
    elsewhere = tmp_path / "mine.csv"
    assert shown_path(elsewhere, shared) == str(elsewhere)
