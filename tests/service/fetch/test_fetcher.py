"""ImageFetcher against the local image server: retries, timeouts, limits, redirects, bad URLs.

The server binds 127.0.0.1, so these fetches allow 127.0.0.0/8 through the address guard (the
guard itself is tested in test_guard.py). Backoffs are tiny so the whole file runs in seconds.
"""

import asyncio
import dataclasses
import hashlib
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.errors import ConfigError
from service.fetch.fetcher import FetchConfig, FetchResult, ImageFetcher, parse_retry_after
from service.fetch.hosts import MIN_ANSWERS
from tests.support.image_server import Behaviour, ImageServer

FAST = FetchConfig(
    allowed_networks=("127.0.0.0/8",),
    connect_timeout_s=2,
    read_timeout_s=2,
    total_timeout_s=5,
    backoff_base_s=0.001,
    backoff_max_s=0.01,
    retries=3,
)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(500)
"""Enough of a JPEG for the sniffer, which is all the fetcher judges."""
HTML = b"<!DOCTYPE html>\n<html><head><title>Shop home</title></head></html>"


def _fetch_all(urls: list[str | None], **changes: Any) -> tuple[list[FetchResult], Counter[str]]:
    """Fetch `urls` at once with one fetcher (FAST with `changes`); the results and stats."""

    async def run() -> tuple[list[FetchResult], Counter[str]]:
        async with ImageFetcher(dataclasses.replace(FAST, **changes)) as fetcher:
            results = await asyncio.gather(*(fetcher.fetch(url) for url in urls))
            return list(results), fetcher.stats

    return asyncio.run(run())


def _fetch(url: str | None, **changes: Any) -> FetchResult:
    return _fetch_all([url], **changes)[0][0]


@pytest.fixture(scope="module")
def photo(shared_data: Path) -> tuple[str, bytes]:
    """A real product photo: its path below product-images and its bytes."""
    root = shared_data / "product-images"
    path = min(root.glob("*/train/*/*.jpg"))
    return path.relative_to(root).as_posix(), path.read_bytes()


