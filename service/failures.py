"""Which failures belong to one record, and which to the infrastructure: the rule, in one place.

A failure caused by one record (its key, value, headers or size, its image, the output built
from it, the broker refusing that output or its dead-letter copy) becomes that record's status
or dead-letter entry, and the stream goes on. Only infrastructure failures may stop the
process: the broker gone past the delivery timeout, a fenced or failed producer, a lost
assignment, an unknown error (stopping and restarting from the last commit loses nothing,
while carrying on past an error nobody understood might).

:func:`is_record_level` applies the rule to an error the Kafka client reported when it
produced (or tried to produce) one message, by the error's name (``confluent_kafka``'s
``KafkaError.name()``, the same text :class:`~service.kafka.producer.DeliveryReport` carries).
"""

from __future__ import annotations

__all__ = ["RECORD_LEVEL", "is_record_level"]

RECORD_LEVEL: frozenset[str] = frozenset(
    {
        # The broker refused the record itself (the whole batch it travelled in fails with it,
        # so the service retries each refused record alone before blaming it).
        "INVALID_RECORD",  # e.g. a record without a key on a compacted topic
        "MSG_SIZE_TOO_LARGE",  # over the topic's max.message.bytes (or the client's limit)
        "RECORD_LIST_TOO_LARGE",  # the batch holding it is over the broker's limit
        "INVALID_TIMESTAMP",  # outside message.timestamp.difference.max.ms
        "INVALID_MSG",  # CORRUPT_MESSAGE: the record failed the broker's checks
        "INVALID_MSG_SIZE",  # a record whose size field the broker rejects
        "POLICY_VIOLATION",  # a broker-side policy refused the record
        # The client refused the record before sending it (MSG_SIZE_TOO_LARGE too, over
        # the client's message.max.bytes).
        "_INVALID_ARG",  # e.g. a header the client cannot serialise
        "_BAD_MSG",
        "_KEY_SERIALIZATION",
        "_VALUE_SERIALIZATION",
        "_KEY_DESERIALIZATION",
        "_VALUE_DESERIALIZATION",
    }
)
"""Error names that say one record is at fault. Everything else is the infrastructure's."""


def is_record_level(code: str | None) -> bool:
    """Whether a produce error with this name is the record's fault (``None``: no error)."""
    return code is not None and code in RECORD_LEVEL
