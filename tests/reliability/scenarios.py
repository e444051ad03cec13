"""Fault scenarios shared by the quick CI tests and `make chaos` (bench/chaos.py).

Each scenario returns a :class:`Row`: inputs, outputs, lost (input offsets with neither an
output nor a dead-letter record, counted by reading both topics back), duplicates and the
longest recovery time.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import ipaddress
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
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
        self.records: list[dict[str, Any] | None] = []
        """The decoded enrichment of each output (None for a dead-letter record)."""
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
            record: dict[str, Any] | None = None
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
                self.records.append(record)

    def count(self) -> int:
        with self._lock:
            return len(self.sources)

    def unique(self) -> int:
        with self._lock:
            return len(set(self.sources))

    def outputs(self) -> list[tuple[float, dict[str, Any] | None]]:
        """(arrival, decoded enrichment or None for dead letters) of every output so far."""
        with self._lock:
            return list(zip(self.arrivals, self.records, strict=True))

    def first_after(self, moment: float) -> float | None:
        with self._lock:
            later = [t for t in self.arrivals if t > moment]
        return min(later) if later else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def read_outputs(
    bootstrap: str, topics: list[str], timeout_s: float = 30.0
) -> set[tuple[int, int]]:
    """The (partition, offset) sources answered in ``topics``, read start to end by a fresh
    group-less consumer: a second opinion that does not depend on a watcher's fetch state."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap,
                                         "group.id": f"audit-{uuid.uuid4().hex[:8]}",
                                         "enable.auto.commit": False})  # fmt: skip
    try:
        ends: dict[tuple[str, int], int] = {}
        assignment = []
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            for partition in metadata.partitions:
                _low, high = consumer.get_watermark_offsets(
                    confluent_kafka.TopicPartition(topic, partition), timeout=timeout_s
                )
                if high > 0:
                    ends[(topic, partition)] = high
                    assignment.append(
                        confluent_kafka.TopicPartition(
                            topic, partition, confluent_kafka.OFFSET_BEGINNING
                        )
                    )
        consumer.assign(assignment)
        sources: set[tuple[int, int]] = set()
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            key = (message.topic() or "", message.partition() or 0)
            if (message.offset() or 0) + 1 >= ends.get(key, 0):
                ends.pop(key, None)
            if message.value() is None:
                continue
            headers = dict(message.headers() or [])
            if "dlq.source.partition" in headers:
                sources.add((int(headers["dlq.source.partition"]),
                             int(headers["dlq.source.offset"])))  # fmt: skip
            else:
                record = ENRICHMENT.decode(message.value())
                sources.add((record["source"]["partition"], record["source"]["offset"]))
        return sources
    finally:
        consumer.close()


def serve_process(env: dict[str, str], hosts: Path | None = None) -> subprocess.Popen[bytes]:
    """`enrich serve` as a child process; its stderr goes to a temporary file (a pipe nobody
    reads would fill up with librdkafka's connection errors during an outage and block it).

    With ``hosts``, the child runs in a mount namespace of its own where that file is
    /etc/hosts (`unshare -m`, root only): names resolve as the file says for it alone.
    """
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the process object)
    command = [sys.executable, "-m", "service.cli", "serve"]
    if hosts is not None:
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                   str(hosts), *command]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
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
    """A TCP listener that counts connections (a guarded target must get 0).

    It listens on ``host``:``port`` (127.0.0.1 and a free port by default); with ``netns``
    (a name under /run/netns) its socket is made inside that network namespace: the thread
    that accepts switches into it first (``setns`` acts on the calling thread only).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, netns: str | None = None) -> None:
        self.hits = 0
        self.port = port
        self._socket: socket.socket | None = None
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(host, port, netns), daemon=True)
        self._thread.start()
        self._bound.wait(10)
        if self._error is not None or self._socket is None:
            raise RuntimeError(f"counting listener on {host}:{port} failed: {self._error}")

    def _run(self, host: str, port: int, netns: str | None) -> None:
        try:
            if netns is not None:
                _enter_netns(netns)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            sock.settimeout(0.2)
            self.port = int(sock.getsockname()[1])
            self._socket = sock
        except BaseException as exc:
            self._error = exc
            return
        finally:
            self._bound.set()
        while not self._stop.is_set():
            try:
                connection, _ = sock.accept()
            except OSError:
                continue
            self.hits += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if self._socket is not None:
            self._socket.close()


def _probe(listener: CountingListener, targets: list[tuple[str, int]]) -> int:
    """Connect once to each target; how many of the connections ``listener`` counted.

    The proof that guarded targets are real: a connection from here lands (the guarded
    service must then add none).
    """
    before = listener.hits
    for target in targets:
        socket.create_connection(target, timeout=5).close()
    deadline = time.monotonic() + 5
    while listener.hits < before + len(targets) and time.monotonic() < deadline:
        time.sleep(0.05)
    return listener.hits - before


def probe_targets(listener: CountingListener, network: PrivateNetwork | None) -> tuple[int, int]:
    """Connect once to the loopback ``listener`` and to every address of ``network``:
    (connections that landed, connections made)."""
    landed = _probe(listener, [("127.0.0.1", listener.port)])
    if network is None:
        return landed, 1
    return landed + network.probe(), 1 + len(network.addresses)


def _enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {name}: {os.strerror(error)}")
    finally:
        os.close(fd)


_CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    """Run `ip ARGS...`; a failure raises with what ip said."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


class NetnsUnavailableError(RuntimeError):
    """``ip netns add`` was refused (not root, or no network namespaces here)."""


