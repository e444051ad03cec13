"""What the benchmark pages say about where they were run from: the checkout's commit and
the data paths they read, so a figure can be traced to its code and data."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["REPO", "checkout_label", "shown_path"]

REPO = Path(__file__).resolve().parent.parent


def checkout_label(*paths: str, repo: Path = REPO) -> str:
    """The checkout's short commit, ``+dirty`` when its files differ from it (only ``paths``
    count when given); ``unknown`` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", *(["--", *paths] if paths else []))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def shown_path(path: Path, shared: Path) -> str:
    """``path`` as a results page shows it: relative to the shared data folder when under it
    (the same on every machine), else as given."""
    resolved = path.resolve()
    return str(resolved.relative_to(shared)) if resolved.is_relative_to(shared) else str(path)
