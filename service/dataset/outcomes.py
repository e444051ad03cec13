"""How each labelled product ended, in the classes of the original system's failure statistics.

`classify` maps a `FetchResult` (its bounded `kind`) to one outcome class; `IMAGE_INVALID` is
for bytes that passed the magic-byte check but did not decode.
"""

from typing import Final
from urllib.parse import urlsplit

from service.fetch import FetchResult

__all__ = ["FAILURES", "IMAGE_INVALID", "OK", "OUTCOMES", "classify", "host_of"]

OK: Final = "ok"
IMAGE_INVALID: Final = "image_invalid"
# In the order reports list them: success first, then the way a download fails, from the
# URL itself to the bytes.
OUTCOMES: Final = (
    OK,
    "invalid_url",
    "blocked_address",
    "dns_failure",
    "connection_error",
    "timeout",
    "http_4xx",
    "http_5xx",
    "not_an_image",
    "redirected_to_non_image",
    "too_large",
    IMAGE_INVALID,
)
FAILURES: Final = OUTCOMES[1:]

_BY_KIND: Final = {
    "ok": OK,
    "no_url": "invalid_url",
    "malformed_url": "invalid_url",
    "unsupported_scheme": "invalid_url",
    # A host whose last label is a number but no IPv4 address: a broken URL, not an attack.
    "blocked_malformed": "invalid_url",
    "dns": "dns_failure",
    "timeout": "timeout",
    # Failed at once because the host's last requests all timed out (its circuit is open).
    "host_down": "timeout",
    "too_large": "too_large",
    "connection": "connection_error",
    "tls": "connection_error",
    "bad_response": "connection_error",
    "client_error": "connection_error",
    "bad_redirect": "connection_error",
    "too_many_redirects": "connection_error",
}


def classify(result: FetchResult) -> str:
    """The outcome class of one fetch (never `IMAGE_INVALID`: that comes after decoding)."""
    kind = result.kind
    if kind == "not_image":
        return "redirected_to_non_image" if result.final_url != result.url else "not_an_image"
    if kind.startswith("http_") and kind[5:].isdigit():
        return "http_5xx" if int(kind[5:]) >= 500 else "http_4xx"
    if kind.startswith("blocked_") and kind != "blocked_malformed":
        return "blocked_address"
    return _BY_KIND.get(kind, "connection_error")


def host_of(url: str) -> str:
    """The URL's host in lower case, or `<invalid>` when it has none."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        host = None
    return host or "<invalid>"