class PrivateNetwork:
    """Private addresses that are not loopback, each a real host a request could reach.

    A network namespace joined to this one by a veth pair: 10.213.N.1/30 on this side,
    10.213.N.2 inside, plus 172.29.N.2 and 192.168.N.2 on the namespace's loopback, routed
    from here through the pair (N is a /30 nobody on this machine uses yet). A
    :class:`CountingListener` on port 80 inside the namespace answers on every one of them.
    :meth:`close` removes the namespace, the pair and the routes. Needs root: :meth:`start`
    raises `NetnsUnavailableError` when ``ip netns add`` is refused.
    """

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.name = f"enrich-ssrf-{tag}"
        self._outer = f"eo{tag}"  # interface names: at most 15 characters
        self._inner = f"ei{tag}"
        self.addresses: dict[str, str] = {}
        self.listener: CountingListener | None = None
        self._created = False
        self._routes: list[str] = []

    def start(self) -> PrivateNetwork:
        """Create the namespace, the pair, the addresses, the routes and the listener.

        Raises `NetnsUnavailableError` when this machine refuses ``ip netns add``.
        """
        try:
            _ip("netns", "add", self.name)
        except (OSError, RuntimeError) as exc:
            raise NetnsUnavailableError(str(exc)) from exc
        self._created = True
        try:
            n = self._free_slot()
            self.addresses = {
                "ten": f"10.213.{n}.2",
                "one-seven-two": f"172.29.{n}.2",
                "one-nine-two": f"192.168.{n}.2",
            }
            ns = ("-n", self.name)
            _ip("link", "add", self._outer, "type", "veth", "peer", "name", self._inner)
            _ip("link", "set", self._inner, "netns", self.name)
            _ip("addr", "add", f"10.213.{n}.1/30", "dev", self._outer)
            _ip("link", "set", self._outer, "up")
            _ip(*ns, "addr", "add", f"10.213.{n}.2/30", "dev", self._inner)
            _ip(*ns, "link", "set", self._inner, "up")
            _ip(*ns, "link", "set", "lo", "up")
            for address in (self.addresses["one-seven-two"], self.addresses["one-nine-two"]):
                _ip(*ns, "addr", "add", f"{address}/32", "dev", "lo")
                _ip("route", "add", f"{address}/32", "via", self.addresses["ten"])
                self._routes.append(f"{address}/32")
            _ip(*ns, "route", "add", "default", "via", f"10.213.{n}.1")
            self.listener = CountingListener("0.0.0.0", 80, netns=self.name)
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _free_slot() -> int:
        """A third octet N such that nothing here uses 10.213.N.0/30, 172.29.N/24, 192.168.N/24."""
        used = subprocess.run(
            ["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True
        ).stdout
        used += subprocess.run(
            ["ip", "-4", "route"], capture_output=True, text=True, check=True
        ).stdout
        slots = list(range(1, 255))
        random.shuffle(slots)
        for n in slots:
            if not any(f"{p}.{n}." in used for p in ("10.213", "172.29", "192.168")):
                return n
        raise RuntimeError("no free 10.213.N.0/30 left on this machine")

    def probe(self) -> int:
        """Connect once to port 80 of every address from this side; how many landed."""
        assert self.listener is not None
        return _probe(self.listener, [(address, 80) for address in self.addresses.values()])

    @property
    def hits(self) -> int:
        """Connections the listener inside the namespace has accepted."""
        return self.listener.hits if self.listener is not None else 0

    def close(self) -> None:
        """Remove the listener, the routes, the pair and the namespace (errors are ignored)."""
        if self.listener is not None:
            self.listener.close()
        for route in self._routes:
            subprocess.run(["ip", "route", "del", route], capture_output=True, check=False)
        self._routes = []
        subprocess.run(["ip", "link", "del", self._outer], capture_output=True, check=False)
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
            self._created = False

    def __enter__(self) -> PrivateNetwork:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def ssrf_urls(port: int, network: PrivateNetwork | None = None) -> dict[str, str]:
    """URLs aimed at guarded addresses; the loopback ones would reach the counting listener on
    ``port``, and with ``network`` the private ones would reach its listener (literal IPs)."""
    urls = {
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
    if network is not None:
        for name, address in network.addresses.items():
            urls[f"netns-{name}"] = f"http://{address}/a.jpg"
        ten = ipaddress.IPv4Address(network.addresses["ten"])
        urls["netns-ten-decimal"] = f"http://{int(ten)}/a.jpg"
        urls["netns-ten-mapped-v6"] = f"http://[::ffff:{ten}]/a.jpg"
        urls["netns-ten-port"] = f"http://{ten}:80/a.jpg"
    return urls


def ssrf_name_urls(port: int, network: PrivateNetwork) -> tuple[dict[str, str], str]:
    """URLs whose host is a name that resolves to a guarded address, and the hosts file that
    makes them resolve so (for a serve child that sees it as /etc/hosts, see `serve_process`).

    The names go to the loopback listener on ``port`` and to the private addresses of
    ``network``, one of them to two private addresses at once.
    """
    ten, one_seven_two, one_nine_two = (
        network.addresses[k] for k in ("ten", "one-seven-two", "one-nine-two")
    )
    entries = [
        ("127.0.0.1", "localhost"),
        ("::1", "localhost"),
        ("127.0.0.1", "loop.ssrf.test"),
        (ten, "ten.ssrf.test"),
        (one_seven_two, "one-seven-two.ssrf.test"),
        (one_nine_two, "one-nine-two.ssrf.test"),
        (ten, "both.ssrf.test"),
        (one_nine_two, "both.ssrf.test"),
    ]
    urls = {
        "name-loopback": f"http://loop.ssrf.test:{port}/a.jpg",
        "name-ten": "http://ten.ssrf.test/a.jpg",
        "name-one-seven-two": "http://one-seven-two.ssrf.test/a.jpg",
        "name-one-nine-two": "http://one-nine-two.ssrf.test/a.jpg",
        "name-two-private": "http://both.ssrf.test/a.jpg",
    }
    return urls, "".join(f"{address} {name}\n" for address, name in entries)


def service_topics(admin: Any, name: str, prefix: str = "test") -> dict[str, str]:
    """Fresh input and output topics (4 partitions) and a dead-letter topic (1) for one run."""
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "input": f"{prefix}-{name}-{suffix}",
        "output": f"{prefix}-{name}-out-{suffix}",
        "dlq": f"{prefix}-{name}-dlq-{suffix}",
    }
    admin.create_topics([topics["input"], topics["output"]], partitions=4)
    admin.create_topics([topics["dlq"]], partitions=1)
    return topics


def free_port() -> int:
    """A TCP port nobody listens on right now."""
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
                      ENRICH_METRICS_PORT=str(http_port), ENRICH_MAX_IN_FLIGHT="100",
                      ENRICH_STALL_TIMEOUT_S="15")  # fmt: skip
    watcher = OutputWatcher(broker.bootstrap, [topics["output"], topics["dlq"]])
    process = serve_process(env)
    readiness: list[bool] = []
    recovery = 0.0
    audited: set[tuple[int, int]] = set()
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
        next_audit = restarted + 30
        while watcher.unique() < inputs and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(process_log(process))
            note_ready()
            time.sleep(0.2)
            if time.monotonic() > next_audit:  # the watcher's own fetch may be what is stuck
                audited = read_outputs(broker.bootstrap, [topics["output"], topics["dlq"]])
                if len(audited) >= inputs:
                    break
                next_audit = time.monotonic() + 15
        first = watcher.first_after(restarted)
        recovery = (first - restarted) if first is not None else float("inf")
        settle = time.monotonic() + 10
        while (not readiness or not readiness[-1]) and time.monotonic() < settle:
            note_ready()
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        if watcher.unique() < inputs:  # say whose view is short: the watcher's or the topic's
            audited = read_outputs(broker.bootstrap, [topics["output"], topics["dlq"]])
            print(
                f"watcher saw {watcher.unique()} of {inputs}; a fresh reader sees "
                f"{len(audited)}; service log tail:\n{process_log(process)}",
                file=sys.stderr,
            )
    finally:
        if process.poll() is None:
            process.kill()
        watcher.close()
    # What the topics hold decides what was lost; the watcher is there for the timings.
    unique = max(watcher.unique(), len(audited))
    row = Row(
        scenario=f"broker outage ({outage_s:.0f} s)",
        runs=1,
        inputs=inputs,
        outputs=watcher.count(),
        lost=inputs - unique,
        duplicates=watcher.count() - watcher.unique(),
        guarded_hits=0,
        max_recovery_s=round(recovery, 2),
    )
    return row, readiness