@pytest.mark.integration
class TestFetch:
    """ImageFetcher.fetch() against the local server."""

    def test_real_photo(self, image_server: ImageServer, photo: tuple[str, bytes]) -> None:
        """A shared photo is fetched whole, sniffed as JPEG, in one attempt."""
        relative, data = photo
        url = image_server.url_for(relative)
        result = _fetch(url)
        assert ("ok", "jpeg", 200, 1, False, None, url) == (
            result.outcome,
            result.image_type,
            result.http_status,
            result.attempts,
            result.permanent,
            result.reason,
            result.final_url,
        )
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(result.content or b"").hexdigest()

    @pytest.mark.parametrize(
        ("behaviours", "expected"),
        [
            ([Behaviour(status=404)], ("unavailable", "HTTP 404", True, 1, 1)),
            ([Behaviour(status=410)], ("unavailable", "HTTP 410", True, 1, 1)),
            ([Behaviour(status=403)], ("unavailable", "HTTP 403", True, 1, 1)),
            ([Behaviour(status=408)], ("unavailable", "HTTP 408", False, 1, 1)),
            ([Behaviour(status=503), Behaviour(status=503), Behaviour(body=JPEG)],
             ("ok", None, False, 3, 3)),
            ([Behaviour(status=429, headers={"Retry-After": "0"}), Behaviour(body=JPEG)],
             ("ok", None, False, 2, 2)),
            ([Behaviour(status=500)], ("unavailable", "HTTP 500", False, 4, 4)),
            ([Behaviour(status=429)], ("unavailable", "HTTP 429", False, 4, 4)),
            ([Behaviour(body=JPEG * 100, reset_after_bytes=1000), Behaviour(body=JPEG)],
             ("ok", None, False, 2, 2)),
            ([Behaviour(body=JPEG, content_type="text/html")], ("ok", None, False, 1, 1)),
            ([Behaviour(body=HTML, content_type="image/jpeg")],
             ("invalid", "not an image: HTML page", True, 1, 1)),
            ([Behaviour(body=b"")], ("invalid", "not an image: empty body", True, 1, 1)),
            ([Behaviour(body=b"hello", content_type="text/plain")],
             ("invalid", "not an image: unrecognised bytes, Content-Type 'text/plain'", True, 1,
              1)),
        ],
    )  # fmt: skip
    def test_answers(
        self,
        image_server: ImageServer,
        behaviours: list[Behaviour],
        expected: tuple[str, str | None, bool, int, int],
    ) -> None:
        """Each answer ends as its table row says: outcome, reason, permanence, tries, hits."""
        result = _fetch(image_server.script("s", *behaviours))
        assert expected == (
            result.outcome,
            result.reason,
            result.permanent,
            result.attempts,
            image_server.hits["/scripted/s"],
        )

    def test_etag_and_last_modified(self, image_server: ImageServer) -> None:
        """The final answer's ETag and Last-Modified come back with the image."""
        headers = {"ETag": '"abc"', "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"}
        result = _fetch(image_server.script("s", Behaviour(body=JPEG, headers=headers)))
        assert ('"abc"', "Wed, 21 Oct 2015 07:28:00 GMT") == (result.etag, result.last_modified)

    def test_retry_after_is_capped(self, image_server: ImageServer) -> None:
        """A Retry-After of an hour is waited for only up to backoff_max_s * 4."""
        url = image_server.script(
            "s", Behaviour(status=503, headers={"Retry-After": "3600"}), Behaviour(body=JPEG)
        )
        started = time.monotonic()
        result = _fetch(url)
        assert ("ok", 2) == (result.outcome, result.attempts)
        assert time.monotonic() - started < 2

    def test_hang_times_out(self, image_server: ImageServer) -> None:
        """A server that never answers times out each attempt; the failure is not permanent."""
        url = image_server.script("s", Behaviour(hang=True))
        result = _fetch(url, read_timeout_s=0.2, retries=1)
        assert ("unavailable", "read timed out", False, 2, 2) == (
            result.outcome,
            result.reason,
            result.permanent,
            result.attempts,
            image_server.hits["/scripted/s"],
        )

    def test_total_timeout(self, image_server: ImageServer) -> None:
        """A body still streaming when the total timeout comes ends there, and may be retried."""
        url = image_server.script("s", Behaviour(body=JPEG, endless=True))
        result = _fetch(url, total_timeout_s=0.3, retries=0, max_bytes=2**40)
        assert ("unavailable", "timed out", False, 1) == (
            result.outcome,
            result.reason,
            result.permanent,
            result.attempts,
        )

    def test_endless_body_is_cut_off(self, image_server: ImageServer) -> None:
        """A body that never ends is abandoned once past max_bytes, quickly and without retry."""
        url = image_server.script("s", Behaviour(endless=True))
        started = time.monotonic()
        result = _fetch(url, max_bytes=1024 * 1024)
        assert ("invalid", "larger than 1048576 bytes", True, 1, None) == (
            result.outcome,
            result.reason,
            result.permanent,
            result.attempts,
            result.content,
        )
        assert time.monotonic() - started < 5

    def test_content_length_over_limit(self, image_server: ImageServer) -> None:
        """A Content-Length over max_bytes is refused before reading: the body never comes here."""
        url = image_server.script("s", Behaviour(body=JPEG, content_length=10**9))
        started = time.monotonic()
        result = _fetch(url, read_timeout_s=5)
        assert ("invalid", f"larger than {FAST.max_bytes} bytes", True, 1) == (
            result.outcome,
            result.reason,
            result.permanent,
            result.attempts,
        )
        assert time.monotonic() - started < 2

    @pytest.mark.parametrize(
        ("hops", "expected"),
        [
            (0, ("ok", None, "final")),
            (5, ("ok", None, "final")),
            (6, ("unavailable", "too many redirects (more than 5)", "hop5")),
        ],
    )
    def test_redirect_chain(
        self, image_server: ImageServer, hops: int, expected: tuple[str, str | None, str]
    ) -> None:
        """Up to max_redirects redirects are followed; one more ends the fetch, for good."""
        url = image_server.script("final", Behaviour(body=JPEG))
        for hop in reversed(range(hops)):
            url = image_server.script(f"hop{hop}", Behaviour(redirect_to=url))
        result = _fetch(url)
        assert expected == (
            result.outcome,
            result.reason,
            result.final_url.rpartition("/")[2],
        )
        assert (hops <= 5) == (image_server.hits["/scripted/final"] == 1)

    @pytest.mark.parametrize(
        ("location", "expected"),
        [
            ("/scripted/final", ("ok", None, False)),
            ("/scripted/home", ("invalid", "not an image: HTML page", True)),
            ("ftp://127.0.0.1/a.jpg", ("unavailable", "unsupported scheme 'ftp'", True)),
            ("file:///etc/passwd", ("unavailable", "unsupported scheme 'file'", True)),
        ],
    )
    def test_redirect_target(
        self, image_server: ImageServer, location: str, expected: tuple[str, str | None, bool]
    ) -> None:
        """A redirect's target is fetched and judged like the first URL, relative or not."""
        image_server.script("final", Behaviour(body=JPEG))
        image_server.script("home", Behaviour(body=HTML, content_type="text/html"))
        result = _fetch(image_server.script("hop", Behaviour(redirect_to=location)))
        assert expected == (result.outcome, result.reason, result.permanent)

    @pytest.mark.parametrize("userinfo", ["user:secret@", "user@", ":secret@"])
    def test_a_redirect_to_a_url_with_credentials_is_refused(
        self, image_server: ImageServer, userinfo: str
    ) -> None:
        """A redirect to user:password@ ends the fetch for good, unrequested, secret unrepeated."""
        image_server.script("final", Behaviour(body=JPEG))
        target = f"http://{userinfo}127.0.0.1:{image_server.port}/scripted/final"
        result = _fetch(image_server.script("hop", Behaviour(redirect_to=target)))
        expected = (
            "unavailable",
            "HTTP 302 redirect target carries credentials (user:password@); refused",
            True,
            "credentials",
            f"{image_server.base_url}/scripted/final",
            0,
        )
        assert expected == (
            result.outcome,
            result.reason,
            result.permanent,
            result.kind,
            result.final_url,
            image_server.hits["/scripted/final"],
        )

    def test_a_url_with_credentials_is_refused_before_any_request(
        self, image_server: ImageServer
    ) -> None:
        """A first URL with user:password@ is refused as parse_product refuses it: no request."""
        image_server.script("final", Behaviour(body=JPEG))
        url = f"http://user:secret@127.0.0.1:{image_server.port}/scripted/final"
        result = _fetch(url)
        expected = ("URL carries credentials (user:password@); refused", True, 0, 0)
        assert expected == (
            result.reason,
            result.permanent,
            result.attempts,
            image_server.hits["/scripted/final"],
        )

    @pytest.mark.parametrize(("per_host", "expected"), [(2, 2), (6, 6)])
    def test_per_host_cap(self, image_server: ImageServer, per_host: int, expected: int) -> None:
        """At most per_host requests are in flight to one host, however many fetches wait."""
        url = image_server.script("slow", Behaviour(body=JPEG, delay_s=0.5))
        results, _ = _fetch_all([url] * 6, per_host=per_host)
        assert (["ok"] * 6, expected) == (
            [result.outcome for result in results],
            image_server.max_in_flight["/scripted/slow"],
        )

    def test_a_hanging_host_is_cut_off_by_its_circuit(self, image_server: ImageServer) -> None:
        """After breaker_timeouts timeouts in a row the host's other fetches fail at once."""
        url = image_server.script("hang", Behaviour(hang=True))
        started = time.monotonic()
        results, stats = _fetch_all(
            [url] * 20, per_host=2, breaker_timeouts=2, read_timeout_s=0.3, retries=1
        )
        assert (2, {"host_down"}, {False}) == (
            image_server.hits["/scripted/hang"],
            {r.kind for r in results},
            {r.permanent for r in results},
        )
        assert "host not answering: 2 timeouts in a row" in (results[-1].reason or "")
        assert time.monotonic() - started < 2.0
        assert 20 == stats["reason:host_down"]

    def test_hanging_paths_on_a_live_host_do_not_cut_off_its_other_paths(
        self, image_server: ImageServer
    ) -> None:
        """Hangs that fill every slot of a host that just answered leave its circuit closed."""
        hang = image_server.script("hang", Behaviour(hang=True))
        ok = image_server.script("ok", Behaviour(body=JPEG))

        async def run() -> list[str]:
            config = dataclasses.replace(
                FAST, per_host=2, breaker_timeouts=2, read_timeout_s=0.3, retries=0
            )
            async with ImageFetcher(config) as fetcher:
                first = await fetcher.fetch(ok)
                rest = await asyncio.gather(*(fetcher.fetch(u) for u in (hang, hang, ok, ok)))
                return [r.kind for r in (first, *rest)]

        assert ["ok", "timeout", "timeout", "ok", "ok"] == asyncio.run(run())

    @pytest.mark.parametrize(
        ("stalled_per_host", "retries", "oks_first", "stalled"),
        [(64, 0, True, 3), (64, 1, True, 6), (0, 0, False, 0)],
    )
    def test_hanging_paths_on_a_live_host_give_their_slots_to_its_other_paths(
        self,
        image_server: ImageServer,
        stalled_per_host: int,
        retries: int,
        oks_first: bool,
        stalled: int,
    ) -> None:
        """Requests the host leaves hanging while it answers later ones stop holding its slots,
        and their retries start outside them, so its healthy images all come before the first
        hang times out (and, with stalling off, some of them only after)."""
        hang = image_server.script("hang", Behaviour(hang=True))
        ok = image_server.script("ok", Behaviour(body=JPEG))
        urls = ([hang] + [ok] * 10) * 3 + [ok] * 10

        async def run() -> tuple[list[tuple[str, float]], int]:
            config = dataclasses.replace(
                FAST, per_host=3, read_timeout_s=1.0, retries=retries, breaker_timeouts=100,
                stalled_per_host=stalled_per_host,
            )  # fmt: skip
            started = time.monotonic()

            async def timed(fetcher: ImageFetcher, url: str) -> tuple[str, float]:
                result = await fetcher.fetch(url)
                return result.kind, time.monotonic() - started

            async with ImageFetcher(config) as fetcher:
                ends = await asyncio.gather(*(timed(fetcher, url) for url in urls))
                return list(ends), fetcher.stats["stalled"]

        ends, stalls = asyncio.run(run())
        assert Counter({"ok": 40, "timeout": 3}) == Counter(kind for kind, _ in ends)
        assert 3 * (1 + retries) == image_server.hits["/scripted/hang"]
        last_ok = max(t for kind, t in ends if kind == "ok")
        first_hang = min(t for kind, t in ends if kind == "timeout")
        assert (oks_first, stalled) == (last_ok < first_hang, stalls)

    def test_a_retry_starts_stalled_only_on_the_host_where_the_try_stalled(
        self, image_server: ImageServer, shared_data: Path
    ) -> None:
        """A URL on one host redirecting to a path that hangs on another: the hop that hung
        stalls once its host's typical time has passed, and the retry starts stalled on that
        hop only, not on its first hop to the redirecting host."""
        other = ImageServer(shared_data / "product-images", host="127.0.0.2").start()
        try:
            ok_here = image_server.script("ok", Behaviour(body=JPEG))
            ok_there = other.script("ok", Behaviour(body=JPEG))
            hang_there = other.script("hang", Behaviour(hang=True))
            hop = image_server.script("hop", Behaviour(redirect_to=hang_there))

            async def run() -> tuple[FetchResult, int]:
                config = dataclasses.replace(
                    FAST, read_timeout_s=0.5, retries=1, breaker_timeouts=100
                )
                async with ImageFetcher(config) as fetcher:
                    for url in [ok_here, ok_there] * MIN_ANSWERS:  # both hosts' typical times
                        assert (await fetcher.fetch(url)).ok
                    result = await fetcher.fetch(hop)
                    return result, fetcher.stats["stalled"]

            result, stalled = asyncio.run(run())
        finally:
            other.stop()
        assert ("timeout", 2, 2) == (result.kind, result.attempts, other.hits["/scripted/hang"])
        # The first try stalls on its wait at 127.0.0.2; the retry starts stalled there. (Were
        # the retry's first hop, to 127.0.0.1, started stalled instead, its second hop would
        # stall on its wait again: 3.)
        assert 2 == stalled
        assert 2 == image_server.hits["/scripted/hop"]

    def test_an_answer_closes_the_circuit_after_the_cooldown(
        self, image_server: ImageServer
    ) -> None:
        """Once the cool-down is over the host is tried again, and an answer lets all through."""
        hang = image_server.script("hang", Behaviour(hang=True))
        ok = image_server.script("ok", Behaviour(body=JPEG))

        async def run() -> list[str]:
            config = dataclasses.replace(
                FAST, per_host=1, breaker_timeouts=1, breaker_cooldown_s=0.3,
                read_timeout_s=0.2, retries=0,
            )  # fmt: skip
            async with ImageFetcher(config) as fetcher:
                kinds = [(await fetcher.fetch(hang)).kind, (await fetcher.fetch(ok)).kind]
                await asyncio.sleep(0.35)
                kinds += [(await fetcher.fetch(ok)).kind, (await fetcher.fetch(ok)).kind]
                return kinds

        assert ["timeout", "host_down", "ok", "ok"] == asyncio.run(run())

    def test_stats(self, image_server: ImageServer) -> None:
        """Outcomes, reasons and retries are counted per fetch."""
        ok = image_server.script("ok", Behaviour(body=JPEG))
        missing = image_server.script("missing", Behaviour(status=404))
        flaky = image_server.script("flaky", Behaviour(status=503), Behaviour(body=JPEG))
        _, stats = _fetch_all([ok, missing, flaky, "ftp://x/y"])
        assert {
            "outcome:ok": 2,
            "outcome:unavailable": 2,
            "reason:ok": 2,
            "reason:http_404": 1,
            "reason:unsupported_scheme": 1,
            "retries": 1,
        } == dict(stats)


