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
    """The Kafka client reported an error the caller asked it to raise."""


class CacheError(EnrichError):
    """Redis did not answer, or answered with an error; callers go on without the cache."""
