"""Fault scenarios shared by the quick CI tests and `make chaos` (bench/chaos.py).

Each scenario returns a :class:`Row`: inputs, outputs, lost (input offsets with neither an
output nor a dead-letter record, counted by reading both topics back), duplicates and the
longest recovery time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import confluent_kafka

from service.contract import SingleObjectCodec

ENRICHMENT = SingleObjectCodec.for_schema("category_enrichment")


@dataclass
class Row:
    """One line of the reliability table."""

    scenario: str
    runs: int
    inputs: int
    outputs: int
    lost: int
    duplicates: int
    guarded_hits: int
    max_recovery_s: float

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        return asdict(self)


class OutputWatcher:
    """Reads the output and dead-letter topics in the background, noting when each arrived."""

    def __init__(self, bootstrap: str, topics: list[str], committed_only: bool = False) -> None:
        config = {
            "bootstrap.servers": bootstrap,
            "group.id": f"watch-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
        if committed_only:
            config["isolation.level"] = "read_committed"
        self._consumer = confluent_kafka.Consumer(config)
        self._consumer.subscribe(topics)
        self.sources: list[tuple[int, int]] = []
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.2)
            if message is None or message.error() or message.value() is None:
                continue
            headers = dict(message.headers() or [])
            if "dlq.source.partition" in headers:
                source = (
                    int(headers["dlq.source.partition"]),
                    int(headers["dlq.source.offset"]),
                )
            else:
                record = ENRICHMENT.decode(message.value())
                source = (record["source"]["partition"], record["source"]["offset"])
            with self._lock:
                self.sources.append(source)
                self.arrivals.append(time.monotonic())

    def count(self) -> int:
        with self._lock:
            return len(self.sources)

    def unique(self) -> int:
        with self._lock:
            return len(set(self.sources))

    def first_after(self, moment: float) -> float | None:
        with self._lock:
            later = [t for t in self.arrivals if t > moment]
        return min(later) if later else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def serve_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`enrich serve` as a child process; its stderr goes to a temporary file (a pipe nobody
    reads would fill up with librdkafka's connection errors during an outage and block it)."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the process object)
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"], env=env, stdout=log, stderr=log
    )
    process.log = log  # type: ignore[attr-defined]
    return process


def process_log(process: subprocess.Popen[bytes]) -> str:
    """The last lines a serve child wrote."""
    log = process.log  # type: ignore[attr-defined]
    log.seek(0)
    return str(log.read().decode(errors="replace")[-3000:])


def service_env(
    bootstrap: str, topics: dict[str, str], model_dir: Path, group: str, **extra: str
) -> dict[str, str]:
    """Environment for a serve child: topics, group, model, loopback allowed, no Redis."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ENRICH_INPUT_TOPIC": topics["input"],
        "ENRICH_OUTPUT_TOPIC": topics["output"],
        "ENRICH_DEAD_LETTER_TOPIC": topics["dlq"],
        "ENRICH_GROUP_ID": group,
        "ENRICH_MODEL_DIR": str(model_dir),
        "ENRICH_ALLOWED_NETWORKS": "127.0.0.1/32",
        "ENRICH_METRICS_PORT": "0",
        "ENRICH_LOG_LEVEL": "WARNING",
        "ENRICH_LOG_FORMAT": "json",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **extra,
    }
    env.pop("REDIS_URL", None)
    return env


