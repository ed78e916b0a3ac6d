"""Avro decoding of segment events: plain schemaless Avro with the bundled schema, or the
Confluent wire format with writer schemas fetched from a Schema Registry.

Decoding is a pure function of the bytes once a writer schema is known; the writer schemas come
from a `SchemaSource` (the Schema Registry client in `connector.kafka.registry`, or the tests' own).
"""

from __future__ import annotations

import io
import json
import struct
from functools import cache
from importlib import resources
from typing import Any, Protocol

import fastavro
from fastavro import _read_py  # the Python reader: see `_read`
from fastavro.read import SchemaResolutionError

from connector.core.errors import InvalidRecord
from connector.core.events import SegmentChange

# What fastavro raises on bad bytes (ValueError covers UnicodeDecodeError and bad varints).
_DECODE_ERRORS = (EOFError, IndexError, OverflowError, ValueError, TypeError, KeyError)


@cache
def bundled_schema_json() -> dict[str, Any]:
    """The reader schema bundled with the connector, as JSON."""
    # Found through the package, not `__file__`: a module compiled by mypyc may not know its
    # own file while it is imported.
    schema = resources.files("connector") / "schemas" / "segment_membership_change.avsc"
    loaded: dict[str, Any] = json.loads(schema.read_text())
    return loaded


@cache
def bundled_schema() -> Any:
    """The bundled schema, parsed for writing."""
    return fastavro.parse_schema(bundled_schema_json())


@cache
def _raw_reader() -> Any:
    """The bundled schema without logical types, for reading."""
    return fastavro.parse_schema(strip_logical_types(bundled_schema_json()))


def strip_logical_types(schema: Any) -> Any:
    """The same schema with every `logicalType` removed. The encoding is identical; the reader
    then returns `occurred_at` as the raw millisecond long instead of building a datetime, which
    costs about 15 % of decoding time and would be turned back into an int anyway."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


class Decoder(Protocol):
    def decode(self, value: bytes) -> SegmentChange:
        """Decode one value; raises `InvalidRecord` (to the DLQ) or `Retriable`."""


def _read(
    value: bytes, offset: int, writer: Any, reader: Any | None, recursive: bool = False
) -> dict[str, Any]:
    buf = io.BytesIO(value)
    buf.seek(offset)
    # fastavro's compiled reader recurses natively without a limit: with a recursive writer,
    # a 20 kB record nested 20,000 deep crashed the process. Its Python reader stops at the
    # interpreter's recursion limit instead (RecursionError); slower, so only for those.
    read = _read_py.schemaless_reader if recursive else fastavro.schemaless_reader
    try:
        record = read(buf, writer, reader, return_record_name=False)
    except RecursionError:
        raise InvalidRecord(
            "malformed_avro", "decode", "a recursive type nested deeper than can be decoded"
        ) from None
    except SchemaResolutionError as exc:
        raise InvalidRecord("schema_incompatible", "decode", str(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidRecord("malformed_avro", "decode", f"{type(exc).__name__}: {exc}") from exc
    # fastavro stops at the end of the record and ignores what follows: check it all was read.
    left = len(value) - buf.tell()
    if left:
        raise InvalidRecord("trailing_bytes", "decode", f"{left} bytes after the record")
    if not isinstance(record, dict):
        raise InvalidRecord("schema_incompatible", "decode", "the value is not a record")
    return record


def _to_change(record: dict[str, Any]) -> SegmentChange:
    try:
        return SegmentChange.from_avro(record)
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidRecord("schema_incompatible", "decode", f"missing field {exc}") from exc


class PlainAvroDecoder:
    """`VALUE_FORMAT=avro`: the schemaless body written with the bundled schema."""

    def __init__(self) -> None:
        self._schema = _raw_reader()

    def decode(self, value: bytes) -> SegmentChange:
        return _to_change(_read(value, 0, self._schema, None))


class SchemaSource(Protocol):
    def writer_schema(self, schema_id: int) -> Any:
        """The parsed writer schema; `InvalidRecord` if unknown, `Retriable` if unreachable."""


class ConfluentDecoder:
    """`VALUE_FORMAT=confluent`: magic byte 0, 4-byte big-endian schema id, Avro body, resolved
    from the writer schema into the bundled reader schema."""

    def __init__(self, schemas: SchemaSource) -> None:
        self._schemas = schemas
        self._reader = _raw_reader()
        # Schema id -> its writer, and whether that has a recursive type (ids are immutable).
        self._writers: dict[int, tuple[Any, bool]] = {}

    def decode(self, value: bytes) -> SegmentChange:
        if len(value) < 5 or value[0] != 0:
            raise InvalidRecord(
                "invalid_magic_byte",
                "decode",
                "value does not start with magic byte 0 and a schema id",
            )
        (schema_id,) = struct.unpack_from(">I", value, 1)
        known = self._writers.get(schema_id)
        if known is None:
            writer = self._schemas.writer_schema(schema_id)
            known = self._writers[schema_id] = (writer, is_recursive(writer))
        return _to_change(_read(value, 5, known[0], self._reader, known[1]))


def is_recursive(parsed: Any) -> bool:
    """Whether a parsed schema has a record that contains itself (directly, or through named
    types, its references' included)."""
    named = parsed.get("__named_schemas") if isinstance(parsed, dict) else None
    try:
        return _recursive(parsed, named if isinstance(named, dict) else {}, (), set())
    except RecursionError:
        return True  # too deep to walk: read it the careful way


def _recursive(
    schema: Any, named: dict[str, Any], within: tuple[str, ...], clean: set[str]
) -> bool:
    """`clean`: named types already walked and found free of it, walked once however often
    they are used."""
    if isinstance(schema, str):
        if schema in within:
            return True
        return schema not in clean and _recursive(named.get(schema), named, within, clean)
    if isinstance(schema, dict) and schema.get("type") in ("record", "error"):
        name = str(schema.get("name"))
        inside = (*within, name)
        if any(_recursive(f.get("type"), named, inside, clean) for f in schema["fields"]):
            return True
        clean.add(name)
        return False
    return any(_recursive(inner, named, within, clean) for inner in _inner(schema))


def _inner(schema: Any) -> list[Any]:
    """The schemas directly inside a union, an array, a map or a wrapped type."""
    if isinstance(schema, list):
        return schema
    if not isinstance(schema, dict):
        return []
    kind = schema.get("type")
    if kind == "array":
        return [schema.get("items")]
    if kind == "map":
        return [schema.get("values")]
    return [kind] if isinstance(kind, dict | list) else []


def encode_plain(record: dict[str, Any]) -> bytes:
    """Schemaless Avro with the bundled schema (for producers, tests and `generate`)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, bundled_schema(), record)
    return buf.getvalue()


def encode_confluent(record: dict[str, Any], schema_id: int, writer: Any | None = None) -> bytes:
    """Confluent wire format: magic byte, schema id, schemaless Avro."""
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, writer if writer is not None else bundled_schema(), record)
    return buf.getvalue()
