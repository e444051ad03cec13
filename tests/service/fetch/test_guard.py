"""The address guard: which addresses are blocked, in every spelling, and that nothing gets past.

The end-to-end tests fetch from the local image server, which binds 127.0.0.1: its hit
counters prove that a blocked request never reached it.
"""

import asyncio
import dataclasses
import socket
from collections import Counter
from collections.abc import Sequence

import pytest
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from service.errors import ConfigError, EnrichError
from service.fetch.fetcher import FetchConfig, FetchResult, ImageFetcher
from service.fetch.guard import (
    LINK_LOCAL,
    LOOPBACK,
    MALFORMED,
    MULTICAST,
    PRIVATE,
    RESERVED,
    SHARED,
    SITE_LOCAL,
    UNIQUE_LOCAL,
    UNSPECIFIED,
    AddressGuard,
    BlockedAddressError,
    GuardedResolver,
    parse_ipv4_literal,
)
from tests.support.image_server import Behaviour, ImageServer

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "2a00:1450:4001:80b::200e"]

# A Teredo address whose client (stored inverted in the last 32 bits) is 127.0.0.1.
TEREDO_LOOPBACK = "2001:0:4136:e378:8000:63bf:80ff:fffe"

# Fast settings for fetches the guard should stop; nothing here waits long.
GUARDED = FetchConfig(
    connect_timeout_s=2,
    read_timeout_s=2,
    total_timeout_s=5,
    backoff_base_s=0.001,
    backoff_max_s=0.01,
    retries=1,
)


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    """Each test logs through structlog's defaults, whatever an earlier test configured."""
    structlog.reset_defaults()


def _fetch(url: str, allowed: Sequence[str] = ()) -> tuple[FetchResult, Counter[str]]:
    """Fetch `url` with a fetcher of its own; the result and the fetcher's stats."""

    async def run() -> tuple[FetchResult, Counter[str]]:
        config = dataclasses.replace(GUARDED, allowed_networks=tuple(allowed))
        async with ImageFetcher(config) as fetcher:
            return await fetcher.fetch(url), fetcher.stats

    return asyncio.run(run())


def _class_of(reason: str | None) -> str | None:
    """Reasons start with the class word of the blocked address."""
    return None if reason is None else reason.partition(" ")[0]


