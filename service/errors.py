"""Errors raised by the service side. All derive from the project's one root, `EnrichError`."""

from model.errors import EnrichError

__all__ = [
    "CacheError",
    "ConfigError",
    "EnrichError",
    "KafkaError",
    "SchemaError",
    "SerializationError",
    "UnknownSchemaError",
]


class ConfigError(EnrichError):
    """A setting is missing or has a value the service cannot use."""


class SchemaError(EnrichError):
    """An Avro schema file cannot be read or parsed."""


class SerializationError(EnrichError):
    """A record cannot be encoded, or bytes cannot be decoded, with the Avro contract."""


class UnknownSchemaError(SerializationError):
    """Bytes carry a writer-schema fingerprint that this service does not know."""


class KafkaError(EnrichError):
    """The Kafka client reported an error the caller asked it to raise.

    ``code`` is the client's error name when it gave one (``MSG_SIZE_TOO_LARGE``), which
    :func:`service.failures.is_record_level` sorts into one record's fault or the
    infrastructure's; ``abortable`` says the current transaction must be aborted (and can be).
    """

    def __init__(self, message: str, *, code: str | None = None, abortable: bool = False):
        """Keep the message, the client's error name and whether the transaction can go on."""
        super().__init__(message)
        self.code = code
        self.abortable = abortable


class CacheError(EnrichError):
    """Redis did not answer, or answered with an error; callers go on without the cache."""
