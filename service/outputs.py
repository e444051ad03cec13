"""Building what the service produces: enrichments that always fit the output topic, and
dead-letter copies that always fit the dead-letter topic.

A valid product always gets a valid output: the fields copied from the input are bounded
by :func:`service.records.parse_product` and :func:`service.records.enrichment`: ``product_id``,
the output's key, at 1,024 bytes, else the record is input trouble and goes to the dead-letter
topic; ``partner_id`` at 256 characters, else the product is ``INVALID_INPUT`` and the output
carries its first 256; ``error`` at 1,000 characters; ``image_url`` at 4,096, else
``INVALID_INPUT``), and an encoded enrichment over the output topic's
limit goes to the dead-letter topic with the reason instead of being refused by the broker.

A dead-letter copy keeps the raw bytes and headers when they fit. When they do not (the
topic's ``max.message.bytes`` is read at start), it keeps the reason, the source position, the
original's size and SHA-256 and as much of the bytes as fits, with ``dlq.truncated: true``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.contract import Codec
from service.ordering import Output, Pending
from service.records import MAX_ERROR_CHARS, MAX_KEY_BYTES

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "OutputBuilder",
    "TopicLimits",
    "message_size",
]

DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
"""The broker's default ``max.message.bytes`` (used when a topic's cannot be read)."""
FRAMING_BYTES = 512
"""Room left for the record batch and record framing the broker counts (about 61 bytes of
batch header and 20 of record header, and varints per header)."""
_PER_HEADER_BYTES = 10


def message_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """The bytes one record takes, framing of its own headers included."""
    size = len(key or b"") + len(value or b"")
    return size + sum(len(n.encode()) + len(v) + _PER_HEADER_BYTES for n, v in headers)


@dataclass(frozen=True)
class TopicLimits:
    """The largest record (key, value and headers) each topic takes, framing left aside."""

    output_bytes: int = DEFAULT_MAX_MESSAGE_BYTES - FRAMING_BYTES
    dead_letter_bytes: int = DEFAULT_MAX_MESSAGE_BYTES - FRAMING_BYTES

    @classmethod
    def from_configs(
        cls, output: Mapping[str, str], dead_letter: Mapping[str, str], producer_max: int
    ) -> TopicLimits:
        """From the topics' configurations and the producer's own ``message.max.bytes``."""

        def limit(config: Mapping[str, str]) -> int:
            topic_max = int(config.get("max.message.bytes", DEFAULT_MAX_MESSAGE_BYTES))
            return max(1, min(topic_max, producer_max) - FRAMING_BYTES)

        return cls(output_bytes=limit(output), dead_letter_bytes=limit(dead_letter))


class OutputBuilder:
    """Encodes enrichments and dead-letter copies within the topics' limits."""

    def __init__(
        self, *, output_topic: str, dead_letter_topic: str, codec: Codec, limits: TopicLimits
    ) -> None:
        """Produce enrichments to ``output_topic`` with ``codec``; copies to the other."""
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.codec = codec
        self.limits = limits
        self._headers = [("content-type", codec.content_type.encode())]

    def enrichment(self, record: Mapping[str, Any], status: str) -> Output | str:
        """The output record, or why it cannot be produced (for its dead-letter reason)."""
        value = self.codec.encode(record)
        key = str(record["product_id"]).encode()
        size = message_size(key, value, self._headers)
        if size > self.limits.output_bytes:
            return (
                f"the enrichment would be {size} bytes, over the {self.output_topic} topic's "
                f"limit of {self.limits.output_bytes}"
            )
        return Output(self.output_topic, key, value, list(self._headers), status)

    def dead_letter(
        self,
        pending: Pending,
        value: bytes | None,
        headers: Sequence[tuple[str, str | bytes | None]] | None,
        reason: str,
    ) -> Output:
        """The dead-letter copy of a consumed message: raw bytes and headers, or as much of
        them as the topic takes, always with the reason and where it came from."""
        raw = [
            (str(n), v.encode() if isinstance(v, str) else bytes(v or b""))
            for n, v in (headers or [])
        ]
        ours = [
            ("dlq.source.topic", pending.topic.encode()),
            ("dlq.source.partition", str(pending.partition).encode()),
            ("dlq.source.offset", str(pending.offset).encode()),
            ("dlq.error", reason.encode()[: MAX_ERROR_CHARS * 4]),
        ]
        body = value if value is not None else b""
        key = pending.key
        limit = self.limits.dead_letter_bytes
        if message_size(key, body, raw + ours) <= limit:
            return Output(self.dead_letter_topic, key, body, raw + ours, "DEAD_LETTER")
        ours += [
            ("dlq.truncated", b"true"),
            ("dlq.original.size", str(message_size(key, value, raw)).encode()),
            ("dlq.original.value.size", str(len(body)).encode()),
            ("dlq.original.sha256", hashlib.sha256(body).hexdigest().encode()),
        ]
        if key is not None and len(key) > MAX_KEY_BYTES:
            ours.append(("dlq.original.key.sha256", hashlib.sha256(key).hexdigest().encode()))
            key = key[:MAX_KEY_BYTES]
        kept: list[tuple[str, bytes]] = []
        room = limit - message_size(key, b"", ours) - 64  # 64: a dlq.headers.truncated header
        for name, header in raw:  # the input's own headers, in order, while they fit
            cost = message_size(None, None, [(name, header)])
            if cost > room:
                ours.append(("dlq.headers.truncated", b"true"))
                break
            kept.append((name, header))
            room -= cost
        return Output(self.dead_letter_topic, key, body[: max(0, room)], kept + ours, "DEAD_LETTER")
