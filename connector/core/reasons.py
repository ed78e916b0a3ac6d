"""The closed list of dead-letter reasons: the `omnisend.dlq.reason` header, the `reason` label of
the DLQ metrics and the filter of `replay-dlq` all use these codes, and only these."""

from __future__ import annotations

from typing import Literal

Stage = Literal["decode", "validate", "omnisend"]

REASONS: dict[str, tuple[Stage, str]] = {
    # decode: the bytes are not a SegmentMembershipChange we can read
    "invalid_magic_byte": (
        "decode",
        "Confluent framing expected: first byte is not 0, or value shorter than 5 bytes",
    ),
    "unknown_schema_id": ("decode", "the Schema Registry has no schema with this id (404)"),
    "malformed_avro": (
        "decode",
        "the Avro body is truncated or corrupt (bad length, bad UTF-8, bad union/enum index)",
    ),
    "trailing_bytes": ("decode", "bytes left over after a complete record"),
    "schema_incompatible": (
        "decode",
        "the writer schema cannot be resolved into the bundled reader schema",
    ),
    "unsupported_schema": (
        "decode",
        "the schema id names a schema the connector cannot read: JSON Schema, Protobuf, "
        "invalid Avro, or a reference the registry cannot give",
    ),
    "invalid_key": ("decode", "the Kafka key is not UTF-8"),
    "oversized_value": ("decode", "the value is larger than MAX_VALUE_BYTES"),
    # validate: readable, but not something Omnisend can take
    "missing_email": ("validate", "the profile has no email attribute"),
    "invalid_email": ("validate", "the email attribute is not a valid address"),
    "invalid_timestamp": ("validate", "occurred_at is zero, negative or too far in the future"),
    "invalid_event": (
        "validate",
        "a required event field is empty (event_id, segment_id, segment_name)",
    ),
    # omnisend: Omnisend refused the change
    "rejected_by_omnisend": (
        "omnisend",
        "Omnisend answered a batch item with a 4xx (its problem detail is in the detail header)",
    ),
    "omnisend_retries_exhausted": (
        "omnisend",
        "a batch item kept failing with 408/429/5xx after every retry",
    ),
}
