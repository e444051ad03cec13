"""Fetch product images over HTTP(S): bounded, retried, guarded, and never raising for the network.

`ImageFetcher` owns one aiohttp session for the life of the service. Every fetch ends in a
`FetchResult` whose `outcome` is `ok`, `unavailable` (the image could not be had: HTTP error,
timeout, blocked address, bad URL) or `invalid` (bytes came, but they are not an image we
accept: too large, or not an image at all). Failures are data; `permanent` says whether a
failure is worth remembering (a negative cache) or may go away on its own.

What each fetch keeps to:

- Only http and https, on every hop. Redirects are followed by hand, at most
  `max_redirects`, and each hop's host is checked by the `AddressGuard`: literal IP hosts
  here, names in the connector's `GuardedResolver`.
- No credentials in a URL, on any hop: aiohttp would send `user:password@` as an
  Authorization header, so a redirect could make the service log in somewhere (and
  `parse_product` refuses them in `image_url` already). Such a URL ends the fetch, for good,
  before any request to it; the reason and `final_url` never repeat the secret.
- Timeouts on connect, on each socket read and on each request in total.
- Retries with exponential backoff and full jitter on timeouts, broken connections, 5xx and
  429, honouring `Retry-After` up to a cap; other 4xx answers are final.
- At most `max_bytes` read: a larger `Content-Length` is refused before reading, and a body
  is abandoned as soon as it grows past the limit.
- The bytes are judged by their magic bytes (`sniff`), never by the Content-Type header.
- At most `total_connections` requests in flight, and at most `per_host` to one host, so
  one slow shop cannot take every connection. A request the host leaves waiting while it
  answers the ones asked after it (a path that hangs on a live host) is *stalled*: it gives
  its slots back and waits on outside the caps, at most `stalled_per_host` of them per host
  and `max_stalled` in all (`HostLimiter`). Without that, a shop that hangs on 1 path in 10
  fills its slots with those and its healthy images queue behind them for whole timeouts.
- A circuit breaker per host (`HostBreaker`): a host that accepts connections and never
  answers would keep its `per_host` slots busy for whole timeouts while its queue (and, with
  outputs in source order, every partition holding one of its products) waits behind them.
  After `breaker_timeouts` timeouts in a row, with no answer from the host for twice
  `total_timeout_s`, its requests fail at once (`host_down`, not permanent) for
  `breaker_cooldown_s`; then up to `per_host` requests probe it again, and any answer closes
  the circuit. The silence matters: on a live host that hangs on some paths, timeouts can
  come in a row although the host is answering.
"""

import asyncio
import dataclasses
import email.utils
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Literal, Self

import aiohttp
import structlog
from yarl import URL

from service.errors import ConfigError
from service.fetch.guard import AddressGuard, BlockedAddressError, GuardedResolver, IPNetwork
from service.fetch.hosts import HostBreaker, HostLimiter, Lease
from service.fetch.sniff import SNIFF_BYTES, ImageType, looks_like_html, sniff_image_type

__all__ = ["FetchConfig", "FetchOutcome", "FetchResult", "ImageFetcher", "parse_retry_after"]

log = structlog.get_logger(__name__)

FetchOutcome = Literal["ok", "unavailable", "invalid"]