# -- helpers of the scenarios below ---------------------------------------------------------

PRODUCT = SingleObjectCodec.for_schema("product")


def product_value(product_id: str, url: str) -> bytes:
    """A `Product` record (single-object encoding) with just an id and an image URL."""
    return PRODUCT.encode(
        {
            "product_id": product_id,
            "partner_id": "chaos",
            "title": None,
            "description": None,
            "image_url": url,
            "additional_image_urls": [],
            "partner_category": None,
            "updated_at": dt.datetime.now(tz=dt.UTC),
        }
    )


def produce(bootstrap: str, topic: str, items: list[tuple[str, bytes]]) -> None:
    """Produce (key, value) pairs to ``topic`` and wait until the broker has them all."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for n, (key, value) in enumerate(items):
        producer.produce(topic, key=key.encode(), value=value)
        if n % 5000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} products were not delivered to {topic}")


def _await_outputs(
    watcher: OutputWatcher, count: int, process: subprocess.Popen[bytes], deadline: float
) -> None:
    """Wait until ``count`` distinct inputs are answered; a child that exits early raises."""
    while watcher.unique() < count and time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}: {process_log(process)}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child and wait for it; kill it if it does not go within 60 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# -- SSRF -------------------------------------------------------------------------------------


@dataclass
class SsrfResult:
    """The SSRF scenario's row, what each product got, and the proof its targets were real."""

    row: Row
    answers: dict[str, tuple[str, str | None]]
    """product id (the target's name) → (status, error) of its enrichment."""
    urls: dict[str, str]
    probed: int
    """Connections the scenario made itself first, one to the loopback listener and one to
    each namespace address ..."""
    probe_hits: int
    """... and how many of them landed: all, or the targets were not live."""