def crash_scenario(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    inputs: int,
    kills: int,
    max_in_flight: int,
    delivery: str = "at-least-once",
    seed: int = 0,
    timeout_s: float = 300.0,
) -> Row:
    """`kill -9` the service `kills` times at random moments, restarting it; then finish.

    The inputs must already be in ``topics["input"]``. A kill lands at a random moment
    after the restarted service has produced something new, so every kill interrupts work.
    """
    rng = random.Random(seed)
    group = f"chaos-{uuid.uuid4().hex[:8]}"
    env = service_env(
        bootstrap,
        topics,
        model_dir,
        group,
        ENRICH_MAX_IN_FLIGHT=str(max_in_flight),
        ENRICH_DELIVERY=delivery,
    )
    watcher = OutputWatcher(
        bootstrap, [topics["output"], topics["dlq"]], committed_only=delivery == "exactly-once"
    )
    recoveries: list[float] = []
    deadline = time.monotonic() + timeout_s
    try:
        for _ in range(kills):
            started = time.monotonic()
            before = watcher.count()
            process = serve_process(env)
            while watcher.count() == before and time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(process_log(process))
                time.sleep(0.05)
            first = watcher.first_after(started)
            if first is not None:
                recoveries.append(first - started)
            time.sleep(rng.uniform(0.2, 1.5))
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        started = time.monotonic()
        process = serve_process(env)
        while watcher.unique() < inputs and time.monotonic() < deadline:
            time.sleep(0.1)
        first = watcher.first_after(started)
        if first is not None:
            recoveries.append(first - started)
        time.sleep(1.0)  # late duplicates would arrive now
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    finally:
        watcher.close()
    unique = watcher.unique()
    return Row(
        scenario=f"crash ({delivery}, kill -9)",
        runs=kills + 1,
        inputs=inputs,
        outputs=watcher.count(),
        lost=inputs - unique,
        duplicates=watcher.count() - unique,
        guarded_hits=0,
        max_recovery_s=round(max(recoveries, default=0.0), 2),
    )


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts connections (a guarded target must get 0)."""

    def __init__(self) -> None:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self._socket.settimeout(0.2)
        self.port = int(self._socket.getsockname()[1])
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except OSError:
                continue
            self.hits += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._socket.close()


def ssrf_urls(port: int) -> dict[str, str]:
    """URLs aimed at guarded addresses; the loopback ones would reach the counting listener."""
    return {
        "loopback": f"http://127.0.0.1:{port}/a.jpg",
        "localhost-name": f"http://localhost:{port}/a.jpg",
        "decimal": f"http://2130706433:{port}/a.jpg",
        "octal": f"http://0177.0.0.1:{port}/a.jpg",
        "short": f"http://127.1:{port}/a.jpg",
        "mapped-v6": f"http://[::ffff:127.0.0.1]:{port}/a.jpg",
        "v6-loopback": f"http://[::1]:{port}/a.jpg",
        "unspecified": f"http://0.0.0.0:{port}/a.jpg",
        "ten": "http://10.0.0.1/a.jpg",
        "one-seven-two": "http://172.16.0.1/a.jpg",
        "one-nine-two": "http://192.168.1.1/a.jpg",
        "metadata": "http://169.254.169.254/latest/meta-data/",
    }


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateBroker:
    """A Kafka broker of the scenario's own (deploy/local/kafka.sh on private ports), so it can
    be stopped and started again on the same data without disturbing anyone else's."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"},
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "ENRICH_RUN_DIR": str(run_dir),
            "KAFKA_KEEP_DATA": "1",
        }
        self.script = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka.sh"
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _run(self, action: str, keep: bool = True) -> None:
        env = {**self.env, "KAFKA_KEEP_DATA": "1" if keep else "0"}
        subprocess.run([str(self.script), action], env=env, check=True, capture_output=True)

    def start(self) -> None:
        self._run("start")

    def stop(self, keep: bool = True) -> None:
        self._run("stop", keep)


def _ready(port: int) -> bool | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False
    except OSError:
        return None


def broker_outage_scenario(
    *,
    broker: PrivateBroker,
    topics: dict[str, str],
    model_dir: Path,
    inputs: int,
    outage_s: float,
    timeout_s: float = 300.0,
) -> tuple[Row, list[bool]]:
    """Stop the broker for ``outage_s`` mid-stream, start it again; the service must recover.

    Returns the row and the sequence of distinct /readyz answers seen (expected: True, False,
    True). The inputs must already be in ``topics["input"]`` on ``broker``.
    """
    http_port = free_port()
    env = service_env(broker.bootstrap, topics, model_dir, f"outage-{uuid.uuid4().hex[:6]}",
                      ENRICH_METRICS_PORT=str(http_port), ENRICH_MAX_IN_FLIGHT="100")  # fmt: skip
    watcher = OutputWatcher(broker.bootstrap, [topics["output"], topics["dlq"]])
    process = serve_process(env)
    readiness: list[bool] = []
    recovery = 0.0
    deadline = time.monotonic() + timeout_s

    def note_ready() -> None:
        state = _ready(http_port)
        if state is not None and (not readiness or readiness[-1] != state):
            readiness.append(state)

    try:
        while watcher.unique() < inputs // 4 and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(process_log(process))
            note_ready()
            time.sleep(0.1)
        broker.stop(keep=True)
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < outage_s:
            note_ready()
            time.sleep(0.5)
        broker.start()
        restarted = time.monotonic()
        while watcher.unique() < inputs and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(process_log(process))
            note_ready()
            time.sleep(0.2)
        first = watcher.first_after(restarted)
        recovery = (first - restarted) if first is not None else float("inf")
        settle = time.monotonic() + 10
        while (not readiness or not readiness[-1]) and time.monotonic() < settle:
            note_ready()
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
        watcher.close()
    unique = watcher.unique()
    row = Row(
        scenario=f"broker outage ({outage_s:.0f} s)",
        runs=1,
        inputs=inputs,
        outputs=watcher.count(),
        lost=inputs - unique,
        duplicates=watcher.count() - unique,
        guarded_hits=0,
        max_recovery_s=round(recovery, 2),
    )
    return row, readiness