_SCHEMES: Final = frozenset({"http", "https"})
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
# 4xx answers that say nothing lasting about the image: not worth a negative cache entry.
_TRANSIENT_4XX: Final = frozenset({408, 425, 429})
_MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class FetchConfig:
    """How the fetcher behaves; the defaults suit a service fetching from many shops."""

    total_connections: int = 64
    """Open connections, over all hosts."""
    per_host: int = 8
    """Requests in flight to one host at a time (stalled ones aside)."""
    stalled_per_host: int = 256
    """Stalled requests to one host at most: ones that wait for an answer while the host
    answers the requests asked after them (see `HostLimiter`); 0 stalls none."""
    max_stalled: int = 1024
    """Stalled requests over all hosts at most (each holds a connection)."""
    stall_factor: float = 4.0
    """A request waiting this many times its host's typical answer time stalls..."""
    stall_floor_s: float = 0.1
    """...and at least this long."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    """Longest wait for the next bytes from the socket."""
    total_timeout_s: float = 30.0
    """Longest one request (one hop) may take, body included."""
    max_bytes: int = 20 * _MIB
    max_redirects: int = 5
    retries: int = 3
    """Further attempts after the first one fails in a way that may pass."""
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0
    allowed_networks: tuple[str | IPNetwork, ...] = ()
    """Networks let through the address guard (e.g. an internal CDN, or 127.0.0.0/8 in tests)."""
    breaker_timeouts: int = 8
    """Timeouts in a row, with no answer from the host in between, that open its circuit."""
    breaker_cooldown_s: float = 10.0
    """How long an open circuit fails the host's requests at once before probing it again."""
    user_agent: str = "catalog-enrichment/0.1"
    dns_cache_ttl_s: int = 60
    """How long the connector keeps DNS answers (already filtered by the guard)."""

    def __post_init__(self) -> None:
        """Refuse values the fetcher cannot work with, naming them."""
        positive = {
            "total_connections": self.total_connections,
            "per_host": self.per_host,
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "total_timeout_s": self.total_timeout_s,
            "max_bytes": self.max_bytes,
            "breaker_timeouts": self.breaker_timeouts,
            "stall_factor": self.stall_factor,
            "stall_floor_s": self.stall_floor_s,
        }
        not_negative = {
            "max_redirects": self.max_redirects,
            "retries": self.retries,
            "backoff_base_s": self.backoff_base_s,
            "backoff_max_s": self.backoff_max_s,
            "dns_cache_ttl_s": self.dns_cache_ttl_s,
            "breaker_cooldown_s": self.breaker_cooldown_s,
            "stalled_per_host": self.stalled_per_host,
            "max_stalled": self.max_stalled,
        }
        wrong = [f"{k}={v!r} (must be > 0)" for k, v in positive.items() if not v > 0]
        wrong += [f"{k}={v!r} (must be >= 0)" for k, v in not_negative.items() if not v >= 0]
        if wrong:
            raise ConfigError(f"invalid fetch settings: {', '.join(wrong)}")

    @property
    def retry_after_cap_s(self) -> float:
        """The longest a server's Retry-After is waited for."""
        return self.backoff_max_s * 4


@dataclass(frozen=True)
class FetchResult:
    """How one fetch ended. `content` is set only when `outcome` is "ok"."""

    url: str
    final_url: str
    """The URL of the last hop tried (after redirects)."""
    outcome: FetchOutcome
    content: bytes | None = None
    image_type: ImageType | None = None
    etag: str | None = None
    last_modified: str | None = None
    reason: str | None = None
    """Why it failed, for people; None when ok."""
    http_status: int | None = None
    """The status of the last answer, if one came."""
    attempts: int = 0
    elapsed_s: float = 0.0
    permanent: bool = False
    """Whether the failure will stay (404, 410, blocked, not an image, too large), so it may be
    cached negatively; timeouts, 5xx, 429 and broken connections are not."""
    kind: str = "ok"
    """The short, bounded label of how it ended, as counted in `stats` under `reason:<kind>`
    (`ok`, `http_404`, `timeout`, `dns`, `connection`, `blocked_private`, `not_image`...)."""

    @property
    def ok(self) -> bool:
        """True if the image was fetched."""
        return self.outcome == "ok"


@dataclass(frozen=True)
class _End:
    """How one attempt ended; `kind` is a short, bounded label for the stats."""

    outcome: FetchOutcome
    kind: str
    final_url: str
    reason: str | None = None
    permanent: bool = False
    retry: bool = False
    retry_after_s: float | None = None
    http_status: int | None = None
    content: bytes | None = None
    image_type: ImageType | None = None
    etag: str | None = None
    last_modified: str | None = None
    stalled_host: str | None = None
    """The host of the hop that timed out stalled (see `HostLimiter`), if one did."""


