"""Fetch results to the outcome classes of the failure statistics."""

import pytest

from service.dataset.outcomes import classify, host_of
from service.fetch import FetchResult


def _result(kind: str, *, final_url: str = "http://shop.test/a.jpg") -> FetchResult:
    outcome = "ok" if kind == "ok" else "unavailable"
    return FetchResult("http://shop.test/a.jpg", final_url, outcome, kind=kind)  # type: ignore[arg-type]


class TestClassify:
    @pytest.mark.parametrize(
        ("kind", "expected"),
        [
            ("ok", "ok"),
            ("no_url", "invalid_url"),
            ("malformed_url", "invalid_url"),
            ("unsupported_scheme", "invalid_url"),
            ("blocked_malformed", "invalid_url"),
            ("blocked_private", "blocked_address"),
            ("blocked_loopback", "blocked_address"),
            ("blocked_link-local", "blocked_address"),
            ("dns", "dns_failure"),
            ("connection", "connection_error"),
            ("tls", "connection_error"),
            ("too_many_redirects", "connection_error"),
            ("timeout", "timeout"),
            ("http_404", "http_4xx"),
            ("http_429", "http_4xx"),
            ("http_500", "http_5xx"),
            ("http_503", "http_5xx"),
            ("not_image", "not_an_image"),
            ("too_large", "too_large"),
            ("something_new", "connection_error"),
        ],
    )
    def test_kind_to_class(self, kind: str, expected: str) -> None:
        """Each fetcher kind has its class; an unknown kind counts as a connection error."""
        assert expected == classify(_result(kind))

    def test_not_image_after_a_redirect(self) -> None:
        """A page reached through a redirect is `redirected_to_non_image`."""
        assert "redirected_to_non_image" == classify(
            _result("not_image", final_url="http://shop.test/login")
        )


class TestHostOf:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("http://Shop.Test:8080/a.jpg", "shop.test"),
            ("not a url", "<invalid>"),
            ("http://[::1/", "<invalid>"),
            ("", "<invalid>"),
        ],
    )
    def test_host(self, url: str, expected: str) -> None:
        """The lower-case host, or `<invalid>` for a URL without one."""
        assert expected == host_of(url)
