"""SSRF: a counting listener, private addresses in a network namespace of their own, the
guarded URLs (literal and by name) and the scenario that sends them through a serve child."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.reliability.scenarios import (
    OutputWatcher,
    Row,
    _await_outputs,
    _stop,
    produce,
    product_value,
    serve_process,
    service_env,
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
