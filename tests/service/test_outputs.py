"""Outputs always fit their topic: enrichments checked against the output topic's limit,
dead-letter copies cut down to the dead-letter topic's."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from service.contract import SingleObjectCodec
from service.ordering import Pending
from service.outputs import OutputBuilder, TopicLimits, message_size
from service.records import Product, enrichment

CODEC = SingleObjectCodec.for_schema("category_enrichment")


def _builder(output_bytes: int = 100_000, dead_letter_bytes: int = 2_000) -> OutputBuilder:
    return OutputBuilder(
        output_topic="out", dead_letter_topic="dlq", codec=CODEC,
        limits=TopicLimits(output_bytes=output_bytes, dead_letter_bytes=dead_letter_bytes),
    )  # fmt: skip


def _record(error: str | None = None) -> dict[str, object]:
    product = Product("p-1", "partner", "http://127.0.0.1/x.png",
                      dt.datetime(2026, 11, 1, tzinfo=dt.UTC))  # fmt: skip
    model = {"name": "m", "version": "1", "backbone": "b", "taxonomy_version": "t", "depth": 4}
    return enrichment(product, status="IMAGE_UNAVAILABLE", model=model,
                      source=("products", 0, 7), error=error)  # fmt: skip


PENDING = Pending("products", 3, 42, b"key-1")


class TestTopicLimits:
    def test_the_smaller_of_topic_and_client_limit_wins_less_framing(self) -> None:
        """A topic's max.message.bytes under the client's bounds the records to it."""
        limits = TopicLimits.from_configs({"max.message.bytes": "20000"}, {}, 1_000_000)
        assert (20_000 - 512, 1_000_000 - 512) == (limits.output_bytes, limits.dead_letter_bytes)


class TestEnrichment:
    def test_an_enrichment_within_the_limit_is_produced(self) -> None:
        """The output is keyed by product_id and carries the content type."""
        output = _builder().enrichment(_record(), "IMAGE_UNAVAILABLE")
        assert not isinstance(output, str)
        assert (b"p-1", "IMAGE_UNAVAILABLE") == (output.key, output.status)

    def test_an_enrichment_over_the_limit_says_why_instead(self) -> None:
        """The broker would refuse it: the caller gets the reason for the dead-letter copy."""
        output = _builder(output_bytes=200).enrichment(_record(), "IMAGE_UNAVAILABLE")
        assert isinstance(output, str)
        assert "over the out topic's limit of 200" in output


class TestDeadLetter:
    def test_a_copy_that_fits_keeps_bytes_and_headers_whole(self) -> None:
        """Raw value, key and headers as consumed, plus where it came from and why."""
        output = _builder().dead_letter(PENDING, b"raw", [("trace", b"t-1")], "not Avro")
        headers = dict(output.headers)
        assert (b"key-1", b"raw") == (output.key, output.value)
        assert b"t-1" == headers["trace"]
        assert b"not Avro" == headers["dlq.error"]
        assert (b"products", b"3", b"42") == (
            headers["dlq.source.topic"], headers["dlq.source.partition"],
            headers["dlq.source.offset"],
        )  # fmt: skip
        assert "dlq.truncated" not in headers

    def test_a_copy_over_the_limit_keeps_reason_position_size_hash_and_a_prefix(self) -> None:
        """The topic takes the cut copy; size and SHA-256 identify the original."""
        value = bytes(range(256)) * 40  # 10,240 bytes
        output = _builder(dead_letter_bytes=2_000).dead_letter(PENDING, value, [], "too big")
        headers = dict(output.headers)
        assert message_size(output.key, output.value, output.headers) <= 2_000
        assert b"true" == headers["dlq.truncated"]
        assert str(len(value)).encode() == headers["dlq.original.value.size"]
        assert hashlib.sha256(value).hexdigest().encode() == headers["dlq.original.sha256"]
        assert output.value is not None
        assert value.startswith(output.value)
        assert len(output.value) > 1000
        assert b"too big" == headers["dlq.error"]

    def test_input_headers_are_kept_while_they_fit(self) -> None:
        """Huge input headers are cut, and the copy says so."""
        headers_in = [("small", b"s"), ("huge", b"h" * 5_000)]
        output = _builder(dead_letter_bytes=2_000).dead_letter(PENDING, b"v", headers_in, "x")
        names = [name for name, _ in output.headers]
        assert "small" in names
        assert "huge" not in names
        assert "dlq.headers.truncated" in names
        assert message_size(output.key, output.value, output.headers) <= 2_000

    def test_an_oversized_key_is_cut_and_hashed(self) -> None:
        """A key over 1,024 bytes is cut; its SHA-256 stays."""
        pending = Pending("products", 0, 1, b"k" * 5_000)
        output = _builder(dead_letter_bytes=2_000).dead_letter(pending, b"v", [], "x")
        assert output.key == b"k" * 1024
        headers = dict(output.headers)
        assert (
            hashlib.sha256(b"k" * 5_000).hexdigest().encode() == headers["dlq.original.key.sha256"]
        )

    @pytest.mark.parametrize("value", [None, b""])
    def test_a_tombstone_is_copied_as_an_empty_value(self, value: bytes | None) -> None:
        """A dead-letter copy is never itself a tombstone."""
        assert b"" == _builder().dead_letter(PENDING, value, None, "x").value
