"""The Avro contract: schemas, the single-object wire format, and compatibility across versions."""

import copy
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest

from service.contract import (
    CATEGORY_ENRICHMENT,
    DEFAULT_SCHEMA_DIR,
    PRODUCT,
    SchemaVersion,
    SingleObjectCodec,
    fingerprint,
    history,
    load_schema,
    read_schema,
)
from service.errors import SchemaError, SerializationError, UnknownSchemaError

GOLDEN_DIR = Path(__file__).parent / "golden"
SCHEMAS = [PRODUCT, CATEGORY_ENRICHMENT]


def _rabin_crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification's reference code computes it."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


PRODUCT_FULL: dict[str, Any] = {
    "product_id": "p-000123",
    "partner_id": "partner-42",
    "title": "Organic Pink Lady apples, 1 kg",
    "description": "Crisp, sweet; grown in Valencia. Ünïcødé survives.",
    "image_url": "https://cdn.example.com/img/p-000123.jpg",
    "additional_image_urls": ["https://cdn.example.com/img/p-000123-2.jpg"],
    "partner_category": "Fruit & Veg > Apples",
    "updated_at": datetime(2026, 11, 24, 9, 30, 15, 123000, tzinfo=UTC),
}
PRODUCT_MINIMAL: dict[str, Any] = {
    "product_id": "p-1",
    "partner_id": "x",
    "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
}
ENRICHMENT_CLASSIFIED: dict[str, Any] = {
    "product_id": "p-000123",
    "partner_id": "partner-42",
    "status": "CLASSIFIED",
    "error": None,
    "category": {
        "id": 5795,
        "name": "Fresh & Frozen Fruits",
        "path": [
            {"level": 1, "id": 412, "name": "Food, Beverages & Tobacco", "confidence": 0.5},
            {"level": 2, "id": 422, "name": "Food Items", "confidence": 0.25},
            {"level": 3, "id": 430, "name": "Fruits & Vegetables", "confidence": 0.75},
            {"level": 4, "id": 5795, "name": "Fresh & Frozen Fruits", "confidence": 0.125},
        ],
        "path_string": "Food, Beverages & Tobacco > Food Items > Fruits & Vegetables > "
        "Fresh & Frozen Fruits",
    },
    "alternatives": [
        {
            "id": 5795,
            "path": "Food, Beverages & Tobacco > ... > Fresh & Frozen Fruits",
            "probability": 0.5,
        },
    ],
    "model": {
        "name": "catalog-efficientnet",
        "version": "3f2a9c",
        "backbone": "efficientnet_b0",
        "taxonomy_version": "2021-09-21",
        "depth": 4,
    },
    "image": {
        "url": "https://cdn.example.com/img/p-000123.jpg",
        "sha256": "ab" * 32,
        "from_cache": True,
    },
    "source": {"topic": "products", "partition": 3, "offset": 1234567890123},
    "event_time": datetime(2026, 11, 24, 9, 30, 15, 123000, tzinfo=UTC),
    "processed_at": datetime(2026, 11, 24, 9, 30, 16, 456000, tzinfo=UTC),
}
ENRICHMENT_FAILED: dict[str, Any] = {
    "product_id": "p-9",
    "partner_id": "partner-1",
    "status": "IMAGE_UNAVAILABLE",
    "error": "http 404",
    "category": None,
    "alternatives": [],
    "model": ENRICHMENT_CLASSIFIED["model"],
    "image": {"url": "https://cdn.example.com/missing.jpg", "sha256": None, "from_cache": False},
    "source": {"topic": "products", "partition": 0, "offset": 0},
    "event_time": datetime(2026, 1, 1, tzinfo=UTC),
    "processed_at": datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
}
ENRICHMENT_FUSED: dict[str, Any] = {  # 1.1.0: the category from image and text together
    **ENRICHMENT_CLASSIFIED,
    "decided_by": "FUSED",
    "signals": [
        {
            "signal": "IMAGE",
            "outcome": "USED",
            "category_id": 5795,
            "path_string": ENRICHMENT_CLASSIFIED["category"]["path_string"],
            "confidence": 0.5,
            "model_version": "3f2a9c",
            "error": None,
        },
        {
            "signal": "TEXT",
            "outcome": "USED",
            "category_id": 5795,
            "path_string": ENRICHMENT_CLASSIFIED["category"]["path_string"],
            "confidence": 0.875,
            "model_version": "77aa01",
            "error": None,
        },
    ],
}
ENRICHMENT_FROM_TEXT: dict[str, Any] = {  # 1.1.0: the image failed, the title decided
    **ENRICHMENT_CLASSIFIED,
    "image": ENRICHMENT_FAILED["image"],
    "decided_by": "TEXT",
    "signals": [
        {
            "signal": "IMAGE",
            "outcome": "FAILED",
            "category_id": None,
            "path_string": None,
            "confidence": None,
            "model_version": None,
            "error": "http 404",
        },
        ENRICHMENT_FUSED["signals"][1],
    ],
}
RECORDS: list[tuple[str, dict[str, Any]]] = [
    (PRODUCT, PRODUCT_FULL),
    (PRODUCT, PRODUCT_MINIMAL),
    (CATEGORY_ENRICHMENT, ENRICHMENT_CLASSIFIED),
    (CATEGORY_ENRICHMENT, ENRICHMENT_FAILED),
    (CATEGORY_ENRICHMENT, ENRICHMENT_FUSED),
    (CATEGORY_ENRICHMENT, ENRICHMENT_FROM_TEXT),
]


