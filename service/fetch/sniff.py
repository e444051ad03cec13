"""What fetched bytes are, judged by their first bytes and never by the server's Content-Type.

Shops answer a missing image with their home page, a login wall or a placeholder served as
`image/jpeg`; only the magic bytes tell. `sniff_image_type` names the image formats the
service decodes; `looks_like_html` says when the bytes are a web page instead, for a better
reason in the fetch result.
"""

from typing import Final, Literal

__all__ = ["SNIFF_BYTES", "ImageType", "looks_like_html", "sniff_image_type"]

ImageType = Literal["jpeg", "png", "webp", "gif"]

SNIFF_BYTES: Final = 512
"""How many leading bytes the functions here look at; more is never needed."""

_PNG: Final = b"\x89PNG\r\n\x1a\n"

# The tags the WHATWG MIME sniffing standard uses to recognise HTML (section 7.1), in lower
# case; each must be followed by a space or `>` to count.
_HTML_TAGS: Final = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a",
    b"<style",
    b"<title",
    b"<b",
    b"<body",
    b"<br",
    b"<p",
    b"<!--",
)
_TAG_ENDS: Final = frozenset(b" >\t\n\x0c\r")
_LEADING_SPACE: Final = b" \t\n\x0c\r"
_UTF8_BOM: Final = b"\xef\xbb\xbf"


def sniff_image_type(head: bytes) -> ImageType | None:
    """The image format `head` (the first bytes of a body) starts with, or None.

    JPEG (`FF D8 FF`), PNG (its 8-byte signature), WebP (`RIFF` size `WEBP`) and GIF
    (`GIF87a` / `GIF89a`).
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_PNG):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def looks_like_html(head: bytes) -> bool:
    """True if `head` starts, after a BOM and white space, like an HTML document does."""
    text = head[:SNIFF_BYTES]
    text = text.removeprefix(_UTF8_BOM).lstrip(_LEADING_SPACE).lower()
    for tag in _HTML_TAGS:
        if text.startswith(tag) and len(text) > len(tag) and text[len(tag)] in _TAG_ENDS:
            return True
    return False
