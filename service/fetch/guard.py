"""The fetcher's guard against server-side request forgery: which addresses it may connect to.

Product feeds are written by other people, so an image URL may point anywhere: at the cloud
metadata service (169.254.169.254), at an admin port on the loopback, into the private network.
`AddressGuard` says whether an address may be contacted and, when not, why. Two places ask it:

- `GuardedResolver` sits in aiohttp's connector and drops every blocked answer DNS gives, so
  the check is on the address actually connected to (a name that resolves to 127.0.0.1, or
  that changes its answer between a check and the connect, cannot slip past).
- `check_url_host` is for hosts written as IP literals, which aiohttp connects to without
  asking the resolver. It reads every spelling that browsers and libc's `inet_aton` accept
  (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`, `[::1]`, `[fe80::1%25eth0]`), so the fetcher
  checks the host of every hop with it.

IPv6 addresses that carry an IPv4 address (IPv4-mapped, -compatible, -translated, 6to4,
Teredo, NAT64) are unwrapped and the IPv4 address inside is judged.
"""

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from service.errors import ConfigError, EnrichError

__all__ = [
    "LINK_LOCAL",
    "LOOPBACK",
    "MALFORMED",
    "MULTICAST",
    "PRIVATE",
    "RESERVED",
    "SHARED",
    "SITE_LOCAL",
    "UNIQUE_LOCAL",
    "UNSPECIFIED",
    "AddressGuard",
    "BlockedAddressError",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "parse_ipv4_literal",
]

log = structlog.get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The classes of blocked address; each is the first word of a reason and a metrics label.
UNSPECIFIED: Final = "unspecified"
LOOPBACK: Final = "loopback"
LINK_LOCAL: Final = "link-local"
MULTICAST: Final = "multicast"
SHARED: Final = "shared"
PRIVATE: Final = "private"
RESERVED: Final = "reserved"
SITE_LOCAL: Final = "site-local"
UNIQUE_LOCAL: Final = "unique-local"
MALFORMED: Final = "malformed"


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), word) for net, word in rows)


# Checked in order; the first network holding the address names its class.
_V4_CLASSES: Final = _table(
    # "This network": Linux connects 0.0.0.0 (and its /8) to the local host.
    ("0.0.0.0/8", UNSPECIFIED),
    ("127.0.0.0/8", LOOPBACK),
    # Holds the cloud metadata services (169.254.169.254).
    ("169.254.0.0/16", LINK_LOCAL),
    ("224.0.0.0/4", MULTICAST),
    # Carrier-grade NAT (RFC 6598): neither public nor RFC 1918, and Python calls it neither.
    ("100.64.0.0/10", SHARED),
    ("10.0.0.0/8", PRIVATE),
    ("172.16.0.0/12", PRIVATE),
    ("192.168.0.0/16", PRIVATE),
    # Includes the limited broadcast address 255.255.255.255.
    ("240.0.0.0/4", RESERVED),
)
_V6_CLASSES: Final = _table(
    ("::/128", UNSPECIFIED),
    ("::1/128", LOOPBACK),
    ("fe80::/10", LINK_LOCAL),
    ("fec0::/10", SITE_LOCAL),
    ("fc00::/7", UNIQUE_LOCAL),
    ("ff00::/8", MULTICAST),
    # Local-use NAT64 (RFC 8215): where the IPv4 address sits depends on the local set-up.
    ("64:ff9b:1::/48", RESERVED),
)

# IPv6 prefixes whose last 32 bits are an IPv4 address the packets end up at.
_V4_IN_LAST_32_BITS: Final = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), "IPv4-translated"),
    (ipaddress.IPv6Network("64:ff9b::/96"), "NAT64"),
    # Checked after ::/128 and ::1/128 have been classed above.
    (ipaddress.IPv6Network("::/96"), "IPv4-compatible"),
)

_DECIMAL: Final = frozenset("0123456789")
_OCTAL: Final = frozenset("01234567")
_HEX: Final = frozenset("0123456789abcdefABCDEF")