class TestAddressClasses:
    """AddressGuard.classify() and blocked_reason() on addresses."""

    @pytest.mark.parametrize(
        ("ip", "expected"),
        [
            ("127.0.0.1", LOOPBACK),
            ("127.255.255.254", LOOPBACK),
            ("10.1.2.3", PRIVATE),
            ("172.16.0.1", PRIVATE),
            ("172.31.255.255", PRIVATE),
            ("192.168.1.1", PRIVATE),
            ("169.254.169.254", LINK_LOCAL),
            ("169.254.0.1", LINK_LOCAL),
            ("224.0.0.1", MULTICAST),
            ("239.255.255.250", MULTICAST),
            ("240.0.0.1", RESERVED),
            ("255.255.255.255", RESERVED),
            ("192.0.2.1", RESERVED),
            ("198.18.0.1", RESERVED),
            ("203.0.113.5", RESERVED),
            ("0.0.0.0", UNSPECIFIED),
            ("0.1.2.3", UNSPECIFIED),
            ("100.64.0.1", SHARED),
            ("100.127.255.254", SHARED),
            ("::1", LOOPBACK),
            ("::", UNSPECIFIED),
            ("fe80::1", LINK_LOCAL),
            ("fe80::1%eth0", LINK_LOCAL),
            ("fec0::1", SITE_LOCAL),
            ("fc00::1", UNIQUE_LOCAL),
            ("fd12:3456:789a::1", UNIQUE_LOCAL),
            ("ff02::1", MULTICAST),
            ("2001:db8::1", RESERVED),
            ("64:ff9b:1::a00:1", RESERVED),
            ("::ffff:127.0.0.1", LOOPBACK),
            ("::ffff:169.254.169.254", LINK_LOCAL),
            ("::ffff:10.0.0.1", PRIVATE),
            ("::ffff:100.64.0.1", SHARED),
            ("::127.0.0.1", LOOPBACK),
            ("::ffff:0:10.0.0.1", PRIVATE),
            ("64:ff9b::7f00:1", LOOPBACK),
            ("64:ff9b::169.254.169.254", LINK_LOCAL),
            ("2002:7f00:1::1", LOOPBACK),
            ("2002:a00:1::1", PRIVATE),
            (TEREDO_LOOPBACK, LOOPBACK),
            ("not an address", MALFORMED),
        ],
    )
    def test_blocked_class(self, ip: str, expected: str) -> None:
        """Every non-public address is blocked with its class, IPv4 inside IPv6 unwrapped."""
        guard = AddressGuard()
        assert (expected, expected) == (guard.classify(ip), _class_of(guard.blocked_reason(ip)))

    @pytest.mark.parametrize(
        "ip", [*PUBLIC, "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
    )
    def test_public_passes(self, ip: str) -> None:
        """Public addresses, and IPv6 forms carrying a public IPv4 address, are not blocked."""
        guard = AddressGuard()
        assert (None, None) == (guard.classify(ip), guard.blocked_reason(ip))

    @pytest.mark.parametrize(
        ("ip", "expected"),
        [
            ("127.0.0.1", "loopback address 127.0.0.1"),
            ("::ffff:7f00:1", "loopback address 127.0.0.1 inside IPv4-mapped ::ffff:7f00:1"),
            ("64:ff9b::a00:1", "private address 10.0.0.1 inside NAT64 64:ff9b::a00:1"),
        ],
    )
    def test_reason_names_the_address(self, ip: str, expected: str) -> None:
        """The reason names the class and the address, and the IPv6 form it came in."""
        assert expected == AddressGuard().blocked_reason(ip)

    @pytest.mark.parametrize(
        ("allowed", "ip", "expected"),
        [
            (["127.0.0.0/8"], "127.0.0.1", None),
            (["127.0.0.0/8"], "::ffff:127.0.0.1", None),
            (["127.0.0.0/8"], "::1", LOOPBACK),
            (["127.0.0.1/32"], "127.0.0.2", LOOPBACK),
            (["10.20.0.0/16"], "10.20.3.4", None),
            (["10.20.0.0/16"], "10.21.3.4", PRIVATE),
            (["::1"], "::1", None),
        ],
    )
    def test_allowed_networks(self, allowed: list[str], ip: str, expected: str | None) -> None:
        """An address inside an allowed network passes whatever its class; others do not."""
        assert expected == AddressGuard(allowed).classify(ip)

    def test_bad_allowed_network(self) -> None:
        """An allowed network that is not one raises ConfigError naming it."""
        with pytest.raises(ConfigError, match="'not-a-net'"):
            AddressGuard(["not-a-net"])


class TestCheckUrlHost:
    """AddressGuard.check_url_host() on hosts as URLs hold them."""

    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("127.0.0.1", LOOPBACK),
            ("2130706433", LOOPBACK),
            ("0177.0.0.1", LOOPBACK),
            ("0x7f.1", LOOPBACK),
            ("0X7F.0.0.1", LOOPBACK),
            ("127.1", LOOPBACK),
            ("0x7f000001", LOOPBACK),
            ("017700000001", LOOPBACK),
            ("127.0.0.1.", LOOPBACK),
            ("0xa9fea9fe", LINK_LOCAL),
            ("169.254.43518", LINK_LOCAL),
            ("0", UNSPECIFIED),
            ("10.0.513", PRIVATE),
            ("[::1]", LOOPBACK),
            ("::1", LOOPBACK),
            ("[::ffff:7f00:2]", LOOPBACK),
            ("[fe80::1%25eth0]", LINK_LOCAL),
            ("fe80::1%eth0", LINK_LOCAL),
            ("256.256.256.256", MALFORMED),
            ("1.2.3.4.5", MALFORMED),
            ("08.0.0.1", MALFORMED),
            ("0x100000000", MALFORMED),
            ("[zz]", MALFORMED),
            ("example.com", None),
            ("localhost", None),
            ("1.2.3.4.example", None),
            ("0x7g.1", MALFORMED),
            ("1.0x7g", None),
            ("8.8.8.8", None),
            ("134744072", None),
            ("[2606:4700::1111]", None),
        ],
    )
    def test_literal_spellings(self, host: str, expected: str | None) -> None:
        """IP literals in every spelling libc or a browser accepts are judged; names are not."""
        assert expected == _class_of(AddressGuard().check_url_host(host))

    @given(
        st.lists(
            st.tuples(st.integers(0, 2**32 - 1), st.sampled_from(["{}", "0{:o}", "0x{:x}"])),
            min_size=1,
            max_size=4,
        )
    )
    def test_parser_agrees_with_inet_aton(self, parts: list[tuple[int, str]]) -> None:
        """The IPv4 literal parser reads (or refuses) numbers in any base just as libc does."""
        text = ".".join(fmt.format(number) for number, fmt in parts)
        try:
            expected: str | None = socket.inet_ntoa(socket.inet_aton(text))
        except OSError:
            expected = None
        parsed = parse_ipv4_literal(text)
        assert expected == (None if parsed is None else str(parsed))


