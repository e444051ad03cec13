"""The benchmark's subprocesses and what /proc says about them: CPU seconds, resident memory,
the service's counters over time (Metrics, Process, the samplers), and the machine's CPU and memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def processes() -> dict[int, tuple[str, float]]:
    """Every process now: a short description of its command and its CPU seconds."""
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
            cpu = process_cpu_s(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry.name)] = (_describe([w.decode(errors="replace") for w in words if w]), cpu)
    return found


def _describe(argv: list[str]) -> str:
    """``java ... kafka.Kafka ...`` → ``java kafka``; ``python -m x.y serve`` → ``x.y serve``."""
    if not argv:
        return "?"
    head = Path(argv[0]).name
    if head.startswith("java"):
        return "java (kafka)" if any("kafka" in a for a in argv) else "java"
    if "-m" in argv[:-1]:
        index = argv.index("-m")
        return " ".join(argv[index + 1 : index + 3])
    return " ".join([head, *[Path(a).name for a in argv[1:2]]])[:60]


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (not idle, not waiting for I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _TICK


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory now and at its peak (VmRSS, VmHWM) of process ``pid``, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


@dataclass(frozen=True)
class Metrics:
    """The service's Prometheus counters at one moment."""

    at: float
    values: dict[str, float]
    cpu_s: float = 0.0
    """CPU seconds the service process has used."""
    machine_busy_s: float = 0.0
    """CPU seconds every core of the machine has been busy (all processes)."""
    processes: dict[int, tuple[str, float]] = field(default_factory=dict)
    """CPU seconds of every process on the machine, with its command."""

    def since(self, earlier: Metrics) -> dict[str, Any]:
        """What the inference thread did between ``earlier`` and this reading."""
        seconds = self.at - earlier.at

        def delta(name: str) -> float:
            return self.values.get(name, 0.0) - earlier.values.get(name, 0.0)

        batches, images = delta("enrich_batch_size_count"), delta("enrich_batch_size_sum")
        busy = delta("enrich_inference_seconds_sum")
        service_cores = (self.cpu_s - earlier.cpu_s) / seconds if seconds else 0.0
        machine_cores = (self.machine_busy_s - earlier.machine_busy_s) / seconds if seconds else 0.0
        others: Counter[str] = Counter()
        for pid, (name, cpu) in self.processes.items():
            before = earlier.processes.get(pid)
            used = cpu - (before[1] if before is not None and before[0] == name else 0.0)
            if used > 0 and seconds:
                others[name] += used / seconds
        top = [(name, round(cores, 2)) for name, cores in others.most_common(6) if cores >= 0.02]
        return {
            "seconds": round(seconds, 2),
            "busiest_processes_cores": top,
            "service_cores": round(service_cores, 2),
            "other_processes_cores": round(machine_cores - service_cores, 2),
            "images_per_s": round(images / seconds, 1) if seconds else None,
            "mean_batch": round(images / batches, 1) if batches else None,
            "inference_busy_share": round(busy / seconds, 3) if seconds else None,
            "inference_images_per_busy_s": round(images / busy, 1) if busy else None,
            "service_cpu_ms_per_image": (
                round(1000 * service_cores * seconds / images, 2) if images else None
            ),
        }


class Process:
    """A Python subprocess of the benchmark: the service (``-m service.cli ...``) or the naive
    consumer; its output goes to a log file."""

    def __init__(self, module_args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.args = [sys.executable, "-m", *module_args]
        self.env = env
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ready_ms = 0
        """When ``/readyz`` first answered 200 (wall clock, ms)."""

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> Process:
        """Start the process from the repository root."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as stream:
            self.popen = subprocess.Popen(
                self.args, env=self.env, cwd=REPO_ROOT, stdout=stream, stderr=subprocess.STDOUT
            )
        return self

    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(self, port: int, timeout_s: float = 180.0) -> None:
        """Wait for the service's ``/readyz`` to answer 200."""
        self.port = port
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{port}/readyz"
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{' '.join(self.args)} exited; see {self.log}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        self.ready_ms = int(time.time() * 1000)
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"not ready within {timeout_s}s; see {self.log}")

    def counters(self) -> dict[str, float]:
        """The service's ``enrich_*`` Prometheus values now."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("enrich_") and " " in line:
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def metrics(self) -> Metrics:
        """The service's counters and the machine's CPU use now."""
        values = self.counters()
        return Metrics(
            time.monotonic(), values, process_cpu_s(self.pid), machine_busy_s(), processes()
        )

    def wait_classified(self, images: int, timeout_s: float) -> None:
        """Wait until the service has classified ``images`` images."""
        deadline = time.monotonic() + timeout_s
        while self.counters().get("enrich_batch_size_sum", 0.0) < images:
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not classify {images} images; see {self.log}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout_s``); returns the exit status."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit by itself."""
        assert self.popen is not None
        return self.popen.wait(timeout_s)


class RssSampler:
    """Samples a process's resident memory every ``interval_s`` in a thread, with a label
    (e.g. outputs so far) from ``progress``."""

    def __init__(self, pid: int, progress: Callable[[], int], interval_s: float = 0.5) -> None:
        self.pid = pid
        self.progress = progress
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, float]] = []
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._began = time.monotonic()

    def start(self) -> RssSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (takes one last sample)."""
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            try:
                now, peak = rss_mb(self.pid)
            except OSError:
                return
            self.peak_mb = max(self.peak_mb, peak)
            self.samples.append((time.monotonic() - self._began, self.progress(), now))
            if self._stop.wait(self.interval_s):
                return


class CounterSampler:
    """Samples the service's counters every ``interval_s`` in a thread: images classified, in
    flight and whether the consumer is paused (backpressure), to find stalls."""

    def __init__(self, process: Process, interval_s: float = 0.5) -> None:
        self.process = process
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CounterSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop; returns the stalls seen (intervals without one image classified)."""
        self._stop.set()
        self._thread.join(10)
        idle = paused = 0.0
        for before, after in zip(self.samples, self.samples[1:], strict=False):
            span = after[0] - before[0]
            if after[1] == before[1]:
                idle += span
            if after[3] >= 1:
                paused += span
        total = self.samples[-1][0] - self.samples[0][0] if len(self.samples) > 1 else 0.0
        return {
            "seconds": round(total, 1),
            "seconds_without_an_image_classified": round(idle, 1),
            "seconds_consumer_paused": round(paused, 1),
            "series": [(round(t, 1), int(n), int(f), int(q)) for t, n, f, q in self.samples],
        }

    def _run(self) -> None:
        began = time.monotonic()
        while True:
            try:
                values = self.process.counters()
            except (urllib.error.URLError, OSError):
                return
            self.samples.append(
                (
                    time.monotonic() - began,
                    values.get("enrich_batch_size_sum", 0.0),
                    values.get("enrich_in_flight", 0.0),
                    values.get("enrich_paused", 0.0),
                )
            )
            if self._stop.wait(self.interval_s):
                return


def cpu_description() -> str:
    """The CPU model name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def memory_gib() -> float:
    """Physical memory in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0