class BlockedAddressError(EnrichError):
    """Raised by `GuardedResolver` when every address a host resolves to is blocked."""

    def __init__(self, message: str, address_class: str) -> None:
        super().__init__(message)
        self.address_class = address_class
        """The class of the first blocked address (`LOOPBACK`, `PRIVATE`, ...)."""


@dataclass(frozen=True)
class _Verdict:
    address_class: str
    address: IPAddress
    inside: str | None = None
    """How the address was carried inside an IPv6 one, e.g. `IPv4-mapped ::ffff:7f00:1`."""

    @property
    def reason(self) -> str:
        text = f"{self.address_class} address {self.address}"
        return text if self.inside is None else f"{text} inside {self.inside}"


def parse_ipv4_literal(text: str) -> ipaddress.IPv4Address | None:
    """Read `text` as an IPv4 address the way `inet_aton` and browsers do, or return None.

    One to four dot-separated numbers, each decimal, octal (leading `0`) or hexadecimal
    (leading `0x`); the last fills the bytes left, so `127.1` is 127.0.0.1 and `2130706433`
    is 127.0.0.1 too. One trailing dot is allowed, as browsers allow it.
    """
    parts = text.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        number = _parse_number(part)
        if number is None:
            return None
        numbers.append(number)
    *head, last = numbers
    if any(number > 255 for number in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _parse_number(part: str) -> int | None:
    """One part of an IPv4 literal, or None. `int()` alone would also take `_`, `+` and spaces."""
    if part[:2] in ("0x", "0X"):
        digits, base, allowed = part[2:], 16, _HEX
        if not digits:
            return 0  # Browsers read a bare "0x" as zero.
    elif len(part) > 1 and part[0] == "0":
        digits, base, allowed = part[1:], 8, _OCTAL
    else:
        digits, base, allowed = part, 10, _DECIMAL
    if not digits or not set(digits) <= allowed:
        return None
    return int(digits, base)


def _ends_in_number(host: str) -> bool:
    """True if the last label is numeric: browsers then insist on an IPv4 address."""
    label = host[:-1] if host.endswith(".") else host
    label = label.rpartition(".")[2]
    if label[:2] in ("0x", "0X"):
        return set(label[2:]) <= _HEX
    return bool(label) and set(label) <= _DECIMAL


def _without_scope(address: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """The address without its zone id (`%eth0`), which does not change its class."""
    return ipaddress.IPv6Address(address.packed) if address.scope_id else address


def _as_network(value: str | IPNetwork) -> IPNetwork:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ConfigError(f"allowed network {value!r} is not an IP network: {exc}") from exc


class AddressGuard:
    """Decides which IP addresses may be contacted; everything not public is blocked.

    `allowed` networks are let through whatever their class (e.g. `127.0.0.0/8` for tests,
    or an internal image CDN).
    """

    def __init__(self, allowed: Sequence[str | IPNetwork] = ()) -> None:
        self.allowed: tuple[IPNetwork, ...] = tuple(_as_network(net) for net in allowed)

    def blocked_reason(self, ip: str | IPAddress) -> str | None:
        """Why `ip` may not be contacted, e.g. "loopback address 127.0.0.1"; None if it may.

        A string that is not an IP address at all is blocked as malformed.
        """
        address = self._parse(ip)
        if address is None:
            return f"{MALFORMED} address {ip!r}"
        verdict = self._verdict(address)
        return None if verdict is None else verdict.reason

    def classify(self, ip: str | IPAddress) -> str | None:
        """The class of a blocked `ip` (`LOOPBACK`, `PRIVATE`, ...); None if it may be contacted."""
        address = self._parse(ip)
        if address is None:
            return MALFORMED
        verdict = self._verdict(address)
        return None if verdict is None else verdict.address_class

    def check_url_host(self, host: str) -> str | None:
        """Why a URL's host written as an IP literal may not be contacted; None otherwise.

        Takes the host as a URL holds it: any IPv4 spelling `inet_aton` accepts, an IPv6
        address with or without brackets and zone id. A host that is a name gives None: its
        addresses are judged when it is resolved (`GuardedResolver`). A host whose last
        label is a number but that is no IPv4 address is blocked as malformed, as browsers
        refuse it and libc might still read something into it.
        """
        bracketed = host.startswith("[") and host.endswith("]")
        text = host[1:-1] if bracketed else host
        if bracketed or ":" in text:
            try:
                address: IPAddress = ipaddress.IPv6Address(text.replace("%25", "%", 1))
            except ValueError:
                return f"{MALFORMED} IPv6 literal {host!r}"
            return self.blocked_reason(address)
        ipv4 = parse_ipv4_literal(text)
        if ipv4 is not None:
            return self.blocked_reason(ipv4)
        if _ends_in_number(text):
            return f"{MALFORMED} numeric host {host!r}"
        return None

    @staticmethod
    def _parse(ip: str | IPAddress) -> IPAddress | None:
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return ip
        try:
            return ipaddress.ip_address(ip)
        except ValueError:
            return None

    def _is_allowed(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.allowed)

    def _verdict(self, address: IPAddress) -> _Verdict | None:
        if isinstance(address, ipaddress.IPv6Address):
            address = _without_scope(address)
        if self._is_allowed(address):
            return None
        if isinstance(address, ipaddress.IPv4Address):
            return self._verdict_v4(address)
        for network, word in _V6_CLASSES:
            if address in network:
                return _Verdict(word, address)
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            kind, ipv4s = embedded
            for ipv4 in ipv4s:
                if self._is_allowed(ipv4):
                    continue
                inner = self._verdict_v4(ipv4)
                if inner is not None:
                    return _Verdict(inner.address_class, ipv4, f"{kind} {address}")
            return None
        if not address.is_global:
            return _Verdict(RESERVED, address)
        return None

    @staticmethod
    def _verdict_v4(address: ipaddress.IPv4Address) -> _Verdict | None:
        for network, word in _V4_CLASSES:
            if address in network:
                return _Verdict(word, address)
        if not address.is_global:
            # Documentation, benchmarking and IETF protocol ranges: nothing to fetch there.
            return _Verdict(RESERVED, address)
        return None


def _embedded_ipv4(
    address: ipaddress.IPv6Address,
) -> tuple[str, tuple[ipaddress.IPv4Address, ...]] | None:
    """The IPv4 addresses an IPv6 address carries, with the name of the form; None if none."""
    for network, kind in _V4_IN_LAST_32_BITS:
        if address in network:
            return kind, (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    if address.sixtofour is not None:
        return "6to4", (address.sixtofour,)
    if address.teredo is not None:
        server, client = address.teredo
        return "Teredo", (client, server)
    return None


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that drops every blocked address from the answers it passes on.

    Wraps `inner` (aiohttp's `ThreadedResolver` by default, made on first use inside the
    running loop). Raises `BlockedAddressError` when a host resolves to blocked addresses
    only; answers that are partly blocked go on with the blocked ones removed.
    """

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self.guard = guard
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host` with the inner resolver and keep the addresses the guard allows."""
        if self._inner is None:
            self._inner = ThreadedResolver()
        answers = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refused: list[str] = []
        first_class: str | None = None
        for answer in answers:
            reason = self.guard.blocked_reason(answer["host"])
            if reason is None:
                kept.append(answer)
                continue
            refused.append(reason)
            first_class = first_class or self.guard.classify(answer["host"])
        if refused:
            log.warning("dns_answers_blocked", host=host, blocked=refused, kept=len(kept))
        if answers and not kept:
            raise BlockedAddressError(
                f"{host} resolves only to blocked addresses: {'; '.join(refused)}",
                address_class=first_class or MALFORMED,
            )
        return kept

    async def close(self) -> None:
        """Close the inner resolver."""
        if self._inner is not None:
            await self._inner.close()