def ssrf_scenario(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    work: Path,
    network: PrivateNetwork | None,
    timeout_s: float = 120.0,
) -> SsrfResult:
    """Send products whose images point at guarded targets through a serve child.

    Targets: loopback in every spelling (a counting listener on 127.0.0.1), private and
    link-local literals; with ``network``, its non-loopback private addresses as literals and
    as host names that resolve to them (the child sees a hosts file of its own). Guarded hits
    are the connections the listeners got while the service ran: it must be 0.
    """
    listener = CountingListener()
    process: subprocess.Popen[bytes] | None = None
    watcher: OutputWatcher | None = None
    try:
        urls = ssrf_urls(listener.port, network)
        hosts = None
        if network is not None:
            names, text = ssrf_name_urls(listener.port, network)
            urls.update(names)
            hosts = work / f"hosts-{uuid.uuid4().hex[:6]}"
            hosts.write_text(text)
        probe_hits, probed = probe_targets(listener, network)
        before = listener.hits + (network.hits if network is not None else 0)
        produce(bootstrap, topics["input"], [(n, product_value(n, u)) for n, u in urls.items()])
        env = service_env(
            bootstrap, topics, model_dir, f"ssrf-{uuid.uuid4().hex[:6]}", ENRICH_ALLOWED_NETWORKS=""
        )
        watcher = OutputWatcher(bootstrap, [topics["output"], topics["dlq"]])
        process = serve_process(env, hosts)
        _await_outputs(watcher, len(urls), process, time.monotonic() + timeout_s)
        time.sleep(1.0)  # a late connection attempt or duplicate would land now
    finally:
        if process is not None:
            _stop(process)
        if watcher is not None:
            watcher.close()
        listener.close()
    hits = listener.hits + (network.hits if network is not None else 0) - before
    answers = {r["product_id"]: (r["status"], r["error"]) for _, r in watcher.outputs() if r}
    outside = sum(1 for name in urls if name.startswith(("netns-", "name-")))
    row = Row(
        scenario=f"SSRF ({len(urls)} guarded targets, {outside} via netns addresses or names)",
        runs=1,
        inputs=len(urls),
        outputs=watcher.count(),
        lost=len(urls) - watcher.unique(),
        duplicates=watcher.count() - watcher.unique(),
        guarded_hits=hits,
        max_recovery_s=0.0,
    )
    return SsrfResult(row, answers, urls, probed, probe_hits)


# -- image URLs that hang ---------------------------------------------------------------------


@dataclass
class FlowRun:
    """One run of the hanging-images scenario."""

    inputs: int
    outputs: int
    lost: int
    duplicates: int
    healthy: int
    """Outputs of products whose image URL answers."""
    healthy_per_s: float
    """Healthy products enriched per second in the run's steady part: between the 10th and the
    90th percentile of their records' ``processed_at``. (Outputs leave in source order, so a
    partition's outputs wait behind its hanging product and arrive in bursts: that is
    latency, counted in ``answer_s`` and ``delivered_per_s``, not throughput.)"""
    delivered_per_s: float
    """Healthy outputs per second from the run's first output to its last healthy one."""
    seconds: float
    """From the run's first output to its last."""
    statuses: dict[str, str]
    """product id → status, for the hanging products."""
    healthy_statuses: dict[str, int]
    """status → count, for the healthy products."""
    answer_s: dict[str, float]
    """hanging product id → seconds from its image's first request to its record's
    ``processed_at``."""
    requests: dict[str, int]
    """hanging product id → requests its image URL got."""
    healthy_reasons: dict[str, int] = field(default_factory=dict)
    """error → count, for the healthy products that were not classified."""


def flow_run(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    server: Any,
    photos: list[str],
    inputs: int,
    hanging_every: int,
    env_extra: dict[str, str],
    hang_server: Any = None,
    timeout_s: float = 300.0,
) -> FlowRun:
    """A backlog of ``inputs`` products, every ``hanging_every``-th (0: none) with an image URL
    that accepts and never answers, on ``hang_server`` (default ``server``, both
    `tests.support.image_server.ImageServer`), the rest real photos on ``server``, served by
    one serve child under ``env_extra``."""
    from tests.support.image_server import Behaviour

    hang_server = hang_server or server

    tag = uuid.uuid4().hex[:6]
    items: list[tuple[str, bytes]] = []
    hanging: dict[str, str] = {}  # product id → path on the server
    for i in range(inputs):
        product_id = f"h{tag}-{i}"
        if hanging_every and i % hanging_every == hanging_every // 2:
            url = hang_server.script(f"hang-{tag}-{i}", Behaviour(hang=True))
            hanging[product_id] = f"/scripted/hang-{tag}-{i}"
        else:
            url = f"{server.url_for(photos[i % len(photos)])}?h={tag}-{i}"
        items.append((product_id, product_value(product_id, url)))
    produce(bootstrap, topics["input"], items)
    env = service_env(bootstrap, topics, model_dir, f"hang-{tag}", **env_extra)
    watcher = OutputWatcher(bootstrap, [topics["output"], topics["dlq"]])
    process = serve_process(env)
    try:
        _await_outputs(watcher, inputs, process, time.monotonic() + timeout_s)
        time.sleep(1.0)  # late duplicates would arrive now
    finally:
        _stop(process)
        watcher.close()
    outputs = watcher.outputs()
    first = min((t for t, _ in outputs), default=0.0)
    healthy_records = [r for _, r in outputs if r is not None and r["product_id"] not in hanging]
    healthy_times = sorted(
        t for t, r in outputs if r is not None and r["product_id"] not in hanging
    )
    statuses: dict[str, str] = {}
    healthy_statuses: dict[str, int] = {}
    answer_s: dict[str, float] = {}
    healthy_reasons: dict[str, int] = {}
    for _, record in outputs:
        if record is None:
            continue
        product_id = record["product_id"]
        if product_id in hanging:
            statuses[product_id] = record["status"]
            asked = hang_server.first_hit_at.get(hanging[product_id])
            if asked is not None:
                answer_s[product_id] = record["processed_at"].timestamp() - asked
        else:
            healthy_statuses[record["status"]] = healthy_statuses.get(record["status"], 0) + 1
            if record.get("error"):
                reason = str(record["error"])[:80]
                healthy_reasons[reason] = healthy_reasons.get(reason, 0) + 1
    return FlowRun(
        inputs=inputs,
        outputs=watcher.count(),
        lost=inputs - watcher.unique(),
        duplicates=watcher.count() - watcher.unique(),
        healthy=len(healthy_times),
        healthy_per_s=_steady_rate(sorted(r["processed_at"].timestamp() for r in healthy_records)),
        delivered_per_s=len(healthy_times) / (healthy_times[-1] - first)
        if len(healthy_times) > 1 and healthy_times[-1] > first
        else 0.0,
        seconds=max((t for t, _ in outputs), default=first) - first,
        statuses=statuses,
        healthy_statuses=healthy_statuses,
        answer_s=answer_s,
        requests={p: hang_server.hits[path] for p, path in hanging.items()},
        healthy_reasons=healthy_reasons,
    )


