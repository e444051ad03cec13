"""py-spy profiles of a running process and their summary, and percentiles of measured values."""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT


class Profiler:
    """py-spy sampling every thread of a running process (not pausing it), raw stacks out."""

    def __init__(self, pid: int, output: Path, rate_hz: int = 50) -> None:
        self.pid = pid
        self.output = output
        self.rate_hz = rate_hz
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_ms = 0

    @staticmethod
    def available() -> str | None:
        """The py-spy executable, if installed."""
        beside = Path(sys.executable).parent / "py-spy"
        return str(beside) if beside.exists() else shutil.which("py-spy")

    def start(self) -> Profiler:
        """Attach to the process."""
        exe = self.available()
        assert exe is not None
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.popen = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate_hz), "--nonblocking",
             "--threads", "--format", "raw", "--output", str(self.output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.started_ms = int(time.time() * 1000)
        return self

    def stop(self) -> str:
        """Detach (SIGINT makes py-spy write its file); returns py-spy's complaints, if any."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            _, err = self.popen.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, err = self.popen.communicate()
        return "" if self.output.exists() else err.decode(errors="replace")[-2000:]


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` → ``func (file.py)``, shortened below site-packages."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif str(REPO_ROOT) in path:
        path = path.split(str(REPO_ROOT) + "/", 1)[1]
    return f"{name} ({path})"


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Per-thread share of the samples and the top functions, self and inclusive."""
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # With --threads the first frame names the process, the second the thread.
        thread = next((f for f in frames[:2] if f.startswith("thread ")), "thread ?")
        code = [f for f in frames if " (" in f and not f.startswith(("thread ", "process "))]
        total += count
        threads[_thread_label(thread)] += count
        if code:
            self_time[_frame_name(code[-1])] += count
            for name in {_frame_name(f) for f in code}:
                inclusive[name] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        if not total:
            return []
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "threads": share(threads),
        "self": share(self_time),
        "inclusive": share(inclusive),
    }


def _thread_label(frame: str) -> str:
    """``thread (1021): inference`` → ``inference``."""
    return frame.split("): ", 1)[1] if "): " in frame else frame


def percentiles(values: Sequence[float], points: Sequence[float]) -> dict[str, float]:
    """``{"p50": ...}`` for each point (nearest-rank on the sorted values)."""
    ordered = sorted(values)
    result = {}
    for point in points:
        if not ordered:
            result[f"p{point:g}"] = float("nan")
            continue
        rank = max(0, min(len(ordered) - 1, math.ceil(point / 100 * len(ordered)) - 1))
        result[f"p{point:g}"] = round(ordered[rank], 1)
    return result
