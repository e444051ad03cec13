"""Hostile images and hostile records through the running service: statuses, never a crash."""

from __future__ import annotations

import io
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from PIL import Image

from tests.service.test_pipeline import (
    ENRICHMENT,
    PRODUCT,
    _encode,
    _product,
    _read,
    _Running,
    _settings,
    model_dir,
    photos,
    server,
)
from tests.support.image_server import Behaviour, ImageServer

__all__ = ["model_dir", "photos", "server"]  # fixtures shared with test_pipeline

pytestmark = pytest.mark.integration


def _save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb() -> bytes:
    """A valid 100-byte PNG whose header declares a 100,000 x 100,000 canvas."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _bad_crc_png() -> bytes:
    data = bytearray(_save(Image.new("RGB", (64, 64), (10, 200, 30)), "PNG"))
    data[-20] ^= 0xFF  # inside the last IDAT chunk's data: its CRC no longer matches
    return bytes(data)


def _animated_gif() -> bytes:
    frames = [Image.new("P", (40, 40), colour) for colour in (1, 50, 200)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def _exif_rotated(photo: bytes) -> bytes:
    image = Image.open(io.BytesIO(photo))
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW
    return _save(image, "JPEG", exif=exif.tobytes())


def _hostile_images(photo: bytes) -> dict[str, tuple[bytes, str]]:
    """name → (body, expected status)."""
    palette = Image.new("P", (32, 32))
    palette.putpalette([i % 256 for i in range(768)])
    palette.info["transparency"] = 0
    return {
        "bomb": (_bomb(), "IMAGE_INVALID"),
        "truncated-jpeg": (photo[: len(photo) // 2], "IMAGE_INVALID"),
        "bad-crc-png": (_bad_crc_png(), "IMAGE_INVALID"),
        "cmyk-jpeg": (_save(Image.new("CMYK", (50, 40), (0, 100, 200, 10)), "JPEG"), "OK"),
        "16-bit-png": (_save(Image.new("I;16", (32, 32), 40000), "PNG"), "OK"),
        "palette-alpha": (_save(palette, "PNG"), "OK"),
        "animated-gif": (_animated_gif(), "OK"),
        "webp": (_save(Image.new("RGB", (33, 32), (5, 5, 250)), "WEBP"), "OK"),
        "1x1": (_save(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), "IMAGE_INVALID"),
        "1x10000": (_save(Image.new("RGB", (1, 10_000), (0, 0, 0)), "PNG"), "IMAGE_INVALID"),
        "exif-rotated": (_exif_rotated(photo), "OK"),
        "empty": (b"", "IMAGE_INVALID"),
        "text": (b"GIF89a but not really" * 10, "IMAGE_INVALID"),
    }


@pytest.fixture
def topics(topic_factory: Any) -> dict[str, str]:
    return {
        "input": topic_factory("hostile", partitions=2),
        "output": topic_factory("hostile-out", partitions=2),
        "dlq": topic_factory("hostile-dlq"),
    }


class TestHostileImages:
    def test_each_image_is_classified_or_invalid_with_a_reason(
        self, kafka_bootstrap: str, topics: dict[str, str], model_dir: Path,
        server: ImageServer, photos: list[str],
    ) -> None:  # fmt: skip
        """Bombs, broken files and odd formats get IMAGE_INVALID or a category; no crash."""
        cases = _hostile_images((server.root / photos[0]).read_bytes())
        items = [
            _encode(_product(name, server.script(name, Behaviour(body=body,
                                                                 content_type="image/png"))))
            for name, (body, _) in cases.items()
        ]  # fmt: skip
        producer = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap})
        for key, value in items:
            producer.produce(topics["input"], key=key, value=value)
        assert 0 == producer.flush(30)
        with _Running(_settings(kafka_bootstrap, topics, model_dir)):
            messages = _read(kafka_bootstrap, topics["output"], expected=len(cases))
        records = {r["product_id"]: r for r in (ENRICHMENT.decode(m.value()) for m in messages)}
        assert set(cases) == set(records)
        got = {
            name: "OK" if r["status"] in ("CLASSIFIED", "LOW_CONFIDENCE") else r["status"]
            for name, r in records.items()
        }
        assert {name: expected for name, (_, expected) in cases.items()} == got
        for name, record in records.items():
            if record["status"] == "IMAGE_INVALID":
                assert record["error"], name
        assert "pixels" in records["bomb"]["error"]
        assert "too small" in records["1x1"]["error"]


class TestHostileRecords:
    def test_bad_records_are_dead_lettered_or_invalid_and_the_partition_moves(
        self, kafka_bootstrap: str, topics: dict[str, str], model_dir: Path,
        server: ImageServer, photos: list[str], topic_factory: Any,
    ) -> None:  # fmt: skip
        """Undecodable records go to the dead-letter topic, bad URLs are INVALID_INPUT."""
        good = server.url_for(photos[0])
        wrong_fingerprint = b"\xc3\x01" + b"\x00" * 8 + PRODUCT.encode(_product("x", good))[10:]
        valid = PRODUCT.encode(_product("cut", good))
        dead = {
            "not-avro": b"\x00\x01garbage",
            "unknown-fingerprint": wrong_fingerprint,
            "cut-short": valid[: len(valid) // 2],
        }
        invalid = {
            "huge-url": "http://example.com/" + "a" * 100_000,
            "file": "file:///etc/passwd",
            "ftp": "ftp://example.com/a.jpg",
            "gopher": "gopher://example.com/1",
            "data": "data:image/png;base64,iVBORw0KGgo=",
            "credentials": "http://admin:secret@example.com/a.jpg",
            "no-host": "http:///a.jpg",
        }
        big_title = {**_product("big-title", good), "title": "t" * 10_000_000}
        producer = confluent_kafka.Producer(
            {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 20_000_000}
        )
        # One partition so "the partition keeps moving" is a statement about one partition.
        single = topic_factory("hostile-records", partitions=1,
                               config={"max.message.bytes": "20000000"})  # fmt: skip
        for name, value in dead.items():
            producer.produce(single, key=name.encode(), value=value)
        for name, url in invalid.items():
            producer.produce(single, key=name.encode(), value=PRODUCT.encode(_product(name, url)))
        producer.produce(single, key=b"big-title", value=PRODUCT.encode(big_title))
        producer.produce(single, key=b"after", value=PRODUCT.encode(_product("after", good)))
        assert 0 == producer.flush(30)
        settings = _settings(kafka_bootstrap, {**topics, "input": single}, model_dir,
                             group_id=f"hostile-{uuid.uuid4().hex[:6]}")  # fmt: skip
        with _Running(settings):
            messages = _read(kafka_bootstrap, topics["output"], expected=len(invalid) + 2)
            dead_letters = _read(kafka_bootstrap, topics["dlq"], expected=len(dead))
        records = {r["product_id"]: r for r in (ENRICHMENT.decode(m.value()) for m in messages)}
        assert {name: "INVALID_INPUT" for name in invalid} == {
            name: records[name]["status"] for name in invalid
        }
        assert all(records[name]["error"] for name in invalid)
        assert records["big-title"]["status"] in ("CLASSIFIED", "LOW_CONFIDENCE")
        assert records["after"]["status"] in ("CLASSIFIED", "LOW_CONFIDENCE")
        assert set(dead) == {m.key().decode() for m in dead_letters}
        for message in dead_letters:
            headers = dict(message.headers())
            assert dead[message.key().decode()] == message.value()
            assert headers["dlq.error"]
            assert single.encode() == headers["dlq.source.topic"]