class TestBadUrls:
    """URLs that cannot be fetched at all end at once, permanently, without a request."""

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            (None, "no URL"),
            ("", "no URL"),
            ("   ", "no URL"),
            ("ftp://example.com/a.jpg", "unsupported scheme 'ftp'"),
            ("file:///etc/passwd", "unsupported scheme 'file'"),
            ("javascript:alert(1)", "unsupported scheme 'javascript'"),
            ("garbage", "malformed URL: not absolute"),
            ("//example.com/a.jpg", "malformed URL: not absolute"),
            ("http:///a.jpg", "malformed URL: no host"),
            ("http://[zz]/a.jpg", "malformed URL: The IPv6 content between brackets is not valid"),
        ],
    )
    def test_bad_url(self, url: str | None, reason: str) -> None:
        """Each is unavailable for good with a reason saying what is wrong, after no attempt."""
        result = _fetch(url)
        assert ("unavailable", reason, True, 0) == (
            result.outcome,
            result.reason,
            result.permanent,
            result.attempts,
        )

    def test_unknown_host_is_a_dns_failure(self) -> None:
        """A name that does not resolve ends as kind `dns`, retried, and not permanent."""
        result = _fetch("http://no-such-host.invalid/a.jpg", retries=1)
        assert ("unavailable", "dns", False, 2) == (
            result.outcome,
            result.kind,
            result.permanent,
            result.attempts,
        )

    def test_kind_names_the_stats_label(self) -> None:
        """`kind` is the label the stats count under `reason:<kind>`."""
        results, stats = _fetch_all(["ftp://example.com/a.jpg", "garbage"])
        assert ["unsupported_scheme", "malformed_url"] == [r.kind for r in results]
        assert 1 == stats["reason:unsupported_scheme"] == stats["reason:malformed_url"]

    def test_not_open(self) -> None:
        """Fetching outside `async with` is a programming error and says so."""
        with pytest.raises(RuntimeError, match="not open"):
            asyncio.run(ImageFetcher(FAST).fetch("http://127.0.0.1:1/a.jpg"))