class _FakeResolver(AbstractResolver):
    """Answers every name with fixed addresses."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        self.closed = True


def _resolve(addresses: Sequence[str], allowed: Sequence[str] = ()) -> list[str]:
    resolver = GuardedResolver(AddressGuard(allowed), _FakeResolver(addresses))
    return [answer["host"] for answer in asyncio.run(resolver.resolve("shop.example", 443))]


class TestGuardedResolver:
    """GuardedResolver around another resolver."""

    @pytest.mark.parametrize(
        ("answers", "allowed", "expected"),
        [
            (
                ["93.184.216.34", "127.0.0.1", "10.0.0.1", "2606:4700::1111", "::1"],
                [],
                ["93.184.216.34", "2606:4700::1111"],
            ),
            (["169.254.169.254", "8.8.8.8"], [], ["8.8.8.8"]),
            (["127.0.0.1", "10.0.0.1"], ["127.0.0.0/8"], ["127.0.0.1"]),
            ([], [], []),
        ],
    )
    def test_drops_blocked_answers(
        self, answers: list[str], allowed: list[str], expected: list[str]
    ) -> None:
        """Blocked addresses are dropped from a DNS answer and the rest go on, in order."""
        assert expected == _resolve(answers, allowed)

    @pytest.mark.parametrize(
        ("answers", "expected_class"),
        [
            (["127.0.0.1", "::1"], LOOPBACK),
            (["169.254.169.254"], LINK_LOCAL),
            (["10.0.0.1", "192.168.0.1"], PRIVATE),
            (["::ffff:127.0.0.1"], LOOPBACK),
        ],
    )
    def test_all_blocked_raises(self, answers: list[str], expected_class: str) -> None:
        """A name resolving to blocked addresses only raises BlockedAddressError with the class."""
        with pytest.raises(BlockedAddressError) as caught:
            _resolve(answers)
        assert (expected_class, True) == (
            caught.value.address_class,
            isinstance(caught.value, EnrichError),
        )

    def test_blocked_answers_are_logged(self) -> None:
        """Dropped answers are logged as a warning naming the host and the reasons."""
        with capture_logs() as logs:
            _resolve(["8.8.8.8", "10.0.0.1"])
        assert [
            {
                "event": "dns_answers_blocked",
                "log_level": "warning",
                "host": "shop.example",
                "blocked": ["private address 10.0.0.1"],
                "kept": 1,
            }
        ] == logs

    def test_close_closes_inner(self) -> None:
        """Closing the guarded resolver closes the one it wraps."""
        inner = _FakeResolver([])
        asyncio.run(GuardedResolver(AddressGuard(), inner).close())
        assert True is inner.closed


@pytest.mark.integration
class TestNothingGetsPast:
    """Fetches the guard stops never reach the server; the hit counters prove it."""

    def test_name_resolving_to_loopback(self, image_server: ImageServer) -> None:
        """`localhost` resolves to loopback only, so the fetch is blocked before connecting."""
        target = image_server.script("target", Behaviour(body=b"\xff\xd8\xff"))
        result, stats = _fetch(target.replace("127.0.0.1", "localhost"))
        assert ("unavailable", True, 1, 0) == (
            result.outcome,
            result.permanent,
            stats["reason:blocked_loopback"],
            image_server.hits["/scripted/target"],
        )

    def test_name_resolving_to_allowed_address(self, image_server: ImageServer) -> None:
        """With 127.0.0.0/8 allowed, `localhost` is fetched through its allowed address."""
        target = image_server.script("target", Behaviour(body=b"\xff\xd8\xff"))
        result, _ = _fetch(target.replace("127.0.0.1", "localhost"), allowed=["127.0.0.0/8"])
        assert ("ok", 1) == (result.outcome, image_server.hits["/scripted/target"])

    @pytest.mark.parametrize(
        "host", ["127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "[::ffff:127.0.0.1]"]
    )
    def test_literal_loopback_host(self, image_server: ImageServer, host: str) -> None:
        """A literal loopback host in any spelling is blocked without a single attempt."""
        target = image_server.script("target", Behaviour(body=b"\xff\xd8\xff"))
        result, _ = _fetch(target.replace("127.0.0.1", host))
        assert ("unavailable", True, LOOPBACK, 0, 0) == (
            result.outcome,
            result.permanent,
            _class_of(result.reason),
            result.attempts,
            image_server.hits["/scripted/target"],
        )

    def test_ipv6_loopback_literal(self) -> None:
        """`[::1]` is blocked: a listener on ::1 is never even connected to."""
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            listener.bind(("::1", 0))
        except OSError:
            listener.close()
            pytest.skip("::1 cannot be bound on this machine")
        with listener:
            listener.listen()
            listener.setblocking(False)
            result, _ = _fetch(f"http://[::1]:{listener.getsockname()[1]}/a.jpg")
            with pytest.raises(BlockingIOError):
                listener.accept()
        assert ("unavailable", LOOPBACK) == (result.outcome, _class_of(result.reason))

    @pytest.mark.parametrize(
        ("location", "expected_class"),
        [
            ("http://127.0.0.2:{port}/scripted/target", LOOPBACK),
            ("http://[::ffff:127.0.0.2]:{port}/scripted/target", LOOPBACK),
            ("http://2130706434:{port}/scripted/target", LOOPBACK),
            ("http://169.254.169.254/latest/meta-data/", LINK_LOCAL),
            ("http://10.0.0.1:{port}/scripted/target", PRIVATE),
        ],
    )
    def test_redirect_hop_is_checked(
        self, image_server: ImageServer, location: str, expected_class: str
    ) -> None:
        """With only 127.0.0.1 allowed, a redirect to a blocked address stops on that hop."""
        image_server.script("target", Behaviour(body=b"\xff\xd8\xff"))
        hop = image_server.script(
            "hop", Behaviour(redirect_to=location.format(port=image_server.port))
        )
        result, _ = _fetch(hop, allowed=["127.0.0.1/32"])
        assert ("unavailable", True, expected_class, 1, 0) == (
            result.outcome,
            result.permanent,
            _class_of(result.reason),
            image_server.hits["/scripted/hop"],
            image_server.hits["/scripted/target"],
        )