def _with_defaults(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """`record` with every omitted field that has a default filled in, as a reader sees it."""
    raw = json.loads((DEFAULT_SCHEMA_DIR / f"{name}.avsc").read_text())
    full = dict(record)
    for field in raw["fields"]:
        if field["name"] not in full and "default" in field:
            full[field["name"]] = copy.deepcopy(field["default"])
    return full


def _walk_fields(schema: Any, where: str) -> list[tuple[str, Any]]:
    """Every (place, field) pair in a raw schema, nested records included."""
    found: list[tuple[str, Any]] = []
    if isinstance(schema, list):
        for branch in schema:
            found += _walk_fields(branch, where)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            for field in schema["fields"]:
                place = f"{where}.{field['name']}"
                found.append((place, field))
                found += _walk_fields(field["type"], place)
        elif schema.get("type") == "array":
            found += _walk_fields(schema["items"], where)
    return found


def _enums(schema: Any) -> dict[str, tuple[tuple[str, ...], str | None]]:
    """Every enum in a parsed schema: its full name, symbols and default."""
    found: dict[str, tuple[tuple[str, ...], str | None]] = {}
    if isinstance(schema, list):
        for branch in schema:
            found |= _enums(branch)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "enum":
            found[schema["name"]] = (tuple(schema["symbols"]), schema.get("default"))
        elif kind == "record":
            for field in schema["fields"]:
                found |= _enums(field["type"])
        elif kind == "array":
            found |= _enums(schema["items"])
        elif isinstance(kind, dict | list):
            found |= _enums(kind)
    return found


def _fields_of(version: SchemaVersion) -> set[str]:
    """The top-level field names of one schema version."""
    return {field["name"] for field in version.parsed["fields"]}


def _as_written_by(version: SchemaVersion, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as a writer of ``version`` has it: without the fields that version lacks."""
    return {key: value for key, value in record.items() if key in _fields_of(version)}


# Every released version of a schema paired with each representative record of that schema.
HISTORY_PAIRS = [(name, old, record) for name, record in RECORDS for old in history(name)]


class TestSchemas:
    """The schema files themselves."""

    @pytest.mark.parametrize("name", SCHEMAS)
    def test_parses(self, name: str) -> None:
        """Each schema in schemas/ parses with fastavro."""
        assert load_schema(name).parsed["type"] == "record"

    @pytest.mark.parametrize("name", SCHEMAS)
    def test_every_field_is_documented(self, name: str) -> None:
        """Every field, nested ones included, has a non-empty doc."""
        raw = json.loads((DEFAULT_SCHEMA_DIR / f"{name}.avsc").read_text())
        undocumented = [place for place, f in _walk_fields(raw, name) if not f.get("doc")]
        assert [] == undocumented

    def test_statuses_are_the_contracted_ones(self) -> None:
        """The status enum holds exactly the five statuses downstream teams code against."""
        raw = json.loads((DEFAULT_SCHEMA_DIR / "category_enrichment.avsc").read_text())
        status = next(f for f in raw["fields"] if f["name"] == "status")
        expected = [
            "CLASSIFIED",
            "LOW_CONFIDENCE",
            "IMAGE_UNAVAILABLE",
            "IMAGE_INVALID",
            "INVALID_INPUT",
        ]
        assert expected == status["type"]["symbols"]

    def test_unreadable_schema_names_the_file(self, tmp_path: Path) -> None:
        """A broken schema file raises SchemaError naming the file."""
        bad = tmp_path / "broken.avsc"
        bad.write_text('{"type": "record", "name": "X", "fields": [{"name": "a"}]}')
        with pytest.raises(SchemaError, match=r"broken\.avsc"):
            read_schema(bad)

    @pytest.mark.parametrize("name", SCHEMAS)
    def test_current_version_is_released(self, name: str) -> None:
        """The current schema equals the newest version kept in schemas/history/."""
        assert load_schema(name).fingerprint == history(name)[-1].fingerprint


class TestFingerprint:
    """CRC-64-AVRO fingerprints as the single-object header carries them."""

    def test_matches_the_specification_vector(self) -> None:
        """The schema "null" has the fingerprint given by the Avro test vectors."""
        parsed = fastavro.parse_schema("null")
        assert 7195948357588979594 == int.from_bytes(fingerprint(parsed), "little", signed=True)

    @pytest.mark.parametrize("name", SCHEMAS)
    def test_matches_the_reference_algorithm(self, name: str) -> None:
        """The header bytes are the little-endian reference CRC-64-AVRO of the canonical form."""
        schema = load_schema(name)
        canonical = fastavro.schema.to_parsing_canonical_form(schema.parsed).encode()
        expected = _rabin_crc64_avro(canonical).to_bytes(8, "little")
        assert expected == schema.fingerprint


class TestSingleObjectCodec:
    """Encoding and decoding records."""

    @pytest.mark.parametrize(("name", "record"), RECORDS)
    def test_round_trip(self, name: str, record: dict[str, Any]) -> None:
        """A representative record decodes to itself, omitted defaults filled in."""
        codec = SingleObjectCodec.for_schema(name)
        assert _with_defaults(name, record) == codec.decode(codec.encode(record))

    @pytest.mark.parametrize(("name", "record"), RECORDS)
    def test_header(self, name: str, record: dict[str, Any]) -> None:
        """Encoded bytes start with C3 01 and the writer schema's fingerprint."""
        codec = SingleObjectCodec.for_schema(name)
        data = codec.encode(record)
        assert b"\xc3\x01" + codec.schema.fingerprint == data[:10]

    def test_content_type_names_schema_and_fingerprint(self) -> None:
        """The content-type header value names the encoding, the record and its fingerprint."""
        codec = SingleObjectCodec.for_schema(PRODUCT)
        expected = (
            "application/vnd.apache.avro.single-object; schema=com.catalog.enrichment.v1.Product;"
            f" fingerprint={codec.schema.fingerprint.hex()}"
        )
        assert expected == codec.content_type

    @pytest.mark.parametrize(
        ("name", "record", "golden"),
        [
            (PRODUCT, PRODUCT_FULL, "product_v1.bin"),
            (CATEGORY_ENRICHMENT, ENRICHMENT_FUSED, "category_enrichment_v1_1.bin"),
        ],
    )
    def test_golden_bytes(self, name: str, record: dict[str, Any], golden: str) -> None:
        """The wire bytes of a fixed record never change by accident."""
        codec = SingleObjectCodec.for_schema(name)
        assert (GOLDEN_DIR / golden).read_bytes() == codec.encode(record)

    def test_released_golden_bytes_still_decode(self) -> None:
        """Bytes a 1.0.0 writer sent decode with the current codec, new fields at defaults."""
        decoded = SingleObjectCodec.for_schema(CATEGORY_ENRICHMENT).decode(
            (GOLDEN_DIR / "category_enrichment_v1.bin").read_bytes()
        )
        assert {**ENRICHMENT_CLASSIFIED, "decided_by": "UNKNOWN", "signals": []} == decoded

    def test_released_golden_bytes_are_the_released_writer(self) -> None:
        """The 1.0.0 golden bytes are exactly what the released 1.0.0 schema writes."""
        released = next(v for v in history(CATEGORY_ENRICHMENT) if v.version == "1.0.0")
        assert (GOLDEN_DIR / "category_enrichment_v1.bin").read_bytes() == SingleObjectCodec(
            released
        ).encode(ENRICHMENT_CLASSIFIED)

    def test_unknown_fingerprint_is_rejected(self) -> None:
        """Bytes whose fingerprint no known version has raise UnknownSchemaError naming it."""
        codec = SingleObjectCodec.for_schema(PRODUCT)
        data = bytearray(codec.encode(PRODUCT_MINIMAL))
        data[2:10] = bytes.fromhex("0011223344556677")
        with pytest.raises(UnknownSchemaError, match="0011223344556677"):
            codec.decode(bytes(data))

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"", "expected marker c301"),
            (b"\x00\x01" + b"\0" * 20, "expected marker c301, got 0001"),
            (b'{"product_id": 1}', "expected marker c301"),
            (b"\xc3\x01\x00", "expected marker c301"),
        ],
    )
    def test_not_single_object(self, data: bytes, message: str) -> None:
        """Bytes without the single-object header raise SerializationError saying so."""
        with pytest.raises(SerializationError, match=message):
            SingleObjectCodec.for_schema(PRODUCT).decode(data)

    def test_truncated_body(self) -> None:
        """A record cut short raises SerializationError, not an EOF from the library."""
        codec = SingleObjectCodec.for_schema(PRODUCT)
        data = codec.encode(PRODUCT_FULL)
        with pytest.raises(SerializationError, match="cannot decode"):
            codec.decode(data[:30])

    def test_trailing_bytes(self) -> None:
        """Garbage after a complete record is an error, not silently ignored."""
        codec = SingleObjectCodec.for_schema(PRODUCT)
        with pytest.raises(SerializationError, match="trailing"):
            codec.decode(codec.encode(PRODUCT_MINIMAL) + b"\x00\x00")

    @pytest.mark.parametrize(
        "change",
        [
            {"product_id": None},
            {"updated_at": "yesterday"},
            {"unexpected_field": 1},
            {"additional_image_urls": "not-a-list"},
        ],
    )
    def test_record_that_does_not_fit(self, change: dict[str, Any]) -> None:
        """A record with a wrong or unknown field raises SerializationError when encoding."""
        codec = SingleObjectCodec.for_schema(PRODUCT)
        with pytest.raises(SerializationError, match="does not fit"):
            codec.encode({**PRODUCT_FULL, **change})