def _unavailable(kind: str, url: URL | str, reason: str, *, permanent: bool) -> _End:
    return _End("unavailable", kind, str(url), reason, permanent=permanent)


def _credentials(url: URL, what: str) -> _End | None:
    """The end of a fetch whose next hop `url` carries credentials, or None if it has none."""
    if url.user is None and url.password is None:
        return None
    reason = f"{what} carries credentials (user:password@); refused"
    log.warning("credentials_refused", url=str(url.with_user(None)), reason=reason)
    return _unavailable("credentials", url.with_user(None), reason, permanent=True)


def _retry(kind: str, url: URL, reason: str, status: int | None = None) -> _End:
    return _End("unavailable", kind, str(url), reason, retry=True, http_status=status)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None.

    A date in the past gives 0; a value that is neither form gives None.
    """
    if value is None:
        return None
    text = value.strip()
    if text and set(text) <= set("0123456789"):
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class ImageFetcher:
    """Fetches images with one shared aiohttp session; use it as an async context manager.

    `stats` counts every fetch by `outcome:<outcome>` and `reason:<kind>` (e.g.
    `reason:http_404`, `reason:timeout`, `reason:blocked_loopback`), and retries under
    `retries`, for metrics.
    """

    def __init__(self, config: FetchConfig | None = None) -> None:
        self.config = config or FetchConfig()
        self.guard = AddressGuard(self.config.allowed_networks)
        self.stats: Counter[str] = Counter()
        self.limiter = HostLimiter(
            self.config.per_host,
            self.config.total_connections,
            stalled_per_host=self.config.stalled_per_host,
            max_stalled=self.config.max_stalled,
            stall_factor=self.config.stall_factor,
            stall_floor_s=self.config.stall_floor_s,
            stats=self.stats,
        )
        self.breaker = HostBreaker(
            self.config.breaker_timeouts,
            self.config.breaker_cooldown_s,
            quiet_s=2 * self.config.total_timeout_s,
        )
        self._random = random.Random()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        """Open the session and its connector (no connection is made yet)."""
        config = self.config
        connector = aiohttp.TCPConnector(
            # The caps are `HostLimiter`'s (across redirects too); this one only backs them up.
            limit=config.total_connections + config.max_stalled,
            limit_per_host=0,
            resolver=GuardedResolver(self.guard),
            ttl_dns_cache=config.dns_cache_ttl_s,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=config.total_timeout_s,
                sock_connect=config.connect_timeout_s,
                sock_read=config.read_timeout_s,
            ),
            headers={
                "User-Agent": config.user_agent,
                "Accept": "image/webp,image/png,image/jpeg,image/gif,image/*;q=0.8",
                # Compressed bodies would let a small download inflate past `max_bytes`
                # before it is counted; images do not compress anyway.
                "Accept-Encoding": "identity",
            },
            cookie_jar=aiohttp.DummyCookieJar(),  # No state carried from one shop to the next.
            trust_env=False,  # No proxy from the environment: the guard must see the target.
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the session and every connection."""
        await self.close()

    async def close(self) -> None:
        """Close the session and every connection; safe to call twice."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str | None) -> FetchResult:
        """Fetch the image at `url`. Never raises for a bad URL, the network or the server."""
        started = time.monotonic()
        text = (url or "").strip()
        parsed = self._parse(text)
        end, attempts = (parsed, 0) if isinstance(parsed, _End) else await self._tries(parsed)
        result = FetchResult(
            url=text,
            final_url=end.final_url,
            outcome=end.outcome,
            content=end.content,
            image_type=end.image_type,
            etag=end.etag,
            last_modified=end.last_modified,
            reason=end.reason,
            http_status=end.http_status,
            attempts=attempts,
            elapsed_s=time.monotonic() - started,
            permanent=end.permanent,
            kind=end.kind,
        )
        self.stats[f"outcome:{end.outcome}"] += 1
        self.stats[f"reason:{end.kind}"] += 1
        log.debug(
            "image_fetched",
            url=text,
            outcome=result.outcome,
            reason=result.reason,
            status=result.http_status,
            attempts=attempts,
            bytes=len(result.content or b""),
            elapsed_s=round(result.elapsed_s, 3),
        )
        return result

    def _parse(self, text: str) -> URL | _End:
        """The URL to fetch, or the end saying why it cannot be fetched at all."""
        if not text:
            return _unavailable("no_url", text, "no URL", permanent=True)
        try:
            parsed = URL(text)
        except ValueError as exc:
            return _unavailable("malformed_url", text, f"malformed URL: {exc}", permanent=True)
        return _credentials(parsed, "URL") or self._check_hop(parsed) or parsed

    async def _tries(self, url: URL) -> tuple[_End, int]:
        """Attempt `url` until an attempt ends for good or the retries are spent."""
        attempts = 0
        stalled_host: str | None = None
        while True:
            attempts += 1
            end = await self._attempt(url, stalled_host=stalled_host)
            stalled_host = end.stalled_host
            if not end.retry or attempts > self.config.retries:
                return end, attempts
            delay = self._backoff(attempts, end.retry_after_s)
            self.stats["retries"] += 1
            log.debug(
                "fetch_retry", url=str(url), reason=end.reason, attempt=attempts, delay_s=delay
            )
            await asyncio.sleep(delay)

    def _check_hop(self, url: URL) -> _End | None:
        """Why `url` may not be requested (scheme, host, literal address), or None."""
        if not url.scheme:
            return _unavailable("malformed_url", url, "malformed URL: not absolute", permanent=True)
        if url.scheme not in _SCHEMES:
            reason = f"unsupported scheme {url.scheme!r}"
            return _unavailable("unsupported_scheme", url, reason, permanent=True)
        if not url.host:
            return _unavailable("malformed_url", url, "malformed URL: no host", permanent=True)
        blocked = self.guard.check_url_host(url.host)
        if blocked is not None:
            address_class = blocked.partition(" ")[0]
            log.warning("address_blocked", url=str(url), reason=blocked)
            return _unavailable(f"blocked_{address_class}", url, blocked, permanent=True)
        return None

    async def _attempt(self, url: URL, *, stalled_host: str | None = None) -> _End:
        """One try: request `url`, following redirects up to the limit, each hop checked.
        ``stalled_host``: the previous try timed out stalled on this host, so the first hop
        to it starts stalled."""
        tried = current = url
        for _ in range(self.config.max_redirects + 1):
            problem = self._check_hop(current)
            if problem is not None:
                return problem
            stalled = stalled_host is not None and (current.host or "").lower() == stalled_host
            if stalled:
                stalled_host = None
            step = await self._hop(current, stalled=stalled)
            if isinstance(step, _End):
                return step
            tried, current = current, step
        reason = f"too many redirects (more than {self.config.max_redirects})"
        return _unavailable("too_many_redirects", tried, reason, permanent=True)

    async def _hop(self, url: URL, *, stalled: bool = False) -> _End | URL:
        """Request `url` once: the end of the attempt, or the URL a redirect points to.

        ``stalled``: start outside the host's slots (see `HostLimiter.hold`)."""
        if self._session is None:
            raise RuntimeError("ImageFetcher is not open: use it as `async with ImageFetcher()`")
        host = (url.host or "").lower()
        refusal = self.breaker.refusal(host)
        if refusal is not None:
            return _unavailable("host_down", url, refusal, permanent=False)
        lease: Lease | None = None
        try:
            async with self.limiter.hold(host, stalled=stalled) as lease:
                refusal = self.breaker.refusal(host)  # it may have opened while we waited
                if refusal is not None:
                    return _unavailable("host_down", url, refusal, permanent=False)
                async with self._session.get(url, allow_redirects=False) as response:
                    self.breaker.answered(host)
                    self.limiter.answered(lease)
                    if response.status in _REDIRECTS:
                        return self._redirect_target(url, response)
                    return await self._read(url, response)
        except BlockedAddressError as exc:
            log.warning("address_blocked", url=str(url), reason=str(exc))
            return _unavailable(f"blocked_{exc.address_class}", url, str(exc), permanent=True)
        except TimeoutError as exc:
            self.breaker.timed_out(host)
            what = (
                "connect timed out" if isinstance(exc, aiohttp.ConnectionTimeoutError)
                else "read timed out" if isinstance(exc, aiohttp.SocketTimeoutError)
                else "timed out"
            )  # fmt: skip
            stalled_host = host if lease is not None and lease.stalled else None
            return dataclasses.replace(_retry("timeout", url, what), stalled_host=stalled_host)
        except aiohttp.ClientSSLError as exc:
            return _unavailable("tls", url, f"TLS failed: {exc}", permanent=False)
        except aiohttp.InvalidURL as exc:
            return _unavailable("malformed_url", url, f"malformed URL: {exc}", permanent=True)
        except aiohttp.ClientConnectorDNSError as exc:
            return _retry("dns", url, f"DNS lookup failed: {exc or type(exc).__name__}")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            return _retry("connection", url, f"connection failed: {exc or type(exc).__name__}")
        except aiohttp.ClientResponseError as exc:
            return _retry("bad_response", url, f"malformed response: {exc.message}")
        except aiohttp.ClientError as exc:
            return _retry("client_error", url, f"request failed: {exc or type(exc).__name__}")
        except ValueError as exc:
            return _unavailable("malformed_url", url, f"malformed URL: {exc}", permanent=True)

    @staticmethod
    def _redirect_target(url: URL, response: aiohttp.ClientResponse) -> _End | URL:
        location = response.headers.get("Location")
        if not location:
            reason = f"HTTP {response.status} redirect without Location"
            return _End("unavailable", "bad_redirect", str(url), reason, permanent=True)
        try:
            target = url.join(URL(location))
        except ValueError as exc:
            reason = f"malformed redirect Location {location!r}: {exc}"
            return _End("unavailable", "bad_redirect", str(url), reason, permanent=True)
        return _credentials(target, f"HTTP {response.status} redirect target") or target

    async def _read(self, url: URL, response: aiohttp.ClientResponse) -> _End:
        """Judge a final answer: its status, its size while streaming, then its bytes."""
        status = response.status
        if status == 429 or status >= 500:
            end = _retry(f"http_{status}", url, f"HTTP {status}", status)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return dataclasses.replace(end, retry_after_s=retry_after)
        if not 200 <= status < 300:
            end = _unavailable(
                f"http_{status}", url, f"HTTP {status}", permanent=status not in _TRANSIENT_4XX
            )
            return dataclasses.replace(end, http_status=status)
        limit = self.config.max_bytes
        too_large = _End(
            "invalid", "too_large", str(url), f"larger than {limit} bytes", True, http_status=status
        )
        if response.content_length is not None and response.content_length > limit:
            response.close()
            return too_large
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > limit:
                response.close()
                return too_large
        head = bytes(body[:SNIFF_BYTES])
        image_type = sniff_image_type(head)
        if image_type is None:
            what = "empty body" if not body else "HTML page" if looks_like_html(head) else None
            if what is None:
                what = f"unrecognised bytes, Content-Type {response.content_type!r}"
            reason = f"not an image: {what}"
            return _End("invalid", "not_image", str(url), reason, True, http_status=status)
        return _End(
            "ok",
            "ok",
            str(url),
            http_status=status,
            content=bytes(body),
            image_type=image_type,
            etag=response.headers.get("ETag"),
            last_modified=response.headers.get("Last-Modified"),
        )

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds before the next attempt: the server's Retry-After (capped), else full jitter."""
        config = self.config
        if retry_after_s is not None:
            return min(retry_after_s, config.retry_after_cap_s)
        ceiling = min(config.backoff_max_s, config.backoff_base_s * 2 ** (attempt - 1))
        return self._random.uniform(0, ceiling)