def _steady_rate(times: list[float]) -> float:
    """Events per second between the 10th and the 90th percentile of sorted ``times``."""
    if len(times) < 10:
        return 0.0
    low, high = len(times) // 10, len(times) * 9 // 10
    span = times[high] - times[low]
    return (high - low) / span if span > 0 else float("inf")


def hanging_scenario(
    *,
    bootstrap: str,
    make_topics: Any,
    model_dir: Path,
    server: Any,
    photos: list[str],
    inputs: int,
    hanging_every: int = 10,
    env_extra: dict[str, str] | None = None,
    hang_server: Any = None,
    timeout_s: float = 600.0,
    baseline: FlowRun | None = None,
) -> tuple[Row, FlowRun, FlowRun]:
    """The same backlog twice under the same settings: all healthy (or ``baseline``, a run
    of that already done), then every ``hanging_every``-th image URL hanging, on
    ``hang_server`` (default: the photos' own ``server``). ``make_topics(name)`` gives fresh
    topics.

    The row counts the runs made here. Its max recovery is the longest a hanging product
    waited for its answer (from its image's first request); the scenario's name carries the
    healthy throughput ratios (enriched, and delivered in order).
    """
    extra = env_extra or {}

    def run(every: int) -> FlowRun:
        return flow_run(
            bootstrap=bootstrap,
            topics=make_topics("hang" if every else "flow"),
            model_dir=model_dir,
            server=server,
            photos=photos,
            inputs=inputs,
            hanging_every=every,
            env_extra=extra,
            hang_server=hang_server,
            timeout_s=timeout_s,
        )

    runs = [] if baseline is not None else [run(0)]
    baseline = baseline if baseline is not None else runs[0]
    hanging = run(hanging_every)
    runs.append(hanging)
    ratio = hanging.healthy_per_s / baseline.healthy_per_s if baseline.healthy_per_s else 0.0
    delivered = (
        hanging.delivered_per_s / baseline.delivered_per_s if baseline.delivered_per_s else 0.0
    )
    row = Row(
        scenario=f"image URLs hanging (1 in {hanging_every}): healthy rate {ratio:.2f}x normal "
        f"(delivered {delivered:.2f}x)",
        runs=len(runs),
        inputs=sum(r.inputs for r in runs),
        outputs=sum(r.outputs for r in runs),
        lost=sum(r.lost for r in runs),
        duplicates=sum(r.duplicates for r in runs),
        guarded_hits=0,
        max_recovery_s=round(max(hanging.answer_s.values(), default=0.0), 2),
    )
    return row, baseline, hanging


# -- Redis outage -----------------------------------------------------------------------------


class PrivateRedis:
    """A Redis of the scenario's own (deploy/local/redis.sh on a free port, no persistence), so
    it can be stopped and started again without disturbing anyone else's."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "REDIS_URL"},
            "REDIS_PORT": str(self.port),
            "ENRICH_RUN_DIR": str(run_dir),
        }
        self.script = Path(__file__).resolve().parents[2] / "deploy" / "local" / "redis.sh"
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _run(self, action: str) -> None:
        subprocess.run([str(self.script), action], env=self.env, check=True, capture_output=True)

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def keys(self) -> int:
        """How many keys it holds now."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            return int(client.dbsize())
        finally:
            client.close()


