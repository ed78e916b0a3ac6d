"""Writes the poison corpus: one file per kind of bad record, and `manifest.json` with its key and
the DLQ reason it must get. Values use the Confluent wire format; schema ids refer to
`schemas.json` (id → writer schema), which the tests load into their Schema Registry.

    python tests/data/poison/make_corpus.py
"""

from __future__ import annotations

import copy
import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro

HERE = Path(__file__).parent
SCHEMA = json.loads((HERE.parents[2] / "schemas" / "segment_membership_change.avsc").read_text())
T = 1_790_000_000_000


def good(**changes: Any) -> dict[str, Any]:
    record = {
        "event_id": "poison",
        "occurred_at": T,
        "segment_id": "s1",
        "segment_name": "VIP",
        "change": "ENTERED",
        "profile_id": "p1",
        "profile": {"email": "ok@example.com"},
    }
    record.update(changes)
    return record


def encode(record: dict[str, Any], schema: dict[str, Any], schema_id: int) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def main() -> None:
    extra_symbol = copy.deepcopy(SCHEMA)
    extra_symbol["fields"][4]["type"]["symbols"].append("PAUSED")
    other = {
        "type": "record",
        "name": "Order",
        "namespace": "shop",
        "fields": [{"name": "id", "type": "long"}],
    }
    schemas = {1: SCHEMA, 2: extra_symbol, 3: other}
    valid = encode(good(), SCHEMA, 1)
    cases: list[tuple[str, bytes, bytes, str]] = [
        ("wrong_magic_byte", b"k", b"\x01" + valid[1:], "invalid_magic_byte"),
        ("too_short_for_framing", b"k", b"\x00\x00", "invalid_magic_byte"),
        (
            "unknown_schema_id",
            b"k",
            b"\x00" + struct.pack(">I", 4242) + valid[5:],
            "unknown_schema_id",
        ),
        ("truncated_avro", b"k", valid[:-7], "malformed_avro"),
        ("different_schema", b"k", encode({"id": 7}, other, 3), "schema_incompatible"),
        ("trailing_bytes", b"k", valid + b"\x00\x00", "trailing_bytes"),
        (
            "unknown_enum_symbol",
            b"k",
            encode(good(change="PAUSED"), extra_symbol, 2),
            "schema_incompatible",
        ),
        (
            "invalid_utf8_in_string",
            b"k",
            valid.replace(b"ok@example.com", b"ok@exampl\xff.com"),
            "malformed_avro",
        ),
        ("non_utf8_key", b"\xff\xfe\xfd", valid, "invalid_key"),
        (
            "missing_email",
            b"k",
            encode(good(profile={"first_name": "Ann"}), SCHEMA, 1),
            "missing_email",
        ),
        (
            "invalid_email",
            b"k",
            encode(good(profile={"email": "ann at example"}), SCHEMA, 1),
            "invalid_email",
        ),
        ("zero_timestamp", b"k", encode(good(occurred_at=0), SCHEMA, 1), "invalid_timestamp"),
        (
            "far_future_timestamp",
            b"k",
            encode(good(occurred_at=4_102_444_800_000), SCHEMA, 1),
            "invalid_timestamp",
        ),
        ("empty_segment_name", b"k", encode(good(segment_name=""), SCHEMA, 1), "invalid_event"),
        (
            "oversized_value",
            b"k",
            encode(good(profile={"email": "ok@example.com", "note": "x" * 2000}), SCHEMA, 1),
            "oversized_value",
        ),
    ]
    manifest = []
    for name, key, value, reason in cases:
        (HERE / f"{name}.bin").write_bytes(value)
        manifest.append({"name": name, "key_hex": key.hex(), "reason": reason})
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (HERE / "schemas.json").write_text(
        json.dumps({str(k): v for k, v in schemas.items()}, indent=2) + "\n"
    )
    print(f"wrote {len(cases)} poison records")


if __name__ == "__main__":
    main()
