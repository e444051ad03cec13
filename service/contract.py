"""The Avro contract: loading the schemas in `schemas/` and the wire format of every record.

Records travel in Avro *single-object encoding* (Avro specification, "Single object
encoding"): the two marker bytes C3 01, the 8-byte little-endian CRC-64-AVRO fingerprint of
the writer schema's Parsing Canonical Form, then the Avro binary body. A reader needs no
registry, and Java's `BinaryMessageDecoder` reads the bytes as they are.

A codec knows the current schema (what it writes and what it hands back) and every released
version in `schemas/history/` (what it can read): bytes written with any of them are resolved
to the current schema. Codecs are pluggable through the `Codec` protocol, so another wire
format (a schema registry's) can take this one's place.
"""

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from service.errors import SchemaError, SerializationError, UnknownSchemaError

PRODUCT = "product"
CATEGORY_ENRICHMENT = "category_enrichment"

# The two bytes every single-object encoded record starts with (Avro spec, version 1 of the
# single-object format).
SINGLE_OBJECT_MARKER = b"\xc3\x01"
_HEADER_SIZE = len(SINGLE_OBJECT_MARKER) + 8

DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


class Codec(Protocol):
    """What the service needs from a wire format: bytes in, dicts out, and the reverse."""

    @property
    def content_type(self) -> str:
        """The `content-type` header value that names this encoding and schema."""
        ...

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode one record; raise `SerializationError` if it does not fit the schema."""
        ...

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode one record; raise `SerializationError` (or a subclass) on bad bytes."""
        ...


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one schema: where it came from, its parsed form and its fingerprint."""

    name: str
    version: str
    parsed: dict[str, Any]
    fingerprint: bytes

    @property
    def full_name(self) -> str:
        """The schema's namespaced record name, e.g. `com.catalog.enrichment.v1.Product`."""
        return str(self.parsed["name"])


def fingerprint(parsed_schema: dict[str, Any] | str) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of a parsed schema, as on the wire."""
    canonical = to_parsing_canonical_form(parsed_schema)
    # fastavro returns the fingerprint's bytes in little-endian order as hex, like Java's
    # SchemaNormalization.parsingFingerprint("CRC-64-AVRO", ...).
    return bytes.fromhex(avro_fingerprint(canonical, "CRC-64-AVRO"))


def read_schema(path: Path, version: str = "current") -> SchemaVersion:
    """Read and parse one `.avsc` file; raise `SchemaError` naming the file on any problem."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        parsed = fastavro.parse_schema(raw)
    except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
        raise SchemaError(f"cannot read Avro schema {path}: {exc}") from exc
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise SchemaError(f"Avro schema {path} is not a record schema")
    return SchemaVersion(path.stem, version, parsed, fingerprint(parsed))


def load_schema(name: str, schema_dir: Path = DEFAULT_SCHEMA_DIR) -> SchemaVersion:
    """The current version of schema `name` (`product` or `category_enrichment`)."""
    return read_schema(schema_dir / f"{name}.avsc")


def history(name: str, schema_dir: Path = DEFAULT_SCHEMA_DIR) -> list[SchemaVersion]:
    """Every released version of `name`, kept in `schemas/history/<version>/`, oldest first."""
    root = schema_dir / "history"
    versions = sorted(
        (p for p in root.glob(f"*/{name}.avsc")),
        key=lambda p: tuple(int(x) if x.isdigit() else x for x in p.parent.name.split(".")),
    )
    return [read_schema(path, path.parent.name) for path in versions]


class SingleObjectCodec:
    """Avro single-object encoding for one schema, reading every known writer version."""

    def __init__(self, current: SchemaVersion, readable: Iterable[SchemaVersion] = ()) -> None:
        self._current = current
        self._writers: dict[bytes, SchemaVersion] = {current.fingerprint: current}
        for version in readable:
            self._writers.setdefault(version.fingerprint, version)

    @classmethod
    def for_schema(cls, name: str, schema_dir: Path = DEFAULT_SCHEMA_DIR) -> "SingleObjectCodec":
        """A codec writing the current `name` schema and reading it and all its history."""
        return cls(load_schema(name, schema_dir), history(name, schema_dir))

    @property
    def schema(self) -> SchemaVersion:
        """The schema this codec writes."""
        return self._current

    @property
    def content_type(self) -> str:
        """`application/vnd.apache.avro.single-object` with the record name and fingerprint."""
        return (
            "application/vnd.apache.avro.single-object; "
            f"schema={self._current.full_name}; fingerprint={self._current.fingerprint.hex()}"
        )

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode `record` with the current schema, header first."""
        buffer = io.BytesIO()
        buffer.write(SINGLE_OBJECT_MARKER)
        buffer.write(self._current.fingerprint)
        try:
            # The writer alone would accept a string for an array (it iterates the characters):
            # validate the types first, then let the writer reject unknown fields. The quiet
            # check is cheap; only a failing record pays for building the error message
            # (raise_errors=True builds an exception for every union branch that does not
            # match, 31 % of the service's GIL time in the warm benchmark).
            if not validate(record, self._current.parsed, raise_errors=False):
                validate(record, self._current.parsed, raise_errors=True)
            fastavro.schemaless_writer(
                buffer, self._current.parsed, dict(record), strict_allow_default=True
            )
        except (ValidationError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise SerializationError(
                f"record does not fit schema {self._current.full_name}: {exc}"
            ) from exc
        return buffer.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode single-object bytes written with any known version into the current schema."""
        if len(data) < _HEADER_SIZE or data[:2] != SINGLE_OBJECT_MARKER:
            got = data[:2].hex() or "nothing"
            raise SerializationError(
                f"not Avro single-object encoding: expected marker c301, got {got} "
                f"({len(data)} bytes)"
            )
        writer_fingerprint = data[2:_HEADER_SIZE]
        writer = self._writers.get(writer_fingerprint)
        if writer is None:
            known = ", ".join(f"{v.version}={fp.hex()}" for fp, v in self._writers.items())
            raise UnknownSchemaError(
                f"unknown writer schema fingerprint {writer_fingerprint.hex()} for "
                f"{self._current.full_name}; known: {known}"
            )
        body = io.BytesIO(data[_HEADER_SIZE:])
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, self._current.parsed)
        except (EOFError, ValueError, TypeError, IndexError, UnicodeDecodeError) as exc:
            raise SerializationError(
                f"cannot decode {self._current.full_name} written with version {writer.version}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        except fastavro.read.SchemaResolutionError as exc:
            raise SerializationError(
                f"version {writer.version} of {self._current.full_name} cannot be read as the "
                f"current version: {exc}"
            ) from exc
        if body.tell() != len(data) - _HEADER_SIZE:
            raise SerializationError(
                f"{len(data) - _HEADER_SIZE - body.tell()} trailing bytes after a "
                f"{self._current.full_name} record"
            )
        if not isinstance(record, dict):
            raise SerializationError(f"decoded a {type(record).__name__}, expected a record")
        return record
