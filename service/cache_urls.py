"""URL normalisation for the image cache's keys: `normalise_url`, equal for URLs that name the
same resource."""

import re
import string
from typing import Final
from urllib.parse import urlsplit, urlunsplit

__all__ = ["normalise_url"]

_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}


def normalise_url(url: str) -> str:
    """The form of `url` used for cache keys: equal for URLs that name the same resource.

    Scheme and host are lower-cased, a default port (80 for http, 443 for https) and the
    fragment are dropped, an empty http(s) path becomes `/`, and percent-escapes of unreserved
    characters (letters, digits, `-._~`) are decoded while the rest get upper-case hex. Path and
    query are otherwise kept as given: parameter order and `+` matter to real servers. Never
    raises: a URL that cannot be split keeps its text, less any fragment.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket; the fetch will report it
        return url.partition("#")[0]
    scheme = parts.scheme.lower()
    netloc = _normalise_netloc(parts.netloc, scheme)
    path = _normalise_percent(parts.path)
    if not path and netloc and scheme in _DEFAULT_PORTS:
        path = "/"
    return urlunsplit((scheme, netloc, path, _normalise_percent(parts.query), ""))


def _normalise_netloc(netloc: str, scheme: str) -> str:
    """`[userinfo@]host[:port]` with the host lower-cased and a default or empty port dropped."""
    userinfo, at, hostport = netloc.rpartition("@")
    if hostport.startswith("["):  # an IPv6 literal: its colons are not the port's
        close = hostport.find("]")
        if close < 0:
            return netloc
        host, rest = hostport[: close + 1], hostport[close + 1 :]
        port = rest[1:] if rest.startswith(":") else None
        if port is None and rest:
            return userinfo + at + host.lower() + rest
    else:
        host, colon, port_text = hostport.partition(":")
        port = port_text if colon else None
    keep_port = port is not None and port != "" and port != _DEFAULT_PORTS.get(scheme)
    return userinfo + at + host.lower() + (f":{port}" if keep_port else "")


def _normalise_percent(text: str) -> str:
    """Decode escapes of unreserved characters; upper-case the hex of the others."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT_ESCAPE.sub(fix, text)
