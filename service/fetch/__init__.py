"""Fetching product images: the fetcher, its address guard and the magic-byte sniffer."""

from service.fetch.fetcher import (
    FetchConfig,
    FetchOutcome,
    FetchResult,
    ImageFetcher,
    parse_retry_after,
)
from service.fetch.guard import AddressGuard, BlockedAddressError, GuardedResolver
from service.fetch.sniff import ImageType, looks_like_html, sniff_image_type

__all__ = [
    "AddressGuard",
    "BlockedAddressError",
    "FetchConfig",
    "FetchOutcome",
    "FetchResult",
    "GuardedResolver",
    "ImageFetcher",
    "ImageType",
    "looks_like_html",
    "parse_retry_after",
    "sniff_image_type",
]