class TestFetchConfig:
    """FetchConfig."""

    def test_defaults(self) -> None:
        """The defaults are the documented ones."""
        config = FetchConfig()
        assert (64, 8, 20 * 1024 * 1024, 5, 3, 20.0) == (
            config.total_connections,
            config.per_host,
            config.max_bytes,
            config.max_redirects,
            config.retries,
            config.retry_after_cap_s,
        )

    def test_bad_values(self) -> None:
        """Values the fetcher cannot use raise ConfigError naming every one."""
        with pytest.raises(ConfigError, match=r"per_host=0 .*retries=-1"):
            FetchConfig(per_host=0, retries=-1)


class TestParseRetryAfter:
    """parse_retry_after()."""

    NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("0", 0.0),
            ("120", 120.0),
            (" 7 ", 7.0),
            ("Fri, 02 Jan 2026 03:04:35 GMT", 30.0),
            ("Fri, 02 Jan 2026 03:00:00 GMT", 0.0),
            ("soon", None),
            ("-1", None),
            ("1.5", None),
            ("", None),
            (None, None),
        ],
    )
    def test_values(self, value: str | None, expected: float | None) -> None:
        """Delta-seconds and HTTP dates give seconds to wait; a past date 0; anything else None."""
        assert expected == parse_retry_after(value, self.NOW)

    def test_date_uses_now(self) -> None:
        """Without `now` the date is measured from the current time."""
        soon = datetime.now(UTC) + timedelta(seconds=60)
        waited = parse_retry_after(soon.strftime("%a, %d %b %Y %H:%M:%S GMT"))
        assert waited is not None
        assert 55 < waited <= 60