def cache_counts(port: int) -> dict[str, float] | None:
    """The service's ``enrich_cache_total`` by result label, from /metrics; None if it does not
    answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('enrich_cache_total{result="'):
            label, _, value = line[len('enrich_cache_total{result="') :].partition('"} ')
            counts[label] = float(value)
    return counts


@dataclass
class RedisOutage:
    """What the Redis outage scenario saw, besides its row."""

    produced_during: int
    """Products produced while Redis was down."""
    answered_during: int
    """Outputs that arrived while Redis was down."""
    counts_at_stop: dict[str, float]
    counts_at_start: dict[str, float]
    counts_at_end: dict[str, float]
    """``enrich_cache_total`` by result when Redis stopped, when it started, at the end."""
    from_cache_after: int
    """Outputs after the restart whose image came from the cache."""
    keys_after: int
    """Keys in Redis at the end (it restarts empty)."""
    first_hit_after_s: float | None
    """From the restart to the first cache hit counted at /metrics."""
    statuses: dict[str, int]


def redis_outage_scenario(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    server: Any,
    photos: list[str],
    redis: PrivateRedis,
    rate: float,
    before_s: float,
    outage_s: float,
    after_s: float,
    distinct: int = 50,
    timeout_s: float = 300.0,
) -> tuple[Row, RedisOutage]:
    """Products flow at ``rate`` per second, their images from ``distinct`` URLs (so most are
    cache hits); ``before_s`` after the first output Redis stops for ``outage_s`` and starts
    again (empty); products keep coming for ``after_s`` more. ``redis`` must be running.

    The row's max recovery is from Redis's restart to the first cache hit seen at /metrics.
    """
    http_port = free_port()
    env = service_env(bootstrap, topics, model_dir, f"redis-{uuid.uuid4().hex[:6]}",
                      ENRICH_METRICS_PORT=str(http_port), ENRICH_REDIS_URL=redis.url)  # fmt: skip
    urls = [server.url_for(photos[i % len(photos)]) for i in range(distinct)]
    produced: list[float] = []
    stop_producing = threading.Event()

    def feed() -> None:
        producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        began = time.monotonic()
        while not stop_producing.is_set():
            i = len(produced)
            due = began + i / rate
            if time.monotonic() < due:
                time.sleep(min(0.05, due - time.monotonic()))
                continue
            producer.produce(topics["input"], key=f"r{i}".encode(),
                             value=product_value(f"r{i}", urls[i % distinct]))  # fmt: skip
            producer.poll(0)
            produced.append(time.monotonic())
        producer.flush(30)

    watcher = OutputWatcher(bootstrap, [topics["output"], topics["dlq"]])
    process = serve_process(env)
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    samples: list[tuple[float, dict[str, float]]] = []
    deadline = time.monotonic() + timeout_s

    def wait(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited: {process_log(process)}")
            counts = cache_counts(http_port)
            if counts is not None:
                samples.append((time.monotonic(), counts))
            time.sleep(0.25)

    def latest() -> dict[str, float]:
        return dict(samples[-1][1]) if samples else {}

    try:
        while watcher.count() == 0 and time.monotonic() < deadline:
            wait(0.1)
        wait(before_s)
        counts_at_stop = latest()
        redis.stop()
        stopped_at = time.monotonic()
        wait(outage_s)
        redis.start()
        started_at = time.monotonic()
        counts_at_start = latest()
        wait(after_s)
        stop_producing.set()
        feeder.join(60)
        _await_outputs(watcher, len(produced), process, deadline)
        wait(0.5)
        keys_after = redis.keys()
    finally:
        stop_producing.set()
        _stop(process)
        watcher.close()
    counts_at_end = latest()
    hit_at_start = counts_at_start.get("hit", 0.0)
    first_hit = next((t for t, c in samples if t > started_at and c.get("hit", 0.0) > hit_at_start),
                     None)  # fmt: skip
    outputs = watcher.outputs()
    statuses: dict[str, int] = {}
    for _, record in outputs:
        if record is not None:
            statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    details = RedisOutage(
        produced_during=sum(1 for t in produced if stopped_at <= t < started_at),
        answered_during=sum(1 for t, _ in outputs if stopped_at <= t < started_at),
        counts_at_stop=counts_at_stop,
        counts_at_start=counts_at_start,
        counts_at_end=counts_at_end,
        from_cache_after=sum(
            1 for t, r in outputs if t > started_at and r and (r["image"] or {}).get("from_cache")
        ),
        keys_after=keys_after,
        first_hit_after_s=None if first_hit is None else round(first_hit - started_at, 2),
        statuses=statuses,
    )
    inputs = len(produced)
    row = Row(
        scenario=f"Redis outage ({outage_s:.0f} s)",
        runs=1,
        inputs=inputs,
        outputs=watcher.count(),
        lost=inputs - watcher.unique(),
        duplicates=watcher.count() - watcher.unique(),
        guarded_hits=0,
        max_recovery_s=(
            float("inf") if details.first_hit_after_s is None else details.first_hit_after_s
        ),
    )
    return row, details


# -- poison records -----------------------------------------------------------------------------

KILLER = "killer"
KILLER_SITECUSTOMIZE = f"""
import os

import service.records

_parse = service.records.parse_product


def parse_product(record):
    if record.get("product_id") == {KILLER!r}:
        os._exit(70)  # dies as a segfaulting decoder would: no handler, no commit
    return _parse(record)


service.records.parse_product = parse_product
"""
"""A ``sitecustomize`` for a serve child (through ``PYTHONPATH``): the process dies at once,
nothing committed, whenever it reads the product ``KILLER``, as a decoder crash or an
out-of-memory kill would; the service itself is unchanged."""


def killer_path(work: Path) -> Path:
    """A folder holding :data:`KILLER_SITECUSTOMIZE`, for the child's ``PYTHONPATH``."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "sitecustomize.py").write_text(KILLER_SITECUSTOMIZE)
    return work


def poison_topics(admin: Any, name: str, dead_letter_bytes: int = 20_000) -> dict[str, str]:
    """Topics as a cautious operator sets them up: a compacted output topic, a dead-letter
    topic with a small ``max.message.bytes``; the input takes records up to 3 MB."""
    suffix = uuid.uuid4().hex[:8]
    topics = {kind: f"chaos-{name}-{kind}-{suffix}" for kind in ("input", "output", "dlq")}
    admin.create_topics([topics["input"]], partitions=4,
                        config={"max.message.bytes": "3000000"})  # fmt: skip
    admin.create_topics([topics["output"]], partitions=4, config={"cleanup.policy": "compact"})
    admin.create_topics([topics["dlq"]], config={"max.message.bytes": str(dead_letter_bytes)})
    return topics


def poison_records(url: str) -> list[tuple[bytes | None, bytes | None]]:
    """One of each poison record: a keyless tombstone, 1.05 MB of junk, a 1.1 MB partner_id,
    a 2 KB product_id (each answered by a status or a dead letter, never fatal)."""
    big_partner = PRODUCT.decode(product_value("big-partner", url))
    big_partner["partner_id"] = "x" * 1_100_000
    long_id = PRODUCT.decode(product_value("i" * 2000, url))
    return [
        (None, None),
        (b"junk", b"\x00" * 1_050_000),
        (b"big-partner", PRODUCT.encode(big_partner)),
        (b"long-id", PRODUCT.encode(long_id)),
    ]


