"""The rule: which produce errors are one record's fault, and which the infrastructure's."""

from __future__ import annotations

import confluent_kafka
import pytest

from service.failures import RECORD_LEVEL, is_record_level


@pytest.mark.parametrize(
    ("code", "record_level"),
    [
        # the broker refused the record itself
        ("INVALID_RECORD", True),  # a keyless record on a compacted topic
        ("MSG_SIZE_TOO_LARGE", True),  # over max.message.bytes (broker or client)
        ("RECORD_LIST_TOO_LARGE", True),
        ("INVALID_TIMESTAMP", True),
        ("INVALID_MSG", True),  # CORRUPT_MESSAGE
        ("INVALID_MSG_SIZE", True),
        ("POLICY_VIOLATION", True),
        # the client refused it before sending
        ("_INVALID_ARG", True),
        ("_BAD_MSG", True),
        ("_VALUE_SERIALIZATION", True),
        ("_KEY_SERIALIZATION", True),
        # the infrastructure: the broker gone, the producer fenced, no such topic, no rights
        ("_MSG_TIMED_OUT", False),
        ("_TRANSPORT", False),
        ("_ALL_BROKERS_DOWN", False),
        ("_FENCED", False),
        ("PRODUCER_FENCED", False),
        ("INVALID_PRODUCER_EPOCH", False),
        ("INVALID_TXN_STATE", False),
        ("OUT_OF_ORDER_SEQUENCE_NUMBER", False),
        ("UNKNOWN_TOPIC_OR_PART", False),
        ("TOPIC_AUTHORIZATION_FAILED", False),
        ("NOT_ENOUGH_REPLICAS", False),
        ("REQUEST_TIMED_OUT", False),
        ("_PURGE_QUEUE", False),
        ("_STATE", False),
        ("SOMETHING_NEW_NOBODY_KNOWS", False),  # unknown errors stop rather than lose
        (None, False),  # delivered
    ],
)
def test_produce_errors_are_sorted_by_the_rule(code: str | None, record_level: bool) -> None:
    """Record-level errors become that record's dead-letter entry; the rest may stop."""
    assert record_level == is_record_level(code)


def test_every_record_level_name_is_a_real_client_error() -> None:
    """A misspelt name would never match what the client reports."""
    known = {name for name in dir(confluent_kafka.KafkaError) if name.lstrip("_").isupper()}
    assert set() == RECORD_LEVEL - known
