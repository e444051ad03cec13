"""Magic-byte sniffing: image formats by their first bytes, and web pages by their first tag."""

import io
from pathlib import Path

import pytest
from PIL import Image

from service.fetch.sniff import looks_like_html, sniff_image_type

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


class TestSniffImageType:
    """sniff_image_type()."""

    @pytest.mark.parametrize(
        ("head", "expected"),
        [
            (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "jpeg"),
            (b"\xff\xd8\xff\xdb", "jpeg"),
            (PNG_SIGNATURE + b"\x00\x00\x00\rIHDR", "png"),
            (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "webp"),
            (b"GIF87a\x08\x00", "gif"),
            (b"GIF89a\x08\x00", "gif"),
            (b"", None),
            (b"\xff\xd8", None),
            (PNG_SIGNATURE[:7], None),
            (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
            (b"GIF88a", None),
            (b"BM6\x00\x00\x00", None),
            (b"<!DOCTYPE html><html>", None),
            (b"\x00\x00\x00\x1cftypavif", None),
        ],
    )
    def test_magic_bytes(self, head: bytes, expected: str | None) -> None:
        """Each format is named by its magic bytes; truncated or other bytes give None."""
        assert expected == sniff_image_type(head)

    @pytest.mark.parametrize(
        ("fmt", "expected"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif")]
    )
    def test_real_encoders(self, fmt: str, expected: str) -> None:
        """Files written by Pillow's encoders are recognised."""
        assert expected == sniff_image_type(_encoded(fmt)[:32])

    def test_shared_photo(self, shared_data: Path) -> None:
        """A real product photo from the shared data is a JPEG."""
        photo = min((shared_data / "product-images").glob("*/train/*/*.jpg"))
        assert "jpeg" == sniff_image_type(photo.read_bytes()[:16])


class TestLooksLikeHtml:
    """looks_like_html()."""

    @pytest.mark.parametrize(
        ("head", "expected"),
        [
            (b"<!DOCTYPE html>\n<html lang='en'>", True),
            (b"<!doctype HTML>", True),
            (b"\xef\xbb\xbf\r\n  <html lang='en'>", True),
            (b"<HTML>", True),
            (b"<head><title>Shop</title>", True),
            (b"<!-- served by nginx -->", True),
            (b"<p>Not found</p>", True),
            (b"<pre>", False),
            (b"<html", False),
            (b'<svg xmlns="http://www.w3.org/2000/svg">', False),
            (b'{"error": "not found"}', False),
            (b"\xff\xd8\xff\xe0", False),
            (b"", False),
        ],
    )
    def test_html_starts(self, head: bytes, expected: bool) -> None:
        """A body starting (after BOM and spaces) with an HTML tag and its end is HTML."""
        assert expected == looks_like_html(head)