def poison_scenario(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    urls: list[str],
    inputs: int,
    delivery: str,
    restarts: int = 2,
    work: Path,
    timeout_s: float = 600.0,
) -> Row:
    """``inputs`` products over 4 partitions with the poison records of
    :func:`poison_records` in every partition and one :data:`KILLER` in partition 0. The
    service is restarted whenever it dies; the row counts lost inputs, deaths and stopped
    partitions (committed offset short of the partition's end once all is answered)."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "message.max.bytes": 3_000_000, "linger.ms": 20}
    )
    sent = 0
    for i in range(inputs):
        key = f"x{i}"
        value = product_value(key, urls[i % len(urls)])
        producer.produce(topics["input"], key=key.encode(), value=value, partition=i % 4)
        sent += 1
        if i % 500 == 250:  # poison spread through each partition
            for key_bytes, value in poison_records(urls[0]):
                producer.produce(topics["input"], key=key_bytes, value=value, partition=i % 4)
                sent += 1
        if i == inputs // 2:
            producer.produce(topics["input"], key=KILLER.encode(),
                             value=product_value(KILLER, urls[0]), partition=0)  # fmt: skip
            sent += 1
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("poison inputs were not all delivered")
    group = f"chaos-poison-{uuid.uuid4().hex[:8]}"
    env = service_env(
        bootstrap, topics, model_dir, group, PYTHONPATH=str(killer_path(work)),
        ENRICH_DELIVERY=delivery, ENRICH_CRASH_LOOP_RESTARTS=str(restarts),
        ENRICH_TRANSACTIONAL_ID=f"{group}-tx",
    )  # fmt: skip
    watcher = OutputWatcher(bootstrap, [topics["output"], topics["dlq"]],
                            committed_only=delivery == "exactly-once")  # fmt: skip
    runs, deaths = 0, 0
    process: subprocess.Popen[bytes] | None = None
    began = time.monotonic()
    deadline = began + timeout_s
    try:
        while watcher.unique() < sent and time.monotonic() < deadline:
            if process is None or process.poll() is not None:
                deaths += process is not None
                process = serve_process(env)
                runs += 1
            time.sleep(0.1)
        seconds = time.monotonic() - began
        time.sleep(1.0)  # late duplicates would arrive now
    finally:
        if process is not None:
            _stop(process)
        watcher.close()
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = [confluent_kafka.TopicPartition(topics["input"], p) for p in range(4)]
        committed = consumer.committed(partitions, 10)
        ends = [consumer.get_watermark_offsets(tp, 10)[1] for tp in partitions]
    finally:
        consumer.close()
    stopped = sum(tp.offset < end for tp, end in zip(committed, ends, strict=True))
    unique = watcher.unique()
    return Row(
        scenario=f"poison records ({delivery}): {deaths} deaths on the killer, "
        f"{stopped} stopped partitions",
        runs=runs,
        inputs=sent,
        outputs=watcher.count(),
        lost=sent - unique,
        duplicates=watcher.count() - unique,
        guarded_hits=0,
        max_recovery_s=round(seconds, 1),
    )


# -- scale-out: processes join and die in one consumer group ----------------------------------


def produced_count(port: int) -> float | None:
    """Outputs a serve child has had acknowledged (`enrich_produced`, every status), read from
    its /metrics on ``port``; None when it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("enrich_produced_total"))  # fmt: skip


def group_holders(bootstrap: str, group: str) -> tuple[bool, int]:
    """Whether consumer group ``group`` is stable, and how many of its members hold partitions."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    holding = [m for m in description.members if m.assignment.topic_partitions]
    return description.state == ConsumerGroupState.STABLE, len(holding)


def group_lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Per partition of ``topic``: its end offset less ``group``'s committed offset (the whole
    partition where the group has committed nothing). Read with a consumer of that group that
    never joins it, so the group is not disturbed."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                         "enable.auto.commit": False})  # fmt: skip
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = consumer.committed(
            [confluent_kafka.TopicPartition(topic, p) for p in partitions], 10
        )
        lag: dict[int, int] = {}
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, tp.partition), timeout=10, cached=False
            )
            lag[tp.partition] = high - max(tp.offset, 0)  # OFFSET_INVALID (-1001): none yet
        return lag
    finally:
        consumer.close()


def read_enrichments(
    bootstrap: str, topic: str, timeout_s: float = 60.0
) -> list[tuple[str, int, int]]:
    """(product id, source partition, source offset) of every enrichment in ``topic``, read
    from the start to the end with read_committed: each output partition in log order, so the
    outputs of one product (keyed by it, all in one partition) are in the order written."""
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"audit-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.partition.eof": True,
        "isolation.level": "read_committed",
    })  # fmt: skip
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for p in partitions])  # fmt: skip
        left = set(partitions)
        found: list[tuple[str, int, int]] = []
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    left.discard(message.partition())
                continue
            if message.value() is None:
                continue
            record = ENRICHMENT.decode(message.value())
            found.append((str(record["product_id"]), int(record["source"]["partition"]),
                          int(record["source"]["offset"])))  # fmt: skip
        if left:
            raise RuntimeError(f"{topic}: partitions {sorted(left)} not read to their end")
        return found
    finally:
        consumer.close()


@dataclass
class ScaleOutRun:
    """What :func:`scale_out_scenario` saw."""

    inputs: list[tuple[str, int, int]]
    """(product id, partition, offset) of every input, in the order produced."""
    outputs: list[tuple[str, int, int]]
    """(product id, source partition, source offset) of every enrichment, read back at the end
    (read_committed), each output partition in log order."""
    dead_letters: int
    answered_at_kill: int
    """Distinct inputs answered when the victim was killed."""
    answered_at_join: int
    """Distinct inputs answered when the newcomer held partitions."""
    produced_by: dict[str, float]
    """Outputs each process had acknowledged: the victim's just before its kill, the others'
    just before their SIGTERM."""
    lag: dict[int, int]
    """The group's lag per input partition at the end (0 everywhere once drained)."""
    drain_s: float
    """From the last input produced to the group's lag at 0 (or to giving up)."""
    exits: dict[str, int | None]
    seconds: float