class TestCompatibility:
    """Every released version and the current one read each other's records."""

    @pytest.mark.parametrize(("name", "old", "record"), HISTORY_PAIRS)
    def test_current_reads_old(self, name: str, old: SchemaVersion, record: dict[str, Any]) -> None:
        """What a released version wrote, the current codec decodes (schema resolution)."""
        old_codec = SingleObjectCodec(old)
        current = SingleObjectCodec.for_schema(name)
        written = _as_written_by(old, record)
        decoded = current.decode(old_codec.encode(written))
        assert {**_with_defaults(name, written), **written} == decoded

    @pytest.mark.parametrize(("name", "old", "record"), HISTORY_PAIRS)
    def test_old_reads_current(self, name: str, old: SchemaVersion, record: dict[str, Any]) -> None:
        """What the current schema writes, a reader holding only a released version decodes."""
        current = SingleObjectCodec.for_schema(name)
        old_reader = SingleObjectCodec(old, [current.schema])
        decoded = old_reader.decode(current.encode(record))
        assert _as_written_by(old, _with_defaults(name, record)) == decoded

    @pytest.mark.parametrize("name", SCHEMAS)
    def test_enums_grow_only_with_a_default(self, name: str) -> None:
        """An enum that gains symbols, or first appears, after 1.0.0 has a default symbol, so
        a reader of an older version resolves a symbol it does not know."""
        versions = history(name)
        first = _enums(versions[0].parsed)
        for older, newer in itertools.pairwise(versions):
            before, after = _enums(older.parsed), _enums(newer.parsed)
            for enum, (symbols, default) in after.items():
                grew = enum not in first or set(symbols) - set(before.get(enum, ((), None))[0])
                if grew:
                    assert default in symbols, f"{newer.version}: {enum} grew without a default"

    def test_incompatible_change_is_caught(self, tmp_path: Path) -> None:
        """A version renaming a required field cannot read old records: the check bites."""
        raw = json.loads((DEFAULT_SCHEMA_DIR / "product.avsc").read_text())
        for field in raw["fields"]:
            if field["name"] == "partner_id":
                field["name"] = "merchant_id"
        renamed = tmp_path / "product.avsc"
        renamed.write_text(json.dumps(raw))
        old = load_schema(PRODUCT)
        new_reader = SingleObjectCodec(read_schema(renamed, "next"), [old])
        with pytest.raises(SerializationError, match="cannot be read"):
            new_reader.decode(SingleObjectCodec(old).encode(PRODUCT_FULL))