def scale_out_scenario(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    items: list[tuple[str, bytes]],
    delivery: str,
    rate_per_s: float = 30.0,
    max_in_flight: int = 100,
    timeout_s: float = 240.0,
) -> ScaleOutRun:
    """Three serve processes (a, b, c) in one group read ``topics["input"]`` while ``items``
    (key, value) arrive at ``rate_per_s``. With 30 % of them sent, b is killed with SIGKILL
    once it has produced something; at 50 % a fourth (d, its own transactional id) is started
    and the last 25 % wait until d holds partitions. Then every input is awaited, the group's
    lag must reach 0, a, c and d are stopped with SIGTERM and the output topic is read back."""
    import functools

    began = time.monotonic()
    deadline = began + timeout_s
    group = f"scale-{uuid.uuid4().hex[:8]}"
    exactly_once = delivery == "exactly-once"
    ports: dict[str, int] = {}
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        ports[name] = free_port()
        env = service_env(bootstrap, topics, model_dir, group, ENRICH_DELIVERY=delivery,
                          ENRICH_MAX_IN_FLIGHT=str(max_in_flight),
                          ENRICH_METRICS_PORT=str(ports[name]),
                          ENRICH_TRANSACTIONAL_ID=f"{group}-{name}")  # fmt: skip
        processes[name] = serve_process(env)

    def wait_until(condition: Any, names: str, what: str) -> None:
        while not condition():
            for name in names:
                code = processes[name].poll()
                if code is not None:
                    raise RuntimeError(f"serve {name} exited with {code} waiting for {what}: "
                                       f"{process_log(processes[name])}")  # fmt: skip
            if time.monotonic() > deadline:
                raise TimeoutError(f"scale-out: no {what} within {timeout_s:.0f} s")
            time.sleep(0.1)

    kill_at, join_at, gate_at = len(items) * 3 // 10, len(items) // 2, len(items) * 3 // 4
    sent = [0]
    positions: dict[int, tuple[int, int]] = {}
    failures: list[str] = []
    gate = threading.Event()

    def delivered(index: int, error: Any, message: Any) -> None:
        if error is not None:
            failures.append(str(error))
        else:
            positions[index] = (message.partition(), message.offset())

    def pump() -> None:
        config = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
        producer = confluent_kafka.Producer(config)
        start_at = time.monotonic()
        for index, (key, value) in enumerate(items):
            if index == gate_at:
                gate.wait(max(0.0, deadline - time.monotonic()))
                start_at = time.monotonic() - index / rate_per_s
            time.sleep(max(0.0, start_at + index / rate_per_s - time.monotonic()))
            producer.produce(topics["input"], key=key.encode(), value=value,
                             on_delivery=functools.partial(delivered, index))  # fmt: skip
            producer.poll(0)
            sent[0] = index + 1
        if producer.flush(60):
            failures.append("inputs left undelivered")

    watcher = OutputWatcher(bootstrap, [topics["output"], topics["dlq"]],
                            committed_only=exactly_once)  # fmt: skip
    pumping = threading.Thread(target=pump, daemon=True)
    produced_by: dict[str, float] = {}
    exits: dict[str, int | None] = {}
    lag: dict[int, int] = {}
    try:
        for name in "abc":
            start(name)
        wait_until(lambda: all(_ready(ports[n]) for n in "abc"), "abc", "three ready")
        wait_until(lambda: group_holders(bootstrap, group) == (True, 3), "abc", "stable group")
        pumping.start()
        wait_until(lambda: sent[0] >= kill_at and (produced_count(ports["b"]) or 0) > 0,
                   "abc", "work on b")  # fmt: skip
        produced_by["b"] = produced_count(ports["b"]) or 0.0
        processes["b"].send_signal(signal.SIGKILL)
        exits["b"] = processes["b"].wait(30)
        answered_at_kill = watcher.unique()
        wait_until(lambda: sent[0] >= join_at, "ac", "half the stream")
        start("d")
        wait_until(lambda: _ready(ports["d"]) is True, "acd", "d holding partitions")
        answered_at_join = watcher.unique()
        gate.set()
        pumping.join(max(1.0, deadline - time.monotonic()))
        if pumping.is_alive() or failures or len(positions) != len(items):
            raise RuntimeError(f"inputs not all produced: {failures[:3]}")
        sending_done = time.monotonic()
        wait_until(lambda: watcher.unique() >= len(items), "acd", "answer to every input")
        while time.monotonic() < deadline:
            lag = group_lag(bootstrap, group, topics["input"])
            if not any(lag.values()):
                break
            time.sleep(0.5)
        drain_s = time.monotonic() - sending_done
        time.sleep(1.0)  # late duplicates would arrive now
        for name in "acd":
            produced_by[name] = produced_count(ports[name]) or 0.0
        for name in "acd":
            processes[name].send_signal(signal.SIGTERM)
        for name in "acd":
            try:
                exits[name] = processes[name].wait(60)
            except subprocess.TimeoutExpired:
                exits[name] = None
    finally:
        gate.set()
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        watcher.close()
    dead_letters = sum(record is None for _, record in watcher.outputs())
    return ScaleOutRun(
        inputs=[(key, *positions[i]) for i, (key, _value) in enumerate(items)],
        outputs=read_enrichments(bootstrap, topics["output"]),
        dead_letters=dead_letters,
        answered_at_kill=answered_at_kill,
        answered_at_join=answered_at_join,
        produced_by=produced_by,
        lag=lag,
        drain_s=round(drain_s, 2),
        exits=exits,
        seconds=round(time.monotonic() - began, 1),
    )
